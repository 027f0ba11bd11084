"""Post-processing the gate chooses: the per-slice convex hull, on real images and labels, applied by the Segmenter
as the card says, and chosen only where it raises Dice on the gate corrections."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_models import tiny_card, tiny_model

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.ground.metrics import dice
from HILASegmentLib.inference.segmenter import Segmenter
from HILASegmentLib.models.modelcard import LabelInfo, write_card
from HILASegmentLib.models.modelgrid import convex_slices, si_axis
from HILASegmentLib.training import gate


def _ct(fixtures):
    img = sitk.ReadImage(str(fixtures / "pelvic_ct_small.nrrd"))
    return img, sitk.GetArrayFromImage(sitk.ReadImage(str(fixtures / "pelvic_ct_small_labels.nii.gz")))


def test_a_bite_out_of_the_real_bladder_is_filled_and_no_other_label_loses_a_voxel(fixtures):
    img, lab = _ct(fixtures)
    ax = si_axis(img)
    assert ax == 0  # an axial CT: slices along z
    bladder = lab == 2
    zs, ys, xs = np.nonzero(bladder)
    bitten = lab.copy()
    mid = (ys.min() + ys.max()) // 2
    for z in range(zs.min(), zs.max() + 1):  # a notch from the bladder's left edge to its middle, on every slice
        row = np.nonzero(bladder[z, mid])[0]
        if len(row) > 6:
            sl = bitten[z, mid - 2:mid + 3, row[0]:(row[0] + row[-1]) // 2]
            sl[sl == 2] = 0
    assert dice(bitten == 2, bladder) < 0.99
    out = convex_slices(bitten, [2], ax)
    for v in (1, 3):  # the other organs keep every voxel, and the hull takes none of theirs
        assert np.array_equal(out == v, bitten == v)
    assert np.all(out[bitten == 2] == 2)  # it only adds
    assert dice(out == 2, bladder) > dice(bitten == 2, bladder) + 0.005
    assert np.array_equal(convex_slices(out, [2], ax), out)  # a hull's hull is itself
    # most of the notch is filled again (where it reached the outline, the hull of what is left is a little smaller),
    # and nothing beyond the per-slice hull of the original bladder is added
    notch = bladder & (bitten != 2)
    assert (out[notch] == 2).mean() > 0.8, (out[notch] == 2).mean()
    whole = convex_slices(np.where(bladder, 2, 0).astype(np.uint8), [2], ax) == 2
    assert not np.any((out == 2) & ~whole)


def test_slices_run_along_the_patients_superior_inferior_also_for_oblique_and_sagittal_grids(fixtures):
    mri = sitk.ReadImage(str(fixtures / "prostate_mri_oblique_small.nrrd"))
    assert not np.allclose(np.asarray(mri.GetDirection()).reshape(3, 3), np.eye(3))  # really oblique
    assert si_axis(mri) == 0
    sagittal = sitk.PermuteAxes(mri, [2, 0, 1])  # index x now runs along the old z (the patient's S-I)
    assert si_axis(sagittal) == 2


def test_the_segmenter_applies_the_cards_convex_slices_on_a_real_mri(fixtures, tmp_path):
    mri = sitk.ReadImage(str(fixtures / "prostate_mri_oblique_small.nrrd"))
    plain = tiny_model(tmp_path, name="plain.onnx")
    hulled = tiny_model(tmp_path, name="hulled.onnx", postprocess={"convex_slices": ["sphere"]})
    a = sitk.GetArrayFromImage(Segmenter(plain, threads=1).segment(mri).label)
    b = sitk.GetArrayFromImage(Segmenter(hulled, threads=1).segment(mri).label)
    assert (b != a).sum() > 100  # bright voxels of a real MRI make ragged shapes: the hull changes them
    assert np.array_equal(b, convex_slices(a, [1], si_axis(mri)))


def test_a_card_naming_a_label_it_does_not_have_is_refused(tmp_path):
    path = tiny_model(tmp_path)
    with pytest.raises(HilaError, match="convex_slices must list some of the card's labels"):
        write_card(path, tiny_card(postprocess={"convex_slices": ["bladder"]}))


def _row(case, plain, alone, every):
    return {"case_id": case, "dice": dict(plain), "mean_dice": float(np.mean(list(plain.values()))),
            "choices": {"convex_slices": {"alone": dict(alone), "all": dict(every)}}}


def _result(rows):
    names = list(rows[0]["dice"])
    mean = {n: float(np.mean([r["dice"][n] for r in rows])) for n in names}
    return {"cases": rows, "dice": mean, "mean_dice": float(np.mean(list(mean.values())))}


def test_the_gate_chooses_a_step_for_the_labels_it_helps_and_scores_the_candidate_as_deployed():
    rows = [_row("a", {"prostate": 0.70, "bladder": 0.90}, {"prostate": 0.76, "bladder": 0.88},
                 {"prostate": 0.76, "bladder": 0.87}),
            _row("b", {"prostate": 0.60, "bladder": 0.92}, {"prostate": 0.62, "bladder": 0.91},
                 {"prostate": 0.62, "bladder": 0.90})]
    res = _result(rows)
    chosen = gate.choose_postprocess(res)
    assert chosen == {"convex_slices": (["prostate"], pytest.approx(0.78), pytest.approx(0.80))}
    after = gate.with_postprocess(res, chosen)
    assert [r["dice"] for r in after["cases"]] == [{"prostate": 0.76, "bladder": 0.90}, {"prostate": 0.62, "bladder": 0.92}]
    assert after["mean_dice"] == pytest.approx(0.8)
    card = tiny_card(labels=[LabelInfo(1, "Prostate", (1.0, 0.0, 0.0)), LabelInfo(2, "Bladder", (0.0, 1.0, 0.0))])
    log: list = []
    gate.deploy_choices(res, card, log)
    assert card.postprocess["convex_slices"] == ["Prostate"]  # the card's own spelling
    assert "convex_slices for prostate (mean Dice 0.780 -> 0.800)" in log[0]
    # every label helped: "all" is scored from the figures with the step on every label (as the Segmenter runs it)
    both = _result([_row("a", {"prostate": 0.70, "bladder": 0.80}, {"prostate": 0.75, "bladder": 0.85},
                         {"prostate": 0.75, "bladder": 0.84})])
    names, _, with_step = gate.choose_postprocess(both)["convex_slices"]
    assert names == ["prostate", "bladder"] and with_step == pytest.approx(0.795)
    # nothing helps: nothing chosen, the candidate scored as it was
    worse = _result([_row("a", {"prostate": 0.9}, {"prostate": 0.89}, {"prostate": 0.89})])
    assert gate.choose_postprocess(worse) == {}
    assert gate.deploy_choices(worse, card, []) is worse


def _two_label_onnx(path):
    """A one-Conv sigmoid network with two channels: bright voxels (label 1) and dark ones (label 2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([4.0, -4.0], np.float32).reshape(2, 1, 1, 1, 1)
    b = np.array([-6.0, -2.0], np.float32)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, "x", "y", "z"])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2, "x", "y", "z"])
    node = helper.make_node("Conv", ["input", "W", "B"], ["output"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph([node], "two", [inp], [out], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hila-tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_segmenter_hulls_only_the_listed_label_along_the_grids_own_superior_inferior_axis(fixtures, tmp_path):
    mri = sitk.PermuteAxes(sitk.ReadImage(str(fixtures / "prostate_mri_oblique_small.nrrd")), [2, 0, 1])
    ax = si_axis(mri)
    assert ax == 2  # the real MRI laid out with the patient's S-I along index x: slices are not along numpy axis 0
    labels = [LabelInfo(1, "bright", (1.0, 0.0, 0.0)), LabelInfo(2, "dark", (0.0, 0.0, 1.0))]
    paths = {}
    for name, pp in (("plain", {}), ("hulled", {"convex_slices": ["bright"]})):
        paths[name] = _two_label_onnx(tmp_path / f"{name}.onnx")
        write_card(paths[name], tiny_card(labels=labels, postprocess=pp))
    plain = Segmenter(paths["plain"], threads=1).segment(mri)
    hulled = Segmenter(paths["hulled"], threads=1).segment(mri)
    a, b = sitk.GetArrayFromImage(plain.label), sitk.GetArrayFromImage(hulled.label)
    assert (a == 1).sum() > 100 and (a == 2).sum() > 100
    assert np.array_equal(b, convex_slices(a, [1], ax))  # label 1 only, along the S-I axis
    assert not np.array_equal(b, convex_slices(a, [1], 0))
    assert np.array_equal(b == 2, a == 2)  # the dark label is neither hulled nor eaten
    # the review map judges the label users get: voxels the hull filled, with the model's low probability there, are
    # marked as more likely wrong than before
    filled = (b == 1) & (a != 1)
    assert filled.sum() > 20
    before = sitk.GetArrayFromImage(plain.review_map)[filled].mean()
    after = sitk.GetArrayFromImage(hulled.review_map)[filled].mean()
    assert after > before + 0.2, (before, after)


def test_a_gate_choice_goes_on_the_card_and_the_candidate_is_judged_as_deployed(tmp_path, monkeypatch):
    """The wiring in the trainer: whatever the gate chooses is what the registered card applies, its recorded gate
    figures are the engine's with that card, and the verdict compared those figures."""
    pytest.importorskip("torch")
    from tiny_models import synthetic_workspace

    from HILASegmentLib.training.run import TrainOptions, train_workspace

    tiny = dict(patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64], max_minutes=5, threads=1)
    ws, ids, labels = synthetic_workspace(tmp_path, range(10, 15), corrected=2)
    train_workspace(ws, TrainOptions(steps=6, **tiny))
    for cid in ids[2:]:
        ws.submit(cid, labels[cid])
    real = gate.choose_postprocess
    seen = []

    def forced(result):  # the real figures, but the step taken for the bladder whatever they say
        seen.append(real(result))
        plain = float(np.mean([c["mean_dice"] for c in result["cases"]]))
        return {"convex_slices": (["bladder"], plain, plain)}

    monkeypatch.setattr(gate, "choose_postprocess", forced)
    r2 = train_workspace(ws, TrainOptions(steps=6, lr=1e-2, **tiny))
    assert seen and r2["postprocess"]["convex_slices"] == ["bladder"]
    card = ws.model(r2["model_version"]).card
    assert card.postprocess["convex_slices"] == ["bladder"]
    seg = Segmenter(ws.model(r2["model_version"]).path)
    gate_ids = [g["case_id"] for g in card.training.gate_set]
    for row in card.metrics.validation.cases:
        pred = sitk.GetArrayFromImage(seg.segment(ws.case_image(row["case_id"])).label)
        ref = sitk.GetArrayFromImage(labels[row["case_id"]])
        assert row["mean_dice"] == pytest.approx(np.mean([dice(pred == v, ref == v) for v in (1, 2)]), abs=1e-3)
    compared = {c["case_id"]: c["candidate"] for c in card.metrics.gate.comparison["cases"]}
    assert set(compared) == set(gate_ids)
    assert all(compared[r["case_id"]] == r["mean_dice"] for r in card.metrics.validation.cases)
