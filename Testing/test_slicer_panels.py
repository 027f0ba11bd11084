"""The rows the Slicer panel shows (case table, model table, learning curve), on a real workspace."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HILASegmentSlicerLib import panels

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"
MRI = ROOT / "Testing" / "Data" / "prostate_mri_oblique_small.nrrd"
MRI_LABEL = ROOT / "Testing" / "Data" / "prostate_mri_oblique_small_taps.nii.gz"


@pytest.fixture
def ws(tmp_path):
    from HILASegmentLib.workspace import Workspace
    w = Workspace.create(tmp_path / "ws", "MR", ["prostate"], model=str(TINY))
    yield w
    w.close()


def test_case_rows_next_case_and_learning_curve(ws, tmp_path):
    a = ws.import_volume(MRI)
    flipped = tmp_path / "second.nrrd"
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(MRI)), [True, False, False]), str(flipped))
    b = ws.import_volume(flipped)
    label = sitk.ReadImage(str(MRI_LABEL))
    pred = sitk.BinaryErode(label > 0, [2, 2, 0])
    pred = sitk.Cast(pred, sitk.sitkUInt8)
    pred.CopyInformation(label)
    ws.add_prediction(a.case_id, pred, model_version=1)
    ws.submit(a.case_id, sitk.Cast(label > 0, sitk.sitkUInt8), quality="reviewed", annotator="t", seconds=12.0)

    rows = {r[0]: r for r in panels.case_rows(ws)}
    assert len(rows[a.case_id]) == len(panels.CASE_COLUMNS)
    ra, rb = rows[a.case_id], rows[b.case_id]
    assert ra[2] == "reviewed" and ra[3] == "v1" and ra[5] == 1 and 0 < ra[6] < 1
    assert rb[2] == "new" and rb[3] == "" and rb[5] == 0 and rb[6] == ""
    assert panels.next_case_id(ws) == b.case_id  # the reviewed case is never "next"

    curve, names = panels.learning_curve(ws)
    assert names == panels.CURVE_COLUMNS and len(curve) == 1
    version, dice, effort = curve[0]
    assert version == 1.0 and math.isnan(dice) and 0 < effort < 1  # the tiny card has no validation Dice


def test_model_rows_compare_text_and_dice_from_cards(ws, tmp_path):
    current = ws.current_model()
    assert current is not None and current.version == 1
    card = current.card.to_dict()
    card["metrics"] = {"dice": {"prostate": 0.8, "other": 0.6}}
    new = ws.add_model(current.path, card, parent=1)
    rows = {r[0]: r for r in panels.model_rows(ws)}
    assert rows[new.version][3] == 0.7 and rows[1][3] == "" and rows[new.version][2] == 1
    text = panels.compare_text(ws, new.version)
    assert text.startswith(f"Candidate v{new.version}: Dice 0.700") and "vs current v1: Dice n/a" in text
    ws.promote(new.version)
    assert "(now current)" in panels.compare_text(ws, new.version)


def test_dice_keys(ws):
    """The panel reads the card's one accessor; old cards' Dice keys are mapped where a card is read (ModelCard)."""
    from HILASegmentLib.models.modelcard import ModelCard

    def card(metrics):
        return ModelCard.from_dict(dict(ws.current_model().card.to_dict(), metrics=metrics))

    assert panels.model_dice(card({"validation": {"mean_dice": 0.8123, "dice": {"prostate": 0.8123}}})) == 0.8123
    assert panels.model_dice(card({"val_dice": 0.91234})) == 0.9123
    assert panels.model_dice(card({"dice": float("nan")})) is None
    assert panels.model_dice(None) is None


def test_empty_workspace(ws):
    assert panels.case_rows(ws) == [] and panels.next_case_id(ws) is None


def test_the_segment_child_records_workspace_values_that_feed_ranking(tmp_path):
    """What Segment runs for a workspace case (`hila infer WS CASE --model ONNX --out`) with a model whose label values
    differ from the workspace's: the child stores the prediction matched by name, and its summary ranks the case."""
    import json
    import subprocess
    import sys

    from HILASegmentLib.workspace import Workspace
    ws = Workspace.create(tmp_path / "ws", "MR", ["bladder", "prostate"])  # prostate is 2 here, 1 in the model
    a = ws.import_volume(MRI)
    out = tmp_path / "pred.seg.nrrd"
    r = subprocess.run([sys.executable, "-m", "HILASegmentLib", "infer", str(ws.root), a.case_id, "--out", str(out),
                        "--model", str(TINY), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    (prediction,) = ws.predictions(a.case_id)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction.path)))
    assert set(np.unique(arr)) == {0, 2} and prediction.model_version is None
    summary = prediction.uncertainty
    assert summary["mean_uncertainty"] == result["mean_uncertainty"] and "labels" in summary
    # the predicted Dice and the features the learned quality model reads travel with it
    assert summary["predicted_dice"] == result["predicted_dice"] and summary["quality_features"]
    ranked = ws.rank()
    assert ranked[0]["case_id"] == a.case_id and ranked[0]["review_need"] is not None
    assert panels.case_rows(ws)[0][4] == round(result["predicted_dice"], 3) == round(1 - ranked[0]["review_need"], 3)
    ws.close()


def test_model_for_segment(ws, tmp_path):
    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.workspace import Workspace
    path, version = panels.model_for(ws)
    assert version == 1 and Path(path).exists()
    assert panels.model_for(None) == ("taps", None)
    mr = Workspace.create(tmp_path / "mr", "MR", ["prostate"])
    assert panels.model_for(mr) == ("taps", None)
    ct = Workspace.create(tmp_path / "ct", "CT", ["prostate", "bladder"])
    with pytest.raises(HilaError, match="no model yet"):
        panels.model_for(ct)
    mr.close()
    ct.close()


def _logic():
    """The module's Logic with the one slicer.util call an import job makes (the child's environment)."""
    import os
    from types import SimpleNamespace

    from HILASegmentSlicerLib.logic import ModuleLogic
    return ModuleLogic(SimpleNamespace(util=SimpleNamespace(startupEnvironment=lambda: dict(os.environ))), None)


def test_the_import_job_imports_a_dicom_folder_and_a_cancelled_one_leaves_a_consistent_workspace(tmp_path):
    """Import files/folders is a `hila import` child (the panel's progress bar reads its JSON progress): the real CT's
    DICOM folder becomes a case; the same import cancelled mid-way leaves `hila check` clean and no half case."""
    import time

    from conftest import shared

    from HILASegmentLib.workspace import Workspace
    dicom = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    logic = _logic()
    with Workspace.create(tmp_path / "ws", "CT", ["prostate"]) as ws:
        runner = logic.startImport(ws, [str(dicom)]).start()
        fractions = []
        while not runner.finished:
            runner.poll()
            if runner.fraction is not None:
                fractions.append(runner.fraction)
            time.sleep(0.1)
        outcome = runner.outcome()
        assert outcome.ok, outcome.error
        (case,) = outcome.result["cases"]
        assert [c.case_id for c in ws.cases()] == [case["case_id"]] and fractions
    with Workspace.create(tmp_path / "ws2", "CT", ["prostate"]) as ws:
        runner = logic.startImport(ws, [str(dicom)]).start()
        time.sleep(1.0)
        runner.cancel()
        outcome = runner.wait(timeout=60)
        assert outcome.cancelled and not outcome.ok
        assert ws.check().ok and all(c.path.exists() for c in ws.cases())
