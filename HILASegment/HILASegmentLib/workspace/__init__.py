"""The workspace: a folder holding a durable ledger (SQLite) of cases, predictions, corrections,
models and training runs, and the immutable files they point to.

``ledger`` owns the schema, migrations and transactions; ``files`` the atomic immutable file store;
``records`` the plain records handed out; ``api`` the :class:`Workspace` everyone uses, made of
rooms with one job each: ``room`` (what they share, incl. the one stage-place-insert-undo write),
``cases``, ``labels``, ``predictions``, ``corrections``, ``runs``, ``registry``, ``reports``;
``check`` and ``export`` are the two whole-workspace jobs.
"""
from .api import Workspace, parse_labels, parse_modality
from .cases import content_hash
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
