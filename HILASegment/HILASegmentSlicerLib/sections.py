"""The panel's sections, in the mould of :class:`pacs.PacsPanel`: each gets the widgets (``ui``), ``slicer.util``
(``util``) and the panel it belongs to, connects its own buttons, and owns its jobs and their finish handlers.

``panel`` is the module's widget; a section reads from it only the shared state of the panel: ``ws`` (the open
workspace), ``logic``, ``jobs``, ``openedAt`` (volume ID -> when its case was shown), ``currentModelChoice()``, and
calls its shared hooks ``status``, ``refreshTables``, ``readTables``, ``updateButtons``, ``startJob``, ``cancelJob`` and
``installs.ensure``. The decisions stay in the library's rules (cases, segments, marks, panelstate, dependencies).
Nothing here imports slicer, qt or vtk: ``qt`` and ``vtk`` are passed in where a section needs them.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Optional

import numpy as np

from HILASegmentLib.ground.errors import HilaError

from . import cases, installplan, marks, panels, panelstate, segments
from .jobs import KINDS, Job, JobError, bind_kinds
from .processrunner import ThreadRunner

__all__ = ["TablesSection", "JobsSection", "CasesSection", "SegmentSection", "FixBoxSection", "ModelsSection",
           "InstallsSection"]


class TablesSection:
    """The case and model tables, the model selector and the workspace line, drawn from ``panels.Tables``: read by a
    job's worker when a job ends (``Job.tables_read``), or here after opening a workspace, a promote or a rollback."""

    def __init__(self, panel: Any, ui: Any, qt: Any) -> None:
        self.panel, self.ui, self.qt = panel, ui, qt
        self.choices: list = []  # cases.ModelChoice, one per row of the model selector
        for table, headers in ((ui.caseTableWidget, panels.CASE_COLUMNS), (ui.modelTableWidget, panels.MODEL_COLUMNS)):
            table.setColumnCount(len(headers))
            table.setHorizontalHeaderLabels(headers)

    def refresh(self, tables: Optional[panels.Tables] = None) -> None:
        """Draw ``tables`` when they are of the open workspace; else read them now (the ledger, on this thread)."""
        ws = self.panel.ws
        if tables is None or tables.root != (str(ws.root) if ws is not None else None):
            tables = panels.tables(ws)
        self.draw_choices(tables.choices)
        self.ui.weakLabelComboBox.clear()
        if ws is None:
            self.ui.workspaceStatusLabel.text = "No workspace: open or create one (Segment works without one)."
            return
        for name in tables.labels:
            self.ui.weakLabelComboBox.addItem(name)
        self._fill(self.ui.caseTableWidget, tables.cases)
        self._fill(self.ui.modelTableWidget, tables.models)
        self.ui.workspaceStatusLabel.text = "{}: {} cases, {} models, current model {}".format(
            tables.modality, len(tables.cases), len(tables.models),
            "v%d" % tables.current if tables.current else "none (pick a catalog model)")

    def draw_choices(self, choices: list) -> None:
        """The model selector's rows, keeping the picked model when it is still offered."""
        previous = self.current()
        self.choices = list(choices)
        self.panel._updatingGUI = True
        try:
            self.ui.modelComboBox.clear()
            for c in self.choices:
                self.ui.modelComboBox.addItem(c.label)
            keys = [c.key for c in self.choices]
            if previous is not None and previous.key in keys:
                self.ui.modelComboBox.currentIndex = keys.index(previous.key)
        finally:
            self.panel._updatingGUI = False

    def current(self) -> Any:
        """The picked ``cases.ModelChoice``, or None."""
        i = self.ui.modelComboBox.currentIndex
        return self.choices[i] if 0 <= i < len(self.choices) else None

    def _fill(self, table: Any, rows: list) -> None:
        table.setSortingEnabled(False)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                item = self.qt.QTableWidgetItem()
                item.setData(self.qt.Qt.DisplayRole, value if isinstance(value, (int, float)) else str(value))
                table.setItem(r, c, item)
        table.setSortingEnabled(True)
        table.resizeColumnsToContents()


