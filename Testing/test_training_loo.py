"""Issue 6's Must show on the real pelvic CT: leave one case out, train on the other two cases' corrections.

Round 1 trains a real baseline (v1: 150 optimisation steps, already well above chance on the held-out
case); round 2 fine-tunes it for 450 more steps on the same two corrections (v2). Step counts, not minutes,
so the comparison does not depend on the machine's load. The held-out case, segmented by the inference
engine, must score a higher mean Dice over the three organs with v2 than with its parent (measured: 0.39 ->
0.46; per organ it does not hold — the bladder fell 0.35 -> 0.13 in that measurement, so it is not asserted),
and v2's card must list exactly the two corrections it was trained on. Slow (minutes on 2 cores); skipped
without ../shared/data.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

pytest.importorskip("torch")
pytest.importorskip("monai")

from HILASegmentLib.formats.imageio import read_image  # noqa: E402
from HILASegmentLib.formats.labelio import read_label  # noqa: E402
from HILASegmentLib.ground.metrics import dice  # noqa: E402
from HILASegmentLib.inference.segmenter import Segmenter  # noqa: E402
from HILASegmentLib.training.run import TrainOptions, train_workspace  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

ORGANS = {1: "prostate", 2: "bladder", 3: "rectum"}


def _dice_per_organ(model_path, image: sitk.Image, reference: np.ndarray) -> dict:
    seg = Segmenter(model_path)
    pred = seg.segment(image).label
    names = {lab.value: lab.name for lab in seg.card.labels}
    arr = sitk.GetArrayFromImage(pred)
    return {organ: dice(arr == next(v for v, n in names.items() if n == organ), reference == value)
            for value, organ in ORGANS.items()}


@pytest.mark.slow
def test_leave_one_out_fine_tuning_beats_a_real_baseline_parent(tmp_path):
    train_cases = ["Pelvic-Ref002", "Pelvic-Ref003"]
    held = "Pelvic-Ref005"
    ws = Workspace.create(tmp_path / "ws", "CT", list(ORGANS.values()))
    submitted = []
    for name in train_cases:
        case = ws.import_volume(shared("pelvic_ct", name, "ct.nii.gz"))
        corr = ws.submit(case.case_id, read_label(shared("pelvic_ct", name, "labels_manual.nii.gz")),
                         quality="reviewed")
        submitted.append((case.case_id, corr.version))

    parent = train_workspace(ws, TrainOptions(steps=150, max_minutes=None, promote="always", seed=0))
    child = train_workspace(ws, TrainOptions(steps=450, max_minutes=None, promote="always", seed=0))
    models = {m.version: m for m in ws.models()}
    v1, v2 = models[parent["model_version"]], models[child["model_version"]]
    assert v2.parent == v1.version

    listed = sorted(v2.card.trained_corrections())
    assert listed == sorted(submitted), f"card lists {listed}, trained on {submitted}"

    image = read_image(shared("pelvic_ct", held, "ct.nii.gz"))
    ref = sitk.GetArrayFromImage(read_label(shared("pelvic_ct", held, "labels_manual.nii.gz"), image))
    before = _dice_per_organ(v1.path, image, ref)
    after = _dice_per_organ(v2.path, image, ref)
    mean_before, mean_after = np.mean(list(before.values())), np.mean(list(after.values()))
    assert mean_before > 0.2, f"the parent is not a real baseline: held-out Dice {before}"
    assert mean_after > mean_before, f"fine-tuned {after} (mean {mean_after:.3f}) vs parent {before} ({mean_before:.3f})"
    assert ws.check().ok
