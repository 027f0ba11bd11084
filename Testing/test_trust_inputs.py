"""Bad inputs a new user tries, by class (issue 10): every case is refused with one line naming the file
and the problem, and nothing changes; or the geometry is kept exactly.

Classes: an output equal to an input or to another output (every writing command); a sheared grid that
NIfTI cannot hold (every writer); a DICOM series with a missing, duplicated or truncated slice; NaN,
infinities and out-of-range values in every numeric option; a one-slice image; a symlink loop, a broken
link or a permission problem named as such; label names outside ASCII.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from tiny_models import phantom, rotation, tiny_model
from ws_worker import make_label, make_volume, state

from HILASegmentLib.cli import argtypes, build_parser, main
from HILASegmentLib.formats import gridcheck
from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.ground.paths import check_readable

SHEAR = (1, 0.3, 0, 0, 0.954, 0, 0, 0, 1)  # axes 1 and 2 at 72.5 degrees


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def tree(folder):
    """Every file under ``folder`` with its bytes (what 'nothing changed' means)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder, *args, expect="", snapshot=tree):
    """Run the CLI; it must exit 2 with one 'hila: error:' line containing ``expect`` and leave ``folder`` as it
    was (``snapshot``: its files' bytes, or ws_worker.state for a workspace's ledger rows and files)."""
    before = snapshot(folder)
    rc, out, err = run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("hila: error: "), (args, rc, err)
    assert expect in lines[0], (expect, lines[0])
    assert snapshot(folder) == before, f"{args}: changed {folder}"
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    img, _ = phantom((40, 36, 12), (1.0, 1.0, 2.5), rotation([1, 0, 0], 20))
    sitk.WriteImage(img, str(d / "img.nrrd"), True)
    sheared = sitk.Image(img)
    sheared.SetDirection(SHEAR)
    sitk.WriteImage(sheared, str(d / "sheared.nrrd"), True)
    return {"dir": d, "image": d / "img.nrrd", "sheared": d / "sheared.nrrd", "model": tiny_model(d)}


# ---------------------------------------------------------------------------------------------
# an output that is an input, or another output
# ---------------------------------------------------------------------------------------------

def test_infer_never_writes_over_its_input_or_one_output_over_another(files, tmp_path, capsys):
    img = tmp_path / "ct.nrrd"
    shutil.copy(files["image"], img)
    os.link(img, tmp_path / "hard.nrrd")
    os.symlink(img, tmp_path / "soft.nrrd")
    m = files["model"]
    base = ["infer", "--image", img, "--model", m]
    refused(capsys, tmp_path, *base, "--out", img, expect="--out is the same file as --image")
    refused(capsys, tmp_path, *base, "--out", tmp_path / "sub" / ".." / "ct.nrrd", expect="same file")
    refused(capsys, tmp_path, *base, "--out", tmp_path / "hard.nrrd", expect="same file")  # a hard link
    refused(capsys, tmp_path, *base, "--out", tmp_path / "soft.nrrd", expect="same file")  # a symbolic link
    refused(capsys, tmp_path, *base, "--out", tmp_path / "o.seg.nrrd", "--uncertainty", img, expect="--uncertainty")
    refused(capsys, tmp_path, *base, "--out", tmp_path / "o.seg.nrrd", "--review-map", img, expect="--review-map")
    refused(capsys, tmp_path, *base, "--out", tmp_path / "o.nrrd", "--uncertainty", tmp_path / "o.nrrd",
            expect="--out and --uncertainty are the same file")
    refused(capsys, tmp_path, *base, "--out", tmp_path / "o.seg.nrrd", "--uncertainty", tmp_path / "u.nrrd",
            "--review-map", tmp_path / "u.nrrd", expect="--uncertainty and --review-map")
    refused(capsys, tmp_path, "infer", "--image", img, "--model", m, "--out", m, expect="--model")


def test_infer_into_the_dicom_folder_it_reads_is_refused(tmp_path, capsys):
    series = tmp_path / "t2"
    shutil.copytree(shared("prostate_mri", "dicom", "ProstateX-0000_t2"), series)
    refused(capsys, tmp_path, "infer", "--image", series, "--out", series / "p.seg.nrrd", "--model", "taps",
            expect="inside the input folder")


