"""The Segment Editor's masking as Slicer computes it (vtkMRMLSegmentationNode::GenerateEditMask on real nodes) against
the glue's rule, in every mask mode; real ROI and line markups (placed, unplaced, under a rotating parent transform)
to the marks of a weak label.

Replaces test_slicer_glue.py::test_masking_clips_are_counted_and_follow_generate_edit_mask (a stand-in that applied
our own reading of the rule) and test_slicer_weak.py::test_a_parent_transform_is_undone_... (stand-in bounds)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from tier import FIXTURES, slicer_core

slicer = slicer_core()
import vtk  # noqa: E402
from realscene import load_volume, real_allowed  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from HILASegmentLib.formats import labelio  # noqa: E402
from HILASegmentLib.ground.errors import HilaError  # noqa: E402
from HILASegmentSlicerLib import (  # noqa: E402
    marks,
    mrmlgeometry,  # noqa: E402
    segments,
)

MRI, MRI_LABEL = FIXTURES / "prostate_mri_oblique_small.nrrd", FIXTURES / "prostate_mri_oblique_small_taps.nii.gz"
MODES = ["EditAllowedEverywhere", "EditAllowedInsideAllSegments", "EditAllowedInsideVisibleSegments",
         "EditAllowedOutsideAllSegments", "EditAllowedOutsideVisibleSegments", "EditAllowedInsideSingleSegment"]


def _scene_with_segments():
    """The oblique MRI with a user's segments: 'gland' (visible), 'hidden' (hidden), and hila_1 (an earlier AI result)."""
    volume = load_volume(MRI, "mri")
    shape = slicer.util.arrayFromVolume(volume).shape
    prostate = sitk.GetArrayFromImage(labelio.read_label(MRI_LABEL)) > 0
    k, j, i = np.argwhere(prostate).mean(0).astype(int)
    user = {"gland": np.zeros(shape, bool), "hidden": np.zeros(shape, bool)}
    user["gland"][:, j - 6:j + 2, :] = True
    user["hidden"][k - 1:k + 2, :, i - 3:i + 5] = True
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    segmentation = segNode.GetSegmentation()
    for name, mask in user.items():
        segmentation.AddEmptySegment(name, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segNode, name, volume)
    segNode.GetDisplayNode().SetSegmentVisibility("hidden", False)
    earlier = np.roll(prostate, 3, axis=2)
    segments.write_result(slicer.util, [(1, "prostate", (1, 0, 0), earlier, {})], segNode, volume)
    return volume, segNode, prostate, earlier


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("intensity", [False, True])
@pytest.mark.parametrize("through_region", ["full-size", "region-node"])
def test_the_glues_masking_is_slicers_generate_edit_mask_in_every_mode(rs, mode, intensity, through_region):
    """Full-size: every segment exported through the volume; region-node (the panel's path): the result's region only,
    the user's (overlapping) segments read from their layers' voxels."""

    volume, segNode, prostate, earlier = _scene_with_segments()
    array = slicer.util.arrayFromVolume(volume)
    lohi = [float(np.percentile(array, 30)), float(np.percentile(array, 90))] if intensity else None
    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString(mode))
    editor.SetMaskSegmentID("gland")
    editor.SetSourceVolumeIntensityMask(intensity)
    if lohi:
        editor.SetSourceVolumeIntensityMaskRange(*lohi)
    allowed = real_allowed(segNode, volume, mode, "hila_1", "gland", lohi)
    assert 0 < allowed.sum() < allowed.size or mode == "EditAllowedEverywhere"
    report = segments.write_result(slicer.util, [(1, "prostate", (1, 0, 0), prostate, {})], segNode, volume, editor, mode,
                                   scene=slicer.mrmlScene if through_region != "full-size" else None)
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume) > 0
    expected = np.where(allowed, prostate, earlier)
    assert np.array_equal(written, expected)
    clipped = int(np.count_nonzero(expected != prostate))
    assert report.clipped["prostate"] == clipped
    message = report.message()  # one line: what the masking kept out, and whether nothing of prostate was written
    assert (f"masking ({mode}) kept {clipped} voxels" in message) if clipped else "masking" not in message
    assert ("nothing written for prostate" in message) == (clipped >= int(prostate.sum()))
    for name in ("gland", "hidden"):  # the user's segments are never touched
        assert slicer.util.arrayFromSegmentBinaryLabelmap(segNode, name, volume).any()
    assert slicer.mrmlScene.GetFirstNodeByName("__hila_region__") is None  # the region node is gone again


def test_a_mask_that_keeps_the_whole_result_out_says_nothing_was_written(rs):
    """Masking inside a segment that the AI result does not touch: Slicer allows none of it (no earlier result this
    time), and the status line says nothing of the prostate was written."""
    volume, segNode, prostate, _ = _scene_with_segments()
    segNode.GetSegmentation().RemoveSegment("hila_1")
    far = np.zeros_like(prostate)
    far[0, 0, :2] = True
    assert not (far & prostate).any()
    segNode.GetSegmentation().AddEmptySegment("far", "far")
    slicer.util.updateSegmentBinaryLabelmapFromArray(far.astype(np.uint8), segNode, "far", volume)
    mode = "EditAllowedInsideSingleSegment"
    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString(mode))
    editor.SetMaskSegmentID("far")
    assert not (real_allowed(segNode, volume, mode, "gland", "far") & prostate).any()
    report = segments.write_result(slicer.util, [(1, "prostate", (1, 0, 0), prostate, {})], segNode, volume, editor, mode,
                                   scene=slicer.mrmlScene)
    written = segNode.GetSegmentation().GetSegment("hila_1")  # made, but empty: its layer holds none of its value
    layer = written.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    scalars = layer.GetPointData().GetScalars()
    assert scalars is None or not (vtk_to_numpy(scalars) == written.GetLabelValue()).any()
    assert report.clipped["prostate"] == int(prostate.sum())
    assert f"masking ({mode}) kept" in report.message() and "nothing written for prostate" in report.message()