class JobsSection:
    """The panel's background jobs: one slot per kind (``jobs.KINDS``: progress text, progress bar, finish handler),
    polled by a QTimer every 200 ms; when a job's run ends, the job reads the tables (``Job.tables``) on a worker
    thread, and its finish handler only draws."""

    def __init__(self, panel: Any, ui: Any, util: Any, qt: Any) -> None:
        self.panel, self.ui, self.util = panel, ui, util
        self.kinds = bind_kinds(panel, ui)
        self.reading: Optional[ThreadRunner] = None  # tables read mid-job (a Keep-learning round ended)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.poll)
        for bar, _ in self.kinds.values():
            bar.hide()

    def start(self, job: Job) -> None:
        panel = self.panel
        if KINDS[job.kind].tables and panel.ws is not None:
            job.tables = functools.partial(panels.read_tables, str(panel.ws.root))
        try:
            panel.jobs.start(job)
        except (JobError, OSError) as exc:
            panel.logic.cleanupJob(job.context)
            self.util.errorDisplay("Could not start: %s" % exc)
            return
        self.kinds[job.kind][0].value = 0
        self.kinds[job.kind][0].show()
        self.timer.start()
        panel.status(job.describe() + "...")
        panel.updateButtons()

    def poll(self) -> None:
        for job, lines, done in self.panel.jobs.poll():
            self.log(job, lines)
            if job.runner.fraction is not None:
                self.kinds[job.kind][0].value = int(100 * job.runner.fraction)
            if done:
                self.finish(job)
        if self.reading is not None and self.reading.finished:
            self.panel.refreshTables((self.reading.outcome().result or {}).get("tables"))
            self.reading = None
        if not self.panel.jobs.running and self.reading is None:
            self.timer.stop()

    def read_tables(self) -> None:
        """Read the tables on a worker thread while jobs run (a round of Keep learning ended); :meth:`poll` draws
        them when read."""
        ws = self.panel.ws
        if ws is not None and self.reading is None:
            read = functools.partial(panels.read_tables, str(ws.root))
            self.reading = ThreadRunner(lambda cancelled: {"tables": read()}, "tables").start()
            self.timer.start()

    def log(self, job: Job, lines: list) -> None:
        for line in lines:
            if line.record is None or line.record.get("event") != "progress":
                self.ui.logTextEdit.appendPlainText("[%s] %s" % (job.kind, line.text))
            if line.record is not None and line.record.get("event") == "round":  # Keep learning: a round ended
                self.panel.models.on_round(line.record)

    def finish(self, job: Job) -> None:
        self.kinds[job.kind][0].hide()
        outcome = job.runner.outcome()
        try:
            if outcome.ok:
                self.kinds[job.kind][1](job, outcome)
            elif outcome.cancelled:
                self.panel.status("%s cancelled." % job.describe())
            else:
                self.util.errorDisplay("%s failed: %s" % (job.describe(), outcome.error),
                                       detailedText="\n".join(job.runner.stderr_tail))
        except Exception as exc:  # a result that cannot be used must not leave the panel half-updated
            logging.exception("HILASegment: could not use the %s result", job.kind)
            self.util.errorDisplay("Could not use the %s result: %s" % (job.kind, exc))
        finally:
            self.panel.logic.cleanupJob(job.context)
            self.panel.updateButtons()

    def cancel(self, kind: str) -> None:
        if self.panel.jobs.cancel(kind):
            self.panel.status("Cancelling...")


