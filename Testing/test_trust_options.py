"""Options, environment and resources are validated before any work (issue 22, class 5), and the weak
answers of the same red team (a numpy warning leaking, a message blaming a box nobody gave, a box kilometres
wide accepted, a BOM in a manifest, a simulate run folder poisoned by a refused option).

Each bad value is one ``hila: error:`` line naming the option or variable, with nothing recorded: no
training run row, no cache, no run folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import SimpleITK as sitk
from conftest import ROOT
from tiny_models import synthetic_workspace
from ws_worker import make_volume, state

from HILASegmentLib.cli import argtypes, main
from HILASegmentLib.ground import envvars
from HILASegmentLib.ground.errors import HilaError

HUGE = "9" * 360


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


def refused(capsys, ws, *args, expect=""):
    before = state(ws)
    rc, out, err = run(capsys, *args)
    assert rc == 2 and len(err) == 1 and err[0].startswith("hila: error: "), (args, rc, err)
    assert expect in err[0], (expect, err[0])
    assert state(ws) == before, f"{args}: changed the workspace"
    return err[0]


def hila(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "HILASegmentLib", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture
def ws(tmp_path, capsys):
    root = tmp_path / "ws"
    assert main(["init", str(root), "--modality", "CT", "--labels", "bladder"]) == 0
    make_volume(tmp_path / "ct.nrrd")
    assert main(["import", str(root), str(tmp_path / "ct.nrrd")]) == 0
    capsys.readouterr()
    return root


# ---------------------------------------------------------------------------------------------
# environment variables
# ---------------------------------------------------------------------------------------------

def test_a_bad_ledger_timeout_is_one_line_not_a_traceback_at_import(ws):
    """E04: HILA_LEDGER_TIMEOUT=abc made every workspace command die at import."""
    for value in ("abc", "0", "-5", "nan", "inf"):
        res = hila("status", ws, env_extra={"HILA_LEDGER_TIMEOUT": value})
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and "HILA_LEDGER_TIMEOUT" in lines[0], (value, res.stderr)
    assert hila("status", ws, env_extra={"HILA_LEDGER_TIMEOUT": "12.5"}).returncode == 0


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
def test_a_bad_dicomweb_timeout_is_one_line_naming_it(ws, capsys, monkeypatch, value):
    """E01/E02: HILA_DICOMWEB_TIMEOUT=abc (a traceback from float) and 0 (a traceback from requests)."""
    monkeypatch.setenv("HILA_DICOMWEB_TIMEOUT", value)
    line = refused(capsys, ws, "sync", ws, "--dicomweb", "http://127.0.0.1:1/dicom-web", expect="HILA_DICOMWEB_TIMEOUT")
    assert repr(value) in line


def test_every_numeric_variable_has_one_parser():
    assert envvars.seconds("HILA_LEDGER_TIMEOUT", {}) == 300.0
    assert envvars.seconds("HILA_DICOMWEB_TIMEOUT", {"HILA_DICOMWEB_TIMEOUT": " 7 "}) == 7.0
    with pytest.raises(HilaError, match="HILA_DICOMWEB_TIMEOUT"):
        envvars.check_all({"HILA_DICOMWEB_TIMEOUT": "1e999"})


# ---------------------------------------------------------------------------------------------
# integer options
# ---------------------------------------------------------------------------------------------

def test_every_integer_option_refuses_a_360_digit_number(ws, capsys):
    """R09c: a 360-digit integer overflowed float() in argtypes with a traceback, for every integer option."""
    for opt in ("--steps", "--batch", "--seed", "--gate-min-cases", "--nproc", "--threads"):
        refused(capsys, ws, "train", ws, opt, HUGE, expect=opt)
    for opt in ("--test", "--initial", "--per-round", "--rounds", "--seed", "--threads"):
        rc, _, err = run(capsys, "simulate", "--out", ws.parent / "run", "--synthetic", ws, "--labels", "a=1", opt, HUGE)
        assert rc == 2 and len(err) == 1 and opt in err[0], (opt, err)
    refused(capsys, ws, "train", ws, "--channels", "8", expect="--channels")  # one level: a traceback in MONAI
    rc, _, err = run(capsys, "train", ws, "--patch", f"{HUGE},16,16")
    assert rc == 2 and len(err) == 1 and "--patch" in err[0]
    with pytest.raises(Exception, match="must be"):
        argtypes.integer(1)(str(2 ** 63))


def test_models_promote_a_huge_version_is_one_line(ws, capsys):
    """A07: models promote 99999999999999999999999 (OverflowError from SQLite)."""
    refused(capsys, ws, "models", ws, "promote", "99999999999999999999999", expect="model version")
    refused(capsys, ws, "models", ws, "promote", "9" * 5000, expect="model version")
    refused(capsys, ws, "infer", ws, "c0001", "--model", "9" * 30, expect="--model")


@pytest.mark.parametrize("command", ["train", "infer"])
def test_threads_beyond_the_machine_are_refused(ws, capsys, command):
    """A17/A18/A19: train --threads 100000 (a segmentation fault), infer --threads 2000 (a hang)."""
    n = argtypes.machine_threads()
    args = [command, ws] + (["c0001"] if command == "infer" else []) + ["--threads", str(n + 1)]
    line = refused(capsys, ws, *args, expect="--threads")
    assert f"{n} CPU core" in line
    refused(capsys, ws, *args[:-1], "100000", expect="--threads")
    if command == "train":  # --nproc 100000 started 100000 processes
        refused(capsys, ws, "train", ws, "--nproc", str(n + 1), expect="--nproc")
        if n > 1:
            refused(capsys, ws, "train", ws, "--nproc", "2", "--threads", str(n), expect="CPU cores")


# ---------------------------------------------------------------------------------------------
# training resources: estimated and refused before a run row
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_ws(tmp_path_factory):
    pytest.importorskip("torch", reason="could not import 'torch'")
    pytest.importorskip("monai", reason="could not import 'monai'")
    ws, ids, _ = synthetic_workspace(tmp_path_factory.mktemp("train"), seeds=[1, 2], corrected=2)
    ws.close()
    return ws.root


@pytest.mark.parametrize("option,value,expect", [
    ("--batch", "5000", "would need about"),                 # A14: still computing after 90 s
    ("--channels", "4096,8192", "would need about"),         # A15: 8.9 GB, then a traceback
    ("--patch", "512,512,512", "larger than every image"),   # A16: 10.5 GB, a traceback in MONAI (the plan refuses it first)
    ("--spacing", "1e-6,1e-6,1e-6", "voxels"),               # R10c: OverflowError in modelgrid, a failed run
    ("--max-minutes", "1e-300", "too short"),                # R09b: a failed run row and a cache first
])
def test_a_round_that_cannot_fit_is_refused_before_its_run_row(train_ws, capsys, option, value, expect):
    line = refused(capsys, train_ws, "train", train_ws, "--steps", "2", option, value, expect=expect)
    assert not (train_ws / "cache").exists() or not any((train_ws / "cache").rglob("*.npz"))
    if expect == "would need about":
        assert "GB" in line and ("available" in line or "left" in line or "free" in line)


# ---------------------------------------------------------------------------------------------
# weak marks (A09, A10, A11)
# ---------------------------------------------------------------------------------------------

def test_marks_far_outside_the_image_are_refused_naming_its_extent(ws, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A09: a numpy RuntimeWarning leaked
        line = refused(capsys, ws, "submit", ws, "c0001", "--label", "bladder", "--box=-20,20,100,20,60,1e308",
                       expect="beyond the image")
        assert "-9223372036854775808" not in line
        refused(capsys, ws, "submit", ws, "c0001", "--label", "bladder",  # A11: a box 4 km wide
                "--box=-2000000,-2000000,-2000000,2000000,2000000,2000000", expect="spans")
        refused(capsys, ws, "submit", ws, "c0001", "--label", "bladder",
                "--lines=0,0,0,1e308,0,0;0,-5,0,0,5,0", expect="beyond the image")
    # A10: the same line twice is named as such, not as "a box of zero size"
    line = refused(capsys, ws, "submit", ws, "c0001", "--label", "bladder", "--lines=0,10,10,10,20,20;0,10,10,10,20,20",
                   expect="parallel")
    assert "box" not in line
    # a box reaching a little past the image edge is still fine
    rc, _, err = run(capsys, "submit", ws, "c0001", "--label", "bladder", "--box=-12,7,3,12,30,40")
    assert rc == 0, err


# ---------------------------------------------------------------------------------------------
# simulate: refused before RUN is written; a manifest saved by Excel
# ---------------------------------------------------------------------------------------------

def test_simulate_refused_for_its_labels_writes_no_run_folder(tmp_path, capsys):
    """X05: --labels prostate=1,prostate=2 was refused after RUN/config.json and the cases were written."""
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    for i in range(3):
        img = make_volume(tmp_path / f"v{i}.nrrd", seed=i)
        lab = sitk.Cast(img > 300, sitk.sitkUInt8)
        sitk.WriteImage(lab, str(shapes / f"s{i}.nii.gz"))
    out = tmp_path / "run"
    rc, _, err = run(capsys, "simulate", "--out", out, "--synthetic", shapes, "--labels", "prostate=1,Prostate=1",
                     "--test", "1", "--initial", "1", "--rounds", "0")
    assert rc == 2 and len(err) == 1 and "duplicate" in err[0], err
    assert not out.exists()


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path):
    """X02: Excel's 'CSV UTF-8' starts with a BOM; 'manifest lacks column(s) case' blamed the column."""
    from HILASegmentLib.simulate.cohort import from_manifest

    for i in range(2):
        img = make_volume(tmp_path / f"img{i}.nrrd", seed=i)
        sitk.WriteImage(sitk.Cast(img > 300, sitk.sitkUInt8), str(tmp_path / f"ref{i}.nrrd"))
    csv = tmp_path / "m.csv"
    csv.write_bytes("\ufeffcase,image,reference\r\n../a/b,img0.nrrd,ref0.nrrd\r\nc1,img1.nrrd,ref1.nrrd\r\n".encode())
    cases = from_manifest(csv)
    assert [c.case for c in cases] == ["a_b", "c1"]  # and a case name is a file name, never a path
