"""Helpers of the real-MRML tier's test modules: slicer-core or the one allowed skip, data paths, the engine CLI."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_WHEEL = os.environ.get("HILA_NO_SLICER_CORE")
_spec = importlib.util.spec_from_file_location("hila_testing_conftest", ROOT / "Testing" / "conftest.py")
_house = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_house)
FIXTURES, shared = _house.FIXTURES, _house.shared  # one definition of where data lives and how its absence skips


def slicer_core():
    """slicer-core's ``slicer``; a module skips only where make found no wheel for this Python, else it must import."""
    if NO_WHEEL:
        return pytest.importorskip("slicer", reason=NO_WHEEL)
    import slicer

    return slicer


def main_python() -> str:
    """The main environment's Python (.venv: the dicom extra, pydicom; `make test-mrml` builds it), else this one."""
    python = ROOT / ".venv" / "bin" / "python"
    return str(python if python.exists() else sys.executable)


def hila(*args: str) -> subprocess.CompletedProcess:
    """The engine's CLI as the Slicer module runs it: a child process, here the main environment's Python (it has
    the dicom extra; .venv-slicer keeps the inference tier only)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    proc = subprocess.run([main_python(), "-m", "HILASegmentLib", *args],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def labels(*names: str) -> list:
    """Workspace-like labels (value, name, colour) as the glue reads them."""
    from HILASegmentLib.ground.colors import default_color

    return [SimpleNamespace(value=i + 1, name=n, color=default_color(n, i)) for i, n in enumerate(names)]


def read_only_folder(folder: Path):
    """Make ``folder`` read-only and return a check that nothing in it changed. Run as root (CI containers), chmod
    stops no write, so the check does not rest on it: the folder's entries and its modification time (which any file
    created or removed in it moves, even one removed again) must be as they were."""
    folder = Path(folder)
    folder.chmod(0o555)
    before = (sorted(p.name for p in folder.iterdir()), folder.stat().st_mtime_ns)

    def untouched() -> None:
        after = (sorted(p.name for p in folder.iterdir()), folder.stat().st_mtime_ns)
        assert after == before, f"{folder} was written to: {before} -> {after}"
    return untouched


def roi_display_colours(rtstruct: Path) -> dict:
    """{ROI name: its ROI Display Color (0-255)} of an RTSTRUCT, read by pydicom in the main environment (an
    independent reading of what the converter was given)."""
    import json

    code = ("import json, sys, pydicom; d = pydicom.dcmread(sys.argv[1]); "
            "names = {r.ROINumber: r.ROIName for r in d.StructureSetROISequence}; "
            "print(json.dumps({names[c.ReferencedROINumber]: [int(v) for v in c.ROIDisplayColor] "
            "for c in d.ROIContourSequence if 'ROIDisplayColor' in c}))")
    proc = subprocess.run([main_python(), "-c", code, str(rtstruct)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)