class CasesSection:
    """Open a case (double-click, Next case), import volumes (the shown node, files, a DICOM folder: a child with
    progress and Cancel), follow the volume selector with the volume's own segmentation."""

    def __init__(self, panel: Any, ui: Any, util: Any, qt: Any, scene: Any) -> None:
        self.panel, self.ui, self.util, self.qt, self.scene = panel, ui, util, qt, scene
        ui.caseTableWidget.connect("cellDoubleClicked(int,int)", lambda row, column: self.load(ui.caseTableWidget.item(row, 0).text()))
        ui.nextCaseButton.connect("clicked()", self.next_case)
        ui.importVolumeButton.connect("clicked()", self.import_volume)
        ui.importFilesButton.connect("clicked()", self.import_files)
        ui.importFolderButton.connect("clicked()", self.import_folder)
        ui.cancelImportButton.connect("clicked()", lambda: panel.cancelJob("import"))
        ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.volume_changed)

    def next_case(self) -> None:
        caseId = panels.next_case_id(self.panel.ws)
        if caseId is None:
            self.util.infoDisplay("Every case has a correction: train, or import more cases.")
            return
        self.load(caseId)

    def load(self, caseId: str) -> None:
        """Show a case; it continues from its latest correction, and its segmentation is its own."""
        try:
            with self.util.WaitCursor():
                volume = self.panel.logic.loadCase(self.panel.ws, caseId)
                segNode = segments.segmentation_for(self.scene, volume)
                loaded = cases.reopen_case_segments(self.panel.ws, self.util, volume, segNode)
        except Exception as exc:
            self.util.errorDisplay("Could not load case %s: %s" % (caseId, exc))
            return
        self.ui.inputVolumeSelector.setCurrentNode(volume)
        self.ui.caseInfoLabel.text = ("Case %s: its latest correction (v%d) is loaded; correct, then Accept." % (caseId, loaded)
                                      if loaded else "Case %s opened; Segment it, correct, then Accept." % caseId)

    def import_volume(self) -> None:
        """The shown volume node as a case: written out here, imported by a child (Import's progress and Cancel)."""
        volume = self.ui.inputVolumeSelector.currentNode()
        try:
            runner, context = self.panel.logic.startImportVolumeNode(self.panel.ws, volume)
        except Exception as exc:
            self.util.errorDisplay("Could not import the volume: %s" % exc)
            return
        self.panel.startJob(Job("import", runner, volume_id=volume.GetID(), label=volume.GetName(), context=context))

    def import_files(self) -> None:
        paths = self.qt.QFileDialog.getOpenFileNames(self.util.mainWindow(), "Import volumes", "",
                                                     "Volumes (*.nrrd *.nii *.nii.gz *.mha *.mhd);;All files (*)")
        self.import_paths(list(paths))

    def import_folder(self) -> None:
        folder = self.qt.QFileDialog.getExistingDirectory(self.util.mainWindow(), "Import a DICOM series folder")
        if folder:
            self.import_paths([folder])

    def import_paths(self, paths: list) -> None:
        """Files and DICOM series folders, imported by a `hila import` child (progress, Cancel; the panel stays live)."""
        if not paths:
            return
        try:
            runner = self.panel.logic.startImport(self.panel.ws, paths)
        except Exception as exc:
            self.util.errorDisplay("Could not start the import: %s" % exc)
            return
        self.panel.startJob(Job("import", runner, label="%d item(s)" % len(paths), context={"ws": self.panel.ws}))

    def finish_import(self, job: Job, outcome: Any) -> None:
        """The cases the child imported appear in the table; an imported volume node is tagged with its case."""
        imported = (outcome.result or {}).get("cases") or []
        volume = self.scene.GetNodeByID(job.volume_id) if job.volume_id else None
        if volume is not None and imported:
            self.panel.logic.tagCase(self.panel.ws, volume, imported[0]["case_id"])
            self.panel.openedAt[volume.GetID()] = time.monotonic()
        self.panel.refreshTables(job.tables_read)
        self.panel.status("Imported %d case(s): %s" % (len(imported), ", ".join(c["case_id"] for c in imported)))

    def volume_changed(self, volume: Any) -> None:
        """Show the volume's own segmentation (a workspace case gets one; a plain volume only when segmented)."""
        if volume is not None and volume.GetID() not in self.panel.openedAt:
            self.panel.openedAt[volume.GetID()] = time.monotonic()
        segNode = None
        if volume is not None:
            segNode = segments.segmentation_for(self.scene, volume, create=bool(volume.GetAttribute(segments.CASE_ATTRIBUTE)))
        self.ui.segmentEditorWidget.setSegmentationNode(segNode)
        self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        self.panel.updateParameterNodeFromGUI()
        self.panel.updateButtons()


