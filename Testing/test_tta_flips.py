"""Flip test-time augmentation: only across the patient's left-right axis, found from the direction cosines.

Real data: the three pelvic CTs and their manual contours, segmented by the shipped CT starter with each flip rule.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.ground.metrics import dice
from HILASegmentLib.inference.segmenter import Segmenter, patient_lr_axis
from HILASegmentLib.models.modelcard import resolve

CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")


def test_the_left_right_axis_comes_from_the_direction_cosines():
    assert patient_lr_axis(np.eye(3)) == 0
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # axis 2 points along LPS x (left-right)
    assert patient_lr_axis(perm) == 2
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    oblique = np.array([[0, c, -s], [1, 0, 0], [0, s, c]], float)  # axis 1 is 30 degrees off left-right
    assert patient_lr_axis(oblique) == 1


@pytest.fixture(scope="module")
def starter():
    f = resolve("pelvic_ct_unet")

    def seg(flips=None) -> Segmenter:
        card = f.card if flips is None else dataclasses.replace(f.card, inference={**f.card.inference,
                                                                                   "tta_flips": flips})
        return Segmenter(f.path, card=card, threads=1)
    return seg


def _mean_dice(result, manual: np.ndarray) -> float:
    lab = sitk.GetArrayViewFromImage(result.label)
    return float(np.mean([dice(lab == v, manual == v) for v in (1, 2, 3)]))


def test_default_tta_flips_left_right_only_and_ap_si_flips_lower_the_ct_starters_dice(starter):
    """Fails if the default rule flipped anterior-posterior or superior-inferior: on every real CT the default TTA
    must beat TTA with the AP flip and with the SI flip (both computed here), and must not fall below no TTA by more
    than a hair (the left-right mirror is an anatomical symmetry of the pelvis; the other two are not)."""
    default, plain = starter(), starter()
    lr_axis = None
    for c in CASES:
        img = sitk.ReadImage(str(shared("pelvic_ct", c, "ct.nii.gz")))
        man = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("pelvic_ct", c, "labels_manual.nii.gz"))))
        r = default.segment(img, tta=True)
        assert r.summary["tta_flip_rule"] == "patient_lr" and len(r.summary["tta_flips"]) == 1
        lr_axis = r.summary["tta_flips"][0][0]
        others = [a for a in range(3) if a != lr_axis]
        d_default, d_none = _mean_dice(r, man), _mean_dice(plain.segment(img), man)
        d_others = [_mean_dice(starter([[a]]).segment(img, tta=True), man) for a in others]
        assert all(d_default > d for d in d_others), (c, d_default, d_others)
        assert d_default >= d_none - 0.01, (c, d_default, d_none)
    # the model grid is RAS: its left-right axis is its first
    assert lr_axis == 0


def test_the_cards_tta_flips_stay_an_explicit_override(starter):
    img = sitk.ReadImage(str(shared("pelvic_ct", CASES[2], "ct.nii.gz")))
    r = starter([[0], [2]]).segment(img, tta=True)
    assert r.summary["tta_flips"] == [[0], [2]] and r.summary["tta_flip_rule"] == "card"
    r0 = starter().segment(img)
    assert r0.summary["tta_flips"] is None and r0.summary["tta_flip_rule"] is None
