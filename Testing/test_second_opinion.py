"""The box assistant as a second opinion on a prediction (issue: a box becomes a mask, item 5): each predicted
label is redrawn from the prediction's own per-slice rectangles and the agreement is recorded as a quality feature.
On the real CT a correct prediction agrees with the assistant far better than a wrong one; without the assistant
installed ``hila infer --second-opinion`` is one line and writes nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from test_assist import built, installed  # noqa: F401 - fixtures: the assistant's ONNX files
from tiny_models import phantom, rotation, tiny_model

from HILASegmentLib.cli import main
from HILASegmentLib.inference import boxassist
from HILASegmentLib.quality.secondopinion import GROW, assistant_agreement

DATA = Path(__file__).resolve().parent / "Data"
PAIRS = [(1, "prostate"), (2, "bladder"), (3, "rectum")]


class _Rect:
    """Stand-in for the assistant: fills the rectangle it is prompted with (records the rectangles)."""

    def __init__(self):
        self.rects = []

    def segment_slice(self, slice_255, rect):
        self.rects.append(tuple(int(v) for v in rect))
        x0, y0, x1, y1 = rect
        m = np.zeros(slice_255.shape, bool)
        m[y0:y1 + 1, x0:x1 + 1] = True
        return m


def test_prompts_are_the_predictions_own_rectangles_and_empty_labels_are_not_scored():
    image = sitk.ReadImage(str(DATA / "pelvic_ct_small.nrrd"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz")))
    label[label == 3] = 0  # the model "found no rectum"
    stand = _Rect()
    per = assistant_agreement(label, image, PAIRS, stand)
    assert sorted(per) == ["bladder", "prostate"]  # rectum: nothing to prompt with
    want = []
    for v in (1, 2):
        for k in np.nonzero((label == v).any(axis=(1, 2)))[0]:
            ys, xs = np.nonzero(label[k] == v)
            want.append((max(0, xs.min() - GROW), max(0, ys.min() - GROW), min(label.shape[2] - 1, xs.max() + GROW),
                         min(label.shape[1] - 1, ys.max() + GROW)))
    assert stand.rects == want
    for v, name in PAIRS[:2]:  # a filled rectangle against a round organ: agreement clearly below 1
        assert 0.3 < per[name] < 0.95, (name, per[name])


def test_a_wrong_prediction_agrees_less_with_the_assistant_on_real_ct(installed):  # noqa: F811
    image = sitk.ReadImage(str(DATA / "pelvic_ct_small.nrrd"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz")))
    a = boxassist.Assistant(threads=2)
    right = assistant_agreement(truth, image, PAIRS[1:2], a)["bladder"]
    wrong_label = np.roll(truth, 12, axis=2)  # the bladder contour moved 12 voxels sideways
    wrong = assistant_agreement(wrong_label, image, PAIRS[1:2], a)["bladder"]
    assert right > 0.75 and wrong < right - 0.1, (right, wrong)  # measured: 0.86 vs 0.72


def test_infer_second_opinion_records_agreement_in_the_stored_summary(installed, tmp_path, capsys):  # noqa: F811
    from HILASegmentLib.workspace import Workspace

    d = tmp_path
    img, _ = phantom((50, 46, 14), (0.9, 0.9, 2.5), rotation([1, 0, 0], 25))
    sitk.WriteImage(img, str(d / "img.nrrd"), True)
    ws = Workspace.create(d / "ws", "MR", ["sphere"], model=str(tiny_model(d)))
    c = ws.import_volume(d / "img.nrrd")
    ws.close()
    rc = main(["infer", str(d / "ws"), c.case_id, "--second-opinion"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "second opinion (box assistant) agrees" in out
    with Workspace.open(d / "ws") as ws:
        (pred,) = ws.predictions(c.case_id)
        feats = pred.uncertainty["quality_features"]
    assert 0.0 <= feats["assistant_agreement"] <= 1.0 and feats["assistant_agreement:sphere"] == feats["assistant_agreement"]


def test_second_opinion_without_the_assistant_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HILA_ASSIST_DIR", str(tmp_path / "none"))
    boxassist._SHARED.clear()
    img, _ = phantom((30, 30, 8), (1.0, 1.0, 2.5), rotation([1, 0, 0], 0))
    sitk.WriteImage(img, str(tmp_path / "img.nrrd"), True)
    model = tiny_model(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["infer", "--image", str(tmp_path / "img.nrrd"), "--out", str(tmp_path / "p.seg.nrrd"), "--model",
               str(model), "--second-opinion"])
    _, err = capsys.readouterr()
    assert rc != 0 and err.startswith("hila: error:") and err.count("\n") == 1 and "not installed" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
