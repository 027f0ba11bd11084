"""`hila convert` through a real process: outputs checked with reference readers, every bad input gives
exit code != 0, exactly one line on stderr, no traceback, and no output file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import FIXTURES, ROOT, shared
from test_imageio import write_dicom_series

HILA = ROOT / ".venv" / "bin" / "hila"


def hila(*args, cwd=None) -> subprocess.CompletedProcess:
    cmd = [str(HILA)] if HILA.exists() else [sys.executable, "-m", "HILASegmentLib"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def assert_clean_failure(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode != 0, res
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hila: error: ") and "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_help_and_version():
    res = hila("--help")
    assert res.returncode == 0 and "convert" in res.stdout
    res = hila("convert", "--help")
    assert res.returncode == 0 and "--names" in res.stdout and "--reference" in res.stdout
    res = hila("--version")
    assert res.returncode == 0 and res.stdout.startswith("hila ")


@pytest.mark.parametrize("name", ["Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"])
def test_seg_roundtrip_through_cli(tmp_path, name):
    src = FIXTURES / name
    out = tmp_path / name
    res = hila("convert", src, out)
    assert res.returncode == 0, res.stderr
    a, b = slicerio.read_segmentation(str(src)), slicerio.read_segmentation(str(out))
    assert [(s["id"], s["name"], s["labelValue"], s["layer"]) for s in a["segments"]] == \
           [(s["id"], s["name"], s["labelValue"], s["layer"]) for s in b["segments"]]
    assert np.array_equal(a["voxels"], b["voxels"]) and np.allclose(a["ijkToLPS"], b["ijkToLPS"])


def test_label_map_to_seg_with_names_and_reference_and_back(tmp_path):
    ct = FIXTURES / "pelvic_ct_small.nrrd"
    out = tmp_path / "ct.seg.nrrd"
    res = hila("convert", FIXTURES / "pelvic_ct_small_labels.nii.gz", out,
               "--names", "1=prostate,2=bladder,3=rectum", "--reference", ct, "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["output_kind"] == "segmentation"
    assert [s["name"] for s in result["segments"]][:3] == ["prostate", "bladder", "rectum"]
    vol = sitk.ReadImage(str(ct))
    seg_img = sitk.ReadImage(str(out))
    # with --reference the output has the image's geometry exactly (the NIfTI label only to float32)
    assert seg_img.GetSize() == vol.GetSize()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(seg_img, get)() == getattr(vol, get)()
    names = [s["name"] for s in slicerio.read_segmentation(str(out))["segments"]]
    assert names[:3] == ["prostate", "bladder", "rectum"]

    back = tmp_path / "labels.nii.gz"
    res = hila("convert", out, back)
    assert res.returncode == 0, res.stderr
    orig = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "pelvic_ct_small_labels.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(back))), orig)


def test_image_format_change_and_dicom_folder(tmp_path):
    src = FIXTURES / "prostate_mri_oblique_small.nrrd"
    for suffix in (".mha", ".nii.gz", ".mhd"):
        out = tmp_path / f"mri{suffix}"
        res = hila("convert", src, out)
        assert res.returncode == 0, res.stderr
        a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
        assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    ct = sitk.ReadImage(str(FIXTURES / "pelvic_ct_small.nrrd"))
    folder = tmp_path / "dicom"
    write_dicom_series(ct, folder, "1.2.826.0.1.3680043.8.498.7")
    res = hila("convert", folder, tmp_path / "from_dicom.nrrd")
    assert res.returncode == 0, res.stderr
    back = sitk.ReadImage(str(tmp_path / "from_dicom.nrrd"))
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))


def test_real_prostatex_dicom_folder_converts_to_its_nrrd(tmp_path):
    folder = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    ref = sitk.ReadImage(str(shared("prostate_mri", "ProstateX-0000_t2_s4.nrrd")))
    out = tmp_path / "px0.nrrd"
    res = hila("convert", folder, out)
    assert res.returncode == 0, res.stderr
    img = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayViewFromImage(img), sitk.GetArrayViewFromImage(ref))
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.abs(np.subtract(getattr(img, get)(), getattr(ref, get)())).max() < 1e-6


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

def _make_bad_inputs(tmp: Path) -> dict:
    ct = sitk.ReadImage(str(FIXTURES / "pelvic_ct_small.nrrd"))
    (tmp / "garbage.nrrd").write_bytes(b"NRRD0004\ntype: garbage\n")
    data = (FIXTURES / "pelvic_ct_small.nrrd").read_bytes()
    (tmp / "truncated.nrrd").write_bytes(data[: len(data) // 3])
    lab = (FIXTURES / "pelvic_ct_small_labels.nii.gz").read_bytes()
    (tmp / "truncated_labels.nii.gz").write_bytes(lab[: len(lab) // 2])
    sitk.WriteImage(ct[:, :, 2], str(tmp / "flat.nrrd"))
    sitk.WriteImage(sitk.JoinSeries([ct, ct]), str(tmp / "four.nrrd"))
    seg = (FIXTURES / "Segmentation.seg.nrrd").read_bytes()
    cut = seg.index(b"\n\n")
    head = b"\n".join(ln for ln in seg[:cut].split(b"\n") if not ln.startswith(b"Segment2_Name:="))
    (tmp / "inconsistent.seg.nrrd").write_bytes(head + seg[cut:])
    (tmp / "nodicom").mkdir()
    (tmp / "nodicom" / "readme.txt").write_text("no images here", encoding="utf-8")
    write_dicom_series(ct[:, :, :3], tmp / "twoseries", "1.2.826.0.1.3680043.8.498.11", prefix="a")
    write_dicom_series(ct[:, :, :3], tmp / "twoseries", "1.2.826.0.1.3680043.8.498.12", prefix="b")
    return {
        "missing": (["convert", tmp / "nope.nii.gz", "{out}.nrrd"], ["nope.nii.gz", "no such file"]),
        "corrupt": (["convert", tmp / "garbage.nrrd", "{out}.nrrd"], ["garbage.nrrd", "garbage"]),
        "truncated": (["convert", tmp / "truncated.nrrd", "{out}.nii.gz"], ["truncated.nrrd"]),
        "truncated_label": (["convert", tmp / "truncated_labels.nii.gz", "{out}.seg.nrrd"], ["truncated"]),
        "2d": (["convert", tmp / "flat.nrrd", "{out}.nrrd"], ["flat.nrrd", "2-D"]),
        "4d": (["convert", tmp / "four.nrrd", "{out}.nrrd"], ["four.nrrd", "4-D"]),
        "inconsistent_seg": (["convert", tmp / "inconsistent.seg.nrrd", "{out}.seg.nrrd"],
                             ["inconsistent.seg.nrrd", "Segment2_Name is missing"]),
        "label_on_other_grid": (["convert", FIXTURES / "pelvic_ct_small_labels.nii.gz", "{out}.seg.nrrd",
                                 "--reference", FIXTURES / "prostate_mri_oblique_small.nrrd"],
                                ["pelvic_ct_small_labels.nii.gz", "label grid", "image grid"]),
        "dicom_none": (["convert", tmp / "nodicom", "{out}.nrrd"], ["nodicom", "no DICOM series"]),
        "dicom_several": (["convert", tmp / "twoseries", "{out}.nrrd"],
                          ["2 DICOM series", "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"]),
        "intensity_as_labels": (["convert", FIXTURES / "pelvic_ct_small.nrrd", "{out}.seg.nrrd"], ["not a label map"]),
        "bad_output_type": (["convert", FIXTURES / "pelvic_ct_small.nrrd", "{out}.png"], ["unsupported output"]),
        "bad_names": (["convert", FIXTURES / "pelvic_ct_small_labels.nii.gz", "{out}.seg.nrrd", "--names", "prostate"],
                      ["VALUE=NAME"]),
        "names_on_image": (["convert", FIXTURES / "pelvic_ct_small.nrrd", "{out}.mha", "--names", "1=a"], ["--names"]),
    }


def test_every_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = _make_bad_inputs(inputs)
    outdir = tmp_path / "out"
    outdir.mkdir()
    for case, (args, fragments) in cases.items():
        out = outdir / case
        argv = [str(a).replace("{out}", str(out)) for a in args]
        res = hila(*argv)
        assert_clean_failure(res, *fragments)
        assert list(outdir.iterdir()) == [], (case, list(outdir.iterdir()))


def test_failure_keeps_an_existing_output_untouched(tmp_path):
    out = tmp_path / "keep.nrrd"
    out.write_bytes(b"previous content")
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: garbage\n")
    res = hila("convert", bad, out)
    assert_clean_failure(res)
    assert out.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nrrd", "keep.nrrd"]
