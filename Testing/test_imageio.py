"""imageio: real volumes and DICOM series in, exact geometry kept, every bad input one clear line."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FIXTURES, shared

from HILASegmentLib.formats import imageio, labelio
from HILASegmentLib.ground.errors import HilaError

CT = FIXTURES / "pelvic_ct_small.nrrd"
CT_LABELS = FIXTURES / "pelvic_ct_small_labels.nii.gz"
MRI = FIXTURES / "prostate_mri_oblique_small.nrrd"
MRI_LABEL = FIXTURES / "prostate_mri_oblique_small_taps.nii.gz"


def arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def assert_one_line_error(exc_info, *fragments: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def write_dicom_series(img: sitk.Image, folder: Path, series_uid: str, modality: str = "CT",
                       prefix: str = "slice") -> None:
    """Write ``img`` as a DICOM series (one file per slice, with real position/orientation tags)."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = img.GetDirection()
    iop = "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6],
                                           direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study = "1.2.826.0.1.3680043.8.498.1"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (
            ("0008|0060", modality), ("0020|000d", study), ("0020|000e", series_uid),
            ("0008|0018", f"{series_uid}.{k + 1}"), ("0020|0013", str(k + 1)),
            ("0020|0032", "\\".join(f"{p:.6f}" for p in pos)), ("0020|0037", iop),
            ("0018|0050", f"{img.GetSpacing()[2]:.6f}"),
            ("0028|0030", f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}"),
        ):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(sl)


# --------------------------------------------------------------------------------------------
# reading and writing real volumes
# --------------------------------------------------------------------------------------------

