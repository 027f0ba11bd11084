#!/usr/bin/env python3
"""Render the HILASegment panel (Resources/UI/HILASegment.ui) with stand-in widgets, for the README's screenshot.

3D Slicer cannot run here, so Slicer's own widgets are replaced by plain Qt stand-ins (qMRMLWidget ->
QWidget, ctkCollapsibleButton -> QGroupBox, qMRMLNodeComboBox -> QComboBox, ctkPathLineEdit -> QLineEdit,
qMRMLSegmentEditorWidget -> a labelled placeholder). The layout, names, texts and tooltips are the .ui
file's own; the tables, model selector, button states and Segment button text come from the real
code (``panels``, ``HILASegmentSlicerLib``) on a small workspace, with a training job running;
the training progress (40 %) and its log line are staged, not measured.
It shows the panel's layout, not Slicer's styling.

usage: xvfb-run -a python scripts/render_panel.py OUT.png   (needs PyQt5: pip install PyQt5)
"""
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))
STAND_INS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox",
             "ctkPathLineEdit": "QLineEdit", "qMRMLSegmentEditorWidget": "QLabel"}
KEEP = {"text", "toolTip", "enabled", "value", "minimum", "maximum", "wordWrap", "readOnly", "orientation"}


def stand_in_ui(src: Path) -> str:
    tree = ET.parse(src)
    root = tree.getroot()
    for tag in ("customwidgets", "connections"):
        for el in root.findall(tag):
            root.remove(el)
    for w in root.iter("widget"):
        cls = w.get("class")
        if cls in STAND_INS:
            w.set("class", STAND_INS[cls])
            for prop in list(w.findall("property")):
                if prop.get("name") not in KEEP:
                    w.remove(prop)
                elif cls == "ctkCollapsibleButton" and prop.get("name") == "text":
                    prop.set("name", "title")
            if cls == "qMRMLSegmentEditorWidget":
                ET.SubElement(ET.SubElement(w, "property", name="text"), "string").text = \
                    "[ Slicer's Segment Editor: effects, segment list, masking, undo ]"
    return ET.tostring(root, encoding="unicode")


def main(out: str) -> int:
    import SimpleITK as sitk
    from PyQt5 import QtCore, QtWidgets, uic

    from HILASegmentLib.workspace import Workspace
    from HILASegmentSlicerLib import cases, pacs, panels, panelstate

    app = QtWidgets.QApplication(sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        ui_file = Path(tmp) / "panel.ui"
        ui_file.write_text(stand_in_ui(ROOT / "HILASegment" / "Resources" / "UI" / "HILASegment.ui"), encoding="utf-8")
        panel = uic.loadUi(str(ui_file))
        ws = Workspace.create(Path(tmp) / "ws", "CT", None, model="pelvic_ct_unet")
        image = sitk.ReadImage(str(ROOT / "Testing" / "Data" / "pelvic_ct_small.nrrd"))
        for n, name in enumerate(("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")):
            path = Path(tmp) / f"{name}.nrrd"
            sitk.WriteImage(image + n, str(path))  # three distinct files (the workspace keeps one case per content)
            ws.import_volume(path)
        for table, headers, rows in ((panel.caseTableWidget, panels.CASE_COLUMNS, panels.case_rows(ws)),
                                     (panel.modelTableWidget, panels.MODEL_COLUMNS, panels.model_rows(ws))):
            table.setColumnCount(len(headers))
            table.setHorizontalHeaderLabels(headers)
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    table.setItem(r, c, QtWidgets.QTableWidgetItem(str(value)))
            table.resizeColumnsToContents()
        choices = cases.model_choices(ws)
        for c in choices:
            panel.modelComboBox.addItem(c.label)
        panel.workspacePathLineEdit.setText(str(Path.home() / "HILA" / "pelvic-ct"))
        panel.inputVolumeSelector.addItem("Pelvic-Ref002")
        panel.modalityComboBox.setCurrentText("CT")
        panel.labelsLineEdit.setText("prostate,bladder,rectum")
        panel.workspaceStatusLabel.setText(f"CT: {len(panels.case_rows(ws))} cases, 1 model, current model v1")
        state = panelstate.PanelState(has_workspace=True, has_volume=True, training=True, has_models=True)
        for name, enabled in panelstate.button_states(state).items():
            getattr(panel, name).setEnabled(enabled)
        panel.cancelInstallButton.setEnabled(False)
        for name, enabled in pacs.button_states(True, "c0001", False).items():  # the PACS section, idle
            getattr(panel, name).setEnabled(enabled)
        panel.pacsUrlLineEdit.setText("http://pacs:8042/dicom-web")
        panel.pacsProgressBar.hide()
        panel.segmentButton.setText(panelstate.segment_button_text(False, choices[0].label.split(" · ")[0]))
        panel.segmentProgressBar.hide()
        panel.installProgressBar.hide()
        panel.progressBar.setValue(40)
        panel.logTextEdit.setPlainText("[train] epoch 12/30  loss 0.41  val Dice 0.63")
        panel.statusLabel.setText("Training a new model (cases stay open for Segment and Accept meanwhile)")
        panel.caseInfoLabel.setText("Case c0001 opened; Segment it, correct, then Accept.")
        panel.segmentEditorWidget.setFrameShape(QtWidgets.QFrame.Box)
        panel.segmentEditorWidget.setAlignment(QtCore.Qt.AlignCenter)
        panel.segmentEditorWidget.setMinimumHeight(90)
        panel.resize(520, panel.sizeHint().height())
        panel.show()
        app.processEvents()
        panel.grab().save(out, "PNG")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "panel.png")))
