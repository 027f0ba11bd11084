"""Weak answers to file inputs made clear (issue 22, class 9; red team 2026-12-07 rows N14-N18 F01 F12 F13 F16 F17
M04 E07 R11b): a header naming a voxel file elsewhere, sizes a header declares, NIfTI placements that disagree or are
missing, NaN voxels, a model whose output is not finite, a model imposter, a CT stored without its rescale. Each is
one line naming the file and the cause, exit 2, nothing written."""
from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HILASegmentLib.cli import main

FIXTURES = Path(__file__).resolve().parent / "Data"
CT = FIXTURES / "pelvic_ct_small.nrrd"
LABELS = FIXTURES / "pelvic_ct_small_labels.nii.gz"
MR = FIXTURES / "prostate_mri_oblique_small.nrrd"


def refused(capsys, *args, expect="", folder=None):
    """Exit 2, one line on stderr naming ``expect``, no traceback; ``folder`` (if given) unchanged."""
    before = sorted(p.as_posix() for p in Path(folder).rglob("*")) if folder else None
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, out, err)
    assert expect in lines[0], lines[0]
    if folder:
        assert sorted(p.as_posix() for p in Path(folder).rglob("*")) == before
    return lines[0]


def ok(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


# -- N14: a detached header naming a voxel file outside its folder ---------------------------------------------------

@pytest.mark.parametrize("field", ["data file: LIST\n{outside}\n", "data file: {outside}\n", "datafile: {outside}\n"])
def test_n14_a_detached_header_may_not_name_a_voxel_file_outside_its_folder(tmp_path, capsys, field):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(16)))  # the right size: before, it was read as one 4x4 slice
    (tmp_path / "h").mkdir()
    header = tmp_path / "h" / "list.nhdr"
    header.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 1\nencoding: raw\n"
                      + field.format(outside="../secret.raw"))
    refused(capsys, "convert", header, tmp_path / "o.nrrd", expect="outside the header's folder", folder=tmp_path / "h")
    assert not (tmp_path / "o.nrrd").exists()
    mhd = tmp_path / "h" / "x.mhd"
    mhd.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = 4 4 1\nElementType = MET_UCHAR\n"
                   f"ElementDataFile = {secret}\n")
    refused(capsys, "convert", mhd, tmp_path / "o.nrrd", expect="outside the header's folder")


def test_n14_a_detached_header_with_its_voxels_beside_it_still_reads(tmp_path, capsys):
    (tmp_path / "x.raw").write_bytes(bytes(range(32)))
    (tmp_path / "x.nhdr").write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 2\nencoding: raw\n"
                                     "data file: x.raw\n")
    ok(capsys, "convert", tmp_path / "x.nhdr", tmp_path / "o.nrrd")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o.nrrd"))).ravel().tolist() == list(range(32))


# -- N15-N18: sizes a header declares -------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", ["100000 100000 100000", "2048 2048 2048"])
def test_n15_n16_an_nhdr_declaring_a_huge_volume_is_refused_from_its_header(tmp_path, capsys, sizes):
    (tmp_path / "x.raw").write_bytes(b"\0" * 64)
    (tmp_path / "bomb.nhdr").write_text(f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nendian: little\n"
                                        "encoding: raw\ndata file: x.raw\n")
    line = refused(capsys, "convert", tmp_path / "bomb.nhdr", tmp_path / "o.nrrd", expect="its header declares")
    assert sizes.replace(" ", "x") in line and "HILA_MAX_VOXELS" in line


def test_n15_a_seg_nrrd_declaring_a_huge_volume_is_refused_from_its_header(tmp_path, capsys):
    (tmp_path / "bomb.seg.nrrd").write_bytes(
        b"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 4096 4096 4096\nencoding: gzip\n"
        b"space: left-posterior-superior\nSegment0_ID:=s1\nSegment0_Name:=prostate\nSegment0_LabelValue:=1\n\n"
        + gzip.compress(b"\0" * (1 << 20)))
    refused(capsys, "convert", tmp_path / "bomb.seg.nrrd", tmp_path / "o.nii.gz", expect="4096x4096x4096 voxels")


