"""HILASegment.py's own Logic on real MRML nodes (the module file imported on slicer-core, Qt stood in), the in-Slicer
self-test's MRML steps (import a volume, segment it in a child process, write the result, accept, reopen), and the
engine's outputs (`hila infer`, an RTSTRUCT converted with `--structures all`) read by Slicer's storage node.

Replaces the stand-in test_slicer_glue.py::test_reopening_a_case_loads_its_latest_correction_and_follows_the_parent_transform
(reopen under a parent transform, the tag, never twice); the self-test's own code runs in test_mrml_selftest.py."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tier import FIXTURES, ROOT, hila, read_only_folder, roi_display_colours, shared, slicer_core

slicer = slicer_core()
import vtk  # noqa: E402
from realscene import load_volume, read_segmentation, tag  # noqa: E402

from HILASegmentLib.formats import segfile, terminology  # noqa: E402
from HILASegmentLib.ground.colors import known_color, label_color  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402
from HILASegmentSlicerLib import cases, segments  # noqa: E402

MRI = FIXTURES / "prostate_mri_oblique_small.nrrd"
TISSUE = ("SCT", "85756007")


def type_code(segment) -> tuple:
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
    t = entry.GetTypeObject()
    return t.GetCodingSchemeDesignator(), t.GetCodeValue(), t.GetCodeMeaning()


def test_the_logic_turns_the_oblique_mri_node_into_the_files_image(rs, logic):
    volume = load_volume(MRI, "mri")
    image, ref = logic.volumeToImage(volume), sitk.ReadImage(str(MRI))
    assert image.GetSize() == ref.GetSize()
    assert np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    assert np.allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-9)
    assert np.allclose(image.GetDirection(), ref.GetDirection(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref))
    assert logic.segmentEditorNode() is logic.segmentEditorNode()  # one editor node per scene


def test_self_test_mrml_steps_one_colour_and_terminology_from_segment_to_reopen(rs, logic, tmp_path):
    """Import a volume node into a workspace, Segment it (a real `hila infer` child), write the result, Accept, and
    reopen the case in a fresh scene: the prostate keeps the table's colour and its terminology all the way, and
    Accept's copy lands in the workspace, not beside the volume's (read-only) source folder."""
    source = tmp_path / "user_data"
    source.mkdir()
    shutil.copy(MRI, source / "t2.nrrd")
    untouched = read_only_folder(source)
    model = ROOT / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"
    ws = Workspace.create(tmp_path / "ws", "MR", ["prostate"], model=str(model))
    volume = load_volume(source / "t2.nrrd", "t2")
    case = ws.case(logic.importVolumeNode(ws, volume))  # the panel's import job (a child), waited for
    runner, context = logic.startSegmentation(volume, "1", case=(str(ws.root), case.case_id))  # hila infer WS CASE
    outcome = runner.start().wait(timeout=300)
    assert outcome.ok, outcome.error
    (prediction,) = ws.predictions(case.case_id)  # the child recorded it; the GUI thread only draws
    assert prediction.model_version == 1
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    report = logic.loadResult(context["out"], segNode, volume, logic.segmentEditorNode())
    assert report.names == ["prostate"] and report.predicted["prostate"] > 0 and report.review_voxels is not None
    drawn = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume) > 0
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction.path))) == 1
    assert np.array_equal(drawn, stored)  # the cropped result lands on the voxels the ledger holds
    child_file = read_segmentation(context["out"], "as Slicer reads it")  # the child's cropped file, Slicer's reader
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(child_file, "prostate", volume) > 0, stored)
    slicer.mrmlScene.RemoveNode(child_file)
    logic.cleanupJob(context)
    after_segment = segNode.GetSegmentation().GetSegment("hila_1")
    colour = after_segment.GetColor()
    assert np.allclose(colour, label_color("prostate"), atol=1e-6)
    assert type_code(after_segment)[:2] == ("SCT", "41216001")

    accepted = logic.accept(ws, volume, segNode)  # the panel's Accept job: submit and compressed copy in a child
    assert accepted.version == 1 and accepted.save_error is None
    copy = Path(accepted.saved)
    assert ws.root in copy.parents and source not in copy.parents
    untouched()  # nothing written beside the source, not even a file made and removed again
    assert ws.check().ok  # the copy is in a folder the ledger does not manage
    written = segfile.read_segmentation(copy).segment("prostate")
    assert np.allclose(written.color, colour, atol=1e-4)
    assert written.tags["TerminologyEntry"] == terminology.entry_for("prostate")

    slicer.mrmlScene.Clear(0)  # reopen the case in an empty scene, as loadCase does, under a parent transform
    reopened = load_volume(ws.case(case.case_id).path, case.name)
    reopened.SetAttribute(segments.CASE_ATTRIBUTE, case.case_id)
    moved = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkTransform()
    shift.Translate(7.0, -3.0, 12.0)
    shift.RotateZ(33.0)
    moved.SetMatrixTransformToParent(shift.GetMatrix())
    reopened.SetAndObserveTransformNodeID(moved.GetID())
    reopenedSeg = segments.segmentation_for(slicer.mrmlScene, reopened)
    assert reopenedSeg.GetTransformNodeID() == moved.GetID()  # the segmentation follows the volume's transform
    assert cases.reopen_case_segments(ws, slicer.util, reopened, reopenedSeg) == 1
    segment = reopenedSeg.GetSegmentation().GetSegment("hila_1")
    assert tag(segment, "hila_label") == "1"
    latest = sitk.GetArrayFromImage(ws.correction_label(case.case_id)) == 1
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(reopenedSeg, "hila_1", reopened) > 0, latest)
    assert latest.any() and cases.reopen_case_segments(ws, slicer.util, reopened, reopenedSeg) is None  # never twice
    assert np.allclose(segment.GetColor(), colour, atol=1e-6)
    assert segment.GetTerminology() == after_segment.GetTerminology() or type_code(segment)[:2] == ("SCT", "41216001")


def test_infer_and_an_rtstruct_conversion_read_by_slicer_carry_the_structures_not_tissue(rs, tmp_path):
    """`hila infer` on the real CT and `hila convert RTSTRUCT --structures all` (manual, DL and MBS contour sets and
    the body outline): every segment Slicer reads has its structure's terminology and the table's colour."""
    ct = shared("pelvic_ct", "Pelvic-Ref002")
    dicom = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    rtstruct = next(dicom.glob("RS*.dcm"))
    hila("infer", "--image", str(ct / "ct.nii.gz"), "--out", str(tmp_path / "infer.seg.nrrd"), "--model", "pelvic_ct_unet")
    hila("convert", str(dicom), str(tmp_path / "ct.nrrd"))
    hila("convert", str(rtstruct), str(tmp_path / "rt.seg.nrrd"), "--structures", "all", "--reference", str(dicom))
    # a name outside the colour table keeps the colour its RTSTRUCT gives it (read here by pydicom, not by hila)
    outside = {name: np.array(rgb) / 255.0 for name, rgb in roi_display_colours(rtstruct).items()
               if known_color(name) is None}
    assert set(outside) == {"External"}  # the body outline: the one structure of this RTSTRUCT not in the table
    for volume_path, seg_path, at_least, others in (
            (ct / "ct.nii.gz", tmp_path / "infer.seg.nrrd", {"prostate", "bladder", "rectum"}, {}),
            (tmp_path / "ct.nrrd", tmp_path / "rt.seg.nrrd",
             {"Prostata", "Vescica", "Retto", "Prostate_DL", "Femur_Head_L_DL", "External"}, outside)):
        load_volume(volume_path, "ct")
        segmentation = read_segmentation(seg_path).GetSegmentation()
        names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
        assert at_least <= set(names), names
        for n in range(segmentation.GetNumberOfSegments()):
            s = segmentation.GetNthSegment(n)
            code = type_code(s)
            assert code[:2] != TISSUE, (s.GetName(), s.GetTerminology())
            assert code == terminology.resolve(s.GetName()).type, s.GetName()
            known = known_color(s.GetName())  # the table's colour; outside it, the source's own (KeyError if none)
            expected = known if known is not None else others[s.GetName()]
            assert np.allclose(s.GetColor(), expected, atol=1e-4), (s.GetName(), s.GetColor(), expected)
            assert tag(s, "TerminologyEntry") == s.GetTerminology()
        coded = {terminology.resolve(name).type[1] for name in names}
        assert {"41216001", "89837001", "34402009"} <= coded
        assert all(terminology.term_for(name) is not None for name in names), names  # no name falls back here


def test_a_volume_that_is_no_case_is_segmented_by_the_file_form(rs, logic):
    """Segment on a plain volume (no workspace case): the volume goes to `hila infer --image` uncompressed, nothing is
    recorded anywhere, and the model's own labels come back as the volume's segments, on its voxels."""
    model = ROOT / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"
    volume = load_volume(MRI, "mri")
    runner, context = logic.startSegmentation(volume, str(model))
    child = runner.commands[-1]  # the volume is written by the job's worker first, then `hila infer --image`
    assert callable(runner.commands[0]) and not os.listdir(context["folder"])  # nothing written on the GUI thread
    assert "--image" in child and not any(a.endswith("ws") for a in child)
    outcome = runner.start().wait(timeout=300)
    assert outcome.ok, outcome.error
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    report = logic.loadResult(context["out"], segNode, volume)
    logic.cleanupJob(context)
    assert report.names and report.predicted[report.names[0]] > 0
    assert slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume).sum() == report.predicted[report.names[0]]
    assert not os.path.exists(context["folder"])


def test_the_glue_converts_geometry_through_the_engines_one_ijk_to_lps_on_an_oblique_node(rs, logic, monkeypatch):
    """mrmlgeometry asks the engine's voxelgrid (IJK -> LPS and back) rather than keeping a second matrix: on the
    oblique MRI node, the node's own IJKToRAS, the file's image and the Logic's image of the node agree both ways."""
    from HILASegmentLib.formats import voxelgrid
    from HILASegmentSlicerLib import mrmlgeometry
    calls = []
    for name in ("ijk_to_lps", "grid_of"):
        real = getattr(voxelgrid, name)
        monkeypatch.setattr(voxelgrid, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    volume = load_volume(MRI, "mri")
    node, ref = logic.ijkToRas(volume), sitk.ReadImage(str(MRI))
    axes = node[:3, :3] / np.linalg.norm(node[:3, :3], axis=0)
    assert np.abs(axes - np.round(axes)).max() > 1e-3  # oblique: no axis along a patient axis
    assert np.allclose(mrmlgeometry.ijk_to_ras_matrix(ref), node, atol=1e-6)
    image = logic.volumeToImage(volume)
    assert np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    assert np.allclose(image.GetDirection(), ref.GetDirection(), atol=1e-9)
    assert np.allclose(mrmlgeometry.ijk_to_ras_matrix(image), node, atol=1e-9)
    assert {"ijk_to_lps", "grid_of"} <= set(calls)
