"""The workspace: a folder holding a durable ledger (SQLite) of cases, predictions, corrections,
models and training runs, and the immutable files they point to.

``ledger`` owns the schema, migrations and transactions; ``files`` the atomic immutable file store;
``api`` the :class:`Workspace` everyone uses; ``check`` and ``export`` the two whole-workspace jobs.
"""
from .api import Workspace, content_hash, parse_labels, parse_modality
from .ledger import LEDGER_NAME, SCHEMA_VERSION
from .records import (
                      QUALITIES,
                      Case,
                      CheckReport,
                      Correction,
                      ModelRecord,
                      Prediction,
                      Settings,
                      SnapshotItem,
                      TrainingRun,
                      WorkspaceLabel,
)

__all__ = ["Workspace", "Case", "Prediction", "Correction", "ModelRecord", "SnapshotItem", "TrainingRun", "Settings",
           "WorkspaceLabel", "CheckReport", "QUALITIES", "LEDGER_NAME", "SCHEMA_VERSION", "content_hash",
           "parse_labels", "parse_modality"]
