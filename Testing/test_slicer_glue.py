"""HILASegmentSlicerLib with stand-in MRML objects: job binding, Accept, label matching, button states, stale settings.

The stand-ins implement only the calls the library makes (each is a recorded Slicer API call, see
test_slicer_contract.py); the workspace, the label matching and the images are the real engine's.
No Slicer behaviour is claimed beyond what these calls do in its source.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.workspace import Workspace
from HILASegmentSlicerLib import cases, mrmlgeometry, panelstate, segments
from HILASegmentSlicerLib.jobs import Job, JobBoard, JobError

_ids = itertools.count(1)


class Ref:  # vtk.mutable
    def __init__(self, v=""):
        self.v = v

    def get(self):
        return self.v

    def set(self, v):
        self.v = v


class Segment:
    def __init__(self, name):
        self.name, self.tags = name, {}

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def SetTag(self, k, v):
        self.tags[k] = v

    def GetTag(self, k, ref):
        if k in self.tags:
            ref.set(self.tags[k])
            return True
        return False


class Segmentation:
    def __init__(self):
        self.segs, self.arrays = {}, {}

    def AddEmptySegment(self, segId, name, color=None):
        self.segs[segId] = Segment(name)
        return segId

    def GetSegment(self, segId):
        return self.segs.get(segId)

    def GetNumberOfSegments(self):
        return len(self.segs)

    def GetNthSegmentID(self, i):
        return list(self.segs)[i]

    def SeparateSegmentLabelmap(self, segId):
        pass

    def CollapseBinaryLabelmaps(self, force):
        pass


class Node:
    def __init__(self, name=""):
        self.id, self.name, self.attrs, self.refs, self.transform = f"vtkMRMLNode{next(_ids)}", name, {}, {}, None

    def GetID(self):
        return self.id

    def GetName(self):
        return self.name

    def GetAttribute(self, k):
        return self.attrs.get(k)

    def SetAttribute(self, k, v):
        self.attrs[k] = v

    def GetTransformNodeID(self):
        return self.transform

    def SetAndObserveTransformNodeID(self, t):
        self.transform = t


class SegNode(Node):
    def __init__(self, name):
        super().__init__(name)
        self.segmentation = Segmentation()

    def GetSegmentation(self):
        return self.segmentation

    def GetBinaryLabelmapInternalRepresentation(self, segId):
        return None  # no layers here: segments are read through Util.arrayFromSegmentBinaryLabelmap

    def GetDisplayNode(self):
        return None

    def StartModify(self):
        return 0

    def EndModify(self, was):
        pass

    def CreateDefaultDisplayNodes(self):
        pass

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume):
        self.reference = volume


class Volume(Node):
    def __init__(self, name, image, scene):
        super().__init__(name)
        self.array, self.ijk_to_ras, self.scene = sitk.GetArrayFromImage(image), mrmlgeometry.ijk_to_ras_matrix(image), scene
        scene.nodes[self.id] = self

    def GetNodeReference(self, role):
        return self.scene.nodes.get(self.refs.get(role))

    def SetNodeReferenceID(self, role, nodeId):
        self.refs[role] = nodeId


class Scene:
    def __init__(self):
        self.nodes = {}

    def AddNewNodeByClass(self, cls, name):
        assert cls == "vtkMRMLSegmentationNode"
        node = SegNode(name)
        self.nodes[node.id] = node
        return node

    def GetNodeByID(self, nodeId):
        return self.nodes.get(nodeId)


class Util:  # slicer.util
    @staticmethod
    def arrayFromVolume(volume):
        return volume.array

    @staticmethod
    def arrayFromSegmentBinaryLabelmap(segNode, segId, volume):
        return segNode.segmentation.arrays.get(segId, np.zeros(volume.array.shape, np.uint8)).copy()

    @staticmethod
    def updateSegmentBinaryLabelmapFromArray(array, segNode, segId, volume):
        segNode.segmentation.arrays[segId] = np.asarray(array, np.uint8).copy()


class Runner:  # a ProcessRunner whose child the test finishes
    def __init__(self):
        self.finished = self.started = self.cancelled = False
        self.fraction = None

    def start(self):
        self.started = True
        return self

    def poll(self):
        return []

    def cancel(self):
        self.cancelled = True


def _image(shift):
    k, j, i = np.mgrid[0:10, 0:24, 0:24]
    arr = (100 + 300 * (((i - 12 - shift) ** 2 + (j - 12) ** 2 + ((k - 5) * 2) ** 2) < 36)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.5))
    img.SetOrigin((-12.0 + shift, 5.0, 30.0))
    return img


@pytest.fixture
def two_cases(tmp_path):
    ws = Workspace.create(tmp_path / "ws", "MR", ["prostate"])
    scene, volumes = Scene(), []
    for n, shift in enumerate((0, 4)):
        path = tmp_path / f"case{n}.nrrd"
        sitk.WriteImage(_image(shift), str(path))
        case = ws.import_volume(path)
        volume = Volume(case.name, sitk.ReadImage(str(path)), scene)
        volume.SetAttribute(segments.CASE_ATTRIBUTE, case.case_id)
        volume.SetAttribute(segments.WORKSPACE_ATTRIBUTE, str(ws.root))
        volumes.append(volume)
    return ws, scene, volumes


def _accept(ws, volume, segNode, **kw):
    return cases.accept_case(ws, Util, volume, segNode, volume.ijk_to_ras, Ref, save=lambda node, v: f"saved-v{v}", **kw)


def _state(board, ws, shown):
    seg = board.get("segment")
    return panelstate.button_states(panelstate.PanelState(
        has_workspace=ws is not None, has_volume=shown is not None, segmenting_shown=board.segmenting(shown.GetID()),
        segmenting_other=seg is not None and seg.volume_id != shown.GetID(), training=board.busy("train")))


def test_the_ab_race_cannot_submit_a_result_for_the_wrong_case(two_cases):
    ws, scene, (volA, volB) = two_cases
    board = JobBoard()
    runner = Runner()
    board.start(Job("segment", runner, case_id=volA.GetAttribute(segments.CASE_ATTRIBUTE), volume_id=volA.GetID()))
    states = _state(board, ws, volA)
    assert not states["caseTableWidget"] and not states["inputVolumeSelector"] and not states["nextCaseButton"]
    assert states["segmentButton"] and panelstate.segment_button_text(True, "taps v1") == "Cancel"
    assert not states["acceptButton"]  # A's own result is still in flight
    with pytest.raises(JobError, match="still running"):
        board.start(Job("segment", Runner(), volume_id=volA.GetID()))
    # B is shown anyway (e.g. selected from another module) while A's result is in flight
    segB = segments.segmentation_for(scene, volB)
    assert _state(board, ws, volB)["acceptButton"] and not _state(board, ws, volB)["segmentButton"]
    runner.finished = True
    [(job, _, done)] = board.poll()
    assert done and not board.busy("segment")
    target = scene.GetNodeByID(job.volume_id)
    assert target is volA
    mask = (volA.array > 200).astype(np.uint8)
    segA = segments.segmentation_for(scene, target)
    assert segA is not segB
    report = segments.write_result(Util, [(1, "prostate", (1, 0, 0), mask, {"HILA.model": "tiny"})], segA, target)
    assert report.names == ["prostate"] and report.clipped_total == 0
    assert segB.GetSegmentation().GetNumberOfSegments() == 0
    with pytest.raises(HilaError, match="prostate"):  # Accept on B: B's own (empty) segmentation, refused
        _accept(ws, volB, segB)
    assert ws.corrections(volB.GetAttribute(segments.CASE_ATTRIBUTE)) == []
    out = _accept(ws, volA, segA)
    assert out.case_id == volA.GetAttribute(segments.CASE_ATTRIBUTE) and out.version == 1
    stored = sitk.GetArrayFromImage(ws.correction_label(out.case_id))
    assert np.array_equal(stored > 0, mask > 0)  # A's correction is A's result, voxel for voxel
    assert ws.corrections(volB.GetAttribute(segments.CASE_ATTRIBUTE)) == []


def test_accept_works_while_a_training_job_runs(two_cases):
    ws, scene, (volA, _) = two_cases
    board = JobBoard()
    train = board.start(Job("train", Runner(), label="a new model"))
    states = _state(board, ws, volA)
    for name in ("acceptButton", "segmentButton", "nextCaseButton", "caseTableWidget", "importFilesButton"):
        assert states[name], name
    assert not states["trainButton"] and states["cancelButton"]
    segA = segments.segmentation_for(scene, volA)
    segA.GetSegmentation().AddEmptySegment("s1", "prostate")
    Util.updateSegmentBinaryLabelmapFromArray((volA.array > 200).astype(np.uint8), segA, "s1", volA)
    assert _accept(ws, volA, segA, quality="rough").version == 1
    assert board.get("train") is train and not train.runner.cancelled
    seg = Job("segment", Runner(), volume_id=volA.GetID())
    board.start(seg)  # a segment job starts beside the training run
    assert board.busy("segment") and board.busy("train")


@pytest.mark.parametrize("name,tags", [("Prostate", {}), ("prostate", {}), ("Segment_1", {"hila_1": "1"}),
                                       ("Segment_7", {"TerminologyEntry": "Segmentation category and type - 3D Slicer General Anatomy list"
                                                      "~SCT^123037004^Anatomical Structure~SCT^41216001^Prostate~^^"
                                                      "~Anatomic codes - DICOM master list~^^~^^"})])
def test_prostate_prostate_and_a_hila_1_tag_all_match(two_cases, name, tags):
    ws, scene, (volA, _) = two_cases
    segNode = segments.segmentation_for(scene, volA)
    segNode.GetSegmentation().AddEmptySegment("x", name)
    for k, v in tags.items():
        segNode.GetSegmentation().GetSegment("x").SetTag(k, v)
    mask = (volA.array > 200).astype(np.uint8)
    Util.updateSegmentBinaryLabelmapFromArray(mask, segNode, "x", volA)
    label = segments.label_array_from_segmentation(Util, segNode, volA, ws.settings.labels, Ref)
    assert np.array_equal(label == 1, mask > 0)


def test_a_missing_label_refuses_accept_and_names_it(tmp_path):
    ws = Workspace.create(tmp_path / "ws", "MR", ["prostate", "bladder"])
    path = tmp_path / "c.nrrd"
    sitk.WriteImage(_image(0), str(path))
    scene = Scene()
    volume = Volume("c", sitk.ReadImage(str(path)), scene)
    volume.SetAttribute(segments.CASE_ATTRIBUTE, ws.import_volume(path).case_id)
    segNode = segments.segmentation_for(scene, volume)
    segNode.GetSegmentation().AddEmptySegment("p", "Prostate")
    Util.updateSegmentBinaryLabelmapFromArray((volume.array > 200).astype(np.uint8), segNode, "p", volume)
    with pytest.raises(HilaError, match="'bladder'"):
        _accept(ws, volume, segNode)
    assert ws.corrections() == []
    segNode.GetSegmentation().AddEmptySegment("b", "Bladder")  # an empty segment says "absent": accepted
    assert _accept(ws, volume, segNode).version == 1


def test_a_stale_workspace_path_leaves_the_panel_consistent(tmp_path):
    cleared = []
    for stale in (tmp_path / "gone", tmp_path):  # deleted, and a folder that is not a workspace
        ws, message = cases.reopen_workspace(str(stale), Workspace.open, lambda: cleared.append(True))
        assert ws is None and str(stale) in message and "forgotten" in message
    assert cleared == [True, True]
    assert cases.reopen_workspace("", Workspace.open, lambda: cleared.append(True)) == (None, "")
    states = panelstate.button_states(panelstate.PanelState(has_workspace=False, has_volume=False))
    assert not any(states[n] for n in ("trainButton", "nextCaseButton", "caseTableWidget", "rollbackButton", "segmentButton"))
    assert states["openWorkspaceButton"] and states["createWorkspaceButton"] and states["inputVolumeSelector"]


def test_a_failed_save_after_submit_reports_the_submitted_version(two_cases):
    ws, scene, (volA, _) = two_cases
    segA = segments.segmentation_for(scene, volA)
    segA.GetSegmentation().AddEmptySegment("s", "prostate")
    Util.updateSegmentBinaryLabelmapFromArray((volA.array > 200).astype(np.uint8), segA, "s", volA)

    def fail(node, version):
        raise OSError("disk full")
    out = cases.accept_case(ws, Util, volA, segA, volA.ijk_to_ras, Ref, save=fail)
    assert out.version == 1 and "correction v1" in out.message() and "disk full" in out.message()


def test_ai_segments_carry_the_workspace_value_not_the_models(two_cases):
    """A CT model's prostate is 1, bladder 2; in a workspace listing bladder first, bladder must not become prostate."""
    _, scene, (volA, _) = two_cases

    class L:
        def __init__(self, value, name):
            self.value, self.name = value, name
    labels = [L(1, "bladder"), L(2, "prostate")]
    mask = (volA.array > 200).astype(np.uint8)
    items = [(1, "prostate", (1, 0, 0), mask, {}), (2, "bladder", (0, 1, 0), np.zeros_like(mask), {}), (3, "rectum", (0, 0, 1), mask, {})]
    mapped = segments.workspace_items(items, labels)
    assert [(v, n, t.get("hila_label")) for v, n, _, _, t in mapped] == [(2, "prostate", "2"), (1, "bladder", "1"), (3, "rectum", None)]
    segNode = segments.segmentation_for(scene, volA)
    segments.write_result(Util, mapped, segNode, volA)
    label = segments.label_array_from_segmentation(Util, segNode, volA, labels, Ref)
    assert np.array_equal(label == 2, mask > 0) and not (label == 1).any()
    assert segments.workspace_items(items, None) == items