def _transform(rotation_deg=90.0, shift=(12.0, -7.0, 30.0)):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    t = vtk.vtkTransform()
    t.Translate(*shift)
    t.RotateZ(rotation_deg)
    node.SetMatrixTransformToParent(t.GetMatrix())
    return node


def test_roi_placed_unplaced_and_under_a_rotating_parent_transform(rs):
    volume = load_volume(MRI, "mri")
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    with pytest.raises(HilaError, match="ROI 'R' is not placed"):  # real Slicer: a never-placed ROI has all-zero bounds
        marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)
    roi.SetCenterWorld(10.0, 20.0, -30.0)
    with pytest.raises(HilaError, match="not placed"):  # a centre but no size yet
        marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)
    roi.SetSizeWorld(8.0, 6.0, 4.0)
    box = marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)["items"][0]["box"]
    assert np.allclose(box, [-14.0, -23.0, -32.0, -6.0, -17.0, -28.0])  # RAS centre (10, 20, -30) -> LPS
    # the volume and the ROI under a transform that turns 90 degrees: the box is in the volume's own (local) space
    parent = _transform()
    volume.SetAndObserveTransformNodeID(parent.GetID())
    roi.SetAndObserveTransformNodeID(parent.GetID())
    local = marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)["items"][0]["box"]
    assert np.allclose(local, box, atol=1e-6)


def test_roi_under_a_33_degree_parent_transform_is_the_drawn_size_and_a_turned_or_inverted_roi_is_refused(rs):
    """An 8 x 6 x 4 mm ROI drawn on a volume, both under a parent transform turning 33 degrees: the weak box is the
    drawn box in the volume's own space, exactly (the world bounds mapped back gave 13.5 x 13.3 x 4 mm)."""
    volume = load_volume(MRI, "mri")
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    parent = _transform(rotation_deg=33.0)
    for node in (volume, roi):
        node.SetAndObserveTransformNodeID(parent.GetID())
    roi.SetCenter(10.0, 20.0, -30.0)  # the ROI's own (node) coordinates = the volume's local RAS here
    roi.SetSize(8.0, 6.0, 4.0)
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    assert np.ptp(np.reshape(bounds, (3, 2)), axis=1)[0] > 9.9  # Slicer's world bounds really are bigger (8 mm drawn)
    box = marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)["items"][0]["box"]
    assert np.allclose(box, [-14.0, -23.0, -32.0, -6.0, -17.0, -28.0], atol=1e-9)
    # the ROI alone under a 90-degree turn: still in line with the volume's axes, its sides swap x and y
    volume.SetAndObserveTransformNodeID(None)
    roi.SetAndObserveTransformNodeID(_transform(rotation_deg=90.0, shift=(0.0, 0.0, 0.0)).GetID())
    box = marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)["items"][0]["box"]
    assert np.allclose(np.subtract(box[3:], box[:3]), [6.0, 8.0, 4.0], atol=1e-9)
    assert np.allclose(np.add(box[3:], box[:3]) / 2, [20.0, -10.0, -30.0], atol=1e-9)  # RAS (-20, 10, -30)
    # the ROI alone under the 33-degree turn: turned against the volume, refused in one line
    roi.SetAndObserveTransformNodeID(parent.GetID())
    with pytest.raises(HilaError, match=r"ROI 'R' is turned against the volume's axes: .* 4\.4 mm bigger") as info:
        marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)
    assert "\n" not in str(info.value)
    roi.SetAndObserveTransformNodeID(None)
    roi.SetSize(-8.0, 6.0, 4.0)  # an inverted ROI
    with pytest.raises(HilaError, match=r"ROI 'R' has size \[-8.0, 6.0, 4.0\] mm \(a side <= 0") as info:
        marks.marks_from_markups(slicer.util, "prostate", roi=roi, volume=volume)
    assert "\n" not in str(info.value)


def test_lines_placed_and_unplaced_under_a_parent_transform(rs):
    volume = load_volume(MRI, "mri")
    long_line, short_line = (slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsLineNode") for _ in range(2))
    with pytest.raises(HilaError, match="long diameter line has 0 control point"):
        marks.marks_from_markups(slicer.util, "prostate", long_line=long_line, short_line=short_line, volume=volume)
    ends = {long_line: [[-5.0, 2.0, 10.0], [15.0, 2.0, 10.0]], short_line: [[5.0, -6.0, 10.0], [5.0, 8.0, 10.0]]}
    for node, points in ends.items():
        slicer.util.updateMarkupsControlPointsFromArray(node, np.array(points))
    parent = _transform(rotation_deg=33.0)
    for node in (volume, long_line, short_line):
        node.SetAndObserveTransformNodeID(parent.GetID())
    world = slicer.util.arrayFromMarkupsControlPoints(long_line, world=True)
    assert not np.allclose(world, ends[long_line])  # the transform really moves them
    got = marks.marks_from_markups(slicer.util, "prostate", long_line=long_line, short_line=short_line, volume=volume)
    lines = got["items"][0]["lines"]
    for line, node in zip(lines, (long_line, short_line)):
        assert np.allclose(np.reshape(line, (2, 3)), mrmlgeometry.ras_to_lps(ends[node]), atol=1e-6)