def test_convert_export_simulate_refuse_outputs_on_their_inputs(files, tmp_path, capsys):
    img = tmp_path / "a.nrrd"
    shutil.copy(files["image"], img)
    os.symlink(img, tmp_path / "link.nrrd")
    refused(capsys, tmp_path, "convert", img, tmp_path / "link.nrrd", expect="OUT is the same file as IN")
    lab = make_label(make_volume(tmp_path / "v.nrrd"), tmp_path / "l.nrrd")
    assert lab is not None
    refused(capsys, tmp_path, "convert", tmp_path / "l.nrrd", tmp_path / "v.nrrd", "--reference", tmp_path / "v.nrrd",
            expect="--reference")
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "a")[0] == 0
    refused(capsys, tmp_path, "export", ws, ws / "out", expect="inside the input folder WORKSPACE")
    refused(capsys, tmp_path, "export", ws, ws, expect="same file")
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    refused(capsys, tmp_path, "simulate", "--out", shapes / "run", "--synthetic", shapes, "--labels", "p=1",
            expect="inside the input folder --synthetic")


# ---------------------------------------------------------------------------------------------
# sheared grids: never written as another geometry
# ---------------------------------------------------------------------------------------------

def test_sheared_grid_is_refused_for_nifti_and_kept_exactly_elsewhere(files, tmp_path, capsys):
    src = tmp_path / "s.nrrd"
    shutil.copy(files["sheared"], src)
    for out in ("s.nii.gz", "s.nii"):
        refused(capsys, tmp_path, "convert", src, tmp_path / out, expect="sheared (axes 1 and 2 meet at 72.54 degrees)")
    a = sitk.ReadImage(str(src))
    for out in ("k.nrrd", "k.mha"):
        rc, _, err = run(capsys, "convert", src, tmp_path / out)
        assert rc == 0, err
        b = sitk.ReadImage(str(tmp_path / out))
        assert np.abs(gridcheck.image_corners(a) - gridcheck.image_corners(b)).max() < 1e-6
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    # infer writes its label map with the input's grid: NIfTI is refused there too, before any work is done
    refused(capsys, tmp_path, "infer", "--image", src, "--out", tmp_path / "p.nii.gz", "--model", files["model"],
            expect="sheared")
    for extra in ("--uncertainty", "--review-map"):  # the .seg.nrrd could be written; nothing may be, all the same
        refused(capsys, tmp_path, "infer", "--image", src, "--out", tmp_path / "p.seg.nrrd", "--model", files["model"],
                extra, tmp_path / "m.nii.gz", expect="m.nii.gz: the grid is sheared")


def test_any_writer_refuses_a_grid_its_format_would_move(tmp_path, monkeypatch):
    """Behind every write_image: the sheared-grid rule, and a read-back of the written header whose corners must
    match (here a format that drops the origin, simulated); nothing is left at the target either way."""
    from HILASegmentLib.formats import imageio

    img = sitk.Image([5, 6, 7], sitk.sitkUInt8)
    img.SetDirection(SHEAR)
    assert gridcheck.shear(np.eye(3).ravel()) is None and gridcheck.shear(rotation([1, 2, 3], 40).ravel()) is None
    with pytest.raises(HilaError, match="sheared"):
        imageio.write_image(img, tmp_path / "never.nii.gz")
    plain = sitk.Image([5, 6, 7], sitk.sitkUInt8)
    plain.SetOrigin((10.0, 0.0, 0.0))
    real_write = sitk.WriteImage

    def drops_origin(image, path, *a):
        moved = sitk.Image(image)
        moved.SetOrigin((0.0, 0.0, 0.0))
        return real_write(moved, path, *a)

    monkeypatch.setattr(imageio.sitk, "WriteImage", drops_origin)
    with pytest.raises(HilaError, match=r"corners would move by 10 mm"):
        imageio.write_image(plain, tmp_path / "moved.mha")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# DICOM series with a missing, duplicated or truncated slice
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage,expect", [
    ("missing", "1 slice(s) missing between"),
    ("duplicated", "a duplicated slice"),
    ("truncated", "not read as part of the series: 1-10.dcm"),
])
def test_dicom_series_with_a_gap_is_refused_naming_it(tmp_path, capsys, damage, expect):
    series = tmp_path / "t2"
    shutil.copytree(shared("prostate_mri", "dicom", "ProstateX-0000_t2"), series)
    f = series / "1-10.dcm"
    if damage == "missing":
        f.unlink()
    elif damage == "duplicated":
        shutil.copy(f, series / "1-10-copy.dcm")
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = refused(capsys, tmp_path, "convert", series, tmp_path / "t2.nrrd", expect=expect)
    why = "cannot be read exactly" if damage == "duplicated" else "not evenly spaced"
    assert why in line and str(series) in line
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "MR", "--labels", "prostate")[0] == 0
    refused(capsys, tmp_path, "import", ws, series, expect=why)


