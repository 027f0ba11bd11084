"""The Slicer glue checked by contract (3D Slicer cannot run here).

Parses HILASegment.py, the batch script and the in-Slicer tests, and checks them against the
recorded Slicer API (Testing/Data/slicer_api.json, a copy of ../shared/slicer-api/slicer_api.json):
every slicer.util / sitkUtils / slicer.testing / slicer.packaging call exists in Slicer main and
5.8.1 (or is guarded) and its signature takes the arguments and keywords given; MRML method calls
on variables of known node types exist on that class or its recorded bases; self.ui names are in
the .ui; the engine calls the glue makes bind to the engine's real signatures; the CMake lists are
complete both ways; the extension metadata, catalog entry and ctest registration are well formed.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "HILASegment"
GLUE = MODULE / "HILASegment.py"
BATCH = ROOT / "scripts" / "hila_slicer_batch.py"
SLICER_TESTS = sorted((MODULE / "Testing" / "Python").glob("*.py"))
UI = MODULE / "Resources" / "UI" / "HILASegment.ui"
API_COPY = ROOT / "Testing" / "Data" / "slicer_api.json"
API_SHARED = ROOT.parent / "shared" / "slicer-api" / "slicer_api.json"
API = json.loads((API_SHARED if API_SHARED.exists() else API_COPY).read_text(encoding="utf-8"))
SLICER_LIB = sorted((MODULE / "HILASegmentSlicerLib").glob("*.py"))  # Slicer objects passed in: `util` is slicer.util
FILES = [GLUE, BATCH] + SLICER_TESTS + SLICER_LIB
#: Modules of the glue library that handle no Slicer object (SimpleITK images, numpy arrays, child processes):
#: their CamelCase calls are SimpleITK's and the standard library's, not MRML's.
NO_SLICER_OBJECTS = {"mrmlgeometry.py", "panels.py", "processrunner.py"}
PACKAGING = "slicer.packaging (Slicer 5.12+ only)"

# Variables whose MRML/Qt type the glue fixes by name (its naming convention), checked method by method.
TYPED_NAMES = {
    "volume": "vtkMRMLScalarVolumeNode", "regionVolume": "vtkMRMLScalarVolumeNode", "segNode": "vtkMRMLSegmentationNode", "segmentation": "vtkSegmentation",
    "segment": "vtkSegment", "editorNode": "vtkMRMLSegmentEditorNode", "display": "vtkMRMLSegmentationDisplayNode",
    "slicer.mrmlScene": "vtkMRMLScene", "self.ui.segmentEditorWidget": "qMRMLSegmentEditorWidget",
    "slicer.vtkMRMLSegmentationNode": "vtkMRMLSegmentationNode", "node": "vtkMRMLSegmentEditorNode",
    "scene": "vtkMRMLScene", "self.parameterNode": "vtkMRMLScriptedModuleNode", "segNode.GetSegmentation()": "vtkSegmentation",
}
# CamelCase calls on objects whose class the API file does not record, each with its reason. Keep short.
UNRECORDED_OK = {
    "GetFileName": "vtkMRMLStorageNode (base of the recorded vtkMRMLSegmentationStorageNode) is not recorded",
    # the self-test's ROI; read in Slicer's source (main @ 583e9b37, v5.8.1): vtkMRMLMarkupsROINode.h declares both
    "SetCenterWorld": "vtkMRMLMarkupsROINode (the self-test places an ROI) is not recorded",
    "SetSizeWorld": "vtkMRMLMarkupsROINode (the self-test places an ROI) is not recorded",
    # the weak ROI's own box (marks.py); vtkMRMLMarkupsROINode.h (main @ 583e9b37: Libs/MRML/Core; v5.8.1) declares
    # vtkGetVector3Macro(Size) and GetObjectToNodeMatrix(); both read on slicer-core 5.12.4 (Testing/mrml)
    "GetSize": "vtkMRMLMarkupsROINode (the weak label's ROI) is not recorded",
    "GetObjectToNodeMatrix": "vtkMRMLMarkupsROINode (the weak label's ROI) is not recorded",
    # a segment's layer: vtkOrientedImageData (recorded) is a vtkImageData, whose GetExtent VTK declares (vtkImageData.h)
    "GetExtent": "vtkImageData (base of the recorded vtkOrientedImageData) is not recorded",
    # a volume's parent transform: vtkMRMLTransformNode.h declares it (main @ 583e9b37 and v5.8.1)
    "IsTransformToWorldLinear": "vtkMRMLTransformNode (a volume's parent transform) is not recorded",
}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, ast.unparse(node.func)


def binds(sig: str, nargs: int, kws) -> bool:
    """Can a function with this recorded signature take ``nargs`` positionals and these keywords?"""
    ns: dict = {}
    exec(compile(f"from __future__ import annotations\ndef f{sig}: pass", "<sig>", "exec"), ns)
    fn = ns["f"]
    try:
        inspect.signature(fn).bind(*range(nargs), **{k: None for k in kws})
        return True
    except TypeError:
        return False


def class_methods(cls: str) -> set:
    out, seen = set(), set()
    while cls in API["classes"] and cls not in seen:
        seen.add(cls)
        out |= set(API["classes"][cls]["methods"])
        cls = API["classes"][cls]["base"]
    return out


def guarded_by_hasattr(tree, call) -> bool:
    """The call sits under an `if` whose test uses hasattr(...) on slicer.packaging."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "hasattr" in ast.unparse(node.test) and "packaging" in ast.unparse(node.test):
            if any(n is call for n in ast.walk(node)):
                return True
    return False


