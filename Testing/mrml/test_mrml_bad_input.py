"""The issue's bad input, on real MRML nodes: a segmentation deleted while its volume segments, a volume under a
non-linear transform, a segment renamed to another label's name, a segmentation with 100 segments. Each ends in one
line (a HilaError the panel shows) or in the result where it belongs; nothing the user drew is lost. (Accept on a
read-only source folder: test_mrml_logic.py::test_self_test_mrml_steps_one_colour_and_terminology_from_segment_to_reopen
and test_mrml_jobs.py::test_accept_of_a_volume_that_is_no_case_keeps_its_copy_in_the_workspace.)"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from tier import FIXTURES, slicer_core

slicer = slicer_core()
import vtk  # noqa: E402
from realscene import load_volume  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from HILASegmentLib.formats import labelio  # noqa: E402
from HILASegmentLib.formats.segfile import write_segmentation  # noqa: E402
from HILASegmentLib.ground.errors import HilaError  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402
from HILASegmentSlicerLib import cases, marks, segments  # noqa: E402

MRI, MRI_LABEL = FIXTURES / "prostate_mri_oblique_small.nrrd", FIXTURES / "prostate_mri_oblique_small_taps.nii.gz"


def child_result(tmp_path, names=("prostate", "bladder")):
    """What the Segment child writes (``Workspace.prediction_segmentation``): prostate from TAPS's label, bladder a
    block beside it; returns (file, workspace, {name: mask (k, j, i)})."""
    label = labelio.read_label(MRI_LABEL)
    prostate = sitk.GetArrayFromImage(label) > 0
    bladder = np.zeros_like(prostate)
    k, j, i = np.argwhere(prostate).max(0)
    bladder[max(0, k - 4):k, 2:8, 2:8] = True
    arr = np.zeros(prostate.shape, np.uint8)
    arr[prostate], arr[bladder] = 1, 2
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(label)
    ws = Workspace.create(tmp_path / "ws", "MR", list(names))
    out = tmp_path / "result.seg.nrrd"
    write_segmentation(ws.prediction_segmentation(image, {"HILA.model": "test"}), out)
    return out, ws, {"prostate": prostate, "bladder": bladder}


def test_a_segmentation_deleted_while_its_volume_segments_gets_the_result_in_a_new_one(rs, logic, tmp_path):
    """SegmentSection.finish: segmentation_for(volume), then loadResult. The user deleted the volume's segmentation
    mid-job: a new one is made, referenced by the volume, and holds the whole result."""
    out, ws, masks = child_result(tmp_path)
    volume = load_volume(MRI, "mri")
    first = segments.segmentation_for(slicer.mrmlScene, volume)
    slicer.mrmlScene.RemoveNode(first)
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    assert segNode is not first and volume.GetNodeReference(segments.SEGMENTATION_REFERENCE) is segNode
    report = logic.loadResult(str(out), segNode, volume, logic.segmentEditorNode())
    assert report.names == ["prostate", "bladder"]
    for value, name in ((1, "prostate"), (2, "bladder")):
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, f"hila_{value}", volume) > 0, masks[name])
    ws.close()


def _thin_plate_spline():
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    tps = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for p in ((0, 0, 0), (80, 0, 0), (0, 80, 0), (0, 0, 80), (40, 40, 40)):
        source.InsertNextPoint(*p)
        target.InsertNextPoint(p[0] + 3.0, p[1] - 2.0, p[2] + (5.0 if p == (40, 40, 40) else 0.0))
    tps.SetSourceLandmarks(source)
    tps.SetTargetLandmarks(target)
    tps.SetBasisToR()
    node.SetAndObserveTransformToParent(tps)
    return node


def test_a_volume_under_a_non_linear_transform(rs, logic, tmp_path):
    """Segment and Accept work in the volume's own voxels, the segmentation under the same (warping) transform: the
    result lands on its voxels and Accept exports exactly them. Weak marks cannot be mapped back through a warp:
    refused with one line naming the transform."""
    out, ws, masks = child_result(tmp_path)
    volume = load_volume(MRI, "mri")
    warp = _thin_plate_spline()
    volume.SetAndObserveTransformNodeID(warp.GetID())
    assert not warp.IsTransformToWorldLinear()
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    assert segNode.GetTransformNodeID() == warp.GetID()
    logic.loadResult(str(out), segNode, volume, logic.segmentEditorNode())
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume) > 0, masks["prostate"])
    volume.SetAttribute(segments.CASE_ATTRIBUTE, ws.import_volume(MRI).case_id)
    _, label = cases.prepare_accept(ws, slicer.util, volume, segNode, logic.ijkToRas(volume), vtk.mutable)
    arr = sitk.GetArrayFromImage(label.image())
    assert np.array_equal(arr == 1, masks["prostate"]) and np.array_equal(arr == 2, masks["bladder"])
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    roi.SetCenterWorld(0.0, 0.0, 0.0)
    roi.SetSizeWorld(20.0, 20.0, 20.0)
    with pytest.raises(HilaError, match="non-linear transform 'warp'") as info:
        marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)
    assert "\n" not in str(info.value)
    ws.close()


def test_a_segment_renamed_to_another_labels_name_is_asked_about_not_guessed(rs, logic, tmp_path):
    """The user renamed the AI's prostate (hila_1, tagged 1) to "bladder": Accept cannot tell which is meant and says
    so in one line, submitting nothing; the next AI result gives the segment its structure's name back."""
    out, ws, masks = child_result(tmp_path)
    volume = load_volume(MRI, "mri")
    volume.SetAttribute(segments.CASE_ATTRIBUTE, ws.import_volume(MRI).case_id)
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    logic.loadResult(str(out), segNode, volume, logic.segmentEditorNode())
    segNode.GetSegmentation().GetSegment("hila_1").SetName("bladder")
    with pytest.raises(HilaError, match="'bladder' was 'prostate'") as info:
        cases.prepare_accept(ws, slicer.util, volume, segNode, logic.ijkToRas(volume), vtk.mutable)
    assert "\n" not in str(info.value) and not ws.corrections(volume.GetAttribute(segments.CASE_ATTRIBUTE))
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume) > 0, masks["prostate"])
    logic.loadResult(str(out), segNode, volume, logic.segmentEditorNode())
    assert segNode.GetSegmentation().GetSegment("hila_1").GetName() == "prostate"
    _, label = cases.prepare_accept(ws, slicer.util, volume, segNode, logic.ijkToRas(volume), vtk.mutable)
    assert np.array_equal(sitk.GetArrayFromImage(label.image()) == 1, masks["prostate"])
    ws.close()


