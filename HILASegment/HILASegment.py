"""HILASegment: human-in-the-loop segmentation of prostate MRI and pelvic CT in 3D Slicer.

Thin glue: every decision lives in the engine (``HILASegmentLib``, plain Python, tested without
Slicer). This file turns MRML nodes into engine objects and back, owns the UI, and runs long work
(inference, training) in a child process watched by a QTimer, so the GUI never blocks.
"""
import importlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from HILASegmentLib import dependencies, mrmlgeometry, panels
from HILASegmentLib.processrunner import ProcessRunner, engine_command

SETTINGS = "HILASegment/"
OWN_PREFIX = "hila_"  # segment IDs this module creates; it never modifies any other segment
CASE_ATTRIBUTE = "HILASegment.CaseID"
CREATOR_TAG = "HILA.creator"  # beside the engine's HILA.model / HILA.model_version tags


class HILASegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "HILASegment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["HILASegment developers"]
        self.parent.helpText = (
            "Human-in-the-loop segmentation: segment with the current model, correct in the Segment Editor, "
            "accept, and train a better model in the background. Every model version is kept; roll back anytime.")
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, SimpleITK, ONNX Runtime, PyTorch and MONAI. Workflow after Lutnick et al. 2019 "
            "(human-AI loop) and Zhang et al. 2023 (quality-ranked review).")


def _setting(key, default, converter=str):
    return slicer.util.settingsValue(SETTINGS + key, default, converter=converter)


def _setSetting(key, value):
    qt.QSettings().setValue(SETTINGS + key, value)


class HILASegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: workspace, segment and correct, train and models, settings."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ws = None
        self.caseId = None
        self.caseOpenedAt = None
        self.job = None  # (kind, ProcessRunner, context dict) while a background job runs
        self.candidateVersion = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HILASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HILASegmentLogic()
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.ui.progressBar.hide()
        self.ui.segmentProgressBar.hide()
        for table, headers in ((self.ui.caseTableWidget, panels.CASE_COLUMNS),
                               (self.ui.modelTableWidget, panels.MODEL_COLUMNS)):
            table.setColumnCount(len(headers))
            table.setHorizontalHeaderLabels(headers)
        # restore settings before connecting their signals, so restoring one cannot overwrite the others
        self.ui.annotatorLineEdit.text = _setting("annotator", os.environ.get("USER", os.environ.get("USERNAME", "")))
        self.ui.deviceComboBox.currentText = _setting("device", "auto")
        self.ui.autoPromoteCheckBox.checked = _setting("autoPromote", False, converter=slicer.util.toBool)
        self.ui.maxMinutesSpinBox.value = _setting("maxMinutes", 20, converter=int)
        self.ui.workspacePathLineEdit.currentPath = _setting("workspace", "")
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onPoll)

        self.ui.openWorkspaceButton.connect("clicked()", self.onOpenWorkspace)
        self.ui.createWorkspaceButton.connect("clicked()", self.onCreateWorkspace)
        self.ui.caseTableWidget.connect("cellDoubleClicked(int,int)", self.onCaseDoubleClicked)
        self.ui.nextCaseButton.connect("clicked()", self.onNextCase)
        self.ui.importVolumeButton.connect("clicked()", self.onImportVolume)
        self.ui.importFilesButton.connect("clicked()", self.onImportFiles)
        self.ui.importFolderButton.connect("clicked()", self.onImportFolder)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        self.ui.segmentButton.connect("clicked()", self.onSegment)
        self.ui.acceptButton.connect("clicked()", self.onAccept)
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self.ui.cancelButton.connect("clicked()", self.onCancel)
        self.ui.cancelSegmentButton.connect("clicked()", self.onCancel)
        self.ui.promoteButton.connect("clicked()", self.onPromote)
        self.ui.discardButton.connect("clicked()", self.onDiscard)
        self.ui.rollbackButton.connect("clicked()", self.onRollback)
        self.ui.plotButton.connect("clicked()", self.onPlot)
        self.ui.installDependenciesButton.connect("clicked()", lambda: self.ensureDependencies("training", always=True))
        self.ui.annotatorLineEdit.connect("editingFinished()", self.saveSettings)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.saveSettings)
        self.ui.autoPromoteCheckBox.connect("toggled(bool)", self.saveSettings)
        self.ui.maxMinutesSpinBox.connect("valueChanged(int)", self.saveSettings)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

        if self.ui.workspacePathLineEdit.currentPath:
            with slicer.util.tryWithErrorDisplay("Could not reopen the last workspace."):
                self.openWorkspace(self.ui.workspacePathLineEdit.currentPath)
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        if self.job:
            self.job[1].cancel()
        self.timer.stop()

    def saveSettings(self, *unused):
        _setSetting("annotator", self.ui.annotatorLineEdit.text)
        _setSetting("device", self.ui.deviceComboBox.currentText)
        _setSetting("autoPromote", bool(self.ui.autoPromoteCheckBox.checked))
        _setSetting("maxMinutes", int(self.ui.maxMinutesSpinBox.value))

    def status(self, text):
        self.ui.statusLabel.text = text
        slicer.util.showStatusMessage(text, 5000)

    def updateButtons(self):
        busy, hasWs = self.job is not None, self.ws is not None
        hasVolume = self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.segmentButton.enabled = hasVolume and not busy
        self.ui.acceptButton.enabled = hasVolume and not busy
        self.ui.trainButton.enabled = hasWs and not busy
        self.ui.cancelButton.enabled = busy and self.job[0] == "train"
        self.ui.cancelSegmentButton.enabled = busy and self.job[0] == "segment"
        for b in (self.ui.nextCaseButton, self.ui.importVolumeButton, self.ui.importFilesButton,
                  self.ui.importFolderButton, self.ui.rollbackButton, self.ui.plotButton):
            b.enabled = hasWs and not busy
        self.ui.promoteButton.enabled = self.ui.discardButton.enabled = self.candidateVersion is not None and not busy

    # -- workspace ------------------------------------------------------------------------
    def openWorkspace(self, path, create=False):
        from HILASegmentLib.workspace import Workspace
        if create:
            labels = [s.strip() for s in self.ui.labelsLineEdit.text.split(",") if s.strip()]
            self.ws = Workspace.create(path, self.ui.modalityComboBox.currentText, labels)
        else:
            self.ws = Workspace.open(path)
        _setSetting("workspace", str(path))
        self.refreshTables()

    def onOpenWorkspace(self):
        with slicer.util.tryWithErrorDisplay("Could not open the workspace.", waitCursor=True):
            self.openWorkspace(self.ui.workspacePathLineEdit.currentPath)
        self.updateButtons()

    def onCreateWorkspace(self):
        with slicer.util.tryWithErrorDisplay("Could not create the workspace.", waitCursor=True):
            self.openWorkspace(self.ui.workspacePathLineEdit.currentPath, create=True)
        self.updateButtons()

    def refreshTables(self):
        if self.ws is None:
            return
        self._fill(self.ui.caseTableWidget, panels.case_rows(self.ws))
        self._fill(self.ui.modelTableWidget, panels.model_rows(self.ws))
        current = self.ws.current_model()
        self.ui.workspaceStatusLabel.text = "{}: {} cases, {} models, current model {}".format(
            self.ws.settings.modality, self.ui.caseTableWidget.rowCount, self.ui.modelTableWidget.rowCount,
            "v%d" % current.version if current else "none (the workspace's starter model is used)")

    def _fill(self, table, rows):
        table.setSortingEnabled(False)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                item = qt.QTableWidgetItem()
                item.setData(qt.Qt.DisplayRole, value if isinstance(value, (int, float)) else str(value))
                table.setItem(r, c, item)
        table.setSortingEnabled(True)
        table.resizeColumnsToContents()

    def onCaseDoubleClicked(self, row, column):
        self.loadCase(self.ui.caseTableWidget.item(row, 0).text())

    def onNextCase(self):
        with slicer.util.tryWithErrorDisplay("Could not find the next case."):
            caseId = panels.next_case_id(self.ws)
            if caseId is None:
                slicer.util.infoDisplay("Every case has a correction: train, or import more cases.")
                return
            self.loadCase(caseId)

    def loadCase(self, caseId):
        if not self.saveBeforeLeaving():
            return
        with slicer.util.tryWithErrorDisplay("Could not load the case.", waitCursor=True):
            volume = self.logic.loadCase(self.ws, caseId)
            self.ui.inputVolumeSelector.setCurrentNode(volume)
            self.caseId, self.caseOpenedAt = caseId, time.monotonic()
            self.ui.caseInfoLabel.text = "Case %s opened; segment it, correct, then Accept." % caseId

    def saveBeforeLeaving(self):
        """Never lose edits: offer to save the current segmentation before another case replaces it."""
        segNode = self.ui.segmentEditorWidget.segmentationNode()
        if segNode is None or not self.logic.hasUnsavedEdits(segNode):
            return True
        if slicer.util.confirmYesNoDisplay("The current segmentation has unsaved edits. Save it as .seg.nrrd first?"):
            path = self.logic.saveSegmentation(segNode, self.logic.outputPath(self.ui.inputVolumeSelector.currentNode(), self.ws, self.caseId))
            self.status("Saved %s" % path)
            return True
        return slicer.util.confirmOkCancelDisplay("Leave this case without saving its edits?")

    def onImportVolume(self):
        with slicer.util.tryWithErrorDisplay("Could not import the volume.", waitCursor=True):
            case = self.logic.importVolumeNode(self.ws, self.ui.inputVolumeSelector.currentNode())
            self.caseId, self.caseOpenedAt = case.case_id, time.monotonic()
            self.refreshTables()
            self.status("Imported %s as case %s" % (case.name, case.case_id))

    def onImportFiles(self):
        paths = qt.QFileDialog.getOpenFileNames(slicer.util.mainWindow(), "Import volumes", "",
                                                "Volumes (*.nrrd *.nii *.nii.gz *.mha *.mhd);;All files (*)")
        self.importPaths(list(paths))

    def onImportFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Import a DICOM series folder")
        if folder:
            self.importPaths([folder])

    def importPaths(self, paths):
        with slicer.util.tryWithErrorDisplay("Import failed.", waitCursor=True):
            for p in paths:
                case = self.ws.import_volume(p)
                self.status("Imported %s as case %s" % (p, case.case_id))
        self.refreshTables()

    def onVolumeChanged(self, volume):
        self.caseId = volume.GetAttribute(CASE_ATTRIBUTE) if volume else None
        self.caseOpenedAt = time.monotonic() if self.caseId else None
        if volume:
            segNode = self.logic.segmentationFor(volume)
            self.ui.segmentEditorWidget.setSegmentationNode(segNode)
            self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        self.updateButtons()

    # -- dependencies ---------------------------------------------------------------------
    def ensureDependencies(self, tier, always=False):
        plan = dependencies.plan_install(tier)
        if plan.broken_slicer:
            slicer.util.errorDisplay(plan.message())
            return False
        if not plan.needed:
            if always:
                slicer.util.infoDisplay("All Python packages HILASegment needs are installed.")
            return True
        if not slicer.util.confirmOkCancelDisplay(plan.message()):
            return False
        try:
            with slicer.util.WaitCursor():
                self.logic.install(plan)
        except Exception as exc:
            slicer.util.errorDisplay(dependencies.offline_message(str(exc), plan) or "Installing packages failed: %s" % exc)
            return False
        return not dependencies.plan_install(tier).needed

    # -- segment and accept ---------------------------------------------------------------
    def onSegment(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None or not self.ensureDependencies("inference"):
            return
        with slicer.util.tryWithErrorDisplay("Segmentation failed to start.", waitCursor=True):
            model, version = panels.model_for(self.ws, _setting("model", "taps"))
            runner, context = self.logic.startSegmentation(volume, model, tta=self.ui.ttaCheckBox.checked,
                                                           device=self.ui.deviceComboBox.currentText)
            context.update(volume=volume, version=version, caseId=self.caseId)
            self.startJob("segment", runner, context)

    def finishSegment(self, outcome, context):
        volume = context["volume"]
        segNode = self.logic.segmentationFor(volume)
        self.ui.segmentEditorWidget.setSegmentationNode(segNode)
        self.ui.segmentEditorWidget.saveStateForUndo()  # one undo point for the whole AI result
        written = self.logic.writeResult(context["out"], segNode, volume, self.ui.segmentEditorWidget.mrmlSegmentEditorNode())
        if self.ws is not None and context["caseId"]:
            label, summary = panels.prediction_from_file(self.ws, context["out"], outcome.result)
            self.ws.add_prediction(context["caseId"], label, context["version"], uncertainty=summary)
            self.refreshTables()
        self.status("Segmented %s: %s (%.0f s)" % (volume.GetName(), ", ".join(written), outcome.seconds))

    def onAccept(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        segNode = self.ui.segmentEditorWidget.segmentationNode()
        with slicer.util.tryWithErrorDisplay("Accept failed; nothing was submitted.", waitCursor=True):
            if segNode is None:
                raise ValueError("There is no segmentation to accept.")
            version = None
            if self.ws is not None and self.caseId:
                label = self.logic.labelFromSegmentation(segNode, volume, self.ws.settings.labels)
                seconds = time.monotonic() - self.caseOpenedAt if self.caseOpenedAt else None
                correction = self.ws.submit(self.caseId, label, quality=self.ui.qualityComboBox.currentText,
                                            annotator=self.ui.annotatorLineEdit.text or None, seconds=seconds)
                version = correction.version
            path = self.logic.saveSegmentation(segNode, self.logic.outputPath(volume, self.ws, self.caseId, version))
            self.refreshTables()
            self.status("%s; saved %s" % ("Accepted as correction v%d" % version if version else
                                          "Not a workspace case (import it to submit)", path))

    # -- training and models --------------------------------------------------------------
    def onTrain(self):
        if not self.ensureDependencies("training"):
            return
        with slicer.util.tryWithErrorDisplay("Training failed to start."):
            runner = self.logic.startTraining(self.ws, self.ui.maxMinutesSpinBox.value, self.ui.deviceComboBox.currentText,
                                              autoPromote=self.ui.autoPromoteCheckBox.checked)
            self.ui.logTextEdit.clear()
            self.startJob("train", runner, {"before": [m.version for m in self.ws.models()]})

    def finishTrain(self, outcome, context):
        self.refreshTables()
        newVersions = sorted(set([m.version for m in self.ws.models()]) - set(context["before"]))
        if not newVersions:
            self.ui.candidateLabel.text = "No new model: %s" % ((outcome.result or {}).get("message") or "see the log")
            return
        self.candidateVersion = newVersions[-1]
        self.ui.candidateLabel.text = panels.compare_text(self.ws, self.candidateVersion)
        current = self.ws.current_model()
        if current is not None and current.version == self.candidateVersion:
            self.candidateVersion = None  # auto-promote on, and the trainer's gate promoted it

    def onPromote(self):
        with slicer.util.tryWithErrorDisplay("Promote failed."):
            self.ws.promote(self.candidateVersion)
            self.status("Model v%d is now current." % self.candidateVersion)
            self.candidateVersion = None
            self.refreshTables()
        self.updateButtons()

    def onDiscard(self):
        self.status("Candidate v%d kept in the registry, not used." % self.candidateVersion)
        self.candidateVersion = None
        self.updateButtons()

    def onRollback(self):
        with slicer.util.tryWithErrorDisplay("Rollback failed."):
            record = self.ws.rollback()
            self.status("Rolled back: model v%d is current." % record.version)
            self.refreshTables()

    def onPlot(self):
        with slicer.util.tryWithErrorDisplay("Could not plot the learning curve."):
            rows, names = panels.learning_curve(self.ws)
            if not rows:
                raise ValueError("No model yet: nothing to plot.")
            slicer.util.plot(np.array(rows, dtype=float), xColumnIndex=0, columnNames=names, title="HILASegment learning curve")

    # -- background jobs ------------------------------------------------------------------
    def startJob(self, kind, runner, context):
        runner.start()
        self.job = (kind, runner, context)
        self.progressBar(kind).value = 0
        self.progressBar(kind).show()
        self.timer.start()
        self.updateButtons()

    def progressBar(self, kind):
        return self.ui.segmentProgressBar if kind == "segment" else self.ui.progressBar

    def onPoll(self):
        if not self.job:
            return self.timer.stop()
        kind, runner, context = self.job
        for line in runner.poll():
            if line.record is None or line.record.get("event") != "progress":
                self.ui.logTextEdit.appendPlainText(line.text)
        if runner.fraction is not None:
            self.progressBar(kind).value = int(100 * runner.fraction)
        self.ui.statusLabel.text = runner.message
        if not runner.finished:
            return
        self.timer.stop()
        self.job = None
        self.progressBar(kind).hide()
        self.ui.segmentProgressBar.hide()
        outcome = runner.outcome()
        try:
            if outcome.ok:
                with slicer.util.tryWithErrorDisplay("Could not use the %s result." % kind, waitCursor=True):
                    (self.finishSegment if kind == "segment" else self.finishTrain)(outcome, context)
            elif outcome.cancelled:
                self.status("%s cancelled." % kind.capitalize())
            else:
                slicer.util.errorDisplay("%s failed: %s" % (kind.capitalize(), outcome.error),
                                         detailedText="\n".join(runner.stderr_tail))
        finally:
            self.logic.cleanupJob(context)
            self.updateButtons()

    def onCancel(self):
        if self.job:
            self.job[1].cancel()
            self.status("Cancelling...")

    def onSceneStartClose(self, caller, event):
        if self.job:
            self.job[1].cancel()
        segNode = self.ui.segmentEditorWidget.segmentationNode()
        if segNode is not None and self.logic.hasUnsavedEdits(segNode):
            path = self.logic.saveSegmentation(segNode, self.logic.outputPath(self.ui.inputVolumeSelector.currentNode(), self.ws, self.caseId))
            logging.info("HILASegment saved %s before the scene closed", path)


class HILASegmentLogic(ScriptedLoadableModuleLogic):
    """MRML <-> engine conversions and job set-up; no UI. Used by the widget, the self-test and batch mode."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("HILASegment", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("HILASegment")
            node = slicer.mrmlScene.AddNode(node)
        return node

    # volumes and segmentations
    def volumeToImage(self, volume):
        """The volume as a SimpleITK image (LPS geometry; the array copied, so later edits do not leak)."""
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return mrmlgeometry.array_to_image(np.array(slicer.util.arrayFromVolume(volume)), slicer.util.arrayFromVTKMatrix(matrix))

    def segmentationFor(self, volume):
        """This module's segmentation node bound to the volume (created once; user segmentations are never reused)."""
        segNode = volume.GetNodeReference("HILASegment.Segmentation")
        if segNode is None:
            segNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + " segmentation")
            segNode.CreateDefaultDisplayNodes()
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            volume.SetNodeReferenceID("HILASegment.Segmentation", segNode.GetID())
        return segNode

    def writeResult(self, segPath, segNode, volume, editorNode=None):
        """Write an engine .seg.nrrd into our own segments only, inside the Segment Editor's mask. Returns the names."""
        from HILASegmentLib.segfile import read_segmentation
        result = read_segmentation(segPath)
        segmentation = segNode.GetSegmentation()
        ownIds = ["%s%d" % (OWN_PREFIX, s.label_value) for s in result.segments]
        others = [i for i in segmentation.GetSegmentIDs() if i not in ownIds]
        shape = slicer.util.arrayFromVolume(volume).shape
        allowed = np.ones(shape, dtype=bool)
        if editorNode is not None:
            display = segNode.GetDisplayNode()
            intensity, lohi = None, None
            if editorNode.GetSourceVolumeIntensityMask():
                intensity, lohi = slicer.util.arrayFromVolume(volume), editorNode.GetSourceVolumeIntensityMaskRange()
            allowed = mrmlgeometry.edit_allowed_mask(
                slicer.vtkMRMLSegmentationNode.ConvertMaskModeToString(editorNode.GetMaskMode()), shape,
                {i: slicer.util.arrayFromSegmentBinaryLabelmap(segNode, i, volume) for i in others},
                visible=[i for i in others if display is None or display.GetSegmentVisibility(i)],
                mask_segment=editorNode.GetMaskSegmentID(), intensity=intensity, intensity_range=lohi)
        wasModified = segNode.StartModify()
        try:
            for seg, segId in zip(result.segments, ownIds):
                new = result.mask_array(seg.name) > 0
                if segmentation.GetSegment(segId) is None:
                    segmentation.AddEmptySegment(segId, seg.name, mrmlgeometry.color_to_float(seg.color))
                    old = np.zeros(shape, dtype=bool)
                else:
                    old = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume) > 0
                segmentation.SeparateSegmentLabelmap(segId)  # its own layer: writing it cannot touch other segments
                merged = np.where(allowed, new, old).astype(np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(merged, segNode, segId, volume)
                segment = segmentation.GetSegment(segId)
                tags = dict(seg.tags or {})
                tags[CREATOR_TAG] = "HILASegment"
                for key, value in tags.items():
                    segment.SetTag(str(key), str(value))
            segmentation.CollapseBinaryLabelmaps(False)  # merge layers back where segments do not overlap
        finally:
            segNode.EndModify(wasModified)
        return [s.name for s in result.segments]

    def labelFromSegmentation(self, segNode, volume, labels):
        """The workspace label image (values 1..n by label name) from the segments named like the labels."""
        segmentation = segNode.GetSegmentation()
        masks = {}
        for label in labels:
            segId = segmentation.GetSegmentIdBySegmentName(label.name)
            if segId:
                masks[label.value] = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume)
        if not masks:
            raise ValueError("No segment is named like a workspace label (%s)." % ", ".join(l.name for l in labels))
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        shape = slicer.util.arrayFromVolume(volume).shape
        return mrmlgeometry.array_to_image(mrmlgeometry.masks_to_label(masks, shape), slicer.util.arrayFromVTKMatrix(matrix))

    def hasUnsavedEdits(self, segNode):
        storage = segNode.GetStorageNode()
        return segNode.GetSegmentation().GetNumberOfSegments() > 0 and (storage is None or segNode.GetModifiedSinceRead())

    def outputPath(self, volume, ws=None, caseId=None, version=None):
        """Where an accepted segmentation is saved: beside the volume's file, else in the workspace's exports."""
        storage = volume.GetStorageNode() if volume else None
        name = (volume.GetName() if volume else "segmentation") + ("_v%d" % version if version else "")
        if storage is not None and storage.GetFileName():
            folder = Path(storage.GetFileName()).parent
            if ws is None or Path(ws.root) not in folder.parents and folder != Path(ws.root):
                return str(folder / (name + ".seg.nrrd"))
        base = Path(ws.root).parent / (Path(ws.root).name + "-segmentations") if ws is not None else Path.home() / "HILASegment"
        return str(base / (caseId or "") / (name + ".seg.nrrd"))

    def saveSegmentation(self, segNode, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not slicer.util.saveNode(segNode, path):
            raise OSError("Could not write %s" % path)
        return path

    # workspace
    def loadCase(self, ws, caseId):
        case = ws.case(caseId)
        volume = slicer.util.loadVolume(str(case.path))
        volume.SetName(case.name)
        volume.SetAttribute(CASE_ATTRIBUTE, case.case_id)
        return volume

    def importVolumeNode(self, ws, volume):
        from HILASegmentLib.imageio import write_image
        folder = tempfile.mkdtemp(prefix="hila-import-")
        path = os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]+", "_", volume.GetName()) + ".nrrd")
        write_image(self.volumeToImage(volume), path)
        case = ws.import_volume(path)
        volume.SetAttribute(CASE_ATTRIBUTE, case.case_id)
        return case

    # jobs
    def startSegmentation(self, volume, model, tta=False, device="auto"):
        from HILASegmentLib.imageio import write_image
        folder = tempfile.mkdtemp(prefix="hila-infer-")
        image, out = os.path.join(folder, "image.nrrd"), os.path.join(folder, "result.seg.nrrd")
        write_image(self.volumeToImage(volume), image)
        args = ["infer", "--image", image, "--out", out, "--model", str(model), "--device", device, "--json"] + (["--tta"] if tta else [])
        argv, env = engine_command("HILASegmentLib", args, env=slicer.util.startupEnvironment())
        return ProcessRunner(argv, env=env), {"folder": folder, "out": out}

    def startTraining(self, ws, maxMinutes, device, autoPromote=False):
        """The trainer as a child; its gate promotes only with auto-promote on, else the user decides."""
        args = ["train", str(ws.root), "--json", "--max-minutes", str(maxMinutes), "--promote", "auto" if autoPromote else "never"]
        args += [] if device == "auto" else ["--device", device]  # the trainer's default is the CPU
        argv, env = engine_command("HILASegmentLib", args, env=slicer.util.startupEnvironment())
        return ProcessRunner(argv, env=env)

    def cleanupJob(self, context):
        folder = context.get("folder")
        if folder and os.path.isdir(folder):
            import shutil
            shutil.rmtree(folder, ignore_errors=True)

    def install(self, plan):
        """Run an agreed install plan; PyTorch through the PyTorch extension when it is there."""
        if plan.torch_via_pytorchutils:
            import PyTorchUtils
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torchLogic.installTorch(askConfirmation=False)
        elif plan.torch_pip_spec:
            slicer.util.pip_install(dependencies.pip_argument_string([plan.torch_pip_spec]))
        if plan.pip_specs:
            try:
                importlib.import_module("slicer.packaging")  # Slicer 5.12+; skip_packages protects what Slicer ships (a local `import slicer.x` would make `slicer` local here)
            except ImportError:
                pass
            if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_install"):
                slicer.packaging.pip_install(plan.pip_specs, skip_packages=sorted(dependencies.SLICER_SHIPS), requester="HILASegment")
            else:
                slicer.util.pip_install(dependencies.pip_argument_string(plan.pip_specs))
        if plan.no_deps_specs:
            slicer.util.pip_install(dependencies.pip_argument_string(plan.no_deps_specs, no_deps=True))


class HILASegmentTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test: numpy volume -> segment (tiny bundled model) -> edit -> accept -> 1-minute training."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_loop()

    def test_loop(self):
        from HILASegmentLib.workspace import Workspace
        logic = HILASegmentLogic()
        model = Path(__file__).parent / "Resources" / "Models" / "hila_tiny_test.onnx"
        root = Path(slicer.util.tempDirectory("HILASegmentTest")) / "ws"
        ws = Workspace.create(root, "MR", ["prostate"], model=str(model))
        for n, shift in enumerate((0, 6)):
            self.delayDisplay("Case %d: a volume built with numpy, imported into the workspace" % n)
            k, j, i = np.mgrid[0:24, 0:48, 0:48]
            blob = ((i - 24 - shift) ** 2 + (j - 24) ** 2 + ((k - 12) * 2) ** 2) < 12 ** 2
            array = (100 + 300 * blob + np.random.default_rng(n).normal(0, 10, blob.shape)).astype(np.int16)
            volume = slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([-1.0, -1.0, 3.0, 1.0]), name="HILATest%d" % n)
            caseId = logic.importVolumeNode(ws, volume).case_id

            self.delayDisplay("Segmenting with the tiny bundled model in a child process")
            modelPath, version = panels.model_for(ws)
            runner, context = logic.startSegmentation(volume, modelPath)
            outcome = runner.start().wait(timeout=300)
            self.assertTrue(outcome.ok, outcome.error)
            segNode = logic.segmentationFor(volume)
            self.assertEqual(logic.writeResult(context["out"], segNode, volume, logic.segmentEditorNode()), ["prostate"])
            label, summary = panels.prediction_from_file(ws, context["out"], outcome.result)
            ws.add_prediction(caseId, label, version, uncertainty=summary)
            logic.cleanupJob(context)

            self.delayDisplay("Editing the segment and accepting it")
            segId = segNode.GetSegmentation().GetSegmentIdBySegmentName("prostate")
            edited = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume)
            edited[blob] = 1
            edited[12] = 0  # erase the middle slice: a real edit
            slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segNode, segId, volume)
            label = logic.labelFromSegmentation(segNode, volume, ws.settings.labels)
            correction = ws.submit(caseId, label, quality="reviewed", annotator="selftest", seconds=1.0)
            self.assertGreater(correction.effort["fraction_changed"], 0)
            path = logic.saveSegmentation(segNode, logic.outputPath(volume, ws, caseId, correction.version))
            self.assertTrue(os.path.exists(path))

        self.delayDisplay("One-minute CPU training round in a child process")
        before = {m.version for m in ws.models()}
        outcome = logic.startTraining(ws, 1, "cpu").start().wait(timeout=600)
        self.assertTrue(outcome.ok, outcome.error)
        self.assertTrue({m.version for m in ws.models()} - before, "training registered no new model version")
        self.assertTrue(ws.check().ok)
        self.delayDisplay("HILASegment self-test passed")
