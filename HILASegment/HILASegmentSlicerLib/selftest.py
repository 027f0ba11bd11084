"""The in-Slicer self-test's steps (``HILASegmentTest`` in HILASegment.py runs them), with Slicer passed in.

``case`` is the running ``ScriptedLoadableModuleTest`` (its asserts and ``delayDisplay``), ``slicer`` the slicer
module, ``logic_class`` the module's ``HILASegmentLogic``. Run once inside Slicer: packages, a PACS import with no
server, two cases with a result in flight (the A/B race), accept, accept as weak, train.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import cases, installplan, marks, pacs, panels, segments
from .jobs import Job, JobBoard

__all__ = ["packages", "race_accept_and_train", "pacs_without_a_server"]


def packages(case: Any, slicer: Any, logic_class: Any) -> None:
    """Install what is missing (testing mode: no dialog, as agreed), then check nothing is missing."""
    logic = logic_class()
    for tier in ("inference", "training"):
        plan = installplan.plan_install(tier)
        case.assertFalse(plan.broken_slicer, plan.message())
        if plan.needed:
            case.delayDisplay("Installing: " + plan.message())
            runner = logic.install(plan)
            outcome = runner.start().wait(timeout=1800) if runner is not None else None
            case.assertTrue(outcome is None or outcome.ok, outcome and outcome.error)
        case.assertFalse(installplan.plan_install(tier).needed, "%s packages still missing" % tier)


def race_accept_and_train(case: Any, slicer: Any, logic_class: Any) -> None:
    """Two cases with a result in flight (the A/B race), Accept, Accept as weak (an ROI, then two lines), training."""
    from HILASegmentLib.workspace import Workspace  # the ledger: loaded when the test runs

    util, scene = slicer.util, slicer.mrmlScene
    logic = logic_class()
    model = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "hila_tiny_test.onnx"
    ws = Workspace.create(Path(util.tempDirectory("HILASegmentTest")) / "ws", "MR", ["prostate"], model=str(model))
    volumes, blobs = [], []
    for n, shift in enumerate((0, 6)):
        k, j, i = np.mgrid[0:24, 0:48, 0:48]
        blob = ((i - 24 - shift) ** 2 + (j - 24) ** 2 + ((k - 12) * 2) ** 2) < 12 ** 2
        array = (100 + 300 * blob + np.random.default_rng(n).normal(0, 10, blob.shape)).astype(np.int16)
        volume = util.addVolumeFromArray(array, ijkToRAS=np.diag([-1.0, -1.0, 3.0, 1.0]), name="HILATest%d" % n)
        logic.importVolumeNode(ws, volume)
        volumes.append(volume)
        blobs.append(blob)
    volA, volB = volumes
    caseA = volA.GetAttribute(segments.CASE_ATTRIBUTE)

    case.delayDisplay("Case A segments in the background while case B is opened (the A/B race)")
    board = JobBoard()
    modelPath, version = panels.model_for(ws)
    runner, context = logic.startSegmentation(volA, str(version), case=(str(ws.root), caseA))  # the child records it
    board.start(Job("segment", runner, case_id=caseA, volume_id=volA.GetID(), context=context))
    segB = segments.segmentation_for(scene, volB)  # B is shown now
    finished = []
    deadline = time.monotonic() + 300
    while not finished and time.monotonic() < deadline:
        finished = [job for job, _, done in board.poll() if done]
        time.sleep(0.1)
    job = finished[0]
    case.assertTrue(job.runner.outcome().ok, job.runner.outcome().error)
    target = scene.GetNodeByID(job.volume_id)
    case.assertIs(target, volA)
    segA = segments.segmentation_for(scene, target)
    report = logic.loadResult(context["out"], segA, target, logic.segmentEditorNode())
    case.assertEqual(report.names, ["prostate"])
    case.assertEqual([p.model_version for p in ws.predictions(caseA)], [version])
    case.assertEqual(segB.GetSegmentation().GetNumberOfSegments(), 0, "A's result reached B's segmentation")
    logic.cleanupJob(context)

    case.delayDisplay("Editing A and accepting it")
    segId = segA.GetSegmentation().GetSegmentIdBySegmentName("prostate")
    edited = util.arrayFromSegmentBinaryLabelmap(segA, segId, volA)
    edited[blobs[0]] = 1
    edited[12] = 0  # erase the middle slice: a real edit
    util.updateSegmentBinaryLabelmapFromArray(edited, segA, segId, volA)
    outcome = logic.accept(ws, volA, segA, annotator="selftest", seconds=1.0)  # the panel's Accept job, waited for
    case.assertEqual((outcome.case_id, outcome.version), (caseA, 1))
    case.assertTrue(os.path.exists(outcome.saved))
    case.assertGreater(ws.corrections(caseA)[-1].effort["fraction_changed"], 0)

    case.delayDisplay("Accept as weak: an ROI around B's blob, then two RECIST lines across it")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenterWorld(-30.0, -24.0, 36.0)  # blob B: i = 30, j = 24, k = 12 under ijkToRAS diag(-1, -1, 3)
    roi.SetSizeWorld(24.0, 24.0, 36.0)
    caseB = volB.GetAttribute(segments.CASE_ATTRIBUTE)
    weakBox = cases.accept_weak(ws, volB, marks.marks_from_markups(util, "prostate", roi=roi, volume=volB))
    lines = [scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode") for _ in range(2)]
    util.updateMarkupsControlPointsFromArray(lines[0], np.array([[-42.0, -24.0, 36.0], [-18.0, -24.0, 36.0]]), world=True)
    util.updateMarkupsControlPointsFromArray(lines[1], np.array([[-30.0, -36.0, 36.0], [-30.0, -12.0, 36.0]]), world=True)
    weakLines = cases.accept_weak(ws, volB, marks.marks_from_markups(util, "prostate", long_line=lines[0], short_line=lines[1], volume=volB))
    case.assertEqual([(c.version, c.quality) for c in ws.corrections(caseB)], [(1, "weak"), (2, "weak")])
    case.assertTrue(np.allclose(weakBox.effort["marks"]["items"][0]["box"], [18, 12, 18, 42, 36, 54]))  # LPS mm
    case.assertEqual(len(weakLines.effort["marks"]["items"][0]["lines"]), 2)
    import SimpleITK as sitk  # the engine's image library, only in this test
    weakMask = sitk.GetArrayFromImage(ws.correction_label(caseB, 1)) > 0  # [k, j, i] as the volume's array
    case.assertGreater(2 * (weakMask & blobs[1]).sum() / (weakMask.sum() + blobs[1].sum()), 0.6)

    case.delayDisplay("One-minute CPU training round in a child process")
    before = {m.version for m in ws.models()}
    outcome = logic.startTraining(ws, 1, "cpu").start().wait(timeout=600)
    case.assertTrue(outcome.ok, outcome.error)
    case.assertTrue({m.version for m in ws.models()} - before, "training registered no new model version")
    case.assertTrue(ws.check().ok)
    case.delayDisplay("HILASegment self-test passed")


def pacs_without_a_server(case: Any, slicer: Any, logic_class: Any) -> None:
    """The panel's PACS import, run as the panel runs it, against a port nobody listens on: the engine's
    one-line error comes back and nothing is imported (no server needed)."""
    from HILASegmentLib.workspace import Workspace  # the ledger: loaded when the test runs

    util = slicer.util
    plan = installplan.plan_install("dicom")
    if plan.needed or plan.old_slicer or plan.broken_slicer:
        case.delayDisplay("PACS step skipped: " + plan.message())
        return
    ws = Workspace.create(Path(util.tempDirectory("HILASegmentPacs")) / "ws", "CT", ["prostate"])
    action = pacs.import_action(ws.root, "http://127.0.0.1:9/dicom-web", "1.2.3")
    case.assertNotIn("PASSWORD", " ".join(action.args))
    outcome = pacs.runner(action, util.startupEnvironment()).start().wait(timeout=120)
    case.assertFalse(outcome.ok)
    case.assertIn("connection refused", outcome.error)
    case.assertEqual(ws.cases(), [])
    case.delayDisplay("HILASegment PACS step passed")
