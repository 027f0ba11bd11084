"""Conversions between engine images (SimpleITK, LPS) and MRML arrays/matrices (k,j,i, RAS), on real data.

References are independent of the code under test: pynrrd's header (space directions/origin, LPS)
for the oblique MRI and nibabel's affine (which *is* IJK->RAS) for the CT.
"""
from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentSlicerLib.mrmlgeometry import (
    LPS_TO_RAS,
    array_to_image,
    color_to_float,
    edit_allowed_mask,
    geometry_from_ijk_to_ras,
    ijk_to_ras_matrix,
    image_to_array,
    label_masks,
    lps_to_ras,
    masks_to_label,
    ras_to_lps,
    same_geometry,
    voxel_to_ras,
)


def mri_path():
    return shared("prostate_mri", "ProstateX-0000_t2_s4.nrrd")


def ct_path():
    return shared("pelvic_ct", "Pelvic-Ref002", "ct.nii.gz")


def sample_indices(size, n=25, seed=0):
    rng = np.random.default_rng(seed)
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    rand = [tuple(int(rng.integers(0, s)) for s in size) for _ in range(n)]
    return corners + rand


def assert_round_trip_exact(img: sitk.Image):
    arr, m = image_to_array(img)
    assert arr.shape == tuple(reversed(img.GetSize())), "Slicer arrays are [k, j, i]"
    back = array_to_image(arr, m)
    assert back.GetSize() == img.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(img))
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-12)
    assert back.GetPixelID() == img.GetPixelID()
    for idx in sample_indices(img.GetSize()):
        lps = np.array(img.TransformIndexToPhysicalPoint(idx))
        np.testing.assert_allclose(voxel_to_ras(m, idx), LPS_TO_RAS @ lps, atol=1e-6)
        np.testing.assert_allclose(back.TransformIndexToPhysicalPoint(idx), lps, atol=1e-6)
        assert arr[idx[2], idx[1], idx[0]] == img[idx]
    return arr, m


def test_oblique_mri_round_trip_and_points_agree_with_the_nrrd_header():
    path = mri_path()
    img = sitk.ReadImage(str(path))
    direction = np.array(img.GetDirection()).reshape(3, 3)
    assert not np.allclose(direction, np.eye(3), atol=1e-3), "the test needs a truly oblique volume"
    arr, m = assert_round_trip_exact(img)
    _, hdr = nrrd.read(str(path), index_order="C")
    assert hdr["space"] == "left-posterior-superior"
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(hdr["space directions"], float).T  # rows in the header are axis vectors
    ijk_to_lps[:3, 3] = hdr["space origin"]
    np.testing.assert_allclose(m, np.diag([-1, -1, 1, 1]) @ ijk_to_lps, atol=1e-6)


def test_ct_ijk_to_ras_equals_the_nifti_affine():
    path = ct_path()
    img = sitk.ReadImage(str(path))
    arr, m = assert_round_trip_exact(img)
    affine = nib.load(str(path)).affine  # NIfTI stores IJK -> RAS
    np.testing.assert_allclose(m, affine, atol=1e-4)


def test_flipped_and_permuted_axes_round_trip():
    img = sitk.ReadImage(str(ct_path()))
    flipped = sitk.Flip(img, [True, False, True])
    permuted = sitk.PermuteAxes(img, [2, 0, 1])
    for im in (flipped, permuted):
        assert_round_trip_exact(im)


def test_ras_is_the_lps_flip():
    p = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])
    np.testing.assert_array_equal(lps_to_ras(p), p @ LPS_TO_RAS.T)
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(p)), p)
    np.testing.assert_array_equal(LPS_TO_RAS, np.diag([-1, -1, 1]))


def test_geometry_from_matrix_and_same_geometry():
    img = sitk.ReadImage(str(mri_path()))
    m = ijk_to_ras_matrix(img)
    origin, spacing, direction = geometry_from_ijk_to_ras(m)
    np.testing.assert_allclose(spacing, img.GetSpacing(), rtol=1e-12)
    assert same_geometry(m, m + 1e-7) and not same_geometry(m, m + np.eye(4) * 1e-3)
    with pytest.raises(ValueError):
        geometry_from_ijk_to_ras(np.eye(3))
    bad = m.copy()
    bad[:3, 0] = 0
    with pytest.raises(ValueError):
        geometry_from_ijk_to_ras(bad)
    with pytest.raises(ValueError):
        array_to_image(np.zeros((2, 2)), m)
    with pytest.raises(ValueError):
        ijk_to_ras_matrix(sitk.Image(4, 4, sitk.sitkUInt8))


def test_label_masks_round_trip_on_real_labels():
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz"))))
    values = [int(v) for v in np.unique(lab) if v]
    masks = label_masks(lab, values)
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks.values())
    np.testing.assert_array_equal(masks_to_label(masks, lab.shape), lab)
    with pytest.raises(ValueError):
        masks_to_label({1: np.zeros((2, 2, 2))}, (3, 3, 3))


def test_edit_allowed_mask_follows_the_segment_editor_rule():
    shape = (1, 1, 6)
    a = np.array([[[1, 1, 0, 0, 0, 0]]], np.uint8)
    b = np.array([[[0, 0, 0, 1, 1, 0]]], np.uint8)
    segs = {"A": a, "B": b}
    ev = edit_allowed_mask("PaintAllowedEverywhere", shape, segs)
    assert ev.all()
    assert edit_allowed_mask("PaintAllowedInsideAllSegments", shape, segs).ravel().tolist() == [1, 1, 0, 1, 1, 0]
    assert edit_allowed_mask("PaintAllowedOutsideAllSegments", shape, segs).ravel().tolist() == [0, 0, 1, 0, 0, 1]
    assert edit_allowed_mask("EditAllowedInsideVisibleSegments", shape, segs, visible=["B"]).ravel().tolist() == [0, 0, 0, 1, 1, 0]
    assert edit_allowed_mask("PaintAllowedOutsideVisibleSegments", shape, segs, visible=["A"]).ravel().tolist() == [0, 0, 1, 1, 1, 1]
    assert edit_allowed_mask("PaintAllowedInsideSingleSegment", shape, segs, mask_segment="A").ravel().tolist() == [1, 1, 0, 0, 0, 0]
    intensity = np.arange(6).reshape(shape)
    got = edit_allowed_mask("PaintAllowedEverywhere", shape, segs, intensity=intensity, intensity_range=(2, 4))
    assert got.ravel().tolist() == [0, 0, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        edit_allowed_mask("Sometimes", shape, segs)
    # GenerateEditMask: "outside" modes leave the edited segment out of the forbidden union; "inside" keep it in
    assert edit_allowed_mask("EditAllowedOutsideAllSegments", shape, segs, edited="A").ravel().tolist() == [1, 1, 1, 0, 0, 1]
    assert edit_allowed_mask("EditAllowedInsideAllSegments", shape, segs, edited="A").ravel().tolist() == [1, 1, 0, 1, 1, 0]
    assert not edit_allowed_mask("EditAllowedInsideSingleSegment", shape, segs).any()  # no mask segment: nowhere


def test_colours():
    assert color_to_float((255, 0, 128)) == (1.0, 0.0, pytest.approx(128 / 255))
    assert color_to_float((0.2, 0.4, 0.6)) == (0.2, 0.4, 0.6)