class SegmentSection:
    """Segment (a `hila infer` child; the result goes to the job's own volume), Accept, Accept as weak."""

    def __init__(self, panel: Any, ui: Any, util: Any, scene: Any, vtk: Any) -> None:
        self.panel, self.ui, self.util, self.scene, self.vtk = panel, ui, util, scene, vtk
        ui.segmentButton.connect("clicked()", self.segment)
        ui.acceptButton.connect("clicked()", self.accept)
        ui.acceptWeakButton.connect("clicked()", self.accept_weak)

    def segment(self) -> None:
        panel, volume = self.panel, self.ui.inputVolumeSelector.currentNode()
        if volume is not None and panel.jobs.segmenting(volume.GetID()):
            panel.cancelJob("segment")  # the Segment button is Cancel while this case segments
            return
        choice = panel.currentModelChoice()
        if volume is None or choice is None or not panel.installs.ensure("inference", model=choice.model):
            return
        try:  # a workspace case is segmented by `hila infer WS CASE`, which records the prediction (not this thread)
            caseId = cases.own_case(panel.ws, volume)
            case = (str(panel.ws.root), caseId) if panel.ws is not None and caseId else None
            model = str(choice.version) if case and choice.key == "workspace" else choice.model
            runner, context = panel.logic.startSegmentation(volume, model, tta=self.ui.ttaCheckBox.checked,
                                                            device=self.ui.deviceComboBox.currentText, case=case)
        except Exception as exc:
            self.util.errorDisplay("Segmentation failed to start: %s" % exc)
            return
        panel.startJob(Job("segment", runner, case_id=case[1] if case else None, volume_id=volume.GetID(),
                           label=choice.label.split(" · ")[0], context=context))

    def finish(self, job: Job, outcome: Any) -> None:
        """The result goes to the job's OWN volume's segmentation, whatever the panel shows now; the child already
        recorded the prediction of a workspace case, so this only draws."""
        volume = self.scene.GetNodeByID(job.volume_id)
        if volume is None:
            self.panel.status("The segmented volume was closed; its result was discarded.")
            return
        segNode = segments.segmentation_for(self.scene, volume)
        editorNode = self.ui.segmentEditorWidget.mrmlSegmentEditorNode()
        shown = self.ui.inputVolumeSelector.currentNode()
        if shown is not None and shown.GetID() == volume.GetID():
            self.ui.segmentEditorWidget.setSegmentationNode(segNode)
            self.ui.segmentEditorWidget.saveStateForUndo()  # one undo point for the whole AI result
        report = self.panel.logic.loadResult(job.context["out"], segNode, volume, editorNode)
        if job.case_id:
            self.panel.refreshTables(job.tables_read)
        self.panel.status("%s — %s (%.0f s)" % (volume.GetName(), report.message(), outcome.seconds))
        if report.clipped_total and not any(report.predicted[n] > report.clipped[n] for n in report.names):
            self.util.warningDisplay(report.message())

    def _seconds(self, volume: Any) -> Optional[float]:
        opened = self.panel.openedAt.get(volume.GetID()) if volume else None
        return time.monotonic() - opened if opened else None

    def accept(self) -> None:
        """Submit the shown volume's own segmentation for the shown volume's own case (never another's): the label map
        is exported here, the submit and the workspace's compressed copy run in a child (progress; Accept = Cancel)."""
        panel, volume = self.panel, self.ui.inputVolumeSelector.currentNode()
        held = panel.jobs.get("accept")
        if held is not None and volume is not None and held.volume_id == volume.GetID():
            panel.cancelJob("accept")
            return
        segNode = segments.segmentation_for(self.scene, volume, create=False) if volume else None
        try:
            with self.util.WaitCursor():
                runner, context = panel.logic.startAccept(panel.ws, volume, segNode, quality=self.ui.qualityComboBox.currentText,
                                                          annotator=self.ui.annotatorLineEdit.text or None,
                                                          seconds=self._seconds(volume))
        except Exception as exc:
            self.util.errorDisplay("Accept refused; nothing was submitted: %s" % exc)
            return
        panel.startJob(Job("accept", runner, case_id=context["case"], volume_id=volume.GetID(), label=volume.GetName(),
                           context=context))

    def finish_accept(self, job: Job, outcome: Any) -> None:
        """The correction is in the ledger (the child's submit); the compressed copy gets its versioned name."""
        volume = self.scene.GetNodeByID(job.volume_id)
        result = cases.accept_outcome(job.case_id, job.runner.results, job.runner.errors, job.context["pending"],
                                      lambda version: cases.output_path(volume, job.context["ws"], job.case_id, version))
        if volume is not None:
            self.panel.openedAt[volume.GetID()] = time.monotonic()  # the next Accept's seconds count from this one
        self.panel.refreshTables(job.tables_read)
        self.panel.status(result.message())
        if result.save_error:
            self.util.warningDisplay(result.message())

    def accept_weak(self) -> None:
        """Submit the picked ROI, or long and short line, as a weak label of the shown volume's own case."""
        panel, volume = self.panel, self.ui.inputVolumeSelector.currentNode()
        try:
            picked = marks.marks_from_markups(self.util, self.ui.weakLabelComboBox.currentText,
                                              self.ui.weakRoiSelector.currentNode(), self.ui.weakLongLineSelector.currentNode(),
                                              self.ui.weakShortLineSelector.currentNode(), volume)
            with self.util.WaitCursor():
                correction = cases.accept_weak(panel.ws, volume, picked, annotator=self.ui.annotatorLineEdit.text or None,
                                               seconds=self._seconds(volume))
        except Exception as exc:
            self.util.errorDisplay("Accept as weak refused; nothing was submitted: %s" % exc)
            return
        panel.openedAt[volume.GetID()] = time.monotonic()
        panel.refreshTables()
        panel.status("Accepted case %s as weak correction v%d (marks: %s)" % (correction.case_id, correction.version,
                     ", ".join(m["label"] for m in correction.effort["marks"]["items"])))