def test_reads_fixture_volumes_as_scalar_3d():
    ct = imageio.read_image(CT)
    mri = imageio.read_image(MRI)
    for img in (ct, mri):
        assert img.GetDimension() == 3 and img.GetNumberOfComponentsPerPixel() == 1
    assert ct.GetPixelID() == sitk.sitkInt16 and arr(ct).min() < -500  # real HU
    d = np.array(mri.GetDirection()).reshape(3, 3)
    assert abs(d[1, 2]) > 0.3  # oblique: ~18 degrees about x


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha", ".mhd"])
def test_write_read_roundtrip_keeps_voxels_and_geometry(tmp_path, suffix):
    for src in (CT, MRI):
        img = imageio.read_image(src)
        out = imageio.write_image(img, tmp_path / f"x{suffix}")
        back = imageio.read_image(out)
        assert np.array_equal(arr(back), arr(img))
        assert back.GetPixelID() == img.GetPixelID()
        # NIfTI stores geometry in float32: relative 1e-6 there, exact elsewhere
        tol = 1e-6 if suffix.startswith(".nii") else 1e-12
        assert imageio.same_grid(back, img, tol), (imageio.describe_grid(back), imageio.describe_grid(img))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_write_is_atomic_and_refuses_bad_targets(tmp_path):
    img = imageio.read_image(CT)
    with pytest.raises(HilaError) as e:
        imageio.write_image(img, tmp_path / "missing-folder" / "x.nrrd")
    assert_one_line_error(e, "does not exist")
    with pytest.raises(HilaError) as e:
        imageio.write_image(img, tmp_path / "x.png")
    assert_one_line_error(e, "x.png", "unsupported")
    assert list(tmp_path.iterdir()) == []
    # a failing writer leaves neither the target nor its temporary folder
    with pytest.raises(RuntimeError):
        with imageio.atomic_output(tmp_path / "y.nrrd") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []
    # an existing file is replaced only when the new one is complete
    target = tmp_path / "z.nrrd"
    imageio.write_image(img, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with imageio.atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash")
    assert target.read_bytes() == before


def test_geometry_helpers():
    a = imageio.read_image(MRI)
    b = sitk.Image(a)
    assert imageio.same_grid(a, b)
    b.SetOrigin([o + 0.01 for o in a.GetOrigin()])
    assert not imageio.same_grid(a, b)
    assert "origin" in imageio.grid_difference(a, b)
    text = imageio.describe_grid(a)
    assert "\n" not in text and "size 60x43x13" in text and "direction" in text


# --------------------------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------------------------

def test_read_label_checks_grid_and_type(tmp_path):
    ct = imageio.read_image(CT)
    lab = labelio.read_label(CT_LABELS, ct)  # NIfTI label on an NRRD image: float32 geometry, still same grid
    assert lab.GetPixelID() == sitk.sitkUInt8 and set(np.unique(arr(lab))) >= {0, 1}

    other = imageio.read_image(MRI)
    with pytest.raises(HilaError) as e:
        labelio.read_label(CT_LABELS, other)
    msg = assert_one_line_error(e, str(CT_LABELS), "label grid", "image grid", "size 55x54x19", "size 60x43x13")
    assert "not on the image's grid" in msg

    # float label maps with whole values are accepted (cast), intensities and negatives are not
    f = sitk.Cast(lab, sitk.sitkFloat32)
    imageio.write_image(f, tmp_path / "float_label.nrrd")
    assert labelio.read_label(tmp_path / "float_label.nrrd").GetPixelID() == sitk.sitkUInt8
    with pytest.raises(HilaError) as e:
        labelio.read_label(CT)
    assert_one_line_error(e, "not a label map", "negative")
    noisy = sitk.Cast(lab, sitk.sitkFloat32) * 0.5
    imageio.write_image(noisy, tmp_path / "half.nrrd")
    with pytest.raises(HilaError) as e:
        labelio.read_label(tmp_path / "half.nrrd")
    assert_one_line_error(e, "half.nrrd", "non-integer")


def test_read_label_accepts_a_seg_nrrd_and_places_it_on_the_reference():
    seg_path = FIXTURES / "Segmentation.seg.nrrd"
    lab = labelio.read_label(seg_path)
    assert set(np.unique(arr(lab))) == set(range(8))
    # a reference on the same lattice but a larger extent (as a CT is to a cropped segmentation)
    ref = sitk.ConstantPad(sitk.Cast(lab, sitk.sitkInt16), [2, 3, 1], [4, 0, 2], -1000)
    on_ref = labelio.read_label(seg_path, ref)
    assert imageio.same_grid(on_ref, ref, 1e-9)
    assert np.array_equal(np.bincount(arr(on_ref).ravel())[1:], np.bincount(arr(lab).ravel())[1:])
    # a reference that cuts segmented voxels off is refused
    with pytest.raises(HilaError) as e:
        labelio.read_label(seg_path, ref[5:, :, :])
    assert_one_line_error(e, "outside the image grid")


# --------------------------------------------------------------------------------------------
# bad input: one line naming the file, nothing else on stderr
# --------------------------------------------------------------------------------------------

def _bad_files(tmp_path: Path) -> dict:
    ct = imageio.read_image(CT)
    files = {}
    files["missing"] = tmp_path / "nope.nrrd"
    (tmp_path / "empty.nrrd").write_bytes(b"")
    files["empty"] = tmp_path / "empty.nrrd"
    (tmp_path / "garbage.nrrd").write_bytes(b"NRRD0004\ntype: garbage\n")
    files["garbage"] = tmp_path / "garbage.nrrd"
    data = CT.read_bytes()
    (tmp_path / "truncated.nrrd").write_bytes(data[: len(data) // 2])
    files["truncated_nrrd"] = tmp_path / "truncated.nrrd"
    sitk.WriteImage(ct, str(tmp_path / "full.nii.gz"), True)
    gz = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(gz[: len(gz) // 2])
    files["truncated_niigz"] = tmp_path / "truncated.nii.gz"
    sitk.WriteImage(ct, str(tmp_path / "full.nii"))
    raw = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "truncated.nii").write_bytes(raw[: len(raw) - 1000])
    files["truncated_nii"] = tmp_path / "truncated.nii"
    sitk.WriteImage(ct, str(tmp_path / "full.mha"), True)
    mha = (tmp_path / "full.mha").read_bytes()
    (tmp_path / "truncated.mha").write_bytes(mha[: len(mha) // 2])
    files["truncated_mha"] = tmp_path / "truncated.mha"
    (tmp_path / "notgzip.nii.gz").write_bytes(b"\x1f\x8b" + b"x" * 400)
    files["corrupt_gzip"] = tmp_path / "notgzip.nii.gz"
    sitk.WriteImage(ct[:, :, 3], str(tmp_path / "slice2d.nrrd"))
    files["2d"] = tmp_path / "slice2d.nrrd"
    four = sitk.JoinSeries([ct, ct])
    sitk.WriteImage(four, str(tmp_path / "four.nrrd"))
    files["4d"] = tmp_path / "four.nrrd"
    vec = sitk.Compose(ct, ct, ct)
    sitk.WriteImage(vec, str(tmp_path / "vector.mha"))
    files["vector"] = tmp_path / "vector.mha"
    (tmp_path / "volume.txt").write_text("not an image", encoding="utf-8")
    files["unsupported"] = tmp_path / "volume.txt"
    write_dicom_series(ct[:, :, :2], tmp_path / "dcm", "1.2.826.0.1.3680043.8.498.5")
    files["single_dicom"] = tmp_path / "dcm" / "slice000.dcm"
    return files


EXPECT = {
    "missing": "no such file", "empty": "empty file", "garbage": 'parse type "garbage"',
    "truncated_nrrd": "expected", "truncated_niigz": "truncated", "truncated_nii": "truncated",
    "truncated_mha": "cannot read image", "corrupt_gzip": "corrupt", "2d": "2-D image",
    "4d": "4-D image", "vector": "vector", "unsupported": "unsupported file type",
    "single_dicom": "a single DICOM file",
}


def test_every_bad_file_is_one_clear_line_and_nothing_on_stderr(tmp_path, capfd):
    files = _bad_files(tmp_path)
    capfd.readouterr()
    for case, path in files.items():
        with pytest.raises(HilaError) as e:
            imageio.read_image(path)
        assert_one_line_error(e, str(path), EXPECT[case])
        captured = capfd.readouterr()
        assert captured.err == "" and captured.out == "", (case, captured)


# --------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------

def test_dicom_series_written_here_reads_back_with_geometry(tmp_path):
    for src, modality in ((CT, "CT"), (MRI, "MR")):
        img = imageio.read_image(src)
        if modality == "MR":
            img = sitk.Cast(img, sitk.sitkInt16)
        folder = tmp_path / modality
        write_dicom_series(img, folder, "1.2.826.0.1.3680043.8.498.42")
        back = imageio.read_image(folder)
        assert np.array_equal(arr(back), arr(img))
        assert imageio.same_grid(back, img, 1e-5), (imageio.describe_grid(back), imageio.describe_grid(img))
    d = np.array(back.GetDirection()).reshape(3, 3)
    assert abs(d[1, 2]) > 0.3  # the oblique MRI stays oblique


def test_dicom_folder_with_several_series_lists_them(tmp_path):
    img = imageio.read_image(CT)[:, :, :4]
    folder = tmp_path / "mixed"
    write_dicom_series(img, folder, "1.2.826.0.1.3680043.8.498.100", prefix="a")
    write_dicom_series(img, folder, "1.2.826.0.1.3680043.8.498.200", prefix="b")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(HilaError) as e:
        imageio.read_image(folder)
    assert_one_line_error(e, str(folder), "2 DICOM series", "1.2.826.0.1.3680043.8.498.100 (4 files)",
                          "1.2.826.0.1.3680043.8.498.200 (4 files)")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_dicom_folder_without_series(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HilaError) as e:
        imageio.read_image(empty)
    assert_one_line_error(e, str(empty), "no DICOM series")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello", encoding="utf-8")
    shutil.copy(CT, other / "ct.nrrd")
    with pytest.raises(HilaError) as e:
        imageio.read_image(other)
    assert_one_line_error(e, "no DICOM series")


def test_real_prostatex_dicom_equals_its_nrrd_and_stays_oblique(tmp_path):
    folder = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    nrrd_path = shared("prostate_mri", "ProstateX-0000_t2_s4.nrrd")
    dcm = imageio.read_image(folder)
    ref = imageio.read_image(nrrd_path)
    assert np.array_equal(arr(dcm), arr(ref))
    assert imageio.grid_difference(dcm, ref, 1e-6) is None
    d = np.array(dcm.GetDirection()).reshape(3, 3)
    assert np.abs(d - np.eye(3)).max() > 0.3
    out = imageio.write_image(dcm, tmp_path / "px0.nrrd")
    again = imageio.read_image(out)
    assert imageio.grid_difference(again, ref, 1e-9) is None
    assert np.array_equal(arr(again), arr(ref))


def test_real_ct_label_maps_are_on_their_ct_grid():
    case = shared("pelvic_ct", "Pelvic-Ref002")
    ct = imageio.read_image(case / "ct.nii.gz")
    for name in ("labels_manual.nii.gz", "labels_dl.nii.gz", "labels_mbs.nii.gz"):
        lab = labelio.read_label(case / name, ct)
        assert 1 in np.unique(arr(lab))
