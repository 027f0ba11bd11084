"""Fix with box's panel part with stand-ins (Qt cannot run here): the button's rule, a refusal as one status line
that starts nothing, the result written with one undo point and only into the segmentation the Segment Editor still
shows, the worker's progress per slice and its Cancel between slices. What it does to real segments is tested on
real MRML nodes in Testing/mrml/test_mrml_fixbox.py."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.inference import boxassist
from HILASegmentSlicerLib import boxfix, mrmlgeometry, panelstate, sections
from HILASegmentSlicerLib.jobs import JobBoard
from HILASegmentSlicerLib.processrunner import ThreadRunner


class Widget:  # a Qt widget's properties and signals, as the sections use them
    def __init__(self, node=None, segment=""):
        self.text, self.enabled, self.connected, self.node, self.segment = "", True, {}, node, segment
        self.calls = []

    def connect(self, signal, slot):
        self.connected[signal] = slot

    def currentNode(self):
        return self.node

    # qMRMLSegmentEditorWidget
    def currentSegmentID(self):
        return self.segment

    def segmentationNode(self):
        return self.node

    def mrmlSegmentEditorNode(self):
        return "editor-node"

    def saveStateForUndo(self):
        self.calls.append("undo point")


class Node:
    def __init__(self, nodeId):
        self.nodeId = nodeId

    def GetID(self):
        return self.nodeId


def _panel(calls, logic=None):
    board = JobBoard()
    return SimpleNamespace(jobs=board, status=calls.append, updateButtons=lambda: calls.append("buttons"),
                           startJob=lambda job: calls.append(("start", job)), cancelJob=lambda kind: calls.append(("cancel", kind)),
                           installs=SimpleNamespace(ensure=lambda tier: True), logic=logic)


def _ui(segNode=None, segment="", roi=None, volume=None):
    return SimpleNamespace(fixBoxButton=Widget(), fixRoiSelector=Widget(roi), inputVolumeSelector=Widget(volume),
                           segmentEditorWidget=Widget(segNode, segment))


def test_the_fix_button_needs_a_segment_and_an_roi_and_is_cancel_while_its_job_runs():
    base = dict(has_workspace=False, has_volume=True)
    cases = [("", None, False), ("prostate", None, False), ("", Node("roi"), False), ("prostate", Node("roi"), True)]
    for segment, roi, enabled in cases:
        ui = _ui(Node("seg"), segment, roi)
        section = sections.FixBoxSection(_panel([]), ui, util=None, scene=None)
        section.update_button(panelstate.PanelState(**base))
        assert ui.fixBoxButton.enabled is enabled and ui.fixBoxButton.text == "Fix with box", (segment, roi)
        # the selection's signals redraw the buttons
        assert {"currentNodeChanged(vtkMRMLNode*)"} == set(ui.fixRoiSelector.connected)
        assert {"currentSegmentIDChanged(QString)"} == set(ui.segmentEditorWidget.connected)
    ui = _ui(Node("seg"), "prostate", Node("roi"))
    section = sections.FixBoxSection(_panel([]), ui, util=None, scene=None)
    section.update_button(panelstate.PanelState(**base, segmenting_shown=True))
    assert not ui.fixBoxButton.enabled  # the shown case's Segment result is on its way
    section.update_button(panelstate.PanelState(**base, fixing=True))
    assert ui.fixBoxButton.enabled and ui.fixBoxButton.text == "Cancel fix"
    ui = _ui(Node("seg"), "", None)  # a running fix can be cancelled even after the selection went
    sections.FixBoxSection(_panel([]), ui, util=None, scene=None).update_button(panelstate.PanelState(**base, fixing=True))
    assert ui.fixBoxButton.enabled


def test_a_refused_fix_is_one_status_line_and_starts_nothing():
    calls = []

    def refuse(volume, segNode, segmentId, roi):
        raise HilaError("the ROI 'R' [1.0, 2.0]: outside the image (index [..], image size [55, 54, 19])")
    panel = _panel(calls, SimpleNamespace(startFixWithBox=refuse))
    ui = _ui(Node("seg"), "prostate", Node("roi"), Node("vol"))
    sections.FixBoxSection(panel, ui, util=None, scene=None).fix()
    assert calls == ["Fix with box refused; nothing changed: the ROI 'R' [1.0, 2.0]: outside the image "
                     "(index [..], image size [55, 54, 19])"]
    assert not panel.jobs.running


def test_the_fix_goes_in_with_one_undo_point_only_while_the_editor_shows_its_segmentation():
    calls = []

    def apply(context, result, editorNode):
        calls.append(("apply", editorNode))
        if result.get("refuse"):
            raise HilaError("the segment 'prostate' was deleted while the assistant ran; nothing was changed")
        return SimpleNamespace(message=lambda: "Fixed 'prostate'")
    panel = _panel(calls, SimpleNamespace(applyFixWithBox=apply))
    job = SimpleNamespace(context={"segmentation": "seg-1"})
    # the editor now shows another segmentation: no undo point there, nothing written
    ui = _ui(Node("seg-2"), "prostate")
    sections.FixBoxSection(panel, ui, util=None, scene=None).finish(job, SimpleNamespace(result={}))
    assert ui.segmentEditorWidget.calls == [] and not [c for c in calls if c[0] == "apply"]
    assert "no longer the one shown in the Segment Editor; nothing changed" in calls[-1]
    # its own segmentation shown: exactly one undo point, saved before the write
    ui = _ui(Node("seg-1"), "prostate")
    ui.segmentEditorWidget.saveStateForUndo = lambda: calls.append("undo point")
    calls.clear()
    sections.FixBoxSection(panel, ui, util=None, scene=None).finish(job, SimpleNamespace(result={}))
    assert calls == ["undo point", ("apply", "editor-node"), "Fixed 'prostate'; Undo in the Segment Editor takes it back"]
    calls.clear()
    sections.FixBoxSection(panel, ui, util=None, scene=None).finish(job, SimpleNamespace(result={"refuse": True}))
    assert calls[-1] == "Fix with box: the segment 'prostate' was deleted while the assistant ran; nothing was changed"


class SlowAssistant:
    """Stands in for the network: one progress call per slice, waiting for the test between slices."""
    name = "stand-in"

    def __init__(self):
        self.slices, self.go = [], threading.Event()

    def segment(self, image, box, prompt=boxassist.PROMPTS[0], progress=None, where="image"):
        self.prompt = prompt
        lo, hi = boxassist.box_block(image, box)
        out = np.zeros(image.GetSize()[::-1], bool)
        for n, k in enumerate(range(int(lo[2]), int(hi[2]) + 1)):
            self.go.wait()
            out[k, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
            self.slices.append(k)
            progress((n + 1) / (hi[2] - lo[2] + 1), f"slice {k}")
        return out


def _request():
    ijk_to_ras = np.diag([1.0, 1.0, 2.0, 1.0])  # LPS = (-i, -j, 2k)
    array = np.zeros((10, 12, 12), np.int16)
    box = (-8.5, -8.5, 1.5, -2.5, -2.5, 12.5)  # LPS: i, j 3..8, k 1..6
    image = mrmlgeometry.array_to_image(array, ijk_to_ras)
    lo, hi = boxassist.box_block(image, box)
    return boxfix.FixRequest("vol", "seg", "prostate", "prostate", "R", box, boxassist.block_slices(lo, hi), array,
                             ijk_to_ras)


def test_the_worker_reports_each_slice_and_a_cancel_stops_it_between_slices(monkeypatch):
    request = _request()
    assert [(s.start, s.stop) for s in request.block] == [(1, 7), (3, 9), (3, 9)]
    stand_in = SlowAssistant()
    monkeypatch.setattr(boxassist, "shared_assistant", lambda: stand_in)
    runner = ThreadRunner(lambda cancelled, report: boxfix.run(request, cancelled, report), "fixbox", reports=True)
    runner.start()
    stand_in.go.set()
    outcome = runner.wait()
    assert outcome.ok and runner.fraction == 1.0 and runner.message == "slice 6"
    assert outcome.result["mask"].shape == (6, 6, 6) and outcome.result["mask"].all()
    assert stand_in.prompt == boxassist.FIX_PROMPT == "box"  # a box over part of a segment: no inscribed ellipsoid
    # cancelled after the second slice: the worker stops at the next progress call, the result is dropped
    stand_in = SlowAssistant()
    monkeypatch.setattr(boxassist, "shared_assistant", lambda: stand_in)
    runner = ThreadRunner(lambda cancelled, report: boxfix.run(request, cancelled, report), "fixbox", reports=True)

    def cancel_after_two(fraction, message, real=runner.report):
        real(fraction, message)
        if len(stand_in.slices) == 2:
            runner.cancel()
    runner.report = cancel_after_two  # what the worker is handed as its report
    runner.start()
    stand_in.go.set()
    outcome = runner.wait()
    assert outcome.cancelled and not outcome.ok and outcome.result is None
    assert stand_in.slices == [1, 2, 3] and runner.fraction == 1.0


def test_check_installed_says_how_to_install_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HILA_ASSIST_DIR", str(tmp_path / "none"))
    with pytest.raises(HilaError, match=r"the box assistant is not installed: pip install 'hilasegment\[assist\]'") as info:
        boxfix.check_installed()
    assert "\n" not in str(info.value)
