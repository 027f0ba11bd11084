"""HILASegment: human-in-the-loop segmentation of prostate MRI and pelvic CT in 3D Slicer.

Thin glue: every decision lives in the engine (``HILASegmentLib``) or in ``HILASegmentSlicerLib``
(the glue's own logic with the Slicer objects passed in, tested with stand-ins). This file wires
widgets to them and runs long work (inference, training, installs) in child processes watched by
a QTimer, one slot per kind, so the GUI never blocks and training never stops the case loop.
"""
import logging
import os
import time

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

from HILASegmentLib import dependencies, panels
from HILASegmentSlicerLib import cases, marks, pacs, panelstate, segments, selftest
from HILASegmentSlicerLib.jobs import Job, JobBoard, JobError
from HILASegmentSlicerLib.logic import ModuleLogic

SETTINGS = "HILASegment/"
CASE_ATTRIBUTE = segments.CASE_ATTRIBUTE


class HILASegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "HILASegment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["HILASegment developers"]
        self.parent.helpText = (
            "Human-in-the-loop segmentation: segment with a model, correct in the Segment Editor, "
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
        self.jobs = JobBoard()
        self.openedAt = {}  # volume ID -> when its case was opened (the correction's seconds)
        self.candidateVersion = None
        self.modelChoices = []
        self.parameterNode = None
        self._updatingGUI = False

    # -- set-up: every step below leaves the panel consistent, whatever the saved settings say --
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HILASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HILASegmentLogic()
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        for bar in (self.ui.progressBar, self.ui.segmentProgressBar, self.ui.installProgressBar):
            bar.hide()
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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.ttaCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.qualityComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.segmentButton.connect("clicked()", self.onSegment)
        self.ui.acceptButton.connect("clicked()", self.onAccept)
        self.ui.acceptWeakButton.connect("clicked()", self.onAcceptWeak)
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self.ui.cancelButton.connect("clicked()", lambda: self.cancelJob("train"))
        self.ui.cancelInstallButton.connect("clicked()", lambda: self.cancelJob("install"))
        self.ui.promoteButton.connect("clicked()", self.onPromote)
        self.ui.discardButton.connect("clicked()", self.onDiscard)
        self.ui.rollbackButton.connect("clicked()", self.onRollback)
        self.ui.plotButton.connect("clicked()", self.onPlot)
        self.ui.installDependenciesButton.connect("clicked()", lambda: self.ensureDependencies("training", always=True))
        self.ui.annotatorLineEdit.connect("editingFinished()", self.saveSettings)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.saveSettings)
        self.ui.autoPromoteCheckBox.connect("toggled(bool)", self.saveSettings)
        self.ui.maxMinutesSpinBox.connect("valueChanged(int)", self.saveSettings)
        # the PACS section: the real `hila import|export|sync --dicomweb` as jobs (rules: HILASegmentSlicerLib.pacs)
        self.pacs = pacs.PacsPanel(self.ui, slicer.util, lambda: self.ws, self.startJob, self.refreshTables, self.status,
                                   lambda: self.ensureDependencies("dicom"), slicer.util.startupEnvironment,
                                   _setting, _setSetting, cancel=lambda: self.cancelJob("pacs"))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # no tryWithErrorDisplay here: it re-raises, and setup must reach updateButtons() at every start
        self.ws, message = cases.reopen_workspace(self.ui.workspacePathLineEdit.currentPath, self.logic.openWorkspace,
                                                  lambda: _setSetting("workspace", ""))
        if message:
            self.ui.workspacePathLineEdit.currentPath = ""
            self.status(message)
        self.refreshTables()
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        self.jobs.cancel_all()
        self.timer.stop()

    # -- module enter/exit: the embedded Segment Editor as Slicer's own Segment Editor module does it --
    def enter(self):
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.ui.segmentEditorWidget.updateWidgetFromMRML()

    def exit(self):
        self.ui.segmentEditorWidget.setActiveEffect(None)  # an effect must not keep painting in other modules
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()

    # -- parameter node: the selected volume, model, TTA and quality live in the scene --
    def initializeParameterNode(self):
        self.parameterNode = self.logic.getParameterNode()
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self):
        if self.parameterNode is None:
            return
        self._updatingGUI = True
        try:
            volume = self.parameterNode.GetNodeReference("InputVolume")
            if volume is not None:
                self.ui.inputVolumeSelector.setCurrentNode(volume)
            self.ui.ttaCheckBox.checked = self.parameterNode.GetParameter("TTA") == "true"
            if self.parameterNode.GetParameter("Quality"):
                self.ui.qualityComboBox.currentText = self.parameterNode.GetParameter("Quality")
            keys = [c.key for c in self.modelChoices]
            if self.parameterNode.GetParameter("Model") in keys:
                self.ui.modelComboBox.currentIndex = keys.index(self.parameterNode.GetParameter("Model"))
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *unused):
        if self.parameterNode is None or self._updatingGUI:
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        choice = self.currentModelChoice()
        wasModified = self.parameterNode.StartModify()
        self.parameterNode.SetNodeReferenceID("InputVolume", volume.GetID() if volume else None)
        self.parameterNode.SetParameter("TTA", "true" if self.ui.ttaCheckBox.checked else "false")
        self.parameterNode.SetParameter("Quality", self.ui.qualityComboBox.currentText)
        self.parameterNode.SetParameter("Model", choice.key if choice else "")
        self.parameterNode.EndModify(wasModified)

    def saveSettings(self, *unused):
        _setSetting("annotator", self.ui.annotatorLineEdit.text)
        _setSetting("device", self.ui.deviceComboBox.currentText)
        _setSetting("autoPromote", bool(self.ui.autoPromoteCheckBox.checked))
        _setSetting("maxMinutes", int(self.ui.maxMinutesSpinBox.value))

    def status(self, text):
        self.ui.statusLabel.text = text
        slicer.util.showStatusMessage(text, 5000)

    def updateButtons(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        volumeId = volume.GetID() if volume else None
        segmentJob = self.jobs.get("segment")
        state = panelstate.PanelState(
            has_workspace=self.ws is not None, has_volume=volume is not None,
            segmenting_shown=self.jobs.segmenting(volumeId),
            segmenting_other=segmentJob is not None and segmentJob.volume_id != volumeId,
            training=self.jobs.busy("train"), installing=self.jobs.busy("install"),
            has_candidate=self.candidateVersion is not None,
            has_models=self.ws is not None and self.ui.modelTableWidget.rowCount > 1)
        for name, enabled in panelstate.button_states(state).items():
            getattr(self.ui, name).enabled = enabled
        self.ui.cancelInstallButton.enabled = self.jobs.busy("install")
        choice = self.currentModelChoice()
        self.ui.segmentButton.text = panelstate.segment_button_text(state.segmenting_shown, choice.label.split(" · ")[0] if choice else None)
        self.pacs.update_buttons(volume, self.jobs.busy("pacs"))

    # -- workspace ------------------------------------------------------------------------
    def onOpenWorkspace(self):
        self.openWorkspace(create=False)

    def onCreateWorkspace(self):
        self.openWorkspace(create=True)

    def openWorkspace(self, create):
        path = self.ui.workspacePathLineEdit.currentPath
        try:
            with slicer.util.WaitCursor():
                if create:
                    labels = [s.strip() for s in self.ui.labelsLineEdit.text.split(",") if s.strip()]
                    choice = self.currentModelChoice()
                    model, note = cases.workspace_model(self.ui.modalityComboBox.currentText,
                                                        choice.model if choice and choice.key != "workspace" else None)
                    self.ws = self.logic.createWorkspace(path, self.ui.modalityComboBox.currentText, labels, model)
                    self.status("Created %s; %s." % (path, note))
                else:
                    self.ws = self.logic.openWorkspace(path)
            _setSetting("workspace", str(path))
        except Exception as exc:
            slicer.util.errorDisplay("Could not %s the workspace %s: %s" % ("create" if create else "open", path, exc))
        self.refreshTables()
        self.updateButtons()

    def refreshTables(self):
        self.refreshModelChoices()
        self.ui.weakLabelComboBox.clear()
        if self.ws is None:
            self.ui.workspaceStatusLabel.text = "No workspace: open or create one (Segment works without one)."
            return
        for _, name in self.ws.settings.label_pairs():
            self.ui.weakLabelComboBox.addItem(name)
        self._fill(self.ui.caseTableWidget, panels.case_rows(self.ws))
        self._fill(self.ui.modelTableWidget, panels.model_rows(self.ws))
        current = self.ws.current_model()
        self.ui.workspaceStatusLabel.text = "{}: {} cases, {} models, current model {}".format(
            self.ws.settings.modality, self.ui.caseTableWidget.rowCount, self.ui.modelTableWidget.rowCount,
            "v%d" % current.version if current else "none (pick a catalog model)")

    def refreshModelChoices(self):
        previous = self.currentModelChoice()
        self.modelChoices = cases.model_choices(self.ws)
        self._updatingGUI = True
        try:
            self.ui.modelComboBox.clear()
            for c in self.modelChoices:
                self.ui.modelComboBox.addItem(c.label)
            keys = [c.key for c in self.modelChoices]
            if previous is not None and previous.key in keys:
                self.ui.modelComboBox.currentIndex = keys.index(previous.key)
        finally:
            self._updatingGUI = False

    def currentModelChoice(self):
        i = self.ui.modelComboBox.currentIndex if hasattr(self, "ui") else -1
        return self.modelChoices[i] if 0 <= i < len(self.modelChoices) else None

    def onModelChanged(self, index):
        self.updateParameterNodeFromGUI()
        self.updateButtons()

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
        caseId = panels.next_case_id(self.ws)
        if caseId is None:
            slicer.util.infoDisplay("Every case has a correction: train, or import more cases.")
            return
        self.loadCase(caseId)

    def loadCase(self, caseId):
        """Show a case; it continues from its latest correction, and its segmentation is its own."""
        try:
            with slicer.util.WaitCursor():
                volume = self.logic.loadCase(self.ws, caseId)
                segNode = segments.segmentation_for(slicer.mrmlScene, volume)
                loaded = cases.reopen_case_segments(self.ws, slicer.util, volume, segNode)
        except Exception as exc:
            slicer.util.errorDisplay("Could not load case %s: %s" % (caseId, exc))
            return
        self.ui.inputVolumeSelector.setCurrentNode(volume)
        self.ui.caseInfoLabel.text = ("Case %s: its latest correction (v%d) is loaded; correct, then Accept." % (caseId, loaded)
                                      if loaded else "Case %s opened; Segment it, correct, then Accept." % caseId)

    def onImportVolume(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        try:
            with slicer.util.WaitCursor():
                case = self.logic.importVolumeNode(self.ws, volume)
        except Exception as exc:
            slicer.util.errorDisplay("Could not import the volume: %s" % exc)
            return
        self.openedAt[volume.GetID()] = time.monotonic()
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
        done = []
        try:
            with slicer.util.WaitCursor():
                for p in paths:
                    done.append(self.ws.import_volume(p).case_id)
        except Exception as exc:
            slicer.util.errorDisplay("Import stopped at %s: %s (imported before it: %s)" % (p, exc, ", ".join(done) or "none"))
        self.refreshTables()
        if done:
            self.status("Imported %d case(s): %s" % (len(done), ", ".join(done)))

    def onVolumeChanged(self, volume):
        """Show the volume's own segmentation (a workspace case gets one; a plain volume only when segmented)."""
        if volume is not None and volume.GetID() not in self.openedAt:
            self.openedAt[volume.GetID()] = time.monotonic()
        segNode = None
        if volume is not None:
            segNode = segments.segmentation_for(slicer.mrmlScene, volume, create=bool(volume.GetAttribute(CASE_ATTRIBUTE)))
        self.ui.segmentEditorWidget.setSegmentationNode(segNode)
        self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        self.updateParameterNodeFromGUI()
        self.updateButtons()

    # -- dependencies: one consent dialog; installs never freeze the GUI -------------------
    def ensureDependencies(self, tier, always=False, model=None):
        """True when the tier's packages are there; otherwise asks, then installs (True only if done now)."""
        plan = dependencies.plan_install(tier, model=model)
        if plan.broken_slicer or plan.old_slicer:
            slicer.util.errorDisplay(plan.message())
            return False
        if not plan.needed:
            if always:
                slicer.util.infoDisplay("All Python packages HILASegment needs are installed.")
            return True
        if self.jobs.busy("install"):
            self.status("Packages are being installed; try again when the install has finished.")
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.message()):
            return False
        try:
            runner = self.logic.install(plan)
        except Exception as exc:
            slicer.util.errorDisplay(dependencies.offline_message(str(exc), plan) or "Installing packages failed: %s" % exc)
            return False
        if runner is None:  # Slicer 5.12: slicer.packaging showed its own progress dialog
            return not dependencies.plan_install(tier, model=model).needed
        self.startJob(Job("install", runner, label=", ".join(plan.pip_specs + plan.no_deps_specs), context={"plan": plan}))
        self.status("Installing Python packages in the background; Segment or Train again when it is done.")
        return False

    def finishInstall(self, job, outcome):
        self.status("Python packages installed (%.0f s)." % outcome.seconds)

    # -- segment and accept ---------------------------------------------------------------
    def onSegment(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is not None and self.jobs.segmenting(volume.GetID()):
            self.cancelJob("segment")  # the Segment button is Cancel while this case segments
            return
        choice = self.currentModelChoice()
        if volume is None or choice is None or not self.ensureDependencies("inference", model=choice.model):
            return
        try:
            runner, context = self.logic.startSegmentation(volume, choice.model, tta=self.ui.ttaCheckBox.checked,
                                                           device=self.ui.deviceComboBox.currentText)
        except Exception as exc:
            slicer.util.errorDisplay("Segmentation failed to start: %s" % exc)
            return
        context.update(version=choice.version if choice.key == "workspace" else None, ws=self.ws)
        self.startJob(Job("segment", runner, case_id=volume.GetAttribute(CASE_ATTRIBUTE), volume_id=volume.GetID(),
                          label=choice.label.split(" · ")[0], context=context))

    def finishSegment(self, job, outcome):
        """The result goes to the job's OWN volume's segmentation, whatever the panel shows now."""
        volume = slicer.mrmlScene.GetNodeByID(job.volume_id)
        if volume is None:
            self.status("The segmented volume was closed; its result was discarded.")
            return
        segNode = segments.segmentation_for(slicer.mrmlScene, volume)
        editorNode = self.ui.segmentEditorWidget.mrmlSegmentEditorNode()
        shown = self.ui.inputVolumeSelector.currentNode()
        if shown is not None and shown.GetID() == volume.GetID():
            self.ui.segmentEditorWidget.setSegmentationNode(segNode)
            self.ui.segmentEditorWidget.saveStateForUndo()  # one undo point for the whole AI result
        ws = job.context.get("ws") if job.case_id else None  # the workspace the job was started in
        report = self.logic.writeResult(job.context["out"], segNode, volume, editorNode, ws.settings.labels if ws else None)
        if ws is not None:
            label, summary = panels.prediction_from_file(ws, job.context["out"], outcome.result)
            ws.add_prediction(job.case_id, label, job.context["version"], uncertainty=summary)
            self.refreshTables()
        self.status("%s — %s (%.0f s)" % (volume.GetName(), report.message(), outcome.seconds))
        if report.clipped_total and not any(report.predicted[n] > report.clipped[n] for n in report.names):
            slicer.util.warningDisplay(report.message())

    def onAccept(self):
        """Submit the shown volume's own segmentation for the shown volume's own case (never another's)."""
        volume = self.ui.inputVolumeSelector.currentNode()
        segNode = segments.segmentation_for(slicer.mrmlScene, volume, create=False) if volume else None
        caseId = volume.GetAttribute(CASE_ATTRIBUTE) if volume else None
        opened = self.openedAt.get(volume.GetID()) if volume else None
        try:
            with slicer.util.WaitCursor():
                outcome = cases.accept_case(
                    self.ws, slicer.util, volume, segNode, self.logic.ijkToRas(volume) if volume else None, vtk.mutable,
                    save=lambda node, version: self.logic.saveSegmentation(node, cases.output_path(volume, self.ws, caseId, version)),
                    quality=self.ui.qualityComboBox.currentText, annotator=self.ui.annotatorLineEdit.text or None,
                    seconds=time.monotonic() - opened if opened else None)
        except Exception as exc:
            slicer.util.errorDisplay("Accept refused; nothing was submitted: %s" % exc)
            return
        self.openedAt[volume.GetID()] = time.monotonic()  # the next Accept's seconds count from this one
        self.refreshTables()
        self.status(outcome.message())
        if outcome.save_error:
            slicer.util.warningDisplay(outcome.message())

    def onAcceptWeak(self):
        """Submit the picked ROI, or long and short line, as a weak label of the shown volume's own case."""
        volume = self.ui.inputVolumeSelector.currentNode()
        opened = self.openedAt.get(volume.GetID()) if volume else None
        try:
            picked = marks.marks_from_markups(slicer.util, self.ui.weakLabelComboBox.currentText,
                                              self.ui.weakRoiSelector.currentNode(), self.ui.weakLongLineSelector.currentNode(),
                                              self.ui.weakShortLineSelector.currentNode(), volume)
            with slicer.util.WaitCursor():
                correction = cases.accept_weak(self.ws, volume, picked, annotator=self.ui.annotatorLineEdit.text or None,
                                               seconds=time.monotonic() - opened if opened else None)
        except Exception as exc:
            slicer.util.errorDisplay("Accept as weak refused; nothing was submitted: %s" % exc)
            return
        self.openedAt[volume.GetID()] = time.monotonic()
        self.refreshTables()
        self.status("Accepted case %s as weak correction v%d (marks: %s)" % (correction.case_id, correction.version,
                    ", ".join(m["label"] for m in correction.effort["marks"]["items"])))

    # -- training and models --------------------------------------------------------------
    def onTrain(self):
        if not self.ensureDependencies("training"):
            return
        try:
            runner = self.logic.startTraining(self.ws, self.ui.maxMinutesSpinBox.value, self.ui.deviceComboBox.currentText,
                                              autoPromote=self.ui.autoPromoteCheckBox.checked)
        except Exception as exc:
            slicer.util.errorDisplay("Training failed to start: %s" % exc)
            return
        self.ui.logTextEdit.clear()
        self.startJob(Job("train", runner, label="a new model", context={"before": [m.version for m in self.ws.models()]}))

    def finishTrain(self, job, outcome):
        """Offer the candidate in the panel (Promote/Discard) without interrupting the case being corrected."""
        self.refreshTables()
        newVersions = sorted(set(m.version for m in self.ws.models()) - set(job.context["before"]))
        if not newVersions:
            self.ui.candidateLabel.text = "No new model: %s" % ((outcome.result or {}).get("message") or "see the log")
            return
        self.candidateVersion = newVersions[-1]
        self.ui.candidateLabel.text = panels.compare_text(self.ws, self.candidateVersion)
        current = self.ws.current_model()
        if current is not None and current.version == self.candidateVersion:
            self.candidateVersion = None  # auto-promote on, and the trainer's gate promoted it
        self.status("Training finished: " + self.ui.candidateLabel.text)

    def onPromote(self):
        try:
            self.ws.promote(self.candidateVersion)
            self.status("Model v%d is now current." % self.candidateVersion)
            self.candidateVersion = None
        except Exception as exc:
            slicer.util.errorDisplay("Promote failed: %s" % exc)
        self.refreshTables()
        self.updateButtons()

    def onDiscard(self):
        self.status("Candidate v%d kept in the registry, not used." % self.candidateVersion)
        self.candidateVersion = None
        self.updateButtons()

    def onRollback(self):
        current = self.ws.current_model()
        if current is None or not slicer.util.confirmYesNoDisplay(
                "Roll back: stop using model v%d and make the previous current model current again? "
                "v%d stays in the registry." % (current.version, current.version)):
            return
        try:
            record = self.ws.rollback()
            self.status("Rolled back: model v%d is current." % record.version)
        except Exception as exc:
            slicer.util.errorDisplay("Rollback failed: %s" % exc)
        self.refreshTables()
        self.updateButtons()

    def onPlot(self):
        rows, names = panels.learning_curve(self.ws)
        if not rows:
            self.status("No model yet: nothing to plot.")
            return
        slicer.util.plot(np.array(rows, dtype=float), xColumnIndex=0, columnNames=names, title="HILASegment learning curve")

    # -- background jobs: one slot per kind --------------------------------------------------
    def progressBar(self, kind):
        return {"segment": self.ui.segmentProgressBar, "train": self.ui.progressBar, "install": self.ui.installProgressBar,
                "pacs": self.ui.pacsProgressBar}[kind]

    def startJob(self, job):
        try:
            self.jobs.start(job)
        except (JobError, OSError) as exc:
            self.logic.cleanupJob(job.context)
            slicer.util.errorDisplay("Could not start: %s" % exc)
            return
        self.progressBar(job.kind).value = 0
        self.progressBar(job.kind).show()
        self.timer.start()
        self.status(job.describe() + "...")
        self.updateButtons()

    def onPoll(self):
        for job, lines, done in self.jobs.poll():
            for line in lines:
                if line.record is None or line.record.get("event") != "progress":
                    self.ui.logTextEdit.appendPlainText("[%s] %s" % (job.kind, line.text))
            if job.runner.fraction is not None:
                self.progressBar(job.kind).value = int(100 * job.runner.fraction)
            if done:
                self.finishJob(job)
        if not self.jobs.running:
            self.timer.stop()

    def finishJob(self, job):
        self.progressBar(job.kind).hide()
        outcome = job.runner.outcome()
        try:
            if outcome.ok:
                {"segment": self.finishSegment, "train": self.finishTrain, "install": self.finishInstall,
                 "pacs": self.pacs.finish}[job.kind](job, outcome)
            elif outcome.cancelled:
                self.status("%s cancelled." % job.describe())
            else:
                slicer.util.errorDisplay("%s failed: %s" % (job.describe(), outcome.error), detailedText="\n".join(job.runner.stderr_tail))
        except Exception as exc:  # a result that cannot be used must not leave the panel half-updated
            logging.exception("HILASegment: could not use the %s result", job.kind)
            slicer.util.errorDisplay("Could not use the %s result: %s" % (job.kind, exc))
        finally:
            self.logic.cleanupJob(job.context)
            self.updateButtons()

    def cancelJob(self, kind):
        if self.jobs.cancel(kind):
            self.status("Cancelling...")

    def onSceneStartClose(self, caller, event):
        self.jobs.cancel("segment")  # its volume is going away; training and installs do not depend on the scene
        self.parameterNode = None
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.segmentEditorWidget.removeViewObservations()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()


class HILASegmentLogic(ScriptedLoadableModuleLogic):
    """MRML <-> engine conversions and job set-up; no UI. Every call is ``HILASegmentSlicerLib.logic.ModuleLogic``'s,
    built with the real slicer and vtk modules (the real-MRML tier builds it on slicer-core's)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.impl = ModuleLogic(slicer, vtk)

    def __getattr__(self, name):
        if name == "impl":  # not set yet (during the base class's __init__)
            raise AttributeError(name)
        return getattr(self.impl, name)


class HILASegmentTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test, run once: packages, a PACS import with no server, two cases with a result in flight
    (the A/B race), accept, accept as weak, train. The steps: ``HILASegmentSlicerLib.selftest``."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_packages()
        self.test_pacs_without_a_server()
        self.test_race_accept_and_train()

    def test_packages(self):
        selftest.packages(self, slicer, HILASegmentLogic)

    def test_race_accept_and_train(self):
        selftest.race_accept_and_train(self, slicer, HILASegmentLogic)

    def test_pacs_without_a_server(self):
        selftest.pacs_without_a_server(self, slicer, HILASegmentLogic)