def test_a_whole_dicom_series_still_reads_on_its_grid(tmp_path):
    from HILASegmentLib.formats.imageio import read_image

    series = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    img = read_image(series)
    assert img.GetSize()[2] == len(list(series.glob("*.dcm")))


def test_slice_gap_rules():
    z = [0.0, 3.0, 6.0, 9.0]
    names = ["a", "b", "c", "d"]
    assert gridcheck.slice_gap(z, names) is None
    assert gridcheck.slice_gap([0, 3, 9, 12], names).startswith("1 slice(s) missing between b")
    assert gridcheck.slice_gap([0, 3, 3, 6], names).startswith("a duplicated slice: b and c")
    assert "uneven slice positions: b" in gridcheck.slice_gap([0, 3, 4.4, 7.4], names)
    assert gridcheck.slice_gap([9, 6, 3, 0], names) is None  # descending order is still even


# ---------------------------------------------------------------------------------------------
# numeric options: every one refuses NaN, infinities and values outside its range
# ---------------------------------------------------------------------------------------------

def _numeric_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for cmd, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and a.type is not None:
                found.append((cmd, a.option_strings[-1], a.type))
    return found


def test_no_option_parses_bare_int_or_float():
    """float('nan') parses: every numeric option goes through HILASegmentLib.cli.argtypes."""
    bare = [(c, o) for c, o, t in _numeric_options() if t in (int, float)]
    assert not bare, bare
    assert len([1 for c, o, t in _numeric_options() if getattr(t, "__module__", "") == argtypes.__name__]) >= 20


@pytest.mark.parametrize("cmd,opt", [(c, o) for c, o, t in _numeric_options() if getattr(t, "__module__", "") == argtypes.__name__])
def test_every_numeric_option_refuses_nan_and_infinity(cmd, opt, tmp_path, capsys):
    for bad in ("nan", "inf", "-inf", "1e999"):
        value = f"reviewed={bad}" if opt == "--quality-weights" else bad
        refused(capsys, tmp_path, cmd, opt, value, expect=opt)