def test_a_new_workspace_gets_the_modalitys_starter_unless_the_user_picks_another(monkeypatch, tmp_path):
    assert cases.workspace_model("CT")[0] == "pelvic_ct_unet"
    assert cases.workspace_model("CT", "taps")[0] == "pelvic_ct_unet"  # an MR model does not start a CT workspace
    from HILASegmentLib.models import catalog
    model, note = cases.workspace_model("MR")
    assert (model == "taps") == catalog.get("taps").available and "taps" in note
    monkeypatch.setenv("HILA_MODELS_DIR", str(tmp_path))
    (tmp_path / "mine.onnx").write_bytes(b"")
    assert cases.workspace_model("CT", "mine")[0] == "mine"  # the user's own model (no modality listed)


def test_every_control_the_button_rules_name_is_a_widget_in_the_ui():
    import xml.etree.ElementTree as ET

    from conftest import ROOT
    names = {w.get("name") for w in ET.parse(ROOT / "HILASegment" / "Resources" / "UI" / "HILASegment.ui").iter("widget")}
    states = panelstate.button_states(panelstate.PanelState(has_workspace=True, has_volume=True))
    assert set(states) <= names, set(states) - names


def test_a_case_of_another_workspace_is_refused_at_accept(two_cases, tmp_path):
    ws, scene, (volA, _) = two_cases
    other = Workspace.create(tmp_path / "other", "MR", ["prostate"])
    other.import_volume(tmp_path / "case0.nrrd")  # same case ID c0001 there, but not this volume's workspace
    segA = segments.segmentation_for(scene, volA)
    segA.GetSegmentation().AddEmptySegment("s", "prostate")
    Util.updateSegmentBinaryLabelmapFromArray((volA.array > 200).astype(np.uint8), segA, "s", volA)
    with pytest.raises(HilaError, match="open that workspace"):
        _accept(other, volA, segA)
    assert other.corrections() == [] and _accept(ws, volA, segA).version == 1


