"""The workspace: a folder holding a durable ledger (SQLite) of cases, predictions, corrections,
models and training runs, and the immutable files they point to.

``ledger`` owns the schema, migrations and transactions; ``files`` the atomic immutable file store;
``records`` the plain records handed out; ``api`` the :class:`Workspace` everyone uses, which builds
parts with one job each, each handed in its constructor the parts it uses: ``base.Core`` (what they all
share, incl. the one stage-place-insert-undo write), ``casestore`` (case images read through ``readcache``),
``labels``, ``predictions``, ``corrections``, ``runs``, ``registry``, ``reports``, ``dicom``, ``qualitymodels``,
``suspectflags``; ``check``, ``export`` and ``sync`` (with a PACS) are whole-workspace jobs, functions of a
workspace.
"""
from .api import Workspace, parse_labels, parse_modality
from .casestore import content_hash
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