@pytest.mark.parametrize("argv,expect", [
    (["--patch", "0,0,0"], "--patch"), (["--patch", "32,32"], "--patch"), (["--spacing", "0,-1,3"], "--spacing"),
    (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"), (["--max-minutes", "nan"], "--max-minutes"),
    (["--max-minutes", "inf"], "--max-minutes"), (["--max-minutes", "0"], "--max-minutes"),
    (["--steps", "0"], "--steps"), (["--batch", "-2"], "--batch"), (["--channels", "16,0"], "--channels"),
    (["--quality-weights", "great=1"], "--quality-weights"), (["--threads", "0"], "--threads"),
])
def test_train_refuses_bad_numbers_before_a_run_exists(tmp_path, capsys, argv, expect):
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate")[0] == 0
    vol = make_volume(tmp_path / "v.nrrd")
    assert run(capsys, "import", ws, tmp_path / "v.nrrd")[0] == 0
    make_label(vol, tmp_path / "l.nrrd", boxes={1: (6, 14, 8, 20, 8, 20)})
    assert run(capsys, "submit", ws, "c0001", tmp_path / "l.nrrd")[0] == 0
    before = state(ws)
    refused(capsys, tmp_path, "train", ws, *argv, expect=expect)
    assert state(ws) == before  # no run row, no candidate


def test_argtypes_in_their_own_words():
    assert argtypes.real(0.0, 1.0)("0.5") == 0.5
    assert argtypes.int_list(3)("16x16x8") == [16, 16, 8]
    assert argtypes.real_list(3)("0.8,0.8,3") == [0.8, 0.8, 3.0]
    assert argtypes.weights(["rough"])("rough=0.5") == {"rough": 0.5}
    for parse, text in ((argtypes.positive, "nan"), (argtypes.positive, "-0"), (argtypes.integer(1), "1.5"),
                        (argtypes.real_list(3), "1,2,inf"), (argtypes.real(0, 1), "1.01")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert math.isfinite(argtypes.positive("1e-300"))


# ---------------------------------------------------------------------------------------------
# a one-slice image, a symlink loop, a broken link, no permission, non-ASCII label names
# ---------------------------------------------------------------------------------------------

def test_one_slice_image_says_so_instead_of_an_empty_result(files, tmp_path, capsys):
    img = sitk.ReadImage(str(files["image"]))[:, :, 5:6]
    sitk.WriteImage(img, str(tmp_path / "one.nrrd"))
    refused(capsys, tmp_path, "infer", "--image", tmp_path / "one.nrrd", "--out", tmp_path / "o.seg.nrrd",
            "--model", files["model"], expect="a single slice (40x36x1 voxels)")


def test_links_and_permissions_are_named(files, tmp_path, capsys, monkeypatch):
    os.symlink(tmp_path / "loop_b.nrrd", tmp_path / "loop_a.nrrd")
    os.symlink(tmp_path / "loop_a.nrrd", tmp_path / "loop_b.nrrd")
    os.symlink(tmp_path / "gone.nrrd", tmp_path / "broken.nrrd")
    for cmd in (["convert", "{f}", tmp_path / "o.nrrd"],
                ["infer", "--image", "{f}", "--out", tmp_path / "o.seg.nrrd", "--model", files["model"]]):
        for f, expect in (("loop_a.nrrd", "symbolic link loop"), ("broken.nrrd", "broken symbolic link"),
                          ("missing.nrrd", "no such file")):
            argv = [tmp_path / f if a == "{f}" else a for a in cmd]
            refused(capsys, tmp_path, *argv, expect=expect)
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate")[0] == 0
    refused(capsys, tmp_path, "status", tmp_path / "loop_a.nrrd", expect="symbolic link loop")
    # permission: this suite may run as root (which reads anything), so the denial comes from the OS calls
    shutil.copy(files["image"], tmp_path / "locked.nrrd")
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith("locked.nrrd"))
    refused(capsys, tmp_path, "convert", tmp_path / "locked.nrrd", tmp_path / "o.nrrd", expect="permission denied")
    real_stat = os.stat

    def no_search(p, *a, **k):
        if str(p).endswith("hidden.nrrd"):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_stat(p, *a, **k)

    monkeypatch.setattr(os, "stat", no_search)
    with pytest.raises(HilaError, match="permission denied"):
        check_readable(tmp_path / "hidden.nrrd")


def test_label_names_must_be_ascii_and_the_message_says_so(tmp_path, capsys):
    line = refused(capsys, tmp_path, "init", tmp_path / "w", "--modality", "CT", "--labels", "prostata,vescìca",
                   expect="ì not allowed")
    assert "ASCII" in line and not (tmp_path / "w").exists()


def test_a_model_grid_too_fine_for_the_image_is_one_line_not_an_allocation_failure(files, tmp_path, capsys):
    from tiny_models import tiny_model

    from HILASegmentLib.models.modelgrid import MAX_GRID_VOXELS, model_grid

    img = sitk.ReadImage(str(files["image"]))
    with pytest.raises(HilaError, match="far beyond what fits in memory"):
        model_grid(img, (0.001, 0.001, 0.001))
    g = model_grid(img, (0.1, 0.1, 0.1))
    assert np.prod(g.size) <= MAX_GRID_VOXELS
    fine = tiny_model(tmp_path, "sigmoid", name="fine.onnx", spacing=(0.001, 0.001, 0.001))
    refused(capsys, tmp_path, "infer", "--image", files["image"], "--out", tmp_path / "o.seg.nrrd", "--model", fine,
            expect="the spacing is too fine")


@pytest.mark.parametrize("key,value", [("noise_sd", math.nan), ("blur_sd_mm", math.inf), ("case_jitter", -math.inf)])
def test_numbers_in_a_simulate_appearance_file_must_be_finite(tmp_path, key, value):
    """JSON as Python reads it accepts NaN and Infinity: the same class as NaN on the command line."""
    import json

    from HILASegmentLib.simulate import synthesis

    a = json.loads(json.dumps(synthesis.PRESETS["t2w"]))
    a[key] = value
    (tmp_path / "app.json").write_text(json.dumps(a), encoding="utf-8")
    with pytest.raises(HilaError, match="must be a finite number"):
        synthesis.load_appearance(str(tmp_path / "app.json"))