def test_installs_use_slicer_packaging_on_5_12_and_a_background_pip_before():
    from types import SimpleNamespace

    from HILASegmentSlicerLib import installplan, installs
    from HILASegmentSlicerLib.processrunner import SequenceRunner
    find = lambda name: object() if name in {"numpy", "SimpleITK"} else None  # noqa: E731
    plan = installplan.plan_install("inference", find, lambda d: None, model="taps")
    calls = []
    slicer_512 = SimpleNamespace(packaging=SimpleNamespace(pip_install=lambda *a, **k: calls.append((a, k))))
    assert installs.run_plan(slicer_512, plan) is None
    assert calls == [((["onnxruntime>=1.16", "pynrrd>=1.0", "tqdm>=4.60"],),
                      {"no_deps_requirements": ["lavlab-taps>=1.1"], "requester": "HILASegment"})]
    runner = installs.run_plan(SimpleNamespace(), plan)  # 5.8/5.10: no slicer.packaging
    assert isinstance(runner, SequenceRunner) and not runner.finished
    assert [c[-1] for c in runner.commands] == ["tqdm>=4.60", "lavlab-taps>=1.1"] and "--no-deps" in runner.commands[1]


class Display:  # vtkMRMLSegmentationDisplayNode: the per-segment visibility calls the library makes
    def __init__(self):
        self.fill, self.outline, self.three_d = {}, {}, {}

    def GetSegmentVisibility(self, segId):
        return True

    def SetSegmentVisibility2DFill(self, segId, on):
        self.fill[segId] = on

    def SetSegmentVisibility2DOutline(self, segId, on):
        self.outline[segId] = on

    def SetSegmentVisibility3D(self, segId, on):
        self.three_d[segId] = on