class FixBoxSection:
    """Fix with box: the segment selected in the Segment Editor redrawn inside the picked ROI by the box assistant (a
    worker thread: progress, and the button is Cancel meanwhile), as one undo point, under the editor's masking; other
    segments untouched. A refusal is one status line and changes nothing."""

    def __init__(self, panel: Any, ui: Any, util: Any, scene: Any) -> None:
        self.panel, self.ui, self.util, self.scene = panel, ui, util, scene
        ui.fixBoxButton.connect("clicked()", self.fix)
        ui.fixRoiSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: panel.updateButtons())
        ui.segmentEditorWidget.connect("currentSegmentIDChanged(QString)", lambda segmentId: panel.updateButtons())

    def update_button(self, state: panelstate.PanelState) -> None:
        """The button by the panel's one rule table, with what this section knows: a selected segment, a picked ROI."""
        state = dataclasses.replace(state, has_segment=bool(self.ui.segmentEditorWidget.currentSegmentID()),
                                    has_roi=self.ui.fixRoiSelector.currentNode() is not None)
        self.ui.fixBoxButton.enabled = panelstate.button_states(state)["fixBoxButton"]
        self.ui.fixBoxButton.text = panelstate.fix_button_text(state.fixing)

    def fix(self) -> None:
        panel = self.panel
        if panel.jobs.busy("fixbox"):
            panel.cancelJob("fixbox")  # the button is Cancel while the assistant runs
            return
        if not panel.installs.ensure("inference"):  # onnxruntime and SimpleITK in Slicer's Python
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        try:
            runner, context = panel.logic.startFixWithBox(volume, self.ui.segmentEditorWidget.segmentationNode(),
                                                          self.ui.segmentEditorWidget.currentSegmentID(),
                                                          self.ui.fixRoiSelector.currentNode())
        except Exception as exc:
            panel.status("Fix with box refused; nothing changed: %s" % exc)
            return
        panel.startJob(Job("fixbox", runner, volume_id=volume.GetID(), label=context["label"], context=context))

    def finish(self, job: Job, outcome: Any) -> None:
        """The mask goes into the job's own segment, with one undo point, only while the Segment Editor still shows
        that segmentation (its undo stack is the one that can take it back); otherwise nothing is changed."""
        shown = self.ui.segmentEditorWidget.segmentationNode()
        if shown is None or shown.GetID() != job.context["segmentation"]:
            self.panel.status("Fix with box: the segmentation is no longer the one shown in the Segment Editor; "
                              "nothing changed (show it and press Fix with box again)")
            return
        editorNode = self.ui.segmentEditorWidget.mrmlSegmentEditorNode()
        try:
            self.ui.segmentEditorWidget.saveStateForUndo()  # one undo point for the whole fix
            report = self.panel.logic.applyFixWithBox(job.context, outcome.result, editorNode)
        except HilaError as exc:
            self.panel.status("Fix with box: %s" % exc)
            return
        self.panel.status(report.message() + "; Undo in the Segment Editor takes it back")