def test_four_classes_with_the_right_bases():
    tree = parse(GLUE)
    bases = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert bases["HILASegment"] == ["ScriptedLoadableModule"]
    assert bases["HILASegmentWidget"][0] == "ScriptedLoadableModuleWidget"
    assert bases["HILASegmentLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["HILASegmentTest"] == ["ScriptedLoadableModuleTest"]
    test_methods = [n.name for n in next(n for n in tree.body if getattr(n, "name", "") == "HILASegmentTest").body
                    if isinstance(n, ast.FunctionDef)]
    assert "runTest" in test_methods and any(m.startswith("test_") for m in test_methods)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_slicer_python_api_calls_exist_in_main_and_5_8_and_take_these_arguments(path):
    tree = parse(path)
    problems, checked = [], 0
    tables = {"slicer.util": ["slicer.util", "slicer.util@v5.8.1"], "sitkUtils": ["sitkUtils", "sitkUtils@v5.8.1"],
              "slicer.testing": ["slicer.testing"]}
    for call, dotted in calls(tree):
        if path in SLICER_LIB and dotted.startswith(("util.", "self.util.")):  # the glue library gets slicer.util passed in
            dotted = "slicer.util." + dotted.split("util.", 1)[1]
        for prefix, names in tables.items():
            if dotted.startswith(prefix + ".") and dotted.count(".") == prefix.count(".") + 1:
                name, checked = dotted[len(prefix) + 1:], checked + 1
                for table in names:
                    sig = API[table].get(name)
                    if sig is None:
                        problems.append(f"{path.name}:{call.lineno}: {dotted} missing from {table}")
                    elif sig.startswith("(") and not binds(sig, len(call.args), [k.arg for k in call.keywords if k.arg]):
                        problems.append(f"{path.name}:{call.lineno}: {dotted}{sig} ({table}) cannot take this call")
        if dotted.startswith("slicer.packaging."):
            name, checked = dotted.split(".")[2], checked + 1
            sig = API[PACKAGING].get(name)
            if sig is None:
                problems.append(f"{path.name}:{call.lineno}: {dotted} not in slicer.packaging")
            elif not binds(sig, len(call.args), [k.arg for k in call.keywords if k.arg]):
                problems.append(f"{path.name}:{call.lineno}: {dotted}{sig} cannot take this call")
            if not guarded_by_hasattr(tree, call):
                problems.append(f"{path.name}:{call.lineno}: {dotted} exists only from Slicer 5.12: guard it with hasattr")
    assert not problems, "\n".join(problems)
    if path in (GLUE, BATCH):  # the parser saw the calls (batch mode: load, add, save; the rest is the Logic's)
        assert checked >= (5 if path == GLUE else 3)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_mrml_methods_called_on_known_node_types_exist(path):
    problems, checked = [], 0
    for call, dotted in calls(parse(path)):
        owner, method = dotted.rsplit(".", 1)
        cls = TYPED_NAMES.get(owner)
        if cls is None:
            continue
        checked += 1
        if method not in class_methods(cls):
            problems.append(f"{path.name}:{call.lineno}: {dotted}: {cls} (and its recorded bases) has no {method}")
    assert not problems, "\n".join(problems)
    if path in (GLUE, MODULE / "HILASegmentSlicerLib" / "segments.py"):
        assert checked >= 15, f"only {checked} typed MRML calls found: has the naming convention drifted?"


def test_camelcase_calls_on_unknown_objects_are_all_accounted_for():
    """Every CamelCase call is a recorded MRML method, a vtk/qt constructor, or in UNRECORDED_OK with a reason."""
    known = set()
    for c in API["classes"]:
        known |= class_methods(c)
    stray = set()
    for path in [f for f in FILES if f.name not in NO_SLICER_OBJECTS]:
        for call, dotted in calls(parse(path)):
            m = dotted.rsplit(".", 1)[1]
            if path in SLICER_LIB and dotted.startswith(("util.", "self.util.", "self.qt.")):  # passed-in slicer.util / qt
                dotted = ("slicer.util." if "util." in dotted else "qt.") + dotted.split(".", 2 if dotted.startswith("self.") else 1)[-1]
            if m[:1].isupper() and m not in known and m not in UNRECORDED_OK \
                    and not dotted.startswith(("slicer.util", "sitkUtils", "qt.", "vtk.", "ctk.", "sitk.", "slicer.vtk", "argparse.")) \
                    and not re.fullmatch(r"PyTorchUtils\.PyTorchUtilsLogic|panelstate\.PanelState|pacs\.PacsPanel|sections\.\w+Section", dotted):
                stray.add(f"{path.name}:{call.lineno}: {dotted}")
    assert not stray, sorted(stray)


def test_scripted_module_base_methods_exist():
    tree = parse(GLUE)
    table = API["slicer.ScriptedLoadableModule"]
    for call, dotted in calls(tree):
        head, _, name = dotted.rpartition(".")
        if head in table:
            assert name in table[head], f"{dotted} not in {head}"
            assert binds(table[head][name], len(call.args), [k.arg for k in call.keywords if k.arg]), dotted  # self passed
        if dotted.startswith("self.delayDisplay"):
            assert binds(table["ScriptedLoadableModuleTest"]["delayDisplay"], len(call.args) + 1, [])
        if dotted == "self.resourcePath":
            assert "resourcePath" in table["ScriptedLoadableModuleWidget"]


def ui_names():
    tree = ET.parse(UI)
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}, tree


