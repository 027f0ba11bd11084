"""The workspace is built from parts that say what they need (issue 25, third pass, item 3): each part's
constructor names its collaborators, ``Workspace`` composes them and keeps its whole public face as thin
delegates, so the CLI, the Slicer glue, the simulator and the tests call it as before."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from ws_worker import make_volume

from HILASegmentLib.workspace import Workspace

WORKSPACE = Path(__file__).resolve().parents[1] / "HILASegment" / "HILASegmentLib" / "workspace"

#: ``[m for m in dir(Workspace) if not m.startswith('_')]`` before the parts were made explicit (57 names).
PUBLIC_BEFORE = [
    'abspath', 'add_model', 'add_prediction', 'case', 'case_image', 'case_of_series', 'case_series', 'case_states',
    'cases', 'check', 'check_modality', 'close', 'correction', 'correction_label', 'corrections', 'create',
    'current_model', 'dicom_objects', 'events', 'export', 'export_dicom', 'finish_training_run', 'fit_quality_model',
    'flag_suspects', 'import_dicom_object', 'import_series', 'import_volume', 'known_sop_uids', 'model', 'models',
    'next_model_version', 'open', 'prediction', 'prediction_segmentation', 'predictions', 'promote', 'quality_model',
    'quality_pairs', 'quality_source', 'rank', 'read_label_file', 'record_prediction', 'recover_dead_runs', 'rollback',
    'series', 'settings', 'snapshot', 'start_training_run', 'status', 'submit', 'submit_marks', 'suspect_keys',
    'suspects', 'training_run', 'training_runs', 'validate_label', 'workspace_label']


def test_the_public_face_of_workspace_is_kept():
    """Every public method and attribute the CLI, glue and tests call is still there, under the same name."""
    assert [m for m in dir(Workspace) if not m.startswith("_")] == PUBLIC_BEFORE


def _part_classes():
    """class name -> (its method and property names, its constructor's collaborators: attribute -> class name, the
    class), for every class of the workspace package."""
    out = {}
    for f in sorted(WORKSPACE.glob("*.py")):
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            methods = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if init is not None:
                needs = {a.arg: ast.unparse(a.annotation) for a in init.args.args[1:] if a.annotation}
            else:  # a dataclass: its typed fields are its constructor's arguments
                needs = {n.target.id: ast.unparse(n.annotation) for n in node.body
                         if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
            out[node.name] = (methods, needs, node)
    return out


PARTS = ("Cases", "Labels", "Predictions", "Corrections", "Runs", "Registry", "QualityModels", "Suspects", "Reports",
         "Dicom")


def test_each_part_reaches_only_what_its_constructor_names():
    """Read statically, every call a part makes is to itself (``self.m()``, defined in the part) or to a collaborator
    its constructor names with a type (``self.labels.read_label_file()``, defined in ``Labels``): no reaching into a
    sibling through ``self``, so a reader following ``Corrections.submit`` gets to ``Labels.read_label_file``."""
    classes = _part_classes()
    assert set(PARTS) <= set(classes)
    wrong = []
    for name in PARTS:
        methods, needs, node = classes[name]
        assert "core" in needs and needs["core"] == "Core", name
        for call in ast.walk(node):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            target = call.func.value
            if isinstance(target, ast.Name) and target.id == "self":
                if call.func.attr not in methods:
                    wrong.append(f"{name}: self.{call.func.attr}() is not {name}'s own")
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                kind = needs.get(target.attr)
                if kind is None:
                    wrong.append(f"{name}: self.{target.attr} is not named by its constructor")
                elif kind not in classes or call.func.attr not in classes[kind][0]:
                    wrong.append(f"{name}: self.{target.attr}.{call.func.attr}() is not defined in {kind}")
    assert not wrong, "\n".join(wrong)
    _, needs, node = classes["Corrections"]
    submit = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "submit")
    calls = {ast.unparse(c.func) for c in ast.walk(submit) if isinstance(c, ast.Call)}
    assert "self.labels.read_label_file" in calls and needs["labels"] == "Labels"
    assert "read_label_file" in classes["Labels"][0]


def test_every_public_method_is_a_thin_delegate_to_its_one_definition():
    """``ws.submit`` is ``Corrections.submit`` of the workspace's corrections part (same name, same docstring, the
    same object underneath), so there is one definition of each and nothing to keep in step."""
    from HILASegmentLib.workspace.api import Parts

    built = set(Parts.__annotations__.values())  # the classes of the parts a workspace builds
    delegates = 0
    for name in PUBLIC_BEFORE:
        attr = inspect.getattr_static(Workspace, name)
        target = None if isinstance(attr, (classmethod, property)) else getattr(attr, "__wrapped__", None)
        if target is None:
            continue  # the workspace's own: create, open, close, settings, check, export
        owner = target.__qualname__.split(".")[0]
        assert target.__name__ == name and owner in built and getattr(Workspace, name).__doc__ == target.__doc__, name
        delegates += 1
    assert delegates == len(PUBLIC_BEFORE) - 6


def test_the_workspace_builds_each_part_once_and_shares_it(tmp_path):
    """The parts a part was given are the workspace's own (one cases part, one read cache, one core); closing the
    workspace lets go of its cached images."""
    ws = Workspace.create(tmp_path / "ws", "CT", ["prostate"])
    try:
        p = ws.parts
        assert p.labels.cases is p.cases and p.corrections.cases is p.cases and p.predictions.labels is p.labels
        assert p.dicom.corrections is p.corrections and p.quality.registry is p.registry
        assert p.cases.images is p.images
        assert all(getattr(p, f).core is ws.core for f in p.__dataclass_fields__ if f not in ("core", "images"))
        make_volume(tmp_path / "vol.nrrd")
        ws.case_image(ws.import_volume(tmp_path / "vol.nrrd").case_id)
        assert len(p.images) == 1
    finally:
        ws.close()
    assert len(p.images) == 0


def test_nothing_reaches_into_a_workspace_by_a_private_name():
    """Code that holds a workspace calls its public face or a part's (``ws.parts.dicom.uid``), never a private name
    (``ws._uid`` broke ``hila sync`` when the parts became explicit, and a test for it had to run a PACS to see it)."""
    engine = WORKSPACE.parents[1]
    private = re.compile(r"\b(ws|workspace|self\.ws|self\.workspace)\._[a-z]\w*")
    found = [f"{f.relative_to(engine)}:{i}: {m.group(0)}" for f in sorted(engine.rglob("*.py"))
             for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if (m := private.search(line))]
    assert not found, "\n".join(found)
