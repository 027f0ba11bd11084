"""*Fix with box*: the user places an ROI over the part of a segment that is wrong; the box assistant (LiteMedSAM,
``HILASegmentLib.inference.boxassist``) redraws that segment inside the ROI, slice by slice.

Three steps, so the GUI never waits for the network: :func:`prepare` on the GUI thread checks everything (the ROI's
box read as drawn, ``marks.roi_box``; the box against the volume's grid, ``boxassist.box_block``; the segment; a
scalar 3-D volume; the assistant's files) and copies the volume's voxels; :func:`run` segments the box on a worker
thread (progress per slice; Cancel stops it between slices); :func:`apply`, back on the GUI thread, writes the mask
into that one segment inside the box under the Segment Editor's masking (``segments.redraw_in_block``). Every
refusal is one line (HilaError) and changes nothing. The panel saves one undo point before :func:`apply`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from HILASegmentLib.ground.errors import HilaError

from . import marks, mrmlgeometry, segments

__all__ = ["FixRequest", "FixReport", "prepare", "run", "apply"]


@dataclass
class FixRequest:
    """What the GUI thread hands the worker: plain data copied out of the scene, and which nodes it is for."""

    volume_id: str
    segmentation_id: str
    segment_id: str
    segment_name: str
    roi_name: str
    box: Tuple[float, ...]  # two opposite LPS corners (mm), the volume's own space
    block: Tuple[slice, slice, slice]  # (k, j, i) voxels of the volume whose centres lie in the box
    array: np.ndarray  # the volume's voxels (k, j, i), a copy
    ijk_to_ras: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.segment_name!r} in {self.roi_name!r}"


@dataclass
class FixReport:
    """What a fix did, for the status line."""

    name: str
    slices: int
    before: int
    after: int
    clipped: int
    mask_mode: str = ""

    def message(self) -> str:
        text = (f"Fixed {self.name!r} with the box over {self.slices} slice(s): {self.before} -> {self.after} voxels "
                "inside it (outside the box and other segments unchanged)")
        if self.clipped:
            text += f"; the Segment Editor's masking ({self.mask_mode or 'intensity range'}) kept {self.clipped} voxels as they were"
        return text


def check_installed() -> None:
    """The assistant's files are there (HilaError saying how to install it otherwise); their checksums are verified
    when the worker loads them (``boxassist.verify``), so the GUI thread never hashes 44 MB."""
    from HILASegmentLib.inference import boxassist  # SimpleITK: loaded when a fix is asked for

    folder = boxassist.assist_dir()
    if not (folder / boxassist.MANIFEST_FILE).is_file():
        raise HilaError(f"{folder}: the box assistant is not installed: {boxassist.INSTALL_HINT}")


def prepare(util: Any, volume: Any, segNode: Any, segmentId: Optional[str], roi: Any,
            ijk_to_ras: np.ndarray) -> FixRequest:
    """The GUI thread's part: every check, then a copy of the volume's voxels. ``util`` is slicer.util."""
    from HILASegmentLib.inference import boxassist  # SimpleITK: loaded when a fix is asked for

    if volume is None:
        raise HilaError("pick the volume first")
    if segNode is None:
        raise HilaError(f"the volume {volume.GetName()!r} has no segmentation in the Segment Editor: pick or add one")
    if not segmentId:
        raise HilaError("select the segment to fix in the Segment Editor's list")
    segmentation = segNode.GetSegmentation()
    segment = segmentation.GetSegment(segmentId)
    if segment is None:
        names = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
                 for i in range(segmentation.GetNumberOfSegments())]
        raise HilaError(f"the segmentation {segNode.GetName()!r} has no segment {segmentId!r} (segments: "
                        f"{', '.join(repr(n) for n in names) or 'none'}); nothing was changed")
    if roi is None:
        raise HilaError("pick the ROI (a box over the wrong part of the segment)")
    if segNode.GetTransformNodeID() != volume.GetTransformNodeID():
        raise HilaError(f"the segmentation {segNode.GetName()!r} and the volume {volume.GetName()!r} are under "
                        "different transforms; put them under the same one")
    view = util.arrayFromVolume(volume)
    if view is None or np.ndim(view) != 3:
        dims = 0 if view is None else np.ndim(view)
        raise HilaError(f"the volume {volume.GetName()!r} is a {dims}-D array (a vector or multi-component image); "
                        "the assistant segments scalar 3-D volumes")
    if view.shape[0] < 2:
        raise HilaError(f"the volume {volume.GetName()!r} has {view.shape[0]} slice(s) (a 2-D image); Fix with box "
                        "redraws a slice range of a 3-D volume")
    segments.own_voxels(util, segNode, segmentId, volume)  # a segment the write would resample or cut: refused now
    box = marks.roi_box(util, roi, volume)
    lo, hi = boxassist.box_block(_Grid(view.shape, ijk_to_ras), box, f"the ROI {roi.GetName()!r}")
    check_installed()
    return FixRequest(volume.GetID(), segNode.GetID(), segmentId, segment.GetName(), roi.GetName(), tuple(box),
                      boxassist.block_slices(lo, hi), np.array(view), np.array(ijk_to_ras, float))


class _Grid:
    """The volume's grid as ``boxassist.box_block`` reads it (its size, LPS points <-> continuous indices), without
    allocating its voxels as an image would: the GUI thread only checks the box here."""

    def __init__(self, shape: Tuple[int, ...], ijk_to_ras: np.ndarray) -> None:
        self.size = (int(shape[2]), int(shape[1]), int(shape[0]))
        self.to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ijk_to_ras, float)  # ijk -> LPS
        self.to_index = np.linalg.inv(self.to_lps)

    def GetSize(self) -> Tuple[int, int, int]:
        return self.size

    def TransformPhysicalPointToContinuousIndex(self, point: Tuple[float, float, float]) -> Tuple[float, float, float]:
        return tuple(float(v) for v in (self.to_index @ np.r_[np.asarray(point, float), 1.0])[:3])

    def TransformContinuousIndexToPhysicalPoint(self, index: Tuple[float, float, float]) -> Tuple[float, float, float]:
        return tuple(float(v) for v in (self.to_lps @ np.r_[np.asarray(index, float), 1.0])[:3])


def run(request: FixRequest, cancelled: threading.Event, report: Callable[[float, str], None]) -> Dict[str, Any]:
    """The worker's part: the assistant's mask of the box (``Assistant.segment``), cut to the block; stops between
    slices when cancelled. Its files are verified (size, SHA-256, the pinned checkpoint) when it loads."""
    from HILASegmentLib.inference import boxassist  # SimpleITK, onnxruntime: loaded in the worker

    def progress(fraction: float, message: str) -> None:
        if cancelled.is_set():
            raise HilaError("cancelled")
        report(fraction, message)

    image = mrmlgeometry.array_to_image(request.array, request.ijk_to_ras)
    assistant = boxassist.shared_assistant()
    mask = assistant.segment(image, request.box, prompt=boxassist.FIX_PROMPT, progress=progress,
                             where=f"the volume of {request.label}")
    return {"mask": np.ascontiguousarray(mask[request.block]), "assistant": assistant.name}


def apply(util: Any, scene: Any, request: FixRequest, mask: np.ndarray, editorNode: Any = None,
          mask_mode: Optional[str] = None) -> FixReport:
    """The GUI thread's last part: the mask into the request's own segment, inside its box, under the editor's
    masking (``editorNode``: the Segment Editor's parameter node, None: none; ``mask_mode``: its mask mode's name).
    The volume, the segmentation and the segment must still be there (HilaError otherwise, nothing changed)."""
    volume = scene.GetNodeByID(request.volume_id)
    segNode = scene.GetNodeByID(request.segmentation_id)
    if volume is None or segNode is None:
        raise HilaError(f"the volume or the segmentation of {request.label} was closed; nothing was changed")
    if segNode.GetSegmentation().GetSegment(request.segment_id) is None:
        raise HilaError(f"the segment {request.segment_name!r} was deleted while the assistant ran; nothing was changed")
    if tuple(util.arrayFromVolume(volume).shape) != request.array.shape:
        raise HilaError(f"the volume {volume.GetName()!r} was resampled while the assistant ran; nothing was changed")
    before, after, clipped = segments.redraw_in_block(util, scene, segNode, request.segment_id, volume, request.block,
                                                      mask, editorNode, mask_mode)
    return FixReport(request.segment_name, request.block[0].stop - request.block[0].start, before, after, clipped,
                     mask_mode or "")
