"""Geometry is physical: a segmentation made on a real volume and written as .seg.nrrd has exactly the
volume's size, origin, spacing and direction when read by SimpleITK and by slicerio (the reference
reader), for the oblique MRI and the pelvic CT, also after flipping and permuting the volume's axes,
and its voxels stay at the same physical places."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import FIXTURES, SHARED_DATA

from HILASegmentLib.formats import imageio, labelio, segfile

TOL = 1e-6


def volumes():
    """(id, image path, label path): every real volume in ../shared/data with its label, plus the fixtures."""
    out = [("fixture-ct", FIXTURES / "pelvic_ct_small.nrrd", FIXTURES / "pelvic_ct_small_labels.nii.gz"),
           ("fixture-mri-oblique", FIXTURES / "prostate_mri_oblique_small.nrrd",
            FIXTURES / "prostate_mri_oblique_small_taps.nii.gz")]
    mri = SHARED_DATA / "prostate_mri"
    for p in sorted(mri.glob("*.nrrd")) if mri.is_dir() else []:
        lab = p.with_name(p.name[: -len(".nrrd")] + "_taps.nii.gz")
        out.append((f"mri-{p.stem}", p, lab if lab.exists() else None))
    ct = SHARED_DATA / "pelvic_ct"
    for case in sorted(ct.iterdir()) if ct.is_dir() else []:
        if (case / "ct.nii.gz").exists():
            out.append((f"ct-{case.name}", case / "ct.nii.gz", case / "labels_manual.nii.gz"))
    return out


TRANSFORMS = {
    "as-is": lambda im: im,
    "flip-x": lambda im: sitk.Flip(im, [True, False, False]),
    "flip-yz": lambda im: sitk.Flip(im, [False, True, True]),
    "permute-201": lambda im: sitk.PermuteAxes(im, [2, 0, 1]),
    "permute-102": lambda im: sitk.PermuteAxes(im, [1, 0, 2]),
    "flip-permute": lambda im: sitk.PermuteAxes(sitk.Flip(im, [True, True, False]), [1, 2, 0]),
}


def _label_for(vol: sitk.Image, label_path: Path | None) -> sitk.Image:
    if label_path is not None and label_path.exists():
        lab = labelio.read_label(label_path, vol)
        lab.CopyInformation(vol)  # same grid to tolerance (NIfTI float32): take the volume's exact geometry
        return sitk.Cast(lab, sitk.sitkUInt8)
    # no label: an off-centre ellipsoid, so flips and permutations matter
    size = np.array(vol.GetSize())
    k, j, i = np.ogrid[: size[2], : size[1], : size[0]]
    c = size * np.array([0.4, 0.55, 0.5])
    r = np.maximum(size * np.array([0.15, 0.1, 0.3]), 1)
    arr = (((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((k - c[2]) / r[2]) ** 2 <= 1).astype(np.uint8)
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(vol)
    return lab


def _physical_centroid(mask_kji: np.ndarray, ijk_to_lps: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask_kji)[:, ::-1].astype(float)  # i, j, k
    mean = idx.mean(axis=0)
    return ijk_to_lps[:3, :3] @ mean + ijk_to_lps[:3, 3]


def _ijk_to_lps(img: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return m


@pytest.mark.parametrize("vid,image,label", volumes(), ids=[v[0] for v in volumes()])
def test_segmentation_on_real_volume_keeps_exact_grid(tmp_path, vid, image, label):
    vol0 = imageio.read_image(image)
    lab0 = _label_for(vol0, label)
    ref_centroid = _physical_centroid(sitk.GetArrayViewFromImage(lab0) == 1, _ijk_to_lps(lab0))
    for tname, t in TRANSFORMS.items():
        vol, lab = t(vol0), t(lab0)
        seg = segfile.Segmentation.from_label_image(lab, [(1, "prostate", None)])
        out = segfile.write_segmentation(seg, tmp_path / f"{tname}.seg.nrrd")
        where = f"{vid}/{tname}"

        img = sitk.ReadImage(str(out))  # SimpleITK's reading
        assert img.GetSize() == vol.GetSize(), where
        for get in ("GetOrigin", "GetSpacing", "GetDirection"):
            d = np.abs(np.subtract(getattr(img, get)(), getattr(vol, get)())).max()
            assert d <= TOL, (where, get, d)

        ref = slicerio.read_segmentation(str(out))  # the reference reader
        m = np.asarray(ref["ijkToLPS"], float)
        assert tuple(ref["voxels"].shape) == tuple(vol.GetSize()), where
        assert np.abs(m - _ijk_to_lps(vol)).max() <= TOL, where
        assert ref["referenceImageExtentOffset"] == [0, 0, 0]

        # the voxels are where they were, physically
        mask = slicerio.segment_mask(ref, "prostate")  # i, j, k
        centroid = _physical_centroid(mask.transpose(2, 1, 0), m)
        assert np.abs(centroid - ref_centroid).max() < 1e-6, (where, centroid, ref_centroid)

        back = segfile.read_segmentation(out)
        assert imageio.grid_difference(back.grid, vol, TOL) is None, where
        assert np.array_equal(sitk.GetArrayFromImage(back.to_label_image()), sitk.GetArrayViewFromImage(lab)), where


def test_real_oblique_mri_stays_oblique_through_seg_nrrd(tmp_path):
    vol = imageio.read_image(FIXTURES / "prostate_mri_oblique_small.nrrd")
    d = np.asarray(vol.GetDirection()).reshape(3, 3)
    assert np.abs(d - np.eye(3)).max() > 0.3
    seg = segfile.Segmentation.from_label_image(_label_for(vol, FIXTURES / "prostate_mri_oblique_small_taps.nii.gz"),
                                                [(1, "prostate", None)])
    out = segfile.write_segmentation(seg, tmp_path / "o.seg.nrrd")
    head = out.read_bytes().split(b"\n\n", 1)[0].decode()
    line = [ln for ln in head.split("\n") if ln.startswith("space directions:")][0]
    vectors = [np.array([float(x) for x in v.strip("()").split(",")]) for v in line.split(": ")[1].split()]
    assert np.allclose(np.stack(vectors, axis=1), d * np.asarray(vol.GetSpacing()), atol=1e-12)