@pytest.mark.parametrize("mode", ["EditAllowedInsideVisibleSegments", "EditAllowedOutsideAllSegments"])
def test_a_segmentation_with_100_segments(rs, logic, tmp_path, mode):
    """100 user segments (overlapping blocks, every third hidden) beside the AI's: the result is written under the
    Segment Editor's mask exactly as Slicer's GenerateEditMask allows, every user segment keeps its voxels, and Accept
    exports the workspace's labels only."""
    out, ws, masks = child_result(tmp_path)
    volume = load_volume(MRI, "mri")
    shape = slicer.util.arrayFromVolume(volume).shape
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    segmentation = segNode.GetSegmentation()
    rng = np.random.default_rng(0)
    user = {}
    for n in range(100):
        block = np.zeros(shape, np.uint8)
        k, j, i = (rng.integers(0, s - 6) for s in shape)
        block[k:k + 6, j:j + 12, i:i + 12] = 1
        user[f"user{n}"] = block > 0
        segmentation.AddEmptySegment(f"user{n}", f"user {n}")
        slicer.util.updateSegmentBinaryLabelmapFromArray(block, segNode, f"user{n}", volume)
        if n % 3 == 0:
            segNode.GetDisplayNode().SetSegmentVisibility(f"user{n}", False)
    editor = logic.segmentEditorNode()
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString(mode))
    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)
    edit_mask = slicer.vtkOrientedImageData()
    assert segNode.GenerateEditMask(edit_mask, editor.GetMaskMode(), reference, "hila_1", "", None, None)
    allowed = vtk_to_numpy(edit_mask.GetPointData().GetScalars()).reshape(shape) == 0
    report = logic.loadResult(str(out), segNode, volume, editor)
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume) > 0
    assert np.array_equal(written, masks["prostate"] & allowed) and 0 < written.sum() < masks["prostate"].sum()
    assert report.clipped["prostate"] == int((masks["prostate"] & ~allowed).sum())
    for name, mask in user.items():
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, name, volume) > 0, mask), name
    volume.SetAttribute(segments.CASE_ATTRIBUTE, ws.import_volume(MRI).case_id)
    _, label = cases.prepare_accept(ws, slicer.util, volume, segNode, logic.ijkToRas(volume), vtk.mutable)
    assert set(np.unique(sitk.GetArrayFromImage(label.image()))) <= {0, 1, 2}
    ws.close()