def test_the_review_segment_is_an_outline_of_its_own_never_anatomy_at_accept(two_cases, tmp_path):
    """An engine result with the review segment (hila infer --review-map, as Segment runs it): the anatomy goes to
    hila_<value>, the review region to hila_review drawn as an outline; Accept submits the anatomy only."""
    from tiny_models import tiny_model

    from HILASegmentLib.formats.segfile import read_segmentation, write_segmentation
    from HILASegmentLib.ground.colors import REVIEW_COLOR, known_color
    from HILASegmentLib.ground.labelmatch import REVIEW_NAME, REVIEW_TAG
    from HILASegmentLib.inference.segmenter import Segmenter

    ws, scene, (volA, _) = two_cases
    model = tiny_model(tmp_path)
    image = sitk.GetImageFromArray(volA.array)
    image.SetSpacing((1.0, 1.0, 2.5))
    res = Segmenter(model).segment(image)
    out = write_segmentation(res.to_segmentation(review=True), tmp_path / "r.seg.nrrd")
    seg = read_segmentation(out)
    items = [(s.label_value, s.name, s.color, seg.mask_array(s.name) > 0, s.tags) for s in seg.segments]
    assert any(REVIEW_TAG in t for *_, t in items)
    labels = [type("L", (), {"value": 1, "name": "prostate"})()]
    # the model calls its label 'sphere': name it like the workspace's label, as a radiologist would
    items = [(v, "prostate" if REVIEW_TAG not in t else n, c, m, t) for v, n, c, m, t in items]
    segNode = segments.segmentation_for(scene, volA)
    segNode.display = Display()
    segNode.GetDisplayNode = lambda: segNode.display
    report = segments.write_engine_result(Util, segments.workspace_items(items, labels), segNode, volA)
    review_mask = next(m for *_, m, t in items if REVIEW_TAG in t)
    assert report.names == ["prostate"] and report.review_voxels == int(review_mask.sum()) > 0
    assert "likely errors outlined" in report.message()
    sn = segNode.segmentation
    assert set(sn.segs) == {"hila_1", segments.REVIEW_ID}  # the review region never lands in hila_1
    assert sn.segs[segments.REVIEW_ID].name == REVIEW_NAME and sn.segs[segments.REVIEW_ID].tags[REVIEW_TAG] == "1"
    assert segNode.display.fill == {segments.REVIEW_ID: False} and segNode.display.outline == {segments.REVIEW_ID: True}
    assert segNode.display.three_d == {segments.REVIEW_ID: False}
    assert REVIEW_COLOR not in {known_color(n) for n in ("prostate", "bladder", "rectum")}
    anatomy = np.asarray(sn.arrays["hila_1"]) > 0
    assert np.array_equal(anatomy, sitk.GetArrayFromImage(res.label) > 0)
    # Accept: the anatomy only, even though the review region reaches outside it
    assert (review_mask & ~anatomy).any()
    label = segments.label_array_from_segmentation(Util, segNode, volA, labels, Ref)
    assert np.array_equal(label > 0, anatomy)
    c = _accept(ws, volA, segNode)
    assert np.array_equal(sitk.GetArrayFromImage(ws.correction_label(c.case_id, c.version)) > 0, anatomy)