def _nifti_bomb(path: Path, n: int) -> None:
    """A .nii.gz whose header declares n^3 int16 voxels, followed by a few MB of zeros and then bytes that are not
    gzip: reading past the header (decompressing to count) would stop on the corrupt data instead."""
    nib = pytest.importorskip("nibabel")
    h = nib.Nifti1Header()
    h.set_data_shape((n, n, n))
    h.set_data_dtype(np.int16)
    h.set_qform(np.eye(4), 1)
    h.set_sform(np.eye(4), 1)
    path.write_bytes(gzip.compress(h.binaryblock + b"\0" * 4 + b"\0" * (4 << 20)) + b"not gzip" * 1000)


@pytest.mark.parametrize("n", [2000, 1300])
def test_n17_n18_a_gzip_bomb_is_refused_from_its_header_before_decompressing(tmp_path, capsys, n):
    _nifti_bomb(tmp_path / "bomb.nii.gz", n)
    line = refused(capsys, "convert", tmp_path / "bomb.nii.gz", tmp_path / "o.nrrd", expect=f"{n}x{n}x{n} voxels")
    assert "GiB" in line and "limit" in line


def test_the_voxel_budget_is_an_environment_variable_checked_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HILA_MAX_VOXELS", "abc")
    refused(capsys, "convert", CT, tmp_path / "o.nrrd", expect="HILA_MAX_VOXELS='abc': not a whole number")
    monkeypatch.setenv("HILA_MAX_VOXELS", "1000")
    refused(capsys, "convert", CT, tmp_path / "o.nrrd", expect="over hila's limit of 1e+03 voxels")
    monkeypatch.setenv("HILA_MAX_VOXELS", str(55 * 54 * 19))
    ok(capsys, "convert", CT, tmp_path / "o.nrrd")


# -- F01 F12 F13: NIfTI placements ----------------------------------------------------------------------------------

def _qs_disagree(src: Path, dst: Path, qcode=1, scode=2, rotate=10.0, shift=20.0) -> None:
    nib = pytest.importorskip("nibabel")
    tmp = dst.with_name("plain_" + dst.name)
    sitk.WriteImage(sitk.ReadImage(str(src)), str(tmp))
    img = nib.load(str(tmp))
    aff = img.affine
    t = math.radians(rotate)
    r = np.eye(4)
    r[:2, :2] = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    r[:3, 3] = (shift, 0, 0)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header)
    out.set_qform(aff, code=qcode)
    out.set_sform(r @ aff, code=scode)
    nib.save(out, str(dst))


@pytest.fixture
def ctws(tmp_path, capsys):
    ws = tmp_path / "ws"
    ok(capsys, "init", ws, "--modality", "CT", "--labels", "prostate,bladder,rectum")
    ok(capsys, "import", ws, CT)
    return ws


def test_f01_a_label_map_whose_qform_and_sform_disagree_is_refused_naming_both(ctws, tmp_path, capsys):
    _qs_disagree(LABELS, tmp_path / "lab_qs.nii.gz")
    line = refused(capsys, "submit", ctws, "c0001", tmp_path / "lab_qs.nii.gz", expect="qform (code 1",
                   folder=ctws)
    assert "sform (code 2" in line and "mm apart" in line
    _qs_disagree(LABELS, tmp_path / "lab_same.nii.gz", rotate=0.0, shift=0.0)  # both set, one placement: fine
    ok(capsys, "submit", ctws, "c0001", tmp_path / "lab_same.nii.gz")


def test_f12_an_image_whose_qform_and_sform_disagree_is_refused(tmp_path, capsys):
    _qs_disagree(CT, tmp_path / "ct_qs.nii.gz")
    refused(capsys, "infer", "--image", tmp_path / "ct_qs.nii.gz", "--out", tmp_path / "o.seg.nrrd", "--model",
            "pelvic_ct_unet", expect="place the volume up to")
    assert not (tmp_path / "o.seg.nrrd").exists()


def test_f13_a_nifti_without_qform_or_sform_says_its_orientation_is_unknown(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    sitk.WriteImage(sitk.ReadImage(str(CT)), str(tmp_path / "plain.nii.gz"))
    img = nib.load(str(tmp_path / "plain.nii.gz"))
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header)
    out.set_qform(None, code=0)
    out.set_sform(None, code=0)
    nib.save(out, str(tmp_path / "analyze.nii.gz"))
    refused(capsys, "infer", "--image", tmp_path / "analyze.nii.gz", "--out", tmp_path / "o.seg.nrrd", "--model",
            "pelvic_ct_unet", expect="does not say how the volume is oriented")


# -- F16 F17: NaN voxels ------------------------------------------------------------------------------------------------