class ModelsSection:
    """Train (a child; the GUI keeps working), the candidate from the trainer's own result, Promote, Discard,
    Roll back, the learning curve."""

    def __init__(self, panel: Any, ui: Any, util: Any) -> None:
        self.panel, self.ui, self.util = panel, ui, util
        self.candidate: Optional[int] = None
        ui.trainButton.connect("clicked()", self.train)
        ui.keepLearningCheckBox.connect("toggled(bool)", self.keep_learning)
        ui.cancelButton.connect("clicked()", lambda: panel.cancelJob("train"))
        ui.promoteButton.connect("clicked()", self.promote)
        ui.discardButton.connect("clicked()", self.discard)
        ui.rollbackButton.connect("clicked()", self.rollback)
        ui.plotButton.connect("clicked()", self.plot)

    def train(self) -> None:
        panel = self.panel
        if not panel.installs.ensure("training"):
            return
        try:
            runner = panel.logic.startTraining(panel.ws, self.ui.maxMinutesSpinBox.value, self.ui.deviceComboBox.currentText,
                                               autoPromote=self.ui.autoPromoteCheckBox.checked)
        except Exception as exc:
            self.util.errorDisplay("Training failed to start: %s" % exc)
            return
        self.ui.logTextEdit.clear()
        panel.startJob(Job("train", runner, label="a new model"))

    def keep_learning(self, on: bool) -> None:
        """Keep learning: one watching trainer (``hila train --watch``) that trains a gated round whenever accepted
        corrections land, so the next Segment uses whatever the gate made current; unticking stops it. A round in
        progress is finished, not restarted, when another Accept lands: the next round takes the new correction and
        continues from this round's weights (no optimisation thrown away)."""
        panel = self.panel
        if not on:
            if self.learning():
                panel.cancelJob("train")
            return
        if self.learning() or not panel.installs.ensure("training"):
            self.show_learning()
            return
        try:
            runner = panel.logic.startTraining(panel.ws, self.ui.maxMinutesSpinBox.value,
                                               self.ui.deviceComboBox.currentText, autoPromote=True, watch=True)
        except Exception as exc:
            self.util.errorDisplay("Keep learning failed to start: %s" % exc)
            return self.show_learning()
        panel.startJob(Job("train", runner, label="keep learning", context={"watch": True}))
        self.show_learning()

    def learning(self) -> bool:
        """Does the training slot hold Keep learning's trainer?"""
        job = self.panel.jobs.get("train")
        return job is not None and bool(job.context.get("watch"))

    def show_learning(self) -> None:
        """The checkbox says whether Keep learning runs (after a stop, a cancel or a refused start), without
        toggling it again."""
        box = self.ui.keepLearningCheckBox
        box.blockSignals(True)
        box.checked = self.learning()
        box.blockSignals(False)

    def on_round(self, record: dict) -> None:
        """One round of Keep learning ended (the watching trainer's ``round`` line): the tables and the status say
        what the gate did, while the radiologist keeps working (the tables are read by a worker, then drawn)."""
        self.panel.readTables()
        if record.get("model_version") is None:
            self.panel.status("Keep learning: round not trained: %s" % record.get("error", "see the log"))
            return
        self.panel.status("Keep learning: model v%d %s: %s" % (int(record["model_version"]),
                          "is now current" if record.get("promoted") else "kept as a candidate",
                          record.get("reason", "")))

    def finish(self, job: Job, outcome: Any) -> None:
        """Offer the candidate the trainer registered (its result names it) in the panel, without interrupting the
        case being corrected."""
        self.panel.refreshTables(getattr(job, "tables_read", None))
        result = outcome.result or {}
        if getattr(job, "context", {}).get("watch"):
            self.panel.status("Keep learning stopped: %s round(s), %s promoted." % (result.get("rounds", 0),
                                                                                    result.get("promoted", 0)))
            return
        if result.get("model_version") is None:
            self.ui.candidateLabel.text = "No new model: %s" % (result.get("message") or "see the log")
            return
        self.candidate = int(result["model_version"])
        self.ui.candidateLabel.text = panels.compare_text(self.panel.ws, self.candidate)
        if result.get("promoted"):
            self.candidate = None  # auto-promote on, and the trainer's gate promoted it
        self.panel.status("Training finished: " + self.ui.candidateLabel.text)

    def promote(self) -> None:
        try:
            self.panel.ws.promote(self.candidate)
            self.panel.status("Model v%d is now current." % self.candidate)
            self.candidate = None
        except Exception as exc:
            self.util.errorDisplay("Promote failed: %s" % exc)
        self.panel.refreshTables()
        self.panel.updateButtons()

    def discard(self) -> None:
        self.panel.status("Candidate v%d kept in the registry, not used." % self.candidate)
        self.candidate = None
        self.panel.updateButtons()

    def rollback(self) -> None:
        ws = self.panel.ws
        current = ws.current_model()
        if current is None or not self.util.confirmYesNoDisplay(
                "Roll back: stop using model v%d and make the previous current model current again? "
                "v%d stays in the registry." % (current.version, current.version)):
            return
        try:
            record = ws.rollback()
            self.panel.status("Rolled back: model v%d is current." % record.version)
        except Exception as exc:
            self.util.errorDisplay("Rollback failed: %s" % exc)
        self.panel.refreshTables()
        self.panel.updateButtons()

    def plot(self) -> None:
        rows, names = panels.learning_curve(self.panel.ws)
        if not rows:
            self.panel.status("No model yet: nothing to plot.")
            return
        self.util.plot(np.array(rows, dtype=float), xColumnIndex=0, columnNames=names, title="HILASegment learning curve")


