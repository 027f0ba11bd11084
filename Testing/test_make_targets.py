"""The Makefile's targets need what their tests run: read from make's own database (``make -pq``: nothing is run)."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prerequisites(target: str) -> list:
    """The prerequisites make resolves for ``target`` in this repository's Makefile."""
    proc = subprocess.run(["make", "-pq", target], cwd=ROOT, capture_output=True, text=True)
    rules = [line for line in proc.stdout.splitlines() if line.startswith(target + ":")]
    assert rules, proc.stderr[-500:]
    return rules[0].split(":", 1)[1].split()


def test_make_test_mrml_alone_builds_both_environments_it_runs():
    """The tier's RTSTRUCT and colour tests run `hila convert` and pydicom in the main environment (.venv), the rest
    in .venv-slicer: `make test-mrml` on a fresh clone must build both, as `make test` does."""
    assert set(prerequisites("test-mrml")) >= {".venv/.installed", ".venv-slicer/.installed"}
    assert set(prerequisites("test")) >= {".venv/.installed", ".venv-slicer/.installed"}