def _float_ct(path: Path, nan_block=None) -> None:
    img = sitk.ReadImage(str(CT))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if nan_block == "all":
        arr[:] = np.nan
    elif nan_block:
        arr[nan_block] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_f16_nan_voxels_are_counted_and_refused(tmp_path, capsys, suffix):
    _float_ct(tmp_path / f"nan{suffix}", (slice(5, 15), slice(20, 30), slice(20, 30)))
    line = refused(capsys, "infer", "--image", tmp_path / f"nan{suffix}", "--out", tmp_path / "o.seg.nrrd", "--model",
                   "pelvic_ct_unet", expect="1000 of 56430 voxels")
    assert "NaN" in line and not (tmp_path / "o.seg.nrrd").exists()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_f17_an_all_nan_image_says_so(tmp_path, capsys, suffix):
    _float_ct(tmp_path / f"allnan{suffix}", "all")
    line = refused(capsys, "infer", "--image", tmp_path / f"allnan{suffix}", "--out", tmp_path / "o.seg.nrrd",
                   "--model", "pelvic_ct_unet", expect="every voxel (56430) is NaN")
    assert "looks like" not in line


# -- M04 E07: a model that outputs NaN, a model imposter ----------------------------------------------------------------

def test_m04_a_model_whose_output_is_not_finite_is_one_line(tmp_path, capsys):
    pytest.importorskip("onnx")
    from tiny_models import threshold_onnx, tiny_card

    from HILASegmentLib.models.modelcard import write_card

    model = threshold_onnx(tmp_path / "m_nan.onnx", gain=float("nan"))
    write_card(model, tiny_card())
    refused(capsys, "infer", "--image", MR, "--out", tmp_path / "o.seg.nrrd", "--model", model,
            expect="the model output is not finite")
    assert not (tmp_path / "o.seg.nrrd").exists()


def test_e07_a_model_imposter_under_a_catalog_name_is_refused(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    from tiny_models import threshold_onnx, tiny_card

    from HILASegmentLib.models.modelcard import write_card

    (tmp_path / "models").mkdir()
    model = threshold_onnx(tmp_path / "models" / "pelvic_ct_unet.onnx")
    write_card(model, tiny_card(modality="CT", name="pelvic_ct_unet"))
    monkeypatch.setenv("HILA_MODELS_DIR", str(tmp_path / "models"))
    refused(capsys, "infer", "--image", CT, "--out", tmp_path / "o.seg.nrrd", "--model", "pelvic_ct_unet",
            expect="not the catalog's pelvic_ct_unet")
    refused(capsys, "init", tmp_path / "ws2", "--modality", "CT", "--model", "pelvic_ct_unet",
            expect="not the catalog's pelvic_ct_unet")
    assert not (tmp_path / "ws2").exists()
    ok(capsys, "infer", "--image", CT, "--out", tmp_path / "o.seg.nrrd", "--model", model)  # by its path: the user's


# -- R11b: a CT stored without its rescale ------------------------------------------------------------------------------

def _offset_ct(path: Path) -> None:
    img = sitk.ReadImage(str(CT))
    arr = np.clip(sitk.GetArrayFromImage(img).astype(np.int32) + 1024, 0, None).astype(np.uint16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


def test_r11b_a_ct_without_its_rescale_is_named_in_an_mr_and_a_ct_workspace(ctws, tmp_path, capsys):
    _offset_ct(tmp_path / "ct_offset.nrrd")
    mrws = tmp_path / "mrws"
    ok(capsys, "init", mrws, "--modality", "MR", "--labels", "prostate")
    refused(capsys, "import", mrws, tmp_path / "ct_offset.nrrd", expect="CT stored without its rescale", folder=mrws)
    refused(capsys, "import", ctws, tmp_path / "ct_offset.nrrd", expect="Hounsfield units + 1024")
    ok(capsys, "import", mrws, tmp_path / "ct_offset.nrrd", "--modality-override")
    ok(capsys, "import", mrws, MR)  # a real MR still imports


def test_r11b_real_mr_volumes_are_not_taken_for_an_offset_ct():
    from conftest import shared

    from HILASegmentLib.models.normalize import offset_ct_reason

    folder = shared("prostate_mri")
    vols = sorted(Path(folder).glob("*_t2_*.nrrd"))
    assert vols
    for v in vols:
        assert offset_ct_reason(sitk.GetArrayFromImage(sitk.ReadImage(str(v)))) is None, v
    assert os.path.isdir(folder)
