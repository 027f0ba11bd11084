"""Batch mode and the Segment button's child process, run for real without Slicer.

Slicer itself cannot run here, so this covers what can be run honestly: the batch script's plain
Python path (it says on stderr that Slicer is absent), its exit codes and one-line errors, and the
exact child command the Segment button starts (``python -m HILASegmentLib infer ... --json``)
through the process runner, with the tiny bundled model and a real oblique MRI crop. The outputs
are read back with slicerio, the reader written by Slicer's developers.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from HILASegmentSlicerLib.processrunner import ProcessRunner, engine_command

ROOT = Path(__file__).resolve().parents[1]
BATCH = ROOT / "scripts" / "hila_slicer_batch.py"
TINY = ROOT / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"
MRI = ROOT / "Testing" / "Data" / "prostate_mri_oblique_small.nrrd"


def run_batch(*args):
    return subprocess.run([sys.executable, str(BATCH), *map(str, args)], capture_output=True, text=True, timeout=300)


def check_seg(path: Path, image_path: Path):
    seg = slicerio.read_segmentation(str(path))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["prostate"]
    img = sitk.ReadImage(str(image_path))
    labels = sitk.ReadImage(str(path))
    assert labels.GetSize()[:3] == img.GetSize()
    np.testing.assert_allclose(labels.GetOrigin()[:3], img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(np.array(labels.GetDirection()).reshape(labels.GetDimension(), -1)[:3, :3],
                               np.array(img.GetDirection()).reshape(3, 3), atol=1e-6)
    assert sitk.GetArrayFromImage(labels).any()
    return seg


def test_batch_script_plain_python_segments_and_says_slicer_is_absent(tmp_path):
    out = tmp_path / "case.seg.nrrd"
    r = run_batch("--image", MRI, "--out", out, "--model", TINY)
    assert r.returncode == 0, r.stderr
    assert "Slicer not found" in r.stderr
    assert r.stdout.startswith(str(out)) and "hila-tiny-test" in r.stdout
    seg = check_seg(out, MRI)
    tags = seg["segments"][0]["tags"]
    assert tags["HILA.model"] == "hila-tiny-test" and tags["HILA.model_version"] == "1"  # provenance on the segment


@pytest.mark.parametrize("args, needle", [
    (["--image", "/nonexistent.nrrd", "--out", "x.seg.nrrd"], "no such file"),
    (["--image", MRI, "--out", "x.nii.gz"], "must end in .seg.nrrd"),
    (["--image", MRI, "--out", "/nonexistent-dir/x.seg.nrrd"], "output folder does not exist"),
    (["--image", MRI, "--out", "OUT", "--model", "/nonexistent.onnx"], "nonexistent.onnx"),
])
def test_batch_script_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    args = [str(tmp_path / "x.seg.nrrd") if a == "OUT" else a for a in args]
    r = run_batch(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [l for l in r.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def test_batch_script_usage_errors_and_testing_mode(tmp_path):
    r = run_batch("--image", MRI)
    assert r.returncode == 2 and "--out" in r.stderr
    r = run_batch("--image", "/nonexistent.nrrd", "--out", tmp_path / "x.seg.nrrd", "--testing")
    assert r.returncode == 2, "under --testing too, bad input must exit 2 (a returned code would become 0)"
    assert r.stderr.strip().splitlines()[-1].startswith("hila_slicer_batch: error: /nonexistent.nrrd")
    spec = importlib.util.spec_from_file_location("hila_slicer_batch", BATCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--image", "/nonexistent.nrrd", "--out", str(tmp_path / "x.seg.nrrd")]) == 2
    assert mod.import_slicer() is None


def test_segment_button_child_command_streams_progress_and_writes_the_result(tmp_path):
    """The exact command HILASegmentLogic.startSegmentation builds, through the runner the widget polls."""
    out = tmp_path / "result.seg.nrrd"
    argv, env = engine_command("HILASegmentLib", ["infer", "--image", str(MRI), "--out", str(out), "--model", str(TINY), "--json"],
                               python=sys.executable)
    runner = ProcessRunner(argv, env=env).start()
    records = []
    outcome = runner.wait(timeout=300, on_line=lambda l: records.append(l.record) if l.record else None)
    assert outcome.ok, outcome.error
    assert outcome.result and outcome.result.get("ok") is True
    assert any(r.get("event") == "progress" for r in records) and runner.fraction == 1.0
    check_seg(out, MRI)


def glue_cli_options(function_name: str) -> list:
    tree = ast.parse((ROOT / "HILASegment" / "HILASegmentSlicerLib" / "logic.py").read_text(encoding="utf-8"))  # the Logic
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function_name)
    return [c.value for c in ast.walk(fn) if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.startswith("--")]


def subparser(name: str):
    from HILASegmentLib.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert name in sub.choices, f"`hila {name}` is not a command"
    return sub.choices[name]


@pytest.mark.parametrize("command, function", [("infer", "startSegmentation"), ("train", "startTraining")])
def test_options_the_glue_passes_exist_in_the_cli(command, function):
    opts = glue_cli_options(function)
    assert "--json" in opts
    known = {o for a in subparser(command)._actions for o in a.option_strings}
    assert set(opts) <= known, set(opts) - known


def test_tiny_model_is_rebuilt_by_its_script_and_is_a_few_kb(tmp_path):
    from HILASegmentLib.models.modelcard import read_card
    assert TINY.stat().st_size < 10_000
    out = tmp_path / "tiny.onnx"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_model.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    bundled, rebuilt = read_card(TINY), read_card(out)
    assert dataclasses.replace(rebuilt, checksum=None) == dataclasses.replace(bundled, checksum=None)
    assert bundled.name == "hila-tiny-test" and "NOT a medical model" in bundled.description


def test_the_panels_device_auto_reaches_the_trainer_and_picks_cuda_when_torch_sees_it():
    torch = pytest.importorskip("torch")
    from HILASegmentLib.training.run import check_device
    assert check_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    opts = subparser("train").parse_args(["WS", "--device", "auto"])
    assert opts.device == "auto"