class _Widget:  # a Qt widget's properties and signals, as the sections use them
    def __init__(self):
        self.text, self.enabled, self.connected = "", True, {}

    def connect(self, signal, slot):
        self.connected[signal] = slot

    def clear(self):
        self.text = ""

    def blockSignals(self, block):
        self.blocked = block

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True


class _UI:
    def __getattr__(self, name):
        widget = _Widget()
        setattr(self, name, widget)
        return widget


def test_the_models_section_takes_the_candidate_from_the_trainers_result(monkeypatch):
    """The candidate is the version the trainer's JSON result names (not a diff of model lists); one the gate
    promoted is current already; a run without a model says why."""
    from types import SimpleNamespace

    from HILASegmentSlicerLib import sections

    calls = []
    panel = SimpleNamespace(ws=object(), refreshTables=lambda tables=None: calls.append("refresh"), status=calls.append,
                            updateButtons=lambda: None, cancelJob=lambda kind: None)
    monkeypatch.setattr(sections.panels, "compare_text", lambda ws, version: f"v{version} vs current")
    ui = _UI()
    models = sections.ModelsSection(panel, ui, util=None)
    assert set(ui.trainButton.connected) == {"clicked()"}  # the section connects its own buttons
    models.finish(None, SimpleNamespace(result={"model_version": 3, "promoted": False}))
    assert models.candidate == 3 and ui.candidateLabel.text == "v3 vs current"
    models.finish(None, SimpleNamespace(result={"model_version": 4, "promoted": True}))
    assert models.candidate is None and ui.candidateLabel.text == "v4 vs current"
    models.finish(None, SimpleNamespace(result={"event": "result", "message": "not enough corrections"}))
    assert ui.candidateLabel.text == "No new model: not enough corrections"