def test_ui_file_is_well_formed_and_every_self_ui_name_is_in_it():
    names, tree = ui_names()
    root = tree.getroot().find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == "HILASegment"
    custom = {c.findtext("class") for c in tree.getroot().iter("customwidget")}
    used = {cls for cls in names.values() if not cls.startswith("Q")}
    assert used <= custom, f"custom widgets without a <customwidget> entry: {used - custom}"
    scene_receivers = {c.findtext("receiver") for c in tree.getroot().iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert {n for n, c in names.items() if c in ("qMRMLNodeComboBox", "qMRMLSegmentEditorWidget")} <= scene_receivers
    missing = []
    for node in ast.walk(parse(GLUE)):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.ui" and node.attr not in names:
            missing.append(f"line {node.lineno}: self.ui.{node.attr}")
    assert not missing, missing
    for path in SLICER_LIB:  # the sections (and the PACS panel) get the same widgets as `ui` / `self.ui`
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("ui", "self.ui") and node.attr not in names:
                missing.append(f"{path.name}:{node.lineno}: ui.{node.attr}")
    assert not missing, missing
    assert names["segmentEditorWidget"] == "qMRMLSegmentEditorWidget"
    assert names["caseTableWidget"] == names["modelTableWidget"] == "QTableWidget"


def test_segment_editor_widget_methods_used_exist():
    methods = class_methods("qMRMLSegmentEditorWidget")
    used = {m.group(1) for m in re.finditer(r"self\.ui\.segmentEditorWidget\.(\w+)\(", GLUE.read_text(encoding="utf-8"))}
    assert used and used <= methods, used - methods


def test_engine_imports_and_calls_bind_to_the_real_engine():
    """Names the glue imports from HILASegmentLib exist; calls on the engine objects take these arguments."""
    problems = []
    for path in (GLUE, BATCH):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("HILASegmentLib"):
                mod = importlib.import_module(node.module)  # an engine module that fails to import fails here
                for alias in node.names:
                    if not hasattr(mod, alias.name) and not importlib.util.find_spec(f"{node.module}.{alias.name}"):
                        problems.append(f"{path.name}:{node.lineno}: {node.module} has no {alias.name}")
    from HILASegmentLib.workspace import Workspace
    for call, dotted in calls(parse(GLUE)):
        owner, method = dotted.rsplit(".", 1)
        if owner in ("ws", "self.ws") and hasattr(Workspace, method):
            sig = inspect.signature(getattr(Workspace, method))
            try:
                sig.bind(None, *range(len(call.args)), **{k.arg: None for k in call.keywords if k.arg})
            except TypeError as exc:
                problems.append(f"HILASegment.py:{call.lineno}: ws.{method}{sig}: {exc}")
        elif owner in ("ws", "self.ws") and not hasattr(Workspace, method):
            problems.append(f"HILASegment.py:{call.lineno}: Workspace has no {method}")
    assert not problems, "\n".join(problems)


def _decisions(function: ast.FunctionDef) -> tuple:
    """(branches, loops) of a function: if statements and conditional expressions; for/while loops and comprehensions."""
    nodes = list(ast.walk(function))
    return (sum(isinstance(n, (ast.If, ast.IfExp)) for n in nodes),
            sum(isinstance(n, (ast.For, ast.While, ast.comprehension)) for n in nodes))


def test_glue_is_wiring_by_structure_and_the_engine_never_imports_slicer():
    """HILASegment.py holds wiring, by structure rather than by a line count: short widget methods with no decisions
    beyond guards (setup connects, the sections decide), section controllers of the same kind, a Logic that hands
    every call to HILASegmentSlicerLib.logic, a self-test whose steps live in HILASegmentSlicerLib.selftest."""
    tree = parse(GLUE)
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    functions = {(c, f.name): f for c, node in classes.items() for f in node.body if isinstance(f, ast.FunctionDef)}
    methods = {k: f.end_lineno - f.lineno + 1 for k, f in functions.items()}
    long = {k: n for k, n in methods.items() if n > (60 if k[1] == "setup" else 20)}
    assert not long, f"methods too long for wiring (move the behaviour to a section of HILASegmentSlicerLib): {long}"
    # no decisions beyond guards: a widget method branches and loops a little (the rules live in the library)
    busy = {k: shape for k, f in functions.items() if (shape := _decisions(f))[0] > 4 or shape[1] > 2}
    assert not busy, f"widget methods deciding more than guards do ((branches, loops)): {busy}"
    for py in (MODULE / "HILASegmentSlicerLib").glob("*.py"):  # the section controllers too: short, few branches
        for c in (n for n in parse(py).body if isinstance(n, ast.ClassDef) and n.name.endswith(("Section", "Panel"))):
            for f in (n for n in c.body if isinstance(n, ast.FunctionDef)):
                branches, loops = _decisions(f)
                assert f.end_lineno - f.lineno + 1 <= 30 and branches <= 6 and loops <= 2, \
                    f"{py.name}: {c.name}.{f.name}: {f.end_lineno - f.lineno + 1} lines, {branches} branches, {loops} loops"
    assert {m for c, m in methods if c == "HILASegmentLogic"} == {"__init__", "__getattr__"}
    assert all(n <= 6 for (c, _), n in methods.items() if c == "HILASegmentTest")
    for py in (MODULE / "HILASegmentSlicerLib").rglob("*.py"):  # the glue library: Slicer objects passed in, never imported
        for node in ast.walk(parse(py)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("slicer", "qt", "vtk", "ctk") for n in names), f"{py}: imports {names}"
    for py in (MODULE / "HILASegmentLib").rglob("*.py"):
        for node in ast.walk(parse(py)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert n.split(".")[0] not in ("slicer", "qt", "vtk", "ctk"), f"{py}: imports {n}"


# -- CMake and extension metadata ------------------------------------------------------------------
def cmake_list(text: str, name: str) -> list:
    m = re.search(rf"set\({name}\n(.*?)\n\s*\)", text, re.S)
    assert m, f"no set({name} ...)"
    return [l.strip() for l in m.group(1).splitlines() if l.strip() and not l.strip().startswith("#")]


def test_module_cmake_lists_are_complete_both_ways():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts, resources = cmake_list(text, "MODULE_PYTHON_SCRIPTS"), cmake_list(text, "MODULE_PYTHON_RESOURCES")
    for item in scripts + resources:
        assert (MODULE / item).is_file(), f"listed in HILASegment/CMakeLists.txt but missing: {item}"
    assert len(set(scripts)) == len(scripts) and len(set(resources)) == len(resources), "duplicates"
    on_disk_py = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py")
                  if "Testing" not in p.relative_to(MODULE).parts and "__pycache__" not in p.parts}
    assert on_disk_py - set(scripts) == set(), f"not listed: {sorted(on_disk_py - set(scripts))}"
    res_on_disk = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert res_on_disk - set(resources) == set(), f"resources not listed: {sorted(res_on_disk - set(resources))}"
    for required in ("Resources/UI/HILASegment.ui", "Resources/Icons/HILASegment.png", "Resources/Models/hila_tiny_test.onnx"):
        assert required in resources
    assert "slicerMacroBuildScriptedModule" in text and "GLOB" not in text
    rc = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_cmake_lists.py"), "--check"], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr


def test_ctest_registration():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert "add_subdirectory(Testing)" in text
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")
    py_cmake = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    registered = re.findall(r"slicer_add_python_unittest\(SCRIPT \$\{CMAKE_CURRENT_SOURCE_DIR\}/(\w+\.py)\)", py_cmake)
    assert registered and sorted(registered) == sorted(p.name for p in SLICER_TESTS)
    for p in SLICER_TESTS:
        src = p.read_text(encoding="utf-8")
        # its own tests, never a re-import of the self-test (ctest would run HILASegmentTest twice)
        assert "import HILASegmentTest" not in src and re.search(rf"class {p.stem}\(", src)


def test_extension_metadata_and_catalog_entry():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(HILASegment\)", text, re.M)
    meta = dict(re.findall(r'^set\((EXTENSION_\w+) "([^"\n]*)"\)', text, re.M))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert meta.get("EXTENSION_" + key), f"EXTENSION_{key} missing or not a one-line quoted string"
    for key in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        assert all(u.startswith("https://") for u in meta["EXTENSION_" + key].split()), key
    assert meta["EXTENSION_ICONURL"].endswith("Resources/Icons/HILASegment.png") and (ROOT / "Resources/Icons/HILASegment.png").exists()
    for url in meta["EXTENSION_SCREENSHOTURLS"].split():
        assert (ROOT / url.split("/main/", 1)[1]).exists(), url
    assert "add_subdirectory(HILASegment)" in text and "Slicer_EXTENSION_CPACK" in text
    entry = json.loads((ROOT / "HILASegment.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert "catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == meta["EXTENSION_CATEGORY"] == "Segmentation"
    assert entry["tier"] in (1, 3, 5)
    depends = [] if meta["EXTENSION_DEPENDS"] == "NA" else meta["EXTENSION_DEPENDS"].split()
    assert entry["build_dependencies"] == depends
    assert entry["scm_url"].rstrip("/").split("/")[-1] in meta["EXTENSION_HOMEPAGE"]


def test_icons_are_small_pngs():
    for p in (MODULE / "Resources/Icons/HILASegment.png", ROOT / "Resources/Icons/HILASegment.png"):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 50_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == height == 128


def test_api_copy_matches_the_shared_one():
    if not API_SHARED.exists():
        pytest.skip("../shared not here")
    assert json.loads(API_COPY.read_text(encoding="utf-8")) == json.loads(API_SHARED.read_text(encoding="utf-8"))


def test_glue_imports_with_stub_slicer_modules(monkeypatch):
    """With stub slicer/qt/vtk modules, HILASegment.py imports and defines its classes (no Slicer behaviour claimed)."""
    import types

    stubs = {}
    for name in ("qt", "vtk", "ctk", "slicer", "slicer.util", "slicer.ScriptedLoadableModule"):
        stubs[name] = types.ModuleType(name)
    mod = stubs["slicer.ScriptedLoadableModule"]
    for cls in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget"):
        setattr(mod, cls, type(cls, (), {}))
    stubs["slicer.util"].VTKObservationMixin = type("VTKObservationMixin", (), {})
    stubs["slicer"].util = stubs["slicer.util"]
    for name, m in stubs.items():
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.syspath_prepend(str(MODULE))
    spec = importlib.util.spec_from_file_location("HILASegment_under_test", GLUE)
    glue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glue)
    for cls in ("HILASegment", "HILASegmentWidget", "HILASegmentLogic", "HILASegmentTest"):
        assert isinstance(getattr(glue, cls), type)
    assert glue.HILASegmentLogic.__bases__[0].__name__ == "ScriptedLoadableModuleLogic"


def test_the_signature_check_itself_catches_bad_calls():
    assert binds(API["slicer.util"]["addVolumeFromArray"], 1, ["ijkToRAS", "name"])
    assert not binds(API["slicer.util"]["addVolumeFromArray"], 1, ["spacing"])
    assert not binds(API["slicer.util@v5.8.1"]["pip_install"], 1, ["logCallback"])  # 5.8 takes no keywords
    assert binds(API["slicer.util"]["settingsValue"], 2, ["converter"])
    assert binds(API[PACKAGING]["pip_install"], 1, ["skip_packages", "requester"])
    assert not binds(API["slicer.util"]["saveNode"], 1, [])
    assert "GetSegmentation" in class_methods("vtkMRMLSegmentationNode")
    assert "GetName" in class_methods("vtkMRMLSegmentationNode")  # through vtkMRMLNode


def test_update_cmake_lists_rewrites_only_the_two_lists():
    spec = importlib.util.spec_from_file_location("update_cmake_lists", ROOT / "scripts" / "update_cmake_lists.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stale = "# keep me\nset(MODULE_PYTHON_SCRIPTS\n  Old.py\n  )\n\nset(MODULE_PYTHON_RESOURCES\n  )\nslicerMacroBuildScriptedModule()\n"
    new = mod.render(stale, ["HILASegment.py", "HILASegmentLib/a.py"], ["Resources/UI/HILASegment.ui"])
    assert new == ("# keep me\nset(MODULE_PYTHON_SCRIPTS\n  HILASegment.py\n  HILASegmentLib/a.py\n  )\n\n"
                   "set(MODULE_PYTHON_RESOURCES\n  Resources/UI/HILASegment.ui\n  )\nslicerMacroBuildScriptedModule()\n")
    scripts = mod.python_scripts()
    assert scripts[0] == "HILASegment.py" and "HILASegmentSlicerLib/processrunner.py" in scripts
    assert not any("Testing" in s or "__pycache__" in s for s in scripts + mod.resources())


def test_loading_the_module_does_not_import_simpleitk_or_onnxruntime():
    """Slicer imports every module's .py at start-up: the engine's heavy libraries must load on first use only."""
    code = textwrap.dedent("""
        import sys, types
        for name in ("qt", "vtk", "ctk", "slicer", "slicer.util", "slicer.ScriptedLoadableModule"):
            sys.modules[name] = types.ModuleType(name)
        mod = sys.modules["slicer.ScriptedLoadableModule"]
        for cls in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                    "ScriptedLoadableModuleWidget"):
            setattr(mod, cls, type(cls, (), {}))
        sys.modules["slicer.util"].VTKObservationMixin = type("VTKObservationMixin", (), {})
        sys.path.insert(0, sys.argv[1])
        import importlib.util
        spec = importlib.util.spec_from_file_location("HILASegment", sys.argv[1] + "/HILASegment.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        heavy = sorted(m for m in ("SimpleITK", "onnxruntime", "torch", "nrrd") if m in sys.modules)
        print(",".join(heavy))
    """)
    r = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported when Slicer loads the module: {r.stdout.strip()}"
