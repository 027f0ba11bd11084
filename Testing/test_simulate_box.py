"""``hila simulate --corrector box``: the tolerant radiologist with the box assistant. The effort model charges a
box per off label on a touched slice and the hand only for what the kept slice still misses; a perfect
assistant saves the drawing, a useless one is undone and costs the boxes on top; without the assistant installed
the run is refused in one line before anything is written. The assistant is a stand-in here (the effort model is the subject);
the real one on the real CT is scripts/bench_assist.py's and test_assist.py's."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.inference import boxassist
from HILASegmentLib.simulate import radiologist as rad

SP = (3.0, 1.0, 1.0)


def _case():
    """A disc (radius 15 mm) per slice; the prediction shifted 10 mm on slices 3-5 (far off: worth a box) and a cap
    missing on slice 1 (a little off: a touch-up by hand is cheaper than a box)."""
    ref = np.zeros((6, 60, 60), np.uint8)
    yy, xx = np.mgrid[:60, :60]
    for k in range(6):
        ref[k][(yy - 30) ** 2 + (xx - 30) ** 2 <= 225] = 1
    pred = ref.copy()
    pred[3:] = np.roll(ref[3:], 10, axis=2)
    pred[1][:19] = 0  # a cap 4 mm deep cut off the top
    im = sitk.GetImageFromArray(np.where(ref > 0, 40.0, 10.0).astype(np.float32))
    im.SetSpacing(SP[::-1])
    return im, ref, pred


class _Stand:
    """Records each slice box; draws the reference (perfect) or nothing (useless: the radiologist undoes it)."""

    def __init__(self, perfect: bool):
        self.perfect, self.rects = perfect, []

    def segment_slice(self, slice_255, rect):
        self.rects.append(tuple(rect))
        return slice_255 > 0 if self.perfect else np.zeros(slice_255.shape, bool)  # the image is the disc


@pytest.mark.parametrize("perfect", [True, False])
def test_box_corrector_charges_boxes_and_only_what_the_assistant_misses(monkeypatch, perfect):
    im, ref, pred = _case()
    stand = _Stand(perfect)
    monkeypatch.setattr(boxassist, "shared_assistant", lambda: stand)
    rng = np.random.default_rng(0)
    label, eff = rad.CORRECTORS["box"](pred, ref, SP, 2.0, image=im, rng=rng, labels=[(1, "organ")], marks="box")
    _, tol = rad.CORRECTORS["tolerant"](pred, ref, SP, 2.0)
    assert np.array_equal(label, ref)  # the corrected slices are submitted as the reference's
    assert eff["tolerant_s"] == tol["seconds"]  # the paired figure: tolerant on the same proposal
    assert eff["slices"] == tol["slices"] == 4 and eff["slice_boxes"] == 3 and len(stand.rects) == 3
    for x0, y0, x1, y1 in stand.rects:  # a box around the disc (extent 15..45), jittered by millimetres
        assert abs(x0 - 15) <= 4 * rad.BOX_JITTER_MM and abs(x1 - 45) <= 4 * rad.BOX_JITTER_MM
        assert abs(y0 - 15) <= 4 * rad.BOX_JITTER_MM and abs(y1 - 45) <= 4 * rad.BOX_JITTER_MM
    touch_up = rad.off_contour_mm(pred[1] == 1, ref[1] == 1, SP[1:], 2.0)
    whole = sum(rad.contour_mm(ref[k] == 1, SP[1:]) for k in range(3, 6))
    assert 0 < rad.MM_S * touch_up < rad.SLICE_BOX_S  # slice 1 was fixed by hand, not boxed
    if perfect:  # nothing left to draw on the boxed slices: the boxes replace the hand
        assert eff["contour_mm"] == pytest.approx(touch_up, abs=0.1)
        assert eff["seconds"] == pytest.approx(rad.seconds(4, touch_up, 3), abs=0.1)
        assert eff["seconds"] < tol["seconds"]
    else:  # an empty slice from the assistant is undone: the hand redraws what tolerant does, the boxes were spent
        assert whole > eff["contour_mm"] == pytest.approx(tol["contour_mm"], abs=0.1)
        assert eff["seconds"] == pytest.approx(tol["seconds"] + 3 * rad.SLICE_BOX_S, abs=0.1)


def test_box_corrector_without_the_assistant_is_refused_in_one_line(tmp_path, monkeypatch):
    d = tmp_path / "shapes"
    d.mkdir()
    for p in sorted(shared("prostate_shapes", "msd").glob("*.nii.gz"))[:4]:
        (d / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "run"
    env = dict(os.environ, HILA_ASSIST_DIR=str(tmp_path / "no-assistant"))
    r = subprocess.run([sys.executable, "-m", "HILASegmentLib", "simulate", "--out", str(out), "--synthetic", str(d),
                        "--labels", "prostate=1+2", "--test", "1", "--corrector", "box"],
                       capture_output=True, text=True, env=env)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "not installed" in err[0] and "pip install" in err[0], r.stderr
    assert not out.exists()