def test_keep_learning_runs_one_watching_trainer_reports_its_rounds_and_stops_on_untick():
    """Keep learning: ticking starts one `hila train --watch` child in the training slot (the gate promotes); a second
    tick starts nothing; each round's line updates the tables and says what the gate did; Train is dead meanwhile and
    the box stays live; unticking cancels the trainer; its end is reported and the box follows the slot."""
    from types import SimpleNamespace

    from HILASegmentSlicerLib import sections

    calls, started, board = [], [], JobBoard()

    class Runner:
        finished = False

        def start(self):
            calls.append("start")

        def cancel(self):
            self.finished = True
            calls.append("cancel")

        def poll(self):
            return []

    def start_training(ws, minutes, device, autoPromote=False, watch=False):
        started.append({"minutes": minutes, "device": device, "autoPromote": autoPromote, "watch": watch})
        return Runner()

    panel = SimpleNamespace(ws=object(), jobs=board, refreshTables=lambda tables=None: calls.append("refresh"),
                            readTables=lambda: calls.append("refresh"), status=calls.append,
                            updateButtons=lambda: None, startJob=board.start, cancelJob=board.cancel,
                            logic=SimpleNamespace(startTraining=start_training),
                            installs=SimpleNamespace(ensure=lambda tier: tier == "training"))
    ui = _UI()
    ui.maxMinutesSpinBox.value, ui.deviceComboBox.currentText = 5, "cpu"
    models = sections.ModelsSection(panel, ui, util=None)
    toggle = ui.keepLearningCheckBox.connected["toggled(bool)"]
    toggle(True)
    assert started == [{"minutes": 5, "device": "cpu", "autoPromote": True, "watch": True}]
    assert models.learning() and ui.keepLearningCheckBox.checked and board.get("train").context == {"watch": True}
    toggle(True)  # one trainer at a time
    assert calls.count("start") == 1
    models.on_round({"event": "round", "model_version": 5, "promoted": True, "reason": "it gains 0.03"})
    assert calls[-2:] == ["refresh", "Keep learning: model v5 is now current: it gains 0.03"]
    models.on_round({"event": "round", "model_version": 6, "promoted": False, "reason": "no gain"})
    assert calls[-1] == "Keep learning: model v6 kept as a candidate: no gain"
    state = dict(has_workspace=True, has_volume=True, training=True)
    live = panelstate.button_states(panelstate.PanelState(learning=True, **state))
    assert not live["trainButton"] and live["keepLearningCheckBox"] and live["cancelButton"]
    assert not panelstate.button_states(panelstate.PanelState(**state))["keepLearningCheckBox"]  # a manual Train runs
    toggle(False)
    assert calls[-1] == "cancel"
    job, = [j for j, _, done in board.poll() if done]  # cancelled: the panel's finishJob says so, no handler runs
    models.show_learning()  # what updateButtons does after every job: the box follows the free slot
    assert not ui.keepLearningCheckBox.checked and not models.learning()
    # a watch that ended by itself (not cancelled) reports its rounds rather than offering a candidate
    models.finish(job, SimpleNamespace(result={"rounds": 2, "promoted": 1, "stopped": "max_rounds"}))
    assert calls[-1] == "Keep learning stopped: 2 round(s), 1 promoted." and models.candidate is None


