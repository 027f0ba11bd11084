"""The layer table holds: ground -> formats -> dicom -> models -> inference -> quality -> workspace -> training ->
simulate -> cli, the Slicer library above the engine, the module file above both (``scripts/check_imports.py``,
``LAYERS``). Every import counts, inside functions and under ``if TYPE_CHECKING:`` too; this is how ``make test``
and CI run the check."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
check_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_imports)


def test_no_cycle_and_no_import_up_a_layer_in_the_module_folder():
    known = check_imports.module_folder()
    assert "HILASegment" in known and "HILASegmentSlicerLib.panels" in known and "HILASegmentLib.cli" in known
    edges, _ = check_imports.graph(known)
    assert check_imports.cycles(edges) == []
    assert check_imports.upward(edges) == []


def test_the_check_finds_an_upward_import_an_annotation_cycle_and_an_unplaced_module(tmp_path):
    pkg = tmp_path / "HILASegmentLib"
    files = {
        "__init__.py": "",
        "ground/__init__.py": "",
        "ground/errors.py": "def f():\n    from ..workspace import api  # up a layer, inside a function\n",
        "workspace/__init__.py": "",
        "workspace/api.py": "from .export import run\n",
        "workspace/export.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .api import Workspace\n"
                               "def run(ws: 'Workspace'):\n    pass\n",
        "newpart/__init__.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges, _ = check_imports.graph(check_imports.modules(pkg))
    assert check_imports.cycles(edges) == [["HILASegmentLib.workspace.api", "HILASegmentLib.workspace.export"]]
    assert check_imports.upward(edges) == [  # the package it names and the module it loads
        f"HILASegmentLib.ground.errors (ground) imports HILASegmentLib.workspace{m} (workspace): up a layer"
        for m in ("", ".api")]
    layers = check_imports.LAYERS[1:]  # without the ground row, the package root and ground are in no layer
    assert "HILASegmentLib.newpart: in no layer of the table" in check_imports.upward(edges, layers)


def test_a_loop_through_a_packages_init_is_a_cycle(tmp_path):
    """``export`` names the package's ``Workspace`` for an annotation while the package's ``__init__`` re-exports
    ``api``, which imports ``export``: a loop through the ``__init__``, the annotation loop the house pass removed."""
    pkg = tmp_path / "HILASegmentLib"
    files = {
        "__init__.py": "",
        "workspace/__init__.py": "from .api import Workspace\n",
        "workspace/api.py": "from .export import run\nclass Workspace:\n    pass\n",
        "workspace/export.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import Workspace\n"
                               "def run(ws: 'Workspace'):\n    pass\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges, _ = check_imports.graph(check_imports.modules(pkg))
    assert check_imports.cycles(edges) == [["HILASegmentLib.workspace", "HILASegmentLib.workspace.api",
                                            "HILASegmentLib.workspace.export"]]


def test_the_script_runs_as_ci_runs_it():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 cycle(s), 0 upward import(s)" in r.stdout
