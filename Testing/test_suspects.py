"""Suspect labels (issue 13): the peer rule, the ledger flags (append-only, superseded by a new correction),
`hila status --json` / `hila rank --suspects`, the training weight, and the real CT's bad MBS contours."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.cli import main
from HILASegmentLib.quality.suspectrule import find_suspects

CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")


def _row(i, **dice):
    return {"case_id": f"c{i}", "correction_version": 1, "dice": dice}


def test_rule_flags_only_a_far_outlier_below_the_floor():
    rows = [_row(i, a=d, b=0.9) for i, d in enumerate([0.84, 0.86, 0.88, 0.82, 0.85])]
    rows.append(_row(9, a=0.30, b=0.91))          # bad on one label only
    rows.append(_row(8, a=0.62, b=0.88))          # a clear outlier, but above the absolute floor
    rows.append(_row(7, a=None, b=0.89))          # label absent on both sides: skipped, not suspect
    got = {f["case_id"]: f for f in find_suspects(rows)}
    assert set(got) == {"c9"} and got["c9"]["labels"] == ["a"] and "a Dice 0.300" in got["c9"]["reason"]


def test_rule_needs_peers_and_tolerates_a_weak_model():
    assert find_suspects([_row(0, a=0.9), _row(1, a=0.1)]) == []          # two: no typical to compare with
    weak = [_row(i, a=d) for i, d in enumerate([0.2, 0.35, 0.1, 0.3, 0.25])]
    assert find_suspects(weak) == []                                      # everyone disagrees: nobody stands out


def _import(ws, tmp_path, n):
    ids = []
    for i in range(n):  # distinct images: the same image twice is one case
        sitk.WriteImage(sitk.Cast(_label() * (1100 + i), sitk.sitkInt16) - 1000, str(tmp_path / f"im{i}.nrrd"))
        ids.append(ws.import_volume(tmp_path / f"im{i}.nrrd", name=f"k{i}").case_id)
    return ids


def _label(shape=(8, 32, 32), box=(2, 6, 8, 24, 8, 24)):
    a = np.zeros(shape, np.uint8)
    a[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = 1
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.0, 1.0, 3.0))
    return img


def test_flags_listed_append_only_and_cleared_by_a_new_correction(tmp_path, capsys):
    from HILASegmentLib.workspace import Workspace

    ws_dir = tmp_path / "ws"
    with Workspace.create(ws_dir, "CT", "prostate") as ws:
        ids = _import(ws, tmp_path, 3)
        for cid in ids:
            ws.submit(cid, _label())
        assert ws.flag_suspects([{"case_id": ids[1], "correction_version": 1, "dice": {"prostate": 0.2},
                                  "reason": "prostate Dice 0.200"}], run_id=None, model_version=1) == 1
    assert main(["status", str(ws_dir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert [s["case_id"] for s in st["suspects"]] == [ids[1]]
    assert main(["rank", str(ws_dir), "--suspects"]) == 0
    assert ids[1] in capsys.readouterr().out
    con = sqlite3.connect(ws_dir / "hila.sqlite")
    for sql in ("UPDATE suspects SET reason = 'x'", "DELETE FROM suspects"):
        with pytest.raises(sqlite3.DatabaseError):
            con.execute(sql)
    con.close()
    with Workspace.open(ws_dir) as ws:
        assert ws.corrections(ids[1])[0].quality == "reviewed"          # the correction itself is untouched
        ws.submit(ids[1], _label(box=(2, 6, 10, 22, 10, 22)))           # re-reviewed
        assert ws.suspects() == [] and ws.suspect_keys() == set()
    assert main(["rank", str(ws_dir), "--suspects", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["suspects"] == []


def test_suspect_weight_down_in_training(tmp_path):
    pytest.importorskip("torch", reason="could not import 'torch'")
    from HILASegmentLib.training import dataset as ds
    from HILASegmentLib.workspace import Workspace

    with Workspace.create(tmp_path / "ws", "CT", "prostate") as ws:
        ids = _import(ws, tmp_path, 2)
        for cid in ids:
            ws.submit(cid, _label())
        snap = ws.snapshot()
    prep = ds.Preprocessing(spacing=[1, 1, 3], normalization={"kind": "ct_window", "level": 50, "width": 300},
                            patch_size=[16, 16, 4], crop_body=False)
    cases = ds.cases_from_snapshot(snap, prep, 1, suspects={(ids[0], 1)})
    assert [c["suspect"] for c in cases] == [True, False]
    assert cases[0]["weight"] == pytest.approx(ds.SUSPECT_FACTOR * cases[1]["weight"])


def test_real_ct_bad_mbs_contours_flagged_by_an_unseen_model(tmp_path, capsys):
    """Pelvic-Ref003's MBS contours (Dice 0.24 / 0.57 / 0.42 against manual) among manual ones: the
    CT starter, as the parent model, flags that correction and no other."""
    from HILASegmentLib.training import suspectscan as tsus
    from HILASegmentLib.workspace import Workspace

    ws_dir = tmp_path / "ws"
    assert main(["init", str(ws_dir), "--modality", "CT", "--labels", "prostate,bladder,rectum",
                 "--model", "pelvic_ct_unet"]) == 0
    for c in CASES:
        assert main(["import", str(ws_dir), str(shared("pelvic_ct", c, "ct.nii.gz")), "--name", c]) == 0
    with Workspace.open(ws_dir) as ws:
        ids = {k.name: k.case_id for k in ws.cases()}
        for c in CASES:
            lab = sitk.ReadImage(str(shared("pelvic_ct", c, "labels_mbs.nii.gz" if c == "Pelvic-Ref003"
                                            else "labels_manual.nii.gz")))
            arr = sitk.GetArrayFromImage(lab)
            arr[arr > 3] = 0
            out = sitk.GetImageFromArray(arr)
            out.CopyInformation(lab)
            ws.submit(ids[c], out)
        res = tsus.scan(ws, None, ws.current_model(), ws.snapshot(), [(1, "prostate"), (2, "bladder"), (3, "rectum")])
    assert res["scored"] == 3
    assert [f["case_id"] for f in res["flagged"]] == [ids["Pelvic-Ref003"]]
    capsys.readouterr()
    assert main(["status", str(ws_dir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in st["suspects"]] == ["Pelvic-Ref003"]


def _inplane_change(mask: np.ndarray, kind: str, rng) -> np.ndarray:
    """A mild error of one contour: 2 voxels too wide or too narrow in-plane, or half its edge voxels missing."""
    from scipy import ndimage

    st = np.zeros((3, 3, 3), bool)
    st[1] = True
    if kind == "wide":
        return ndimage.binary_dilation(mask, st, iterations=2)
    if kind == "narrow":
        return ndimage.binary_erosion(mask, st, iterations=2)
    edge = mask & ~ndimage.binary_erosion(mask, st)
    return mask & ~(edge & (rng.random(mask.shape) < 0.5))


def test_boundary_figures_find_mild_errors_that_dice_misses_on_a_real_ct_label():
    """Eight corrections of the real CT fixture's organs, scored by a 'model' whose own error is a random in-plane
    shift of up to a voxel (its probabilities: its mask smoothed). Three corrections carry a mild error on the
    prostate (2 voxels too wide, 2 too narrow, a ragged edge): Dice against the model stays far above the Dice rule's
    floor, so Dice alone flags none; the boundary figures flag exactly those three, each for what it is."""
    from scipy import ndimage

    from HILASegmentLib.ground.metrics import dice
    from HILASegmentLib.quality.suspectrule import boundary_evidence

    lab = sitk.ReadImage(str(Path(__file__).parent / "Data" / "pelvic_ct_small_labels.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    labels = [(1, "prostate"), (2, "bladder"), (3, "rectum")]
    rng = np.random.default_rng(0)
    rows, kinds = [], {5: "wide", 6: "narrow", 7: "ragged"}
    for i in range(8):
        model = np.roll(arr, tuple(int(x) for x in rng.integers(-1, 2, size=2)), axis=(1, 2))
        probs = {n: ndimage.gaussian_filter((model == v).astype(np.float32), 1.0) for v, n in labels}
        corr = arr.copy()
        if i in kinds:
            pro = _inplane_change(arr == 1, kinds[i], rng)
            corr[(corr == 1) & ~pro] = 0
            corr[pro & (corr == 0)] = 1
        rows.append({"case_id": f"c{i}", "correction_version": 1,
                     "dice": {n: dice(model == v, corr == v) for v, n in labels},
                     "boundary": boundary_evidence(corr, probs, labels, lab.GetSpacing()[::-1])})
    assert min(r["dice"]["prostate"] for r in rows) > 0.6
    assert find_suspects([{k: v for k, v in r.items() if k != "boundary"} for r in rows]) == []
    got = {f["case_id"]: f for f in find_suspects(rows)}
    assert set(got) == {"c5", "c6", "c7"} and all(f["labels"] == ["prostate"] for f in got.values())
    assert "beyond the model's organ" in got["c5"]["reason"] and "inside the model's organ" in got["c6"]["reason"]
    assert "ragged contour" in got["c7"]["reason"]
    assert find_suspects(rows[3:]) == []  # five corrections: too few to judge a boundary by its peers


def test_the_scan_hook_reads_the_ct_starters_own_probabilities_on_a_real_ct():
    """The scan's evidence hook on a real Segmenter result (the CT starter on the bundled CT): its boundary figures
    equal those computed from copies of the probabilities put back on the image grid. (A view of a temporary image
    once read freed memory here: outside_p came out 0 for every organ.)"""
    import gc

    from HILASegmentLib.inference.segmenter import Segmenter
    from HILASegmentLib.models import catalog
    from HILASegmentLib.quality.suspectrule import boundary_evidence
    from HILASegmentLib.training.suspectscan import boundary_figures

    data = Path(__file__).parent / "Data"
    image = sitk.ReadImage(str(data / "pelvic_ct_small.nrrd"))
    corr = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "pelvic_ct_small_labels.nii.gz")))
    corr[corr > 3] = 0
    labels = [(1, "prostate"), (2, "bladder"), (3, "rectum")]
    res = Segmenter(catalog.find_model_file("pelvic_ct_unet")).segment(image, probabilities=True)
    got = boundary_figures(labels)(res, image, corr)
    gc.collect()
    _ = [np.random.default_rng(i).random(corr.shape) for i in range(3)]  # reuse freed memory, if any was read
    probs = {n: sitk.GetArrayFromImage(sitk.Resample(res.probabilities[n], image, sitk.Transform(),
                                                     sitk.sitkLinear, 0.0)) for _, n in labels}
    want = boundary_evidence(corr, probs, labels, image.GetSpacing()[::-1])
    assert got == want and set(got) == {"prostate", "bladder", "rectum"}
    assert all(0.0 < f["outside_p"] < 1.0 for f in got.values())  # the starter knows these organs: a real reading


def test_a_failing_scan_is_reported_and_never_fails_the_run(monkeypatch):
    """The scan runs after the candidate is registered: whatever it raises (not only HilaError) becomes the result's
    reason, and the boundary hook's own failure costs that case its boundary figures, not its Dice."""
    from types import SimpleNamespace

    from HILASegmentLib.training import run, suspectscan

    def broken(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(suspectscan, "scan", broken)
    rnd = SimpleNamespace(run_id=1, current=None, labels=[(1, "prostate")], opts=SimpleNamespace(threads=1),
                          parent_eval=None)
    res = run._scan_suspects(None, rnd, [], [])
    assert res["flagged"] == [] and res["why"] == "not scanned: RuntimeError: out of memory"
    hook = suspectscan.boundary_figures([(1, "prostate")])
    assert hook(SimpleNamespace(probabilities=None), None, np.zeros((2, 2, 2), np.uint8)) == {}  # no image: {}
