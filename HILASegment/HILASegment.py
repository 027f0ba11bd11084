"""HILASegment: human-in-the-loop segmentation of prostate MRI and pelvic CT in 3D Slicer.

Thin glue: every decision lives in the engine (``HILASegmentLib``) or in ``HILASegmentSlicerLib``
(the glue's own logic with the Slicer objects passed in, tested on real MRML nodes and Qt stand-ins). This file
wires widgets to the sections there; long work (inference, training, installs, import, Accept) runs as jobs (child
processes and worker threads, one slot per kind of ``jobs.KINDS``, ``sections.JobsSection``), so the GUI only draws.
"""
import os

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

from HILASegmentSlicerLib import cases, pacs, panelstate, sections, segments, selftest
from HILASegmentSlicerLib.jobs import JobBoard
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
        self.tables = sections.TablesSection(self, self.ui, qt)
        # restore settings before connecting their signals, so restoring one cannot overwrite the others
        self.ui.annotatorLineEdit.text = _setting("annotator", os.environ.get("USER", os.environ.get("USERNAME", "")))
        self.ui.deviceComboBox.currentText = _setting("device", "auto")
        self.ui.autoPromoteCheckBox.checked = _setting("autoPromote", False, converter=slicer.util.toBool)
        self.ui.maxMinutesSpinBox.value = _setting("maxMinutes", 20, converter=int)
        self.ui.workspacePathLineEdit.currentPath = _setting("workspace", "")

        self.ui.openWorkspaceButton.connect("clicked()", self.onOpenWorkspace)
        self.ui.createWorkspaceButton.connect("clicked()", self.onCreateWorkspace)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.ttaCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.qualityComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.annotatorLineEdit.connect("editingFinished()", self.saveSettings)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.saveSettings)
        self.ui.autoPromoteCheckBox.connect("toggled(bool)", self.saveSettings)
        self.ui.maxMinutesSpinBox.connect("valueChanged(int)", self.saveSettings)
        # the sections own their buttons, jobs and finish handlers (HILASegmentSlicerLib.sections, .pacs)
        self.cases = sections.CasesSection(self, self.ui, slicer.util, qt, slicer.mrmlScene)
        self.segment = sections.SegmentSection(self, self.ui, slicer.util, slicer.mrmlScene, vtk)
        self.fixbox = sections.FixBoxSection(self, self.ui, slicer.util, slicer.mrmlScene)
        self.models = sections.ModelsSection(self, self.ui, slicer.util)
        self.installs = sections.InstallsSection(self, self.ui, slicer.util)
        self.pacs = pacs.PacsPanel(self.ui, slicer.util, lambda: self.ws, self.startJob, self.refreshTables,
                                   self.status, lambda: self.installs.ensure("dicom"), slicer.util.startupEnvironment,
                                   _setting, _setSetting, cancel=lambda: self.cancelJob("pacs"))
        self.runs = sections.JobsSection(self, self.ui, slicer.util, qt)  # THE table of job kinds: jobs.KINDS
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
        self.runs.timer.stop()

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
            keys = [c.key for c in self.tables.choices]
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
        volumeId = volume.GetID() if (volume := self.ui.inputVolumeSelector.currentNode()) else None
        segmentJob, acceptJob = self.jobs.get("segment"), self.jobs.get("accept")
        state = panelstate.PanelState(
            has_workspace=self.ws is not None, has_volume=volume is not None,
            segmenting_shown=self.jobs.segmenting(volumeId),
            segmenting_other=segmentJob is not None and segmentJob.volume_id != volumeId,
            training=self.jobs.busy("train"), learning=self.models.learning(), installing=self.jobs.busy("install"),
            has_candidate=self.models.candidate is not None, importing=self.jobs.busy("import"),
            has_models=self.ws is not None and self.ui.modelTableWidget.rowCount > 1, fixing=self.jobs.busy("fixbox"),
            accepting_shown=acceptJob is not None and acceptJob.volume_id == volumeId,
            accepting_other=acceptJob is not None and acceptJob.volume_id != volumeId)
        for name, enabled in panelstate.button_states(state).items():
            getattr(self.ui, name).enabled = enabled
        self.models.show_learning()
        self.fixbox.update_button(state)
        self.ui.acceptButton.text = panelstate.accept_button_text(state.accepting_shown)
        shortName = choice.label.split(" · ")[0] if (choice := self.currentModelChoice()) else None
        self.ui.segmentButton.text = panelstate.segment_button_text(state.segmenting_shown, shortName)
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

    def refreshTables(self, tables=None):
        self.tables.refresh(tables)

    def readTables(self):
        self.runs.read_tables()

    def currentModelChoice(self):
        return self.tables.current() if hasattr(self, "tables") else None

    def onModelChanged(self, index):
        self.updateParameterNodeFromGUI()
        self.updateButtons()

    # -- background jobs: one slot per kind (sections.JobsSection) -----------------------------
    def startJob(self, job):
        self.runs.start(job)

    def cancelJob(self, kind):
        self.runs.cancel(kind)

    def onSceneStartClose(self, caller, event):
        self.jobs.cancel("segment")  # its volume is going away; training and installs do not depend on the scene
        self.jobs.cancel("fixbox")
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
