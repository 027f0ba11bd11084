"""The workspace is built from parts that say what they need (issue 25, third pass, item 3): each part's
constructor names its collaborators, ``Workspace`` composes them and keeps its whole public face as thin
delegates, so the CLI, the Slicer glue, the simulator and the tests call it as before."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

from HILASegmentLib.workspace import Workspace

WORKSPACE = Path(__file__).resolve().parents[1] / "HILASegment" / "HILASegmentLib" / "workspace"

#: ``[m for m in dir(Workspace) if not m.startswith('_')]`` before the parts were made explicit (57 names).
PUBLIC_BEFORE = [
    'abspath', 'add_model', 'add_prediction', 'case', 'case_image', 'case_of_series', 'case_series', 'case_states',
    'cases', 'check', 'check_modality', 'close', 'correction', 'correction_label', 'corrections', 'create',
    'current_model', 'dicom_objects', 'events', 'export', 'export_dicom', 'finish_training_run', 'fit_quality_model',
    'flag_suspects', 'import_dicom_object', 'import_series', 'import_volume', 'known_sop_uids', 'model', 'models',
    'next_model_version', 'open', 'prediction', 'prediction_segmentation', 'predictions', 'promote', 'quality_model',
    'quality_pairs', 'quality_source', 'rank', 'read_label_file', 'record_prediction', 'recover_dead_runs', 'rollback',
    'series', 'settings', 'snapshot', 'start_training_run', 'status', 'submit', 'submit_marks', 'suspect_keys',
    'suspects', 'training_run', 'training_runs', 'validate_label', 'workspace_label']


def test_the_public_face_of_workspace_is_kept():
    """Every public method and attribute the CLI, glue and tests call is still there, under the same name."""
    assert [m for m in dir(Workspace) if not m.startswith("_")] == PUBLIC_BEFORE
