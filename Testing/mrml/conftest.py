"""The real-MRML tier: the glue on Slicer's own classes (slicer-core), run by ``make test`` in ``.venv-slicer``.

Every test here gets a fresh real scene (``rs``); the run ends with how many tests ran on real MRML nodes.
Where no slicer-core wheel exists for the Python in use (``make`` then sets HILA_NO_SLICER_CORE to say so),
each module skips with that reason; anything else that stops ``import slicer`` fails the run.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
NO_WHEEL = os.environ.get("HILA_NO_SLICER_CORE")

if not NO_WHEEL:
    try:  # PyPI's unrelated `slicer` package (pulled in by shap) would shadow slicer-core's namespace
        metadata.distribution("slicer")
        raise RuntimeError("the PyPI package 'slicer' is installed beside slicer-core and clashes with its namespace")
    except metadata.PackageNotFoundError:
        pass

_on_real_nodes = []


def need_slicer_core():
    """slicer-core's ``slicer``; skipped only where no wheel exists for this Python (NO_WHEEL), else it must import."""
    return pytest.importorskip("slicer", reason=NO_WHEEL) if NO_WHEEL else __import__("slicer")


@pytest.fixture
def rs():
    """A fresh real scene with Slicer's logics; ``slicer.mrmlScene``/``slicer.modules`` point at it."""
    from realscene import RealScene

    scene = RealScene()
    yield scene
    scene.close()


@pytest.fixture
def logic(rs, monkeypatch):
    """HILASegment.py's own Logic on slicer-core (the module file imported, Qt stood in). The one slicer.util call of
    it that needs ``slicer.app``, the children's environment (``startupEnvironment``), is this process's."""
    slicer = need_slicer_core()
    from realscene import import_module_file

    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    return import_module_file().HILASegmentLogic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and "rs" in item.fixturenames:
        _on_real_nodes.append(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(f"real-MRML tier: {len(_on_real_nodes)} tests passed on real MRML nodes (slicer-core)"
                                + (f"; skipped: {NO_WHEEL}" if NO_WHEEL else ""))
