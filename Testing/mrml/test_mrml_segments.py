"""The glue's segment <-> label map paths on real MRML nodes, and hila's .seg.nrrd files against Slicer's own reader
and writer (vtkMRMLSegmentationStorageNode): names, colours, values, layers, tags, terminology, voxels, geometry.

Replaces the stand-in checks of test_slicer_glue.py that could only model these calls (segments written and read
back, reopening a case, the colours and tags a segment gets)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from tier import FIXTURES, labels, shared, slicer_core

slicer = slicer_core()
import vtk  # noqa: E402  (slicer-core's VTK, after the skip)
from realscene import load_volume, read_segmentation, save_segmentation, tag  # noqa: E402

from HILASegmentLib.formats import labelio, segfile, terminology  # noqa: E402
from HILASegmentLib.formats.segfile import Segmentation  # noqa: E402
from HILASegmentLib.ground.colors import label_color  # noqa: E402
from HILASegmentSlicerLib import mrmlgeometry, segments  # noqa: E402

MRI, MRI_LABEL = FIXTURES / "prostate_mri_oblique_small.nrrd", FIXTURES / "prostate_mri_oblique_small_taps.nii.gz"


def ijk_to_ras(volume) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def type_code(segment) -> tuple:
    """The structure Slicer's terminology logic reads from the segment's tag: (scheme, code, meaning, modifier)."""
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry), \
        segment.GetTerminology()
    t, m = entry.GetTypeObject(), entry.GetTypeModifierObject()
    return t.GetCodingSchemeDesignator(), t.GetCodeValue(), t.GetCodeMeaning(), m.GetCodeMeaning() or ""


def test_real_ct_labels_to_segments_and_back_with_colours_and_terminology(rs):
    """Reopening a case on the real CT: its label map becomes this module's segments (the table's colour, the
    structure's terminology) and Accept's label map from them is the same, voxel for voxel."""
    ct = shared("pelvic_ct", "Pelvic-Ref002")
    volume = load_volume(ct / "ct.nii.gz", "ct")
    label = sitk.GetArrayFromImage(labelio.read_label(ct / "labels_manual.nii.gz"))
    assert label.shape == slicer.util.arrayFromVolume(volume).shape
    labs = labels("prostate", "bladder", "rectum", "femoral head left", "femoral head right")
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    names = segments.load_label_array(slicer.util, segNode, volume, label, labs)
    assert names == [lab.name for lab in labs]
    segmentation = segNode.GetSegmentation()
    for lab in labs:
        seg = segmentation.GetSegment(f"hila_{lab.value}")
        assert np.allclose(seg.GetColor(), label_color(lab.name), atol=1e-6)
        assert type_code(seg)[:2] == terminology.resolve(lab.name).type[:2] != ("SCT", "85756007")
        assert tag(seg, "hila_label") == str(lab.value)
    assert type_code(segmentation.GetSegment("hila_4"))[3] == "Left"
    back = segments.label_array_from_segmentation(slicer.util, segNode, volume, labs, vtk.mutable)
    assert np.array_equal(back, label)


def test_overlapping_ai_segments_get_layers_and_cross_slicers_writer_both_ways(rs, tmp_path):
    """Two overlapping AI segments on the oblique MRI: each its own voxels in a layer of its own in real MRML,
    written by Slicer's storage node, read by hila with the same layers, voxels and the MRI's exact grid."""
    volume = load_volume(MRI, "mri")
    prostate = sitk.GetArrayFromImage(labelio.read_label(MRI_LABEL)) > 0
    lesion = np.zeros_like(prostate)
    k, j, i = np.argwhere(prostate).mean(0).astype(int)
    lesion[k - 2:k + 3, j - 4:j + 4, i - 4:i + 12] = True  # half inside the prostate, half out
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    report = segments.write_result(slicer.util, [(1, "prostate", (0.1, 0.2, 0.3), prostate, {}),
                                                 (2, "lesion", (0.1, 0.2, 0.3), lesion, {})], segNode, volume)
    assert report.predicted == {"prostate": int(prostate.sum()), "lesion": int(lesion.sum())}
    segmentation = segNode.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 2
    for segId, mask in (("hila_1", prostate), ("hila_2", lesion)):
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume) > 0, mask)
    path = save_segmentation(segNode, tmp_path / "slicer_wrote.seg.nrrd")
    seg = segfile.read_segmentation(path)
    assert len(seg.layers) == 2 and seg.names == ["prostate", "lesion"]
    mri = sitk.ReadImage(str(MRI))
    assert mrmlgeometry.same_geometry(mrmlgeometry.ijk_to_ras_matrix(seg.grid), mrmlgeometry.ijk_to_ras_matrix(mri))
    for name, mask in (("prostate", prostate), ("lesion", lesion)):
        s = seg.segment(name)
        assert np.array_equal(seg.mask_array(name), mask)
        assert np.allclose(s.color, label_color(name), atol=1e-4)  # the table's, not the (0.1, 0.2, 0.3) given
        assert s.tags["TerminologyEntry"] == terminology.entry_for(name)
        assert s.tags[segments.CREATOR_TAG] == "HILASegment"


def _hila_file(tmp_path, image, label, names):
    lab = labelio.read_label(label, sitk.ReadImage(str(image)))
    seg = Segmentation.from_label_image(lab, [(i + 1, n, None) for i, n in enumerate(names)], tags={"HILA.Source": "test"})
    return segfile.write_segmentation(seg, tmp_path / "hila.seg.nrrd"), sitk.GetArrayFromImage(lab)


def test_hila_seg_nrrd_read_by_slicers_storage_node_oblique_mri_and_real_ct(rs, tmp_path):
    """hila's .seg.nrrd as Slicer reads it: geometry equal to the volume node's, names, colours, values, tags,
    the structures' terminology (not "Tissue") and every voxel — on the oblique MRI and the real CT."""
    ct = shared("pelvic_ct", "Pelvic-Ref002")
    for image, label, names in ((MRI, MRI_LABEL, ["prostate"]),
                                (ct / "ct.nii.gz", ct / "labels_manual.nii.gz",
                                 ["prostate", "bladder", "rectum", "femoral head left", "femoral head right"])):
        path, array = _hila_file(tmp_path, image, label, names)
        volume = load_volume(image, "vol")
        segNode = read_segmentation(path)
        geometry = segNode.GetSegmentation().GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
        assert np.allclose(np.array([float(x) for x in geometry.split(";")[:16]]).reshape(4, 4), ijk_to_ras(volume),
                           atol=1e-5), image
        segmentation = segNode.GetSegmentation()
        assert [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())] == names
        for value, name in enumerate(names, start=1):
            segId = segmentation.GetSegmentIdBySegmentName(name)
            s = segmentation.GetSegment(segId)
            assert s.GetLabelValue() == value
            assert np.allclose(s.GetColor(), label_color(name), atol=1e-4)
            assert tag(s, "HILA.Source") == "test"
            assert type_code(s)[:3] == terminology.resolve(name).type
            assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume) > 0, array == value)


