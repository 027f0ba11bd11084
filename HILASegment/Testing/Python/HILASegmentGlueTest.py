"""In-Slicer tests of HILASegmentSlicerLib on real MRML nodes (the pytest suite runs the same rules on stand-ins).

Not a second copy of the module's self-test (HILASegmentTest in HILASegment.py runs once, from
the module's own ctest entry): these check label matching on real segments, the missing-label
refusal, the parent transform and the masking report.

Run by hand: Slicer --no-main-window --python-code "import slicer.testing; \
slicer.testing.runUnitTest(['<path>/HILASegment/Testing/Python'], 'HILASegmentGlueTest')"
"""
import unittest

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from HILASegmentLib.ground.errors import HilaError
from HILASegmentSlicerLib import segments


class _Label:
    def __init__(self, value, name):
        self.value, self.name, self.color = value, name, (0.9, 0.6, 0.3)


class HILASegmentGlueTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_label_matching_refusal_transform_and_masking()

    def test_label_matching_refusal_transform_and_masking(self):
        array = np.zeros((8, 16, 16), np.int16)
        array[2:6, 4:12, 4:12] = 100
        volume = slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([-1.0, -1.0, 2.0, 1.0]), name="GlueTest")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        volume.SetAndObserveTransformNodeID(transform.GetID())
        segNode = segments.segmentation_for(slicer.mrmlScene, volume)
        self.assertEqual(segNode.GetTransformNodeID(), transform.GetID())
        self.assertIs(segments.segmentation_for(slicer.mrmlScene, volume), segNode)
        labels = [_Label(1, "prostate"), _Label(2, "bladder")]
        mask = (array > 0).astype(np.uint8)
        segmentation = segNode.GetSegmentation()
        segmentation.AddEmptySegment("a", "Prostate")
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segNode, "a", volume)
        with self.assertRaisesRegex(HilaError, "bladder"):  # no segment stands for bladder: refused, named
            segments.label_array_from_segmentation(slicer.util, segNode, volume, labels, vtk.mutable)
        segmentation.AddEmptySegment("b", "Segment_2")
        segmentation.GetSegment("b").SetTag("hila_2", "1")
        label = segments.label_array_from_segmentation(slicer.util, segNode, volume, labels, vtk.mutable)
        self.assertEqual(int((label == 1).sum()), int(mask.sum()))
        self.assertEqual(int((label == 2).sum()), 0)

        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString("EditAllowedOutsideAllSegments"))
        mode = slicer.vtkMRMLSegmentationNode.ConvertMaskModeToString(editorNode.GetMaskMode())
        report = segments.write_result(slicer.util, [(3, "rectum", (0.7, 0.4, 0.3), mask, {})], segNode, volume, editorNode, mode)
        self.assertEqual(report.clipped["rectum"], int(mask.sum()))  # all inside 'Prostate': kept out, and said
        self.assertIn("nothing written for rectum", report.message())


if __name__ == "__main__":
    unittest.main()
