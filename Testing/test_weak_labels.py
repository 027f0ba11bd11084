"""Weak labels: a box or RECIST-style diameter lines on the real CT become a pseudo-mask (hila submit --box/--lines),
recorded as quality weak with its marks; every bad input leaves the workspace as it was."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from ws_worker import state

from HILASegmentLib.cli import main
from HILASegmentLib.formats import weak
from HILASegmentLib.ground import metrics

DATA = Path(__file__).resolve().parent / "Data"


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def organ_box(lab: sitk.Image, value: int) -> list:
    a = sitk.GetArrayFromImage(lab) == value
    k, j, i = np.nonzero(a)
    pts = [lab.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
           for x in (i.min(), i.max()) for y in (j.min(), j.max()) for z in (k.min(), k.max())]
    return list(np.min(pts, 0)) + list(np.max(pts, 0))


@pytest.fixture
def small(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate,bladder,rectum")[0] == 0
    rc, out, err = run(capsys, "import", ws, DATA / "pelvic_ct_small.nrrd", "--json")
    assert rc == 0, err
    case = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]["case_id"]
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    return ws, case, lab


def test_box_pseudo_mask_on_real_ct_prostate_and_bladder():
    d = shared("pelvic_ct", "Pelvic-Ref005")
    if not (d / "ct.nii.gz").exists():
        pytest.skip(f"real CT not found at {d}")
    im, lab = sitk.ReadImage(str(d / "ct.nii.gz")), sitk.ReadImage(str(d / "labels_manual.nii.gz"))
    ref = sitk.GetArrayFromImage(lab)
    for value in (1, 2):
        m = weak.box_mask(im, organ_box(lab, value))
        assert metrics.dice(m, ref == value) >= 0.7, value
        # RAS corners (Slicer) give the same mask
        b = np.asarray(organ_box(lab, value)).reshape(2, 3) * [-1, -1, 1]
        assert np.array_equal(weak.box_mask(im, b.ravel(), ras=True), m)


def test_submit_box_and_lines_record_weak_with_marks(small, capsys):
    ws, case, lab = small
    box = organ_box(lab, 1)
    rc, out, err = run(capsys, "submit", ws, case, "--label", "Prostate", "--box=" + ",".join(map(str, box)), "--json")
    assert rc == 0, err
    res = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]
    assert res["quality"] == "weak"
    marks = res["correction"]["effort"]["marks"]
    assert marks["space"] == "LPS" and marks["items"] == [{"label": "prostate", "box": pytest.approx(box)}]
    c = np.asarray(box).reshape(2, 3).mean(0)
    h = (np.asarray(box[3:]) - box[:3]) / 2
    long_l = f"{c[0]-h[0]},{c[1]},{c[2]},{c[0]+h[0]},{c[1]},{c[2]}"
    short_l = f"{c[0]},{c[1]-h[1]},{c[2]},{c[0]},{c[1]+h[1]},{c[2]}"
    rc, out, err = run(capsys, "submit", ws, case, "--label", "bladder", f"--lines={long_l};{short_l}", "--json")
    assert rc == 0, err
    rc, out, err = run(capsys, "status", ws, "--json")
    st = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]
    assert st["corrections"]["by_quality"]["weak"] == 2


def test_bad_marks_change_nothing(small, capsys):
    ws, case, lab = small
    box = ",".join(map(str, organ_box(lab, 1)))
    b = organ_box(lab, 1)
    flat = ",".join(map(str, b[:3] + [b[3], b[4], b[2]]))
    c = np.asarray(b).reshape(2, 3).mean(0)
    apart = f"{b[0]},{c[1]},{b[2]},{b[3]},{c[1]},{b[2]};{c[0]},{b[1]},{b[5]},{c[0]},{b[4]},{b[5]}"
    before = state(ws)
    for args, word in [(["--box", "9000,9000,9000,9001,9001,9001"], "outside"),
                       ([f"--box={flat}"], "zero size"),
                       (["--box", "1,2,3"], "6"),
                       ([f"--lines={apart}"], "do not cross"),
                       (["--lines=9000,9000,9000,9040,9000,9000;9020,8990,9000,9020,9010,9000"], "outside"),
                       ([DATA / "pelvic_ct_small_labels.nii.gz", f"--box={box}"], "at once"),
                       ([f"--box={box}", "--quality", "rough"], "weak")]:
        rc, _, err = run(capsys, "submit", ws, case, *args, "--label", "prostate")
        assert rc == 2 and err.startswith("hila: error:") and word in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = run(capsys, "submit", ws, case, "--label", "liver", f"--box={box}")
    assert rc == 2 and "liver" in err
    assert state(ws) == before


def test_submit_marks_several_labels_smaller_keeps_overlap_and_bad_marks_change_nothing(small):
    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.workspace import Workspace

    ws_dir, case, lab = small
    p, b = organ_box(lab, 1), organ_box(lab, 2)
    big = list(np.minimum(p[:3], b[:3])) + list(np.maximum(p[3:], b[3:]))  # a "bladder" box that holds the prostate's
    with Workspace.open(ws_dir) as ws:
        before = state(ws_dir)
        for marks, word in [({"items": [{"label": "prostate", "box": p, "lines": [p, p]}]}, "one of them"),
                            ({"items": [{"label": "prostate", "box": p}, {"label": "PROSTATE", "box": p}]}, "twice"),
                            ({"space": "XYZ", "items": [{"label": "prostate", "box": p}]}, "space"),
                            ({"items": []}, "no box"),
                            ({"items": [{"label": "prostate", "box": p[:5]}]}, "6"),
                            ({"items": [{"label": "prostate", "lines": [p]}]}, "long and a short")]:
            with pytest.raises(HilaError, match=word):
                ws.submit_marks(case, marks)
        assert state(ws_dir) == before
        c = ws.submit_marks(case, {"items": [{"label": "prostate", "box": p}, {"label": "bladder", "box": big}]})
        arr = sitk.GetArrayFromImage(ws.correction_label(case))
        alone = weak.box_mask(ws.case_image(case), p)
        assert c.quality == "weak" and np.array_equal(arr == 1, alone)  # the prostate is not swallowed by the bladder
        assert (arr == 2).sum() > 0 and not ((arr == 2) & alone).any()
        assert [m["label"] for m in c.effort["marks"]["items"]] == ["prostate", "bladder"]


def test_marking_another_label_later_keeps_the_earlier_marks_and_remarking_replaces(small):
    """A radiologist marks the prostate, then the bladder (in Slicer's RAS): the latest correction holds both
    pseudo-masks and both marks; re-marking the prostate replaces its box only. A full (reviewed) label in
    between ends the carry-over: marks after it start afresh."""
    from HILASegmentLib.workspace import Workspace

    ws_dir, case, lab = small
    p, b = organ_box(lab, 1), organ_box(lab, 2)
    with Workspace.open(ws_dir) as ws:
        img = ws.case_image(case)
        ws.submit_marks(case, {"items": [{"label": "prostate", "box": p}]})
        b_ras = (np.asarray(b).reshape(2, 3) * [-1, -1, 1]).ravel().tolist()
        c = ws.submit_marks(case, {"space": "RAS", "items": [{"label": "bladder", "box": b_ras}]})
        arr = sitk.GetArrayFromImage(ws.correction_label(case))
        assert c.effort["marks"]["space"] == "RAS"
        assert [m["label"] for m in c.effort["marks"]["items"]] == ["prostate", "bladder"]
        assert np.asarray(c.effort["marks"]["items"][0]["box"]) == pytest.approx(np.asarray(p) * [-1, -1, 1, -1, -1, 1])
        both, _ = weak.pseudo_label(img, {"items": [{"label": "prostate", "box": p}, {"label": "bladder", "box": b}]},
                                    ws.settings.label_pairs())
        assert np.array_equal(arr, sitk.GetArrayFromImage(both))  # the same as marking both at once
        assert (arr == 1).sum() > 0 and (arr == 2).sum() > 0
        smaller = list(np.asarray(p[:3]) + 2.0) + list(np.asarray(p[3:]) - 2.0)
        c = ws.submit_marks(case, {"items": [{"label": "prostate", "box": smaller}]})
        assert [m["label"] for m in c.effort["marks"]["items"]] == ["bladder", "prostate"]
        assert c.effort["marks"]["items"][1]["box"] == pytest.approx(smaller)
        arr2 = sitk.GetArrayFromImage(ws.correction_label(case))
        want, _ = weak.pseudo_label(img, {"items": [{"label": "bladder", "box": b},
                                                    {"label": "prostate", "box": smaller}]}, ws.settings.label_pairs())
        assert np.array_equal(arr2, sitk.GetArrayFromImage(want))  # the bladder kept, the prostate's new box
        assert (arr2 == 2).sum() > 0 and 0 < (arr2 == 1).sum() < (arr == 1).sum()
        ws.submit(case, lab)
        c = ws.submit_marks(case, {"items": [{"label": "rectum", "box": organ_box(lab, 3)}]})
        assert [m["label"] for m in c.effort["marks"]["items"]] == ["rectum"]
        assert set(np.unique(sitk.GetArrayFromImage(ws.correction_label(case)))) == {0, 3}


def test_empty_marks_after_a_weak_label_and_a_concurrent_submit_change_nothing(small, monkeypatch):
    """Empty marks are refused even when earlier marks could be carried over (no copy of the last version).
    A second annotator's real `hila submit` process landing between reading the latest marks and writing
    refuses this submit in one line, with nothing of it recorded: their bladder is not silently dropped."""
    import subprocess
    import sys

    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.workspace import Workspace

    ws_dir, case, lab = small
    p, b = organ_box(lab, 1), organ_box(lab, 2)
    with Workspace.open(ws_dir) as ws:
        ws.submit_marks(case, {"items": [{"label": "prostate", "box": p}]})
        before = state(ws_dir)
        for marks in ({"items": []}, {"space": "RAS"}, {}):
            with pytest.raises(HilaError, match="no box or lines"):
                ws.submit_marks(case, marks)
        assert state(ws_dir) == before

        real, snap = weak.pseudo_label, {}

        def other_annotator_first(*args, **kw):  # runs between reading the latest marks and writing
            r = subprocess.run([sys.executable, "-m", "HILASegmentLib", "submit", str(ws_dir), case, "--label", "bladder",
                                "--box=" + ",".join(map(str, b)), "--annotator", "B"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            snap["after B"] = state(ws_dir)
            return real(*args, **kw)

        monkeypatch.setattr(weak, "pseudo_label", other_annotator_first)
        with pytest.raises(HilaError, match="submitted meanwhile") as exc:
            ws.submit_marks(case, {"items": [{"label": "rectum", "box": organ_box(lab, 3)}]}, annotator="A")
        assert len(str(exc.value).splitlines()) == 1
        assert state(ws_dir) == snap["after B"]  # no row, no file of A's refused submit
        monkeypatch.setattr(weak, "pseudo_label", real)
        latest = ws.corrections(case)[-1]
        assert (latest.version, latest.annotator) == (2, "B")
        assert [m["label"] for m in latest.effort["marks"]["items"]] == ["prostate", "bladder"]
        c = ws.submit_marks(case, {"items": [{"label": "rectum", "box": organ_box(lab, 3)}]}, annotator="A")
        assert [m["label"] for m in c.effort["marks"]["items"]] == ["prostate", "bladder", "rectum"]