def test_slicer_written_files_read_by_hila_match_what_slicer_reads(rs, tmp_path):
    """Slicer's own files (one layer, and overlapping in two layers), as read and as re-written by slicer-core's
    writer: hila reads the same names, colours, label values, layers, tags and voxels as Slicer, on the volume's grid."""
    data = shared("slicer_seg")
    volume = load_volume(data / "CTChest4.nrrd", "chest")
    for name in ("Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"):
        segNode = read_segmentation(data / name, name)
        rewritten = save_segmentation(segNode, tmp_path / ("rewritten_" + name))
        segmentation = segNode.GetSegmentation()
        for path in (data / name, rewritten):
            seg = segfile.read_segmentation(path)
            assert len(seg.layers) == segmentation.GetNumberOfLayers(), path
            assert seg.names == [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
            for s in seg.segments:
                real = segmentation.GetSegment(s.id)
                assert np.allclose(s.color, real.GetColor(), atol=1e-4)
                assert s.label_value == real.GetLabelValue()
                assert s.tags.get("TerminologyEntry") == real.GetTerminology()
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, s.id, volume) > 0
                on_volume = sitk.GetArrayFromImage(segfile.read_segmentation(path).to_label_image(
                    reference=mrmlgeometry.array_to_image(slicer.util.arrayFromVolume(volume), ijk_to_ras(volume)),
                    values={s.id: 1}))
                assert np.array_equal(on_volume > 0, mask), (path, s.name)


def test_a_segment_renamed_by_the_user_keeps_its_terminology_and_accept_follows_the_tag(rs):
    """A user renames the AI's prostate segment: its TerminologyEntry and hila_label still say prostate, so
    Accept still finds it (THE matching rule reads real tags through vtk.mutable)."""
    volume = load_volume(MRI, "mri")
    mask = sitk.GetArrayFromImage(labelio.read_label(MRI_LABEL)) > 0
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    items = segments.workspace_items([(1, "prostate", (1, 0, 0), mask, {})], labels("prostate"))
    segments.write_result(slicer.util, items, segNode, volume)
    segNode.GetSegmentation().GetSegment("hila_1").SetName("my gland")
    back = segments.label_array_from_segmentation(slicer.util, segNode, volume, labels("prostate"), vtk.mutable)
    assert np.array_equal(back > 0, mask)
    assert type_code(segNode.GetSegmentation().GetSegment("hila_1"))[1] == "41216001"


def test_a_segmentation_deleted_while_a_job_runs_gets_a_new_one_and_the_result_is_kept(rs):
    """The user deletes the volume's segmentation node mid-job: the finished result goes to a fresh segmentation of
    the same volume (the node reference is gone in real MRML), nothing is lost and no other node is touched."""
    volume = load_volume(MRI, "mri")
    first = segments.segmentation_for(slicer.mrmlScene, volume)
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "the user's own")
    slicer.mrmlScene.RemoveNode(first)
    assert volume.GetNodeReference(segments.SEGMENTATION_REFERENCE) is None
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    assert segNode is not None and segNode.GetID() != other.GetID()
    mask = sitk.GetArrayFromImage(labelio.read_label(MRI_LABEL)) > 0
    segments.write_result(slicer.util, [(1, "prostate", (1, 0, 0), mask, {})], segNode, volume, scene=slicer.mrmlScene)
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "hila_1", volume) > 0, mask)
    assert other.GetSegmentation().GetNumberOfSegments() == 0
