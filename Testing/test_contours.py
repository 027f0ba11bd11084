"""The planar-contour geometry under RTSTRUCT: even-odd filling of voxel centres and its exact inverse."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from HILASegmentLib.dicom import contours


def test_trace_then_fill_gives_the_mask_back():
    rng = np.random.default_rng(15)
    for _ in range(100):
        mask = rng.random((13, 17)) < 0.45  # islands, holes, diagonal touches
        loops = contours.trace(mask)
        assert np.array_equal(contours.fill_even_odd(loops, 17, 13), mask)


def test_inner_contour_is_a_hole_and_centres_decide():
    outer = np.array([[0.2, 0.2], [8.8, 0.2], [8.8, 8.8], [0.2, 8.8]])
    inner = np.array([[2.5, 2.5], [6.5, 2.5], [6.5, 6.5], [2.5, 6.5]])
    m = contours.fill_even_odd([outer, inner], 10, 10)
    assert m[1, 1] and m[8, 8] and not m[0, 0] and not m[9, 9]  # centre (0, 0) lies outside 0.2..8.8
    assert not m[4, 4] and m[2, 2] and not m[3, 3]  # (3, 3) is inside the hole 2.5..6.5, (2, 2) is not
    assert m.sum() == 8 * 8 - 4 * 4


def test_contour_slice_and_outside():
    img = sitk.Image(10, 10, 5, sitk.sitkUInt8)
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetOrigin((-5.0, 2.0, 10.0))
    pts = np.array([[-5.0, 2.0, 16.0], [0.0, 2.0, 16.0], [0.0, 6.0, 16.0]])
    idx = contours.points_to_index(pts, img)
    assert np.allclose(contours.index_to_points(idx, img), pts)
    assert contours.contour_slice(idx, img.GetSize()) == (2, None)
    k, why = contours.contour_slice(idx + [0, 0, 0.5], img.GetSize())
    assert k is None and "between slices" in why
    k, why = contours.contour_slice(idx + [20, 0, 0], img.GetSize())
    assert k is None and "outside the image" in why
