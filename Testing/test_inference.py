"""The inference engine: geometry in every orientation, outputs, and every bad input."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_models import dice, phantom, rotation, threshold_onnx, tiny_card, tiny_model

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.inference.segmenter import TAG_CHECKSUM, TAG_MODEL, TAG_VERSION, Segmenter
from HILASegmentLib.models.modelcard import write_card
from HILASegmentLib.models.modelgrid import model_grid

ORIENTATIONS = {
    "identity": np.eye(3),
    "flip_x": np.diag([-1.0, 1, 1]),
    "flip_yz": np.diag([1.0, -1, -1]),
    "permute_zxy": np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]),
    "permute_flip": np.array([[0.0, 0, -1], [-1, 0, 0], [0, 1, 0]]),
    "oblique_20": rotation([1, 0, 0], 20),
    "oblique_35_3axes": rotation([1, 0.3, 0.2], 35),
    "oblique_permuted": rotation([0.2, 1, 0.1], 50) @ np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),
}


def same_grid_exact(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9, rtol=0)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-12, rtol=0)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-12, rtol=0))


@pytest.mark.parametrize("orient", list(ORIENTATIONS))
@pytest.mark.parametrize("kind", ["sigmoid", "softmax", "fixed"])
def test_lands_on_the_object_in_every_orientation(models, kind, orient):
    img, truth = phantom((64, 56, 22), (0.9, 0.8, 2.4), ORIENTATIONS[orient], centre_index=(30, 29, 10))
    res = models[kind].segment(img)
    assert same_grid_exact(res.label, img)
    assert res.label.GetPixelID() == sitk.sitkUInt8
    got = sitk.GetArrayFromImage(res.label)
    assert set(np.unique(got)) <= {0, 1}
    assert dice(got, truth) > 0.9, f"{kind}/{orient}: Dice {dice(got, truth):.3f}"
    if kind == "fixed":
        assert res.summary["windows"] > 1  # a fixed-size network is run on several Gaussian-weighted windows


def test_model_grid_is_ras_and_covers_the_image():
    img, _ = phantom((40, 30, 12), (0.5, 0.5, 3.0), ORIENTATIONS["permute_flip"])
    g = model_grid(img, (0.8, 0.8, 3.0), "RAS")
    # each model axis points (nearest) to R, A, S in LPS terms
    assert np.argmax(np.abs(g.direction[:, 0])) == 0 and g.direction[0, 0] < 0
    assert np.argmax(np.abs(g.direction[:, 1])) == 1 and g.direction[1, 1] < 0
    assert np.argmax(np.abs(g.direction[:, 2])) == 2 and g.direction[2, 2] > 0
    assert np.allclose(np.abs(np.linalg.det(g.direction)), 1)


def test_smaller_than_the_patch_is_padded(tmp_path):
    big = Segmenter(tiny_model(tmp_path, "sigmoid", fixed=(64, 64, 32)))
    img, truth = phantom((30, 30, 9), (1.2, 1.2, 3.0), ORIENTATIONS["flip_x"])  # 36x36x14 on the model grid
    res = big.segment(img)
    assert same_grid_exact(res.label, img) and res.summary["windows"] == 1
    assert dice(sitk.GetArrayFromImage(res.label), truth) > 0.85


def test_outputs_probabilities_uncertainty_progress(models):
    img, truth = phantom((48, 44, 16), (1.0, 1.0, 2.5), ORIENTATIONS["oblique_20"])
    calls = []
    res = models["softmax"].segment(img, probabilities=True, progress=lambda f, m="": calls.append(f))
    assert calls[0] == 0.0 and calls[-1] == 1.0 and all(b >= a for a, b in zip(calls, calls[1:]))
    prob = res.probabilities["sphere"]
    assert prob.GetDirection() == img.GetDirection() and prob.GetSpacing() == img.GetSpacing()
    p = sitk.GetArrayFromImage(prob)
    assert 0 <= p.min() and p.max() <= 1 and p.max() > 0.9
    u = sitk.GetArrayFromImage(res.uncertainty)
    assert same_grid_exact(res.uncertainty, img) and 0 <= u.min() and u.max() <= 1
    s = res.summary
    assert s["labels"][0]["name"] == "sphere" and s["labels"][0]["voxels"] == int((sitk.GetArrayFromImage(res.label) == 1).sum())
    assert s["labels"][0]["ml"] == pytest.approx(s["labels"][0]["voxels"] * 2.5 / 1000, abs=1e-3)
    assert s["seconds_onnx"] <= s["seconds"] and s["windows"] >= 1
    json.dumps(s)  # the summary is JSON-able (stored in the workspace)


def test_tta(models):
    img, truth = phantom((48, 44, 16), (1.0, 1.0, 2.5), np.eye(3))
    plain = models["sigmoid"].segment(img)
    res = models["sigmoid"].segment(img, tta=True)
    # identity plus one flip, across the patient's left-right axis (the model grid is RAS: its axis 0)
    assert res.summary["windows"] == 2 * plain.summary["windows"]
    assert res.summary["tta_flips"] == [[0]] and res.summary["tta_flip_rule"] == "patient_lr"
    assert res.summary["uncertainty"] == "tta_disagreement"
    assert dice(sitk.GetArrayFromImage(res.label), truth) > 0.9


def test_segmentation_has_names_colours_and_provenance(models, tmp_path):
    import slicerio

    from HILASegmentLib.formats.segfile import write_segmentation

    img, _ = phantom((40, 40, 12), (1.0, 1.0, 2.5), ORIENTATIONS["oblique_35_3axes"])
    res = models["sigmoid"].segment(img)
    out = write_segmentation(res.to_segmentation(), tmp_path / "s.seg.nrrd")
    seg = slicerio.read_segmentation(str(out))
    (s,) = seg["segments"]
    assert s["name"] == "sphere" and s["labelValue"] == 1
    assert np.allclose(s["color"], (0.2, 0.8, 0.3), atol=1e-3)
    card = models["sigmoid"].card
    assert s["tags"][TAG_MODEL] == "tiny-threshold" and s["tags"][TAG_VERSION] == "1"
    assert s["tags"][TAG_CHECKSUM] == card.checksum and card.checksum.startswith("sha256:")


def test_largest_component_postprocess(tmp_path):
    path = tiny_model(tmp_path, postprocess={"threshold": 0.5, "largest_component": True})
    img, truth = phantom((60, 50, 16), (1.0, 1.0, 2.5), np.eye(3))
    arr = sitk.GetArrayFromImage(img)
    arr[2:5, 3:6, 3:6] = 400  # a small bright blob far from the sphere
    img2 = sitk.GetImageFromArray(arr)
    img2.CopyInformation(img)
    got = sitk.GetArrayFromImage(Segmenter(path).segment(img2).label)
    assert got[2:5, 3:6, 3:6].sum() == 0 and dice(got, truth) > 0.9


# ---------------------------------------------------------------------------------------------
# bad input: one line, no traceback
# ---------------------------------------------------------------------------------------------

def one_line(e) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_bad_images(models):
    seg = models["sigmoid"]
    tiny = sitk.Image([5, 5, 4], sitk.sitkInt16)
    with pytest.raises(HilaError) as e:
        seg.segment(tiny, where="few.nrrd")
    assert "few.nrrd" in one_line(e) and "too small" in one_line(e)
    zero = sitk.Image([40, 40, 10], sitk.sitkInt16)
    with pytest.raises(HilaError) as e:
        seg.segment(zero)
    assert "no body" in one_line(e)
    const = zero + 7
    with pytest.raises(HilaError) as e:
        seg.segment(const)
    assert "no body" in one_line(e)
    img, _ = phantom((40, 40, 10), (1, 1, 2), np.eye(3))
    ct = sitk.Cast(img, sitk.sitkInt16) - 1024
    with pytest.raises(HilaError) as e:
        seg.segment(ct)
    assert "is for MR" in one_line(e) and "CT" in one_line(e)
    nan = sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(nan)
    arr[0, 0, 0] = np.nan
    nan2 = sitk.GetImageFromArray(arr)
    nan2.CopyInformation(img)
    with pytest.raises(HilaError) as e:
        seg.segment(nan2)
    assert "NaN" in one_line(e)
    with pytest.raises(HilaError) as e:
        seg.segment(sitk.Image([40, 40], sitk.sitkInt16))
    assert "3-D" in one_line(e)


def test_ct_card_on_mr_image(tmp_path):
    path = tiny_model(tmp_path, modality="CT")
    img, _ = phantom((40, 40, 10), (1, 1, 2), np.eye(3))
    with pytest.raises(HilaError) as e:
        Segmenter(path).segment(img)
    assert "is for CT" in one_line(e)


def test_cards_that_do_not_fit_the_network(tmp_path):
    path = threshold_onnx(tmp_path / "m.onnx")
    cases = [
        (tiny_card(in_channels=2), "input channel"),
        (tiny_card(labels=tiny_card().labels + [dataclasses.replace(tiny_card().labels[0], value=2, name="b")]), "output channel"),
        (tiny_card(activation="softmax"), "output channel"),
    ]
    for card, expect in cases:
        write_card(path, card)
        with pytest.raises(HilaError) as e:
            Segmenter(path)
        assert expect in one_line(e), one_line(e)
    fixed = threshold_onnx(tmp_path / "f.onnx", fixed=(16, 16, 8))
    write_card(fixed, tiny_card(patch=(32, 32, 16)))
    with pytest.raises(HilaError) as e:
        Segmenter(fixed)
    assert "patch_size" in one_line(e)


def test_models_that_do_not_load(tmp_path):
    with pytest.raises(HilaError) as e:
        Segmenter(tmp_path / "absent.onnx")
    assert "no such" in one_line(e)
    nocard = threshold_onnx(tmp_path / "nocard.onnx")
    with pytest.raises(HilaError) as e:
        Segmenter(nocard)
    assert "no model card" in one_line(e)
    # a well-formed file whose graph onnxruntime cannot run (an unknown operator)
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("NoSuchOp", ["input"], ["output"], domain="x.unknown")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, "x", "y", "z"])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "x", "y", "z"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("x.unknown", 1)])
    bad = tmp_path / "unknown_op.onnx"
    onnx.save(m, str(bad))
    write_card(bad, tiny_card())
    with pytest.raises(HilaError) as e:
        Segmenter(bad)
    assert "does not load" in one_line(e)
    # a card whose checksum is not the file's
    good = tiny_model(tmp_path, name="good.onnx")
    card = dataclasses.replace(Segmenter(good).card, checksum="sha256:" + "0" * 64)
    write_card(good, card)  # write_card sets the true checksum; forge it in a sidecar instead
    side = tmp_path / "forged.onnx"
    side.write_bytes(threshold_onnx(tmp_path / "tmp.onnx").read_bytes())
    (tmp_path / "forged.card.json").write_text(card.to_json(), encoding="utf-8")
    with pytest.raises(HilaError) as e:
        Segmenter(side)
    assert "checksum mismatch" in one_line(e)


def test_cuda_asked_but_absent(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(HilaError) as e:
        Segmenter(tiny_model(tmp_path), device="cuda")
    assert "CUDA" in one_line(e)


def test_real_ct_is_refused_by_an_mr_model(models):
    """A pelvic CT cropped to the body has only ~1.7 % of voxels below -200 HU: still recognised as CT."""
    from conftest import shared

    ct = sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref002", "ct.nii.gz")))
    with pytest.raises(HilaError) as e:
        models["sigmoid"].segment(ct, where="ct.nii.gz")
    assert "is for MR" in one_line(e) and "CT" in one_line(e)
    mr = sitk.ReadImage(str(shared("prostate_mri", "ProstateX-0218_t2_s5.nrrd")))
    from HILASegmentLib.models.normalize import guess_modality

    assert guess_modality(sitk.GetArrayFromImage(mr)) == "MR"
