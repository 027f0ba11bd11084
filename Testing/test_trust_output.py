"""Output for machines is strict, and a failed command has no side effects (issue 22, classes 7 and 8).

Every ``--json`` line parses as strict RFC 8259 JSON (no NaN or Infinity, whatever a model produced); a
reader that closes stdout early (``| head``) ends hila quietly. A command that fails leaves nothing behind:
``infer WS CASE --uncertainty`` that cannot write its map stores no prediction; the hidden staging folder a
SIGKILLed ``export`` or ``convert`` leaves is removed by the next run.
"""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT
from tiny_models import tiny_model
from ws_worker import make_label, make_volume, state

from HILASegmentLib.cli import emit, main
from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.ground.progress import JsonLinesProgress


def strict(line: str):
    """json.loads that refuses NaN/Infinity (RFC 8259 has no such numbers)."""
    def no(c):
        raise ValueError(f"not RFC 8259 JSON: {c}")
    return json.loads(line, parse_constant=no)


@pytest.fixture
def ws(tmp_path, capsys):
    root = tmp_path / "ws"
    model = tiny_model(tmp_path, modality="CT", normalization={"kind": "ct_window", "level": 40, "width": 400})
    assert main(["init", str(root), "--modality", "CT", "--model", str(model)]) == 0
    make_volume(tmp_path / "ct.nrrd")
    assert main(["import", str(root), str(tmp_path / "ct.nrrd"), "--modality-override"]) == 0
    capsys.readouterr()
    return root


# ---------------------------------------------------------------------------------------------
# strict JSON
# ---------------------------------------------------------------------------------------------

def test_every_json_line_is_strict_whatever_the_values(capsys):
    class Args:
        json = True

    emit(Args(), {"dice": float("nan"), "loss": np.float32("inf"), "per_case": [np.float64("-inf"), 0.5],
                  "path": Path("/x"), "arr": np.array([1.0, np.nan])}, "")
    buf = io.StringIO()
    JsonLinesProgress(stream=buf)(0.5, "step 1", loss=float("nan"), val_dice=np.float32("nan"))
    lines = capsys.readouterr().out.splitlines() + buf.getvalue().splitlines()
    parsed = [strict(ln) for ln in lines]
    assert parsed[0]["dice"] is None and parsed[0]["loss"] is None and parsed[0]["per_case"] == [None, 0.5]
    assert parsed[0]["arr"] == [1.0, None] and parsed[1]["loss"] is None


def test_json_of_a_real_command_is_strict(ws, capsys):
    for args in (["status", ws, "--json"], ["models", ws, "--json"], ["infer", ws, "c0001", "--json"]):
        rc = main([str(a) for a in args])
        out = capsys.readouterr().out
        assert rc == 0
        for ln in out.splitlines():
            strict(ln)


# ---------------------------------------------------------------------------------------------
# a closed stdout
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["models", "--json"], ["status"], ["status", "--json"]])
def test_a_closed_stdout_ends_quietly(ws, args):
    """J03: `hila models WS --json | head -c 0` printed a BrokenPipeError traceback twice."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    cmd = [sys.executable, "-m", "HILASegmentLib", args[0], str(ws), *args[1:]]
    r, w = os.pipe()
    os.close(r)  # the reader is gone before hila writes (head -c 0)
    proc = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(w)
    assert "Traceback" not in proc.stderr and len([ln for ln in proc.stderr.splitlines() if ln.strip()]) <= 1, proc.stderr
    assert proc.returncode in (0, 141, -13), proc.returncode


# ---------------------------------------------------------------------------------------------
# no side effects
# ---------------------------------------------------------------------------------------------

def _unwritable_ro(tmp_path, monkeypatch) -> None:
    """Every image written under ``tmp_path/ro`` fails as a read-only folder would (hila writes through imageio)."""
    from HILASegmentLib.formats import imageio

    real = imageio.write_image

    def unwritable(img, path, *a, **k):
        if "ro" in Path(path).parts:
            raise HilaError(f"{path}: cannot write: permission denied")
        return real(img, path, *a, **k)

    monkeypatch.setattr(imageio, "write_image", unwritable)
    (tmp_path / "ro").mkdir()


def test_infer_that_cannot_write_its_map_stores_no_prediction(ws, tmp_path, capsys, monkeypatch):
    """W22: the prediction was stored, then the unwritable --uncertainty failed (one more prediction per try)."""
    _unwritable_ro(tmp_path, monkeypatch)
    before = state(ws)
    for _ in range(2):  # a retrying script
        rc = main(["infer", str(ws), "c0001", "--uncertainty", str(tmp_path / "ro" / "u.nrrd")])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 2 and len(err) == 1 and "permission denied" in err[0], err
    assert state(ws) == before
    # and the review map written before a failing store is taken away again
    rc = main(["infer", str(ws), "c0001", "--uncertainty", str(tmp_path / "u.nrrd"), "--review-map",
               str(tmp_path / "ro" / "r.nrrd")])
    assert rc == 2 and not (tmp_path / "u.nrrd").exists() and state(ws) == before


def test_infer_image_that_cannot_write_its_map_leaves_no_label(ws, tmp_path, capsys, monkeypatch):
    """The file form of W22: --out was written, then the unwritable --uncertainty failed."""
    _unwritable_ro(tmp_path, monkeypatch)
    rc = main(["infer", "--image", str(tmp_path / "ct.nrrd"), "--model", str(tmp_path / "tiny.onnx"), "--out",
               str(tmp_path / "o.seg.nrrd"), "--uncertainty", str(tmp_path / "ro" / "u.nrrd")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    assert not (tmp_path / "o.seg.nrrd").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export(ws, tmp_path, capsys):
    """W15: `.out.export-XXXX/` with a partial CT stayed forever after a SIGKILL."""
    img = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    make_label(img, tmp_path / "lab.nrrd", boxes={1: (6, 14, 8, 20, 8, 20)})
    assert main(["submit", str(ws), "c0001", str(tmp_path / "lab.nrrd")]) == 0
    dest = tmp_path / "exp"
    dest.mkdir()
    stale = dest / f".out.export-{_dead_pid()}-abc123"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "partial.nii.gz").write_bytes(b"half")
    alive = dest / f".out.export-{os.getpid()}-live01"  # a running export's: left alone
    alive.mkdir()
    other = dest / ".unrelated.export-1-x"  # not ours
    other.mkdir()
    assert main(["export", str(ws), str(dest / "out")]) == 0
    assert not stale.exists() and alive.exists() and other.exists()
    assert (dest / "out" / "manifest.json").is_file()


def test_a_killed_converts_staging_folder_is_removed_by_the_next_convert(tmp_path, capsys):
    """W16: `.x.nii.gz.XXXX.tmp/` with a 12 MB partial file stayed forever."""
    make_volume(tmp_path / "ct.nrrd")
    out = tmp_path / "o"
    out.mkdir()
    stale = out / f".x.nii.gz.tmp-{_dead_pid()}-zz9"
    stale.mkdir()
    (stale / "x.nii.gz").write_bytes(b"partial")
    assert main(["convert", str(tmp_path / "ct.nrrd"), str(out / "x.nii.gz")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.nii.gz"]
    assert math.isclose(sitk.ReadImage(str(out / "x.nii.gz")).GetSpacing()[2], 2.0)