def test_import_and_accept_jobs_drive_their_buttons():
    """Import and Accept run as jobs: the import buttons wait for the running import (Cancel import is live), and the
    Accept button is Cancel for the shown volume's own Accept job and dead while another volume's Accept runs."""
    base = dict(has_workspace=True, has_volume=True)
    idle = panelstate.button_states(panelstate.PanelState(**base))
    importing = panelstate.button_states(panelstate.PanelState(**base, importing=True))
    assert idle["importFilesButton"] and not idle["cancelImportButton"]
    assert not importing["importFilesButton"] and not importing["importVolumeButton"] and importing["cancelImportButton"]
    assert importing["acceptButton"] and importing["segmentButton"]  # importing never blocks the case being corrected
    shown = panelstate.PanelState(**base, accepting_shown=True)
    assert panelstate.button_states(shown)["acceptButton"] and panelstate.accept_button_text(True) == "Cancel accept"
    assert not panelstate.button_states(panelstate.PanelState(**base, accepting_other=True))["acceptButton"]


def test_accept_outcome_names_the_copy_after_the_submitted_version_and_reports_a_failed_copy(tmp_path):
    pending = tmp_path / "segmentations" / "c1" / ".pending-x.seg.nrrd"
    pending.parent.mkdir(parents=True)
    pending.write_bytes(b"NRRD0004")
    final = lambda v: str(tmp_path / "segmentations" / "c1" / f"vol_v{v}.seg.nrrd")  # noqa: E731
    out = cases.accept_outcome("c1", [{"version": 4}, {"out": str(pending)}], [None, None], str(pending), final)
    assert (out.version, out.saved, out.save_error) == (4, final(4), None) and not pending.exists()
    out = cases.accept_outcome("c1", [{"version": 5}, None], [None, "hila: error: disk full"], str(pending), final)
    assert out.version == 5 and out.saved is None and "disk full" in out.message() and "v5" in out.message()


