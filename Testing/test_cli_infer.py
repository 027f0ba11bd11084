"""`hila infer`: file form, workspace form, JSON output, bad input (one line, exit != 0, nothing written),
and the real thing: TAPS on a real ProstateX series, checked with slicerio against TAPS's own output."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, shared
from tiny_models import dice, phantom, rotation, tiny_model

from HILASegmentLib.cli import main
from HILASegmentLib.formats import terminology
from HILASegmentLib.ground.colors import known_color


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    img, truth = phantom((50, 46, 14), (0.9, 0.9, 2.5), rotation([1, 0, 0], 25))
    sitk.WriteImage(img, str(d / "img.nrrd"), True)
    return {"dir": d, "image": d / "img.nrrd", "truth": truth, "model": tiny_model(d)}


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_file_form_seg_nrrd(case, tmp_path, capsys):
    import slicerio

    out = tmp_path / "p.seg.nrrd"
    rc, stdout, err = run(["infer", "--image", case["image"], "--out", out, "--model", case["model"]], capsys)
    assert rc == 0, err
    assert "sphere:" in stdout and "ml" in stdout and "window" in stdout and str(out) in stdout
    seg = slicerio.read_segmentation(str(out))
    img = sitk.ReadImage(str(case["image"]))
    assert np.allclose(seg["ijkToLPS"][:3, :3], np.asarray(img.GetDirection()).reshape(3, 3) * img.GetSpacing())
    assert seg["segments"][0]["name"] == "sphere" and "HILA.model_checksum" in seg["segments"][0]["tags"]
    lab = sitk.ReadImage(str(out))
    assert lab.GetSize() == img.GetSize() and np.allclose(lab.GetOrigin(), img.GetOrigin())
    assert dice(sitk.GetArrayFromImage(lab), case["truth"]) > 0.9


def test_file_form_json_label_map_and_uncertainty(case, tmp_path, capsys):
    out, unc = tmp_path / "p.nii.gz", tmp_path / "u.nrrd"
    rc, stdout, err = run(["infer", "--image", case["image"], "--out", out, "--model", case["model"], "--json",
                           "--uncertainty", unc, "--threads", "1", "--tta"], capsys)
    assert rc == 0, err
    lines = [json.loads(x) for x in stdout.splitlines()]
    res = lines[-1]
    assert res["event"] == "result" and res["ok"] and res["labels"][0]["name"] == "sphere"
    assert res["tta"] is True and res["windows"] >= 2 and res["tta_flip_rule"] == "patient_lr" and res["seconds_total"] >= res["seconds"]
    assert any(x["event"] == "progress" for x in lines[:-1])
    u = sitk.ReadImage(str(unc))
    assert u.GetSize() == sitk.ReadImage(str(case["image"])).GetSize()
    assert dice(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), case["truth"]) > 0.9


BAD = [
    (["--out", "{d}/x.seg.nrrd", "--model", "{m}"], "needs both"),
    (["--image", "{i}", "--out", "{d}/x.seg.nrrd"], "--model is needed"),
    (["--image", "{i}", "--out", "{d}/x.txt", "--model", "{m}"], "must end in"),
    (["--image", "{i}", "--out", "{d}/nofolder/x.seg.nrrd", "--model", "{m}"], "does not exist"),
    (["--image", "{d}/absent.nrrd", "--out", "{d}/x.seg.nrrd", "--model", "{m}"], "no such file"),
    (["--image", "{i}", "--out", "{d}/x.seg.nrrd", "--model", "{d}/absent.onnx"], "no such"),
    (["--image", "{i}", "--out", "{d}/x.seg.nrrd", "--model", "no-such-preset"], "no such model"),
    (["--image", "{i}", "--out", "{d}/x.seg.nrrd", "--model", "{m}", "--threads", "0"], "--threads"),
    (["--image", "{i}", "--out", "{d}/x.seg.nrrd", "--model", "{m}", "--uncertainty", "{d}/u.seg.nrrd"], "uncertainty"),
    (["{d}", "case1", "--image", "{i}", "--out", "{d}/x.seg.nrrd"], "not both"),
    ([], "nothing to segment"),
    (["{d}/not_a_workspace", "case1"], "not a HILASegment workspace (no hila.sqlite)"),
    (["--image", "{small}", "--out", "{d}/x.seg.nrrd", "--model", "{m}"], "too small"),
    (["--image", "{zero}", "--out", "{d}/x.seg.nrrd", "--model", "{m}"], "no body"),
    (["--image", "{ct}", "--out", "{d}/x.seg.nrrd", "--model", "{m}"], "is for MR"),
    (["--image", "{i}", "--out", "{d}/x.seg.nrrd", "--model", "{junk}"], "not an ONNX model"),
]


@pytest.mark.parametrize("argv,expect", BAD, ids=[f"{i}-{b[1][:30]}" for i, b in enumerate(BAD)])
def test_bad_input(case, tmp_path, capsys, argv, expect):
    d = tmp_path
    small = sitk.Image([4, 4, 3], sitk.sitkInt16)
    sitk.WriteImage(small, str(d / "small.nrrd"))
    sitk.WriteImage(sitk.Image([40, 40, 10], sitk.sitkInt16), str(d / "zero.nrrd"))
    img = sitk.ReadImage(str(case["image"]))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16) - 1024, str(d / "ct.nrrd"))
    (d / "junk.onnx").write_bytes(b"\x00\x01junk")
    (d / "not_a_workspace").mkdir()
    fmt = dict(d=d, i=case["image"], m=case["model"], small=d / "small.nrrd", zero=d / "zero.nrrd", ct=d / "ct.nrrd",
               junk=d / "junk.onnx")
    before = sorted(p.name for p in d.rglob("*"))
    rc, stdout, err = run(["infer"] + [a.format(**fmt) for a in argv], capsys)
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hila: error: ") and expect in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in d.rglob("*")) == before, "nothing may be written on error"


def test_workspace_form(case, tmp_path, capsys):
    from HILASegmentLib.workspace import Workspace

    ws_path = tmp_path / "ws"
    ws = Workspace.create(ws_path, "MR", ["sphere"], model=str(case["model"]))
    c = ws.import_volume(case["image"])
    ws.close()
    rc, stdout, err = run(["infer", ws_path, c.case_id, "--json"], capsys)
    assert rc == 0, err
    res = json.loads(stdout.splitlines()[-1])
    assert res["case"] == c.case_id and res["model_version"] == 1 and res["labels"][0]["name"] == "sphere"
    ws = Workspace.open(ws_path)
    try:
        (pred,) = ws.predictions(c.case_id)
        assert pred.model_version == 1 and pred.uncertainty["labels"][0]["name"] == "sphere"
        lab = sitk.ReadImage(str(pred.path))
        assert dice(sitk.GetArrayFromImage(lab), case["truth"]) > 0.9
    finally:
        ws.close()
    rc, stdout, err = run(["infer", ws_path, c.case_id, "--model", "7"], capsys)
    assert rc != 0 and "no model version 7" in err
    rc, stdout, err = run(["infer", ws_path, "no-such-case"], capsys)
    assert rc != 0 and "unknown case" in err


def test_workspace_form_out_is_the_stored_prediction_in_workspace_labels(case, tmp_path, capsys):
    """`hila infer WS CASE --out R.seg.nrrd` (what the Slicer panel runs): the file holds the prediction the ledger
    stored, in the workspace's names, values and colours, cut to its voxels; a catalog/.onnx --model is recorded
    without a version; a --model that is none of these is refused with nothing stored."""
    from HILASegmentLib.formats.segfile import read_segmentation
    from HILASegmentLib.ground.labelmatch import TAG_KEY
    from HILASegmentLib.workspace import Workspace

    ws_path = tmp_path / "ws"
    with Workspace.create(ws_path, "MR", ["other", "sphere"]) as ws:  # the model's "sphere" (1) is 2 here
        c = ws.import_volume(case["image"])
    out = tmp_path / "r.seg.nrrd"
    rc, stdout, err = run(["infer", ws_path, c.case_id, "--model", case["model"], "--out", out,
                           "--review-map", tmp_path / "rv.nrrd", "--json"], capsys)
    assert rc == 0, err
    res = json.loads(stdout.splitlines()[-1])
    assert res["out"] == str(out) and res["model_version"] is None
    seg = read_segmentation(out)
    img = sitk.ReadImage(str(case["image"]))
    assert seg.grid.GetSize() != img.GetSize() and any(seg.reference_extent_offset)  # cut to the result's voxels
    with Workspace.open(ws_path) as ws:
        (pred,) = ws.predictions(c.case_id)
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(pred.path)))
        ws_color = ws.settings.labels[1].color
    assert pred.model_version is None and (stored == 2).sum() > 0 and not (stored == 1).any()
    sphere = seg.segment("sphere")
    assert sphere.label_value == 2 and sphere.tags[TAG_KEY] == "2" and np.allclose(sphere.color, ws_color, atol=1e-3)
    assert seg.segment("other").tags[TAG_KEY] == "1"
    placed = sitk.GetArrayFromImage(seg.to_label_image(reference=img, values={sphere.id: 2}))
    assert np.array_equal(placed == 2, stored == 2)
    assert any(s.tags.get("hila_review") for s in seg.segments)  # the likely-error outline, in its own layer
    for bad in ("no-such-model", "1.5"):
        rc, stdout, err = run(["infer", ws_path, c.case_id, "--model", bad], capsys)
        assert rc != 0 and "neither a model version" in err and len(err.strip().splitlines()) == 1
    rc, stdout, err = run(["infer", ws_path, c.case_id, "--out", tmp_path / "x.seg.nrrd"], capsys)
    assert rc != 0 and "no current model" in err and not (tmp_path / "x.seg.nrrd").exists()
    with Workspace.open(ws_path) as ws:
        assert len(ws.predictions(c.case_id)) == 1


# ---------------------------------------------------------------------------------------------
# the real model on a real series (end to end, as a user runs it)
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_taps_on_real_prostatex(tmp_path):
    import slicerio

    if importlib.util.find_spec("taps") is None:
        pytest.skip("the TAPS model is not installed (pip install --no-deps lavlab-taps)")
    img_path = shared("prostate_mri", "ProstateX-0001_t2_s10.nrrd")
    ref_path = shared("prostate_mri", "ProstateX-0001_t2_s10_taps.nii.gz")
    out = tmp_path / "p.seg.nrrd"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    proc = subprocess.run([sys.executable, "-m", "HILASegmentLib", "infer", "--image", str(img_path), "--out", str(out),
                           "--model", "taps"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "prostate:" in proc.stdout
    img = sitk.ReadImage(str(img_path))
    seg = slicerio.read_segmentation(str(out))
    assert np.allclose(seg["ijkToLPS"][:3, 3], img.GetOrigin(), atol=1e-6)
    assert np.allclose(seg["ijkToLPS"][:3, :3], np.asarray(img.GetDirection()).reshape(3, 3) * img.GetSpacing(), atol=1e-6)
    (s,) = [s for s in seg["segments"] if s["name"] == "prostate"]
    assert s["tags"]["HILA.model"] == "taps" and s["tags"]["HILA.model_checksum"].startswith("sha256:")
    # one colour and the structure's standard terminology, as every other hila output (colors, terminology)
    assert np.allclose(s["color"], known_color("prostate"), atol=1e-4)
    assert s["terminology"]["type"] == list(terminology.resolve("prostate").type)  # slicerio parses the tag
    vox = seg["voxels"]  # (i, j, k) with the reference extent offset
    full = np.zeros(img.GetSize(), np.uint8)
    off = seg.get("referenceImageExtentOffset", [0, 0, 0])
    full[off[0]:off[0] + vox.shape[0], off[1]:off[1] + vox.shape[1], off[2]:off[2] + vox.shape[2]] = vox == s["labelValue"]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path))).transpose(2, 1, 0)
    d = dice(full, ref)
    assert d >= 0.95, f"Dice vs TAPS's own output {d:.4f}"


def test_workspace_form_maps_model_labels_by_the_one_rule(tmp_path):
    """A model's label names reach workspace values through labelmatch (aliases too); others are dropped."""
    from types import SimpleNamespace

    from HILASegmentLib.workspace import Workspace

    arr = np.zeros((4, 5, 6), np.uint8)
    arr[0], arr[1], arr[2] = 1, 2, 3
    label = sitk.GetImageFromArray(arr)
    card = SimpleNamespace(labels=[SimpleNamespace(value=1, name="Prostata"), SimpleNamespace(value=2, name="RECTUM"),
                                   SimpleNamespace(value=3, name="femoral head")])
    with Workspace.create(tmp_path / "ws", "MR", ["rectum", "prostate"]) as ws:
        img, dropped = ws.workspace_label(label, card.labels)
    out = sitk.GetArrayFromImage(img)
    assert (out[0] == 2).all() and (out[1] == 1).all() and (out[2] == 0).all()  # prostate is 2, rectum 1 here
    assert dropped == ["femoral head"]
