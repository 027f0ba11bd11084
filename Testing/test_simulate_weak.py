"""hila simulate --corrector weak: boxes and RECIST lines placed from the reference with seeded jitter, the
pseudo-mask built by the workspace from those marks (the `hila submit --box/--lines` path), its own effort."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.formats import weak
from HILASegmentLib.ground import metrics
from HILASegmentLib.simulate import radiologist as rad

PAIRS = [(1, "prostate"), (2, "bladder"), (3, "rectum")]


def _ct(case: str = "Pelvic-Ref005"):
    d = shared("pelvic_ct", case)
    im = sitk.ReadImage(str(d / "ct.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "labels_manual.nii.gz")))
    ref[ref > 3] = 0  # femoral heads: not labels of this simulation
    return im, ref, tuple(im.GetSpacing()[::-1])


def _marks(im, ref, sp, seed, mode="box"):
    return rad.CORRECTORS["weak"](None, ref, sp, 0.0, image=im, labels=PAIRS, rng=np.random.default_rng(seed), marks=mode)


def test_weak_marks_are_deterministic_by_seed_and_jittered():
    im, ref, sp = _ct()
    for mode in ("box", "lines", "mixed"):
        a, ea = _marks(im, ref, sp, 3, mode)
        b, eb = _marks(im, ref, sp, 3, mode)
        assert ea["marks"] == eb["marks"] and np.array_equal(a, b), mode
        _, ec = _marks(im, ref, sp, 4, mode)
        assert ec["marks"] != ea["marks"], mode
    # the jitter is millimetres, not centimetres: box corners within 4 sd of the organ's voxel-centre extent
    _, e = _marks(im, ref, sp, 0, "box")
    for item, (value, _) in zip(e["marks"]["items"], PAIRS):
        k, j, i = np.nonzero(ref == value)
        lo = im.TransformIndexToPhysicalPoint((int(i.min()), int(j.min()), int(k.min())))
        hi = im.TransformIndexToPhysicalPoint((int(i.max()), int(j.max()), int(k.max())))
        exact = np.concatenate([np.minimum(lo, hi), np.maximum(lo, hi)])
        assert np.abs(np.asarray(item["box"]) - exact).max() <= 4 * rad.BOX_JITTER_MM, item["label"]


def test_weak_pseudo_masks_overlap_the_manual_contours_of_the_real_ct():
    for case in ("Pelvic-Ref002", "Pelvic-Ref005"):
        im, ref, sp = _ct(case)
        box, _ = _marks(im, ref, sp, 0, "box")
        lines, le = _marks(im, ref, sp, 0, "lines")
        for value, name in PAIRS[:2]:  # the ellipsoid fits prostate and bladder; the tubular rectum it does not
            assert metrics.dice(box == value, ref == value) >= 0.7, (case, name)
            assert metrics.dice(lines == value, ref == value) >= 0.5, (case, name)
        for item in le["marks"]["items"]:  # RECIST: both diameters in one axial slice, crossing
            pts = np.asarray(item["lines"]).reshape(4, 3)
            assert np.ptp(pts[:, 2]) < 1e-6, item
            weak.crossing(pts[:2], pts[2:], float(np.linalg.norm(im.GetSpacing())))


def test_a_weak_case_costs_far_less_than_drawing_it():
    im, ref, sp = _ct()
    scratch = rad.draw_from_scratch(ref, sp)["seconds"]
    for mode, per_label in (("box", rad.BOX_S), ("lines", 2 * rad.LINE_S)):
        _, e = _marks(im, ref, sp, 0, mode)
        assert e["seconds"] == pytest.approx(rad.FIXED_S + 3 * per_label)
        assert e["seconds"] < 0.2 * scratch, (mode, e["seconds"], scratch)


def _hila(*args):
    return subprocess.run([sys.executable, "-m", "HILASegmentLib", *args], capture_output=True, text=True)


def _shapes(tmp_path, n):
    d = tmp_path / "shapes"
    d.mkdir()
    for p in sorted(shared("prostate_shapes", "msd").glob("*.nii.gz"))[:n]:
        (d / p.name).write_bytes(p.read_bytes())
    return d


def test_weak_corrector_bad_options_one_line_nothing_written(tmp_path):
    base = ["--synthetic", str(_shapes(tmp_path, 4)), "--labels", "prostate=1+2", "--test", "1"]
    for args, word in ((["--corrector", "weak", "--weak-marks", "circles"], "--weak-marks circles"),
                       (["--corrector", "weak", "--rough-rate", "0.2"], "--rough-rate")):
        out = tmp_path / args[-1]
        r = _hila("simulate", "--out", str(out), *base, *args)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and err[0].startswith("hila: error:") and word in err[0], r.stderr
        assert not out.exists()


@pytest.mark.slow
def test_simulate_weak_records_weak_corrections_with_marks(tmp_path):
    from HILASegmentLib.workspace import Workspace

    run = tmp_path / "run"
    r = _hila("simulate", "--out", str(run), "--synthetic", str(_shapes(tmp_path, 4)), "--labels", "prostate=1+2",
              "--test", "1", "--initial", "2", "--per-round", "1", "--rounds", "1", "--train-steps", "2",
              "--threads", "1", "--seed", "2", "--corrector", "weak", "--weak-marks", "mixed", "--json")
    assert r.returncode == 0, r.stderr
    rounds = json.loads((run / "rounds.json").read_text())
    efforts = [e for x in rounds for e in x["efforts"]]
    assert len(efforts) == 3 and all(e["quality"] == "weak" for e in efforts)
    for e in efforts:  # one label: one box, or two lines
        assert e["seconds"] == pytest.approx(rad.FIXED_S + rad.BOX_S * e["boxes"] + rad.LINE_S * e["lines"])
        assert (e["boxes"], e["lines"]) in ((1, 0), (0, 2))
    assert rounds[-1]["effort_fraction"] < 0.3  # against drawing every pool case from scratch
    with Workspace.open(run / "workspace") as ws:
        corrections = ws.corrections()
        assert len(corrections) == 3 and {c.quality for c in corrections} == {"weak"}
        for c in corrections:
            marks = c.effort["marks"]
            assert c.effort["source"] == "marks" and [m["label"] for m in marks["items"]] == ["prostate"]
            ref = sitk.ReadImage(str(run / "cases" / f"{ws.case(c.case_id).name}_ref.nii.gz"))
            stored = sitk.GetArrayFromImage(ws.correction_label(c.case_id))
            assert metrics.dice(stored == 1, sitk.GetArrayFromImage(ref) == 1) >= 0.4, marks  # lines: a short z extent
        assert ws.check().ok
    st = json.loads(_hila("status", str(run / "workspace"), "--json").stdout.strip().splitlines()[-1])
    assert st["corrections"]["by_quality"]["weak"] == 3