def test_a_finished_job_reads_the_tables_on_a_worker_and_one_table_defines_the_kinds(tmp_path):
    """When a job's run ends, the job reads the panel's tables from the ledger on a worker thread (a read-only
    connection of its own) before it finishes, so the finish handler only draws them; every kind's progress text,
    progress bar (a widget of the .ui) and finish handler come from one table, jobs.KINDS."""
    import threading
    import time
    import xml.etree.ElementTree as ET
    from types import SimpleNamespace

    from conftest import ROOT

    from HILASegmentSlicerLib import jobs, panels
    ws = Workspace.create(tmp_path / "ws", "MR", ["prostate"])
    sitk.WriteImage(_image(0), str(tmp_path / "case0.nrrd"))
    case = ws.import_volume(tmp_path / "case0.nrrd")
    readers = []

    def read():
        readers.append(threading.get_ident())
        return panels.read_tables(str(ws.root))
    board, runner = JobBoard(), Runner()
    job = board.start(Job("import", runner, label="1 item(s)", tables=read))
    assert board.poll() == [(job, [], False)] and readers == []  # the child still runs: nothing read yet
    runner.finished = True
    deadline = time.monotonic() + 30
    while not any(done for _, _, done in board.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert readers and readers[0] != threading.get_ident() and not board.busy("import")
    tables = job.tables_read
    assert tables.root == str(ws.root) and [row[0] for row in tables.cases] == [case.case_id]
    assert tables.labels == ["prostate"] and tables.modality == "MR"
    ui_file = ROOT / "HILASegment" / "Resources" / "UI" / "HILASegment.ui"
    names = {w.get("name") for w in ET.parse(ui_file).iter("widget")}
    assert {k.bar for k in jobs.KINDS.values()} <= names and job.describe() == "Importing 1 item(s)"
    sections = {name: SimpleNamespace(**{m: (lambda j, o, n=f"{name}.{m}": n) for m in ("finish", "finish_import",
                                                                                        "finish_accept")})
                for name in ("segment", "models", "installs", "pacs", "cases", "fixbox")}
    bound = jobs.bind_kinds(SimpleNamespace(**sections), SimpleNamespace(**{n: n for n in names}))
    assert {kind: (bar, handler(None, None)) for kind, (bar, handler) in bound.items()} == {
        kind: (k.bar, k.finish) for kind, k in jobs.KINDS.items()}
    ws.close()


def test_a_keep_learning_round_has_its_tables_read_on_a_worker_then_drawn(tmp_path):
    """A round of Keep learning ends while its trainer still runs: the jobs section reads the tables on a worker
    thread and its next poll (the QTimer's) draws them; the GUI thread never opens the ledger for it."""
    import threading
    import time
    from types import SimpleNamespace

    from HILASegmentSlicerLib import panels, sections

    class Timer(_Widget):  # qt.QTimer: the calls the section makes
        def setInterval(self, ms):
            self.interval = ms

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    ws = Workspace.create(tmp_path / "ws", "MR", ["prostate"])
    drawn, opened_on = [], []
    real_read = panels.read_tables
    section_module_read = sections.panels.read_tables
    assert section_module_read is real_read
    panels.read_tables = lambda root: opened_on.append(threading.get_ident()) or real_read(root)
    try:
        panel = SimpleNamespace(ws=ws, jobs=JobBoard(), refreshTables=drawn.append, **{
            n: SimpleNamespace(finish=None, finish_import=None, finish_accept=None)
            for n in ("segment", "models", "installs", "pacs", "cases", "fixbox")})
        runs = sections.JobsSection(panel, _UI(), util=None, qt=SimpleNamespace(QTimer=Timer))
        runs.read_tables()
        assert runs.timer.active and drawn == []
        deadline = time.monotonic() + 30
        while not drawn:
            assert time.monotonic() < deadline
            runs.poll()
            time.sleep(0.01)
    finally:
        panels.read_tables = real_read
    assert opened_on and opened_on[0] != threading.get_ident()
    assert drawn[0].root == str(ws.root) and drawn[0].labels == ["prostate"] and not runs.timer.active
    ws.close()
