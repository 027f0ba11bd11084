"""A real Slicer scene without the application: Kitware's slicer-core (Slicer's MRML classes, logics, readers
and writers, and Slicer's own ``slicer/util.py``), set up the way Slicer's application does it, so the glue runs
on real nodes under pytest.

What it sets up: a ``vtkMRMLScene`` with a ``vtkSlicerApplicationLogic``; the Colors logic with the default
colour nodes; the Volumes, Segmentations, Markups, Transforms and SubjectHierarchy logics, each
registered with the scene and the application logic; ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``
(what ``slicer.util``'s array helpers call). What it cannot: ``slicer.app`` (never set here: code that asks
for it must see "not inside Slicer"), Qt (``qt``, ``ctk``, the widgets, the GUI thread), and the ``slicer.util``
calls that need them (``loadVolume``, ``saveNode``, ``tempDirectory``, ``startupEnvironment``, ``WaitCursor``,
the message boxes). :func:`load_volume` and :func:`save_segmentation` do what ``loadVolume``/``saveNode`` do
with the same logic and storage node classes.

:func:`import_module_file` imports ``HILASegment.py`` itself with stand-ins for exactly what slicer-core lacks
(``qt``, ``slicer.ScriptedLoadableModule``), so ``HILASegmentLogic`` runs on real nodes too.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path
from typing import Any, Dict

import slicer
import vtk

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "HILASegment" / "HILASegment.py"

#: Module name -> logic class, in the order Slicer's application registers them (subject hierarchy first).
#: The Terminologies logic is not registered: slicer-core ships none of its JSON lists (it would log their absence);
#: its static ``DeserializeTerminologyEntry``, which reads a segment's tag, needs none.
LOGICS = (("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"), ("Volumes", "vtkSlicerVolumesLogic"), ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
          ("Transforms", "vtkSlicerTransformLogic"), ("Markups", "vtkSlicerMarkupsLogic"))


class RealScene:
    """A fresh real scene with Slicer's logics; ``slicer.mrmlScene`` and ``slicer.modules`` point at it."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        colors = self.app.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.app.SetModuleLogic("Colors", colors)
        self.logics: Dict[str, Any] = {"Colors": colors}
        for name, cls in LOGICS:
            logic = getattr(slicer, cls)()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**{
            name.lower(): types.SimpleNamespace(logic=(lambda lg=logic: lg)) for name, logic in self.logics.items()})

    def logic(self, name: str) -> Any:
        return self.logics[name]

    def close(self) -> None:
        self.scene.Clear(1)


def load_volume(path: str, name: str = "volume", labelmap: bool = False) -> Any:
    """A volume node read by Slicer's own reader (what ``slicer.util.loadVolume`` does through the Volumes logic)."""
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 1 if labelmap else 0, None)
    if node is None:
        raise OSError(f"Slicer's volume reader cannot read {path}")
    return node


def read_segmentation(path: str, name: str = "seg") -> Any:
    """A segmentation node read by Slicer's own ``vtkMRMLSegmentationStorageNode``."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"Slicer's segmentation storage node cannot read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def save_segmentation(node: Any, path: str, compress: bool = True) -> str:
    """Write a segmentation node with Slicer's own storage node (what ``slicer.util.saveNode`` ends in; its
    ``useCompression`` property sets the storage node's compression)."""
    storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
    if storage.GetScene() is None:
        slicer.mrmlScene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetUseCompression(1 if compress else 0)
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise OSError(f"Slicer's segmentation storage node cannot write {path}")
    return str(path)


def real_allowed(segNode: Any, volume: Any, mode: str, edited: str, mask_segment: str = "",
                 intensity_range: Any = None) -> Any:
    """Where Slicer's own ``vtkMRMLSegmentationNode::GenerateEditMask`` lets an edit of ``edited`` write (a bool array
    (k, j, i) of the volume; Slicer's mask is non-zero where it may not)."""
    from vtk.util.numpy_support import vtk_to_numpy

    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)
    mask = slicer.vtkOrientedImageData()
    source = reference if intensity_range is not None else None
    assert segNode.GenerateEditMask(mask, slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString(mode), reference,
                                    edited, mask_segment, source, intensity_range)
    shape = slicer.util.arrayFromVolume(volume).shape
    return vtk_to_numpy(mask.GetPointData().GetScalars()).reshape(shape) == 0


def tag(segment: Any, key: str) -> str:
    """A segment tag's value ('' when absent), read as the glue reads it (``vtk.mutable``)."""
    value = vtk.mutable("")
    return str(value) if segment.GetTag(key, value) else ""


def _stand_in_qt() -> types.ModuleType:
    qt = types.ModuleType("qt")

    class QSettings:  # only constructed by the widget; the Logic never touches it
        def value(self, *a):
            return None

        def setValue(self, *a):
            pass

    qt.QSettings = QSettings
    return qt


def _stand_in_scripted() -> types.ModuleType:
    mod = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:  # the real base classes need Qt; the Logic's is a plain object
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    class ScriptedLoadableModuleTest(unittest.TestCase):  # the real one: a TestCase whose delayDisplay shows a message
        def delayDisplay(self, message, requestedDelay=None, msec=None):
            self.__dict__.setdefault("displayed", []).append(message)

    mod.ScriptedLoadableModule = ScriptedLoadableModule
    mod.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    mod.ScriptedLoadableModuleWidget = ScriptedLoadableModule
    mod.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return mod


def import_module_file() -> types.ModuleType:
    """``HILASegment/HILASegment.py`` imported on slicer-core: ``qt`` and ``slicer.ScriptedLoadableModule`` are
    stand-ins (slicer-core has no Qt); ``slicer``, ``slicer.util``, ``vtk`` and the MRML classes are real."""
    if "HILASegmentModule" in sys.modules:
        return sys.modules["HILASegmentModule"]
    sys.modules.setdefault("qt", _stand_in_qt())
    scripted = _stand_in_scripted()
    sys.modules["slicer.ScriptedLoadableModule"] = scripted
    slicer.ScriptedLoadableModule = scripted
    spec = importlib.util.spec_from_file_location("HILASegmentModule", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["HILASegmentModule"] = module
    spec.loader.exec_module(module)
    return module
