"""The module's Logic (MRML <-> engine conversions and job set-up; no UI), with Slicer passed in.

``HILASegment.py``'s ``HILASegmentLogic`` hands every call to a :class:`ModuleLogic` built with the real
``slicer`` and ``vtk`` modules; the real-MRML tier builds one on slicer-core's. Used by the widget, the
self-test and batch mode.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from HILASegmentLib.ground.errors import HilaError

from . import boxfix, cases, installs, mrmlgeometry, segments
from .processrunner import ProcessRunner, SequenceRunner, ThreadRunner, engine_command

__all__ = ["ModuleLogic"]


class ModuleLogic:
    """``slicer``: the slicer module (``mrmlScene``, ``util``, the MRML classes); ``vtk``: the vtk module."""

    def __init__(self, slicer: Any, vtk: Any) -> None:
        self.slicer, self.util, self.vtk = slicer, slicer.util, vtk

    def segmentEditorNode(self) -> Any:
        """This module's own Segment Editor node (a singleton of the scene, made on first use)."""
        scene = self.slicer.mrmlScene
        node = scene.GetSingletonNode("HILASegment", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = self.slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("HILASegment")
            node = scene.AddNode(node)
        return node

    # workspaces: a new one starts from the picked or the modality's catalog starter (cases.workspace_model)
    def openWorkspace(self, path: str) -> Any:
        from HILASegmentLib.workspace import Workspace  # the ledger: loaded when a workspace is opened
        return Workspace.open(path)

    def createWorkspace(self, path: str, modality: str, labels: Sequence[str], model: Optional[str] = None) -> Any:
        from HILASegmentLib.workspace import Workspace  # the ledger: loaded when a workspace is made
        return Workspace.create(path, modality, labels or None, model=model)

    # volumes and segmentations
    def ijkToRas(self, volume: Any) -> np.ndarray:
        matrix = self.vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return self.util.arrayFromVTKMatrix(matrix)

    def volumeToImage(self, volume: Any) -> Any:
        """The volume as a SimpleITK image (its own, local geometry; the array copied, so later edits do not leak)."""
        return mrmlgeometry.array_to_image(np.array(self.util.arrayFromVolume(volume)), self.ijkToRas(volume))

    def loadResult(self, segPath: str, segNode: Any, volume: Any, editorNode: Any = None) -> Any:
        """A `hila infer` .seg.nrrd into the volume's own segments; returns the report (``segments.WriteReport``).
        All the GUI thread does with an AI result: read it and :meth:`loadSegmentation` (the workspace form's file is
        cut to the result's voxels and already in the workspace's labels; the child recorded the prediction)."""
        from HILASegmentLib.formats.segfile import read_segmentation  # SimpleITK: loaded when a result arrives
        return self.loadSegmentation(read_segmentation(segPath), segNode, volume, editorNode)

    def loadSegmentation(self, seg: Any, segNode: Any, volume: Any, editorNode: Any = None) -> Any:
        """THE way an engine result (``segfile.Segmentation`` on the volume's lattice) becomes segments, for the panel
        and for batch mode: its segments are written in the region of the volume they cover, under the Segment
        Editor's masking (``segments.write_engine_result``)."""
        shape = tuple(self.util.arrayFromVolume(volume).shape)
        items, region = segments.result_items(seg, self.ijkToRas(volume), shape)
        mode = self.slicer.vtkMRMLSegmentationNode.ConvertMaskModeToString(editorNode.GetMaskMode()) if editorNode else None
        return segments.write_engine_result(self.util, items, segNode, volume, editorNode, mode, self.slicer.mrmlScene,
                                            region=region)

    # workspace
    def loadCase(self, ws: Any, caseId: str) -> Any:
        case = ws.case(caseId)
        volume = self.util.loadVolume(str(case.path))
        volume.SetName(case.name)
        volume.SetAttribute(segments.CASE_ATTRIBUTE, case.case_id)
        volume.SetAttribute(segments.WORKSPACE_ATTRIBUTE, str(ws.root))
        return volume

    def startImport(self, ws: Any, paths: Sequence[str], name: Optional[str] = None) -> ProcessRunner:
        """``hila import WS PATH...`` (volumes, DICOM series folders) as a child: its JSON result lists the cases."""
        args = ["import", str(ws.root)] + [str(p) for p in paths] + (["--name", name] if name else []) + ["--json"]
        argv, env = engine_command("HILASegmentLib", args, env=self.util.startupEnvironment())
        return ProcessRunner(argv, env=env)

    def startImportVolumeNode(self, ws: Any, volume: Any) -> Tuple[SequenceRunner, Dict[str, str]]:
        """A volume node into the workspace: its voxels copied here (the GUI thread's part), written uncompressed by
        the job's worker, imported by the child (validation, the compressed copy, the ledger); the finish handler
        tags the node with its case."""
        from HILASegmentLib.ground.paths import name_component
        folder = tempfile.mkdtemp(prefix="hila-import-")
        path = os.path.join(folder, name_component(volume.GetName() or "volume") + ".nrrd")
        args = ["import", str(ws.root), path] + (["--name", volume.GetName()] if volume.GetName() else []) + ["--json"]
        argv, env = engine_command("HILASegmentLib", args, env=self.util.startupEnvironment())
        return SequenceRunner([self.volumeWriter(volume, path), argv], env=env), {"folder": folder}

    def volumeWriter(self, volume: Any, path: str) -> Callable[[Any], None]:
        """The job step that writes ``volume`` to ``path`` (uncompressed: the child reads it once) on the worker
        thread; here only its voxels and matrix are copied (a later edit of the node does not leak into the file)."""
        array, ijkToRas = np.array(self.util.arrayFromVolume(volume)), self.ijkToRas(volume)

        def write_volume(cancelled: Any) -> None:
            from HILASegmentLib.formats.imageio import write_image  # SimpleITK: loaded in the worker
            write_image(mrmlgeometry.array_to_image(array, ijkToRas), path, compress=False)
        return write_volume

    def importVolumeNode(self, ws: Any, volume: Any, timeout: float = 600) -> str:
        """The panel's import job, waited for (the self-test, scripts): returns the case id."""
        runner, context = self.startImportVolumeNode(ws, volume)
        try:
            outcome = runner.start().wait(timeout=timeout)
        finally:
            self.cleanupJob(context)
        if not outcome.ok:
            raise RuntimeError("importing %s failed: %s" % (volume.GetName(), outcome.error))
        caseId = outcome.result["cases"][0]["case_id"]
        self.tagCase(ws, volume, caseId)
        return caseId

    def accept(self, ws: Any, volume: Any, segNode: Any, timeout: float = 600, **kwargs: Any) -> Any:
        """The panel's Accept job, waited for (the self-test, scripts): returns ``cases.AcceptOutcome``."""
        runner, context = self.startAccept(ws, volume, segNode, **kwargs)
        try:
            outcome = runner.start().wait(timeout=timeout)
            if not outcome.ok:
                raise RuntimeError("Accept failed: %s" % outcome.error)
            return cases.accept_outcome(context["case"], runner.results, runner.errors, context["pending"],
                                        lambda version: cases.output_path(volume, ws, context["case"], version))
        finally:
            self.cleanupJob(context)

    def tagCase(self, ws: Any, volume: Any, caseId: str) -> None:
        """Mark a volume node as a workspace case (what Segment and Accept read to know the case)."""
        volume.SetAttribute(segments.CASE_ATTRIBUTE, caseId)
        volume.SetAttribute(segments.WORKSPACE_ATTRIBUTE, str(ws.root))

    def startAccept(self, ws: Any, volume: Any, segNode: Any, quality: str = "reviewed", annotator: Optional[str] = None,
                    seconds: Optional[float] = None) -> Tuple[SequenceRunner, Dict[str, Any]]:
        """Accept as a job. The GUI thread checks and copies the segments' layers out of the scene at their own extent
        (``cases.prepare_accept``); the job's worker merges them into the label map and writes it, the child submits
        it (``hila submit``: validation, effort, the ledger) and writes the correction as a compressed .seg.nrrd in the
        workspace (``hila convert`` with the workspace's label names: the one colour table, the structures'
        terminology), never beside the volume's source file. A volume that is no case has no labels: the worker
        writes its segments' compressed copy into the workspace. No workspace: refused (HilaError), nothing written."""
        caseId, export = cases.prepare_accept(ws, self.util, volume, segNode, self.ijkToRas(volume) if volume else None,
                                              self.vtk.mutable)
        folder = tempfile.mkdtemp(prefix="hila-accept-")
        final = cases.output_path(volume, ws, caseId, None)
        pending = os.path.join(os.path.dirname(final), ".pending-%s.seg.nrrd" % os.path.basename(folder))
        env = self.util.startupEnvironment()
        if caseId is None:
            def write_copy(cancelled: Any) -> None:
                from HILASegmentLib.formats.segfile import write_segmentation  # the engine's writer, in the worker
                os.makedirs(os.path.dirname(pending), exist_ok=True)
                write_segmentation(export.segmentation(), pending)
            return SequenceRunner([write_copy], env=env, optional=[True]), {"folder": folder, "case": None,
                                                                            "pending": pending, "ws": ws}
        labelPath = os.path.join(folder, "label.nrrd")

        def write_label(cancelled: Any) -> None:
            from HILASegmentLib.formats.imageio import write_image  # SimpleITK: loaded in the worker
            write_image(export.image(), labelPath, compress=False)
            os.makedirs(os.path.dirname(pending), exist_ok=True)  # where the child's compressed copy goes
        args = ["submit", str(ws.root), caseId, labelPath, "--quality", quality, "--json"]
        args += (["--annotator", annotator] if annotator else []) + (["--seconds", "%.1f" % seconds] if seconds else [])
        names = ",".join("%d=%s" % (lab.value, lab.name) for lab in ws.settings.labels)
        submit, childEnv = engine_command("HILASegmentLib", args, env=env)
        copy, _ = engine_command("HILASegmentLib", ["convert", labelPath, pending, "--names", names, "--json"], env=env)
        runner = SequenceRunner([write_label, submit, copy], env=childEnv, optional=[False, False, True])
        return runner, {"folder": folder, "case": caseId, "pending": pending, "ws": ws}

    # jobs
    def startSegmentation(self, volume: Any, model: str, tta: bool = False, device: str = "auto",
                          case: Optional[Tuple[str, str]] = None) -> Tuple[ProcessRunner, Dict[str, str]]:
        """``hila infer`` as a child, writing ``<folder>/result.seg.nrrd`` (``context["out"]``) for :meth:`loadResult`.

        ``case``: (workspace folder, case id) of a workspace case: the child runs ``hila infer WS CASE`` on the case's
        own image, maps the model's labels to the workspace's and records the prediction; ``model`` is then a model
        version or a catalog name. Otherwise the file form: the volume's voxels are copied here and written by the job's
        worker (:meth:`volumeWriter`) before the child runs (no prediction recorded)."""
        folder = tempfile.mkdtemp(prefix="hila-infer-")
        out, image = os.path.join(folder, "result.seg.nrrd"), os.path.join(folder, "image.nrrd")
        args = ["infer", str(case[0]), str(case[1])] if case is not None else ["infer", "--image", image]
        args += ["--out", out, "--model", str(model), "--device", device, "--json",
                 "--review-map", os.path.join(folder, "review.nrrd")] + (["--tta"] if tta else [])
        argv, env = engine_command("HILASegmentLib", args, env=self.util.startupEnvironment())
        if case is not None:
            return ProcessRunner(argv, env=env), {"folder": folder, "out": out}
        return SequenceRunner([self.volumeWriter(volume, image), argv], env=env), {"folder": folder, "out": out}

    def startTraining(self, ws: Any, maxMinutes: int, device: str, autoPromote: bool = False,
                      watch: bool = False) -> ProcessRunner:
        """The trainer as a child; ``auto`` trains on CUDA when torch sees a GPU; its gate promotes only with auto-promote on.
        ``watch`` (Keep learning): ``hila train --watch``, a round whenever corrections land, until cancelled."""
        args = ["train", str(ws.root), "--json", "--max-minutes", str(maxMinutes), "--device", device,
                "--promote", "auto" if autoPromote else "never"] + (["--watch"] if watch else [])
        argv, env = engine_command("HILASegmentLib", args, env=self.util.startupEnvironment())
        return ProcessRunner(argv, env=env)

    def startFixWithBox(self, volume: Any, segNode: Any, segmentId: Optional[str],
                        roi: Any) -> Tuple[ThreadRunner, Dict[str, Any]]:
        """*Fix with box* as a job: the checks and the copy of the volume here (``boxfix.prepare``; HilaError, one line,
        nothing changed), the assistant on a worker thread (``boxfix.run``: progress per slice, Cancel between
        slices); :meth:`applyFixWithBox` writes its result. The runner is returned unstarted (the job board starts it)."""
        request = boxfix.prepare(self.util, volume, segNode, segmentId, roi, self.ijkToRas(volume) if volume else None)
        runner = ThreadRunner(lambda cancelled, report: boxfix.run(request, cancelled, report), "fixbox", reports=True)
        return runner, {"request": request, "label": request.label, "segmentation": request.segmentation_id}

    def applyFixWithBox(self, context: Dict[str, Any], result: Dict[str, Any], editorNode: Any = None) -> Any:
        """The worker's mask into its segment inside the box, under ``editorNode``'s masking (the Segment Editor's
        parameter node; None: none); returns ``boxfix.FixReport``. The caller saves the undo point first."""
        mode = self.slicer.vtkMRMLSegmentationNode.ConvertMaskModeToString(editorNode.GetMaskMode()) if editorNode else None
        return boxfix.apply(self.util, self.slicer.mrmlScene, context["request"], result["mask"], editorNode, mode)

    def fixWithBox(self, volume: Any, segNode: Any, segmentId: Optional[str], roi: Any, editorNode: Any = None,
                   timeout: Optional[float] = None) -> Any:
        """The panel's Fix with box, waited for (scripts, tests; ``timeout`` in seconds, None: as long as it takes):
        returns ``boxfix.FixReport``; HilaError (one line, nothing changed) for every refusal, the assistant's own
        included (not installed, a file's checksum)."""
        runner, context = self.startFixWithBox(volume, segNode, segmentId, roi)
        outcome = runner.start().wait(timeout=timeout)
        if not outcome.ok:
            raise HilaError(outcome.error or "Fix with box failed")
        return self.applyFixWithBox(context, outcome.result, editorNode)

    def cleanupJob(self, context: Dict[str, Any]) -> None:
        folder = context.get("folder")
        if folder and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        pending = context.get("pending")  # a copy a cancelled or failed Accept left unnamed
        if pending and os.path.exists(pending):
            os.remove(pending)

    def install(self, plan: Any) -> Optional[Any]:
        """Run an agreed plan (``installs.run_plan``): None when done (5.12), else a background runner to poll."""
        return installs.run_plan(self.slicer, plan, self.util.startupEnvironment())