class InstallsSection:
    """One consent dialog per missing tier; installs never freeze the GUI (Slicer 5.12's own dialog, else a job)."""

    def __init__(self, panel: Any, ui: Any, util: Any) -> None:
        self.panel, self.ui, self.util = panel, ui, util
        ui.installDependenciesButton.connect("clicked()", lambda: self.ensure("training", always=True))
        ui.cancelInstallButton.connect("clicked()", lambda: panel.cancelJob("install"))

    def ensure(self, tier: str, always: bool = False, model: Optional[str] = None) -> bool:
        """True when the tier's packages are there; otherwise asks, then installs (True only if done now)."""
        plan = installplan.plan_install(tier, model=model)
        if plan.broken_slicer or plan.old_slicer:
            self.util.errorDisplay(plan.message())
            return False
        if not plan.needed:
            if always:
                self.util.infoDisplay("All Python packages HILASegment needs are installed.")
            return True
        if self.panel.jobs.busy("install"):
            self.panel.status("Packages are being installed; try again when the install has finished.")
            return False
        if not self.util.confirmOkCancelDisplay(plan.message()):
            return False
        try:
            runner = self.panel.logic.install(plan)
        except Exception as exc:
            self.util.errorDisplay(installplan.offline_message(str(exc), plan) or "Installing packages failed: %s" % exc)
            return False
        if runner is None:  # Slicer 5.12: slicer.packaging showed its own progress dialog
            return not installplan.plan_install(tier, model=model).needed
        self.panel.startJob(Job("install", runner, label=", ".join(plan.pip_specs + plan.no_deps_specs), context={"plan": plan}))
        self.panel.status("Installing Python packages in the background; Segment or Train again when it is done.")
        return False

    def finish(self, job: Job, outcome: Any) -> None:
        self.panel.status("Python packages installed (%.0f s)." % outcome.seconds)
