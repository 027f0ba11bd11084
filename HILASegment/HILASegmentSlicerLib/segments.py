"""Segments in, label maps out: the MRML side of Segment, Accept and reopening a case.

Every function takes the Slicer objects it touches (``util`` is ``slicer.util``, ``scene`` is
``slicer.mrmlScene``, ``mutable`` is ``vtk.mutable``) so that pytest drives them with stand-ins.
Only calls recorded in ``slicer_api.json`` for Slicer main and 5.8.1 are used here.

Rules kept here:
- a volume has one segmentation of this module's own, found through a node reference and put
  under the volume's parent transform; AI results go to *that* node only (never "whatever the
  editor shows"), into segments with IDs ``hila_<value>``, each tagged ``hila_label=<value>``;
- the Segment Editor's masking is applied the way ``vtkMRMLSegmentationNode::GenerateEditMask``
  does it (inside modes use all/visible segments including the edited one; outside modes leave
  the edited segment out), and what it kept out is counted and reported, never silent;
- Accept matches segments to labels with THE rule (``HILASegmentLib.ground.labelmatch``) and refuses,
  naming it, a label no segment stands for (it would otherwise become background);
- the engine's "Review: likely error" segment (tag ``hila_review``) is never anatomy: it becomes the
  segment ``hila_review`` in a layer of its own, drawn as an outline only (no fill, not in 3-D), which the
  user hides like any segment; AI masking ignores it and Accept leaves it out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from HILASegmentLib.formats import terminology
from HILASegmentLib.ground import labelmatch
from HILASegmentLib.ground.colors import REVIEW_COLOR, label_color
from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.ground.labelmatch import REVIEW_NAME, REVIEW_TAG

from . import mrmlgeometry

__all__ = ["CASE_ATTRIBUTE", "WORKSPACE_ATTRIBUTE", "SEGMENTATION_REFERENCE", "OWN_PREFIX", "CREATOR_TAG", "WriteReport",
           "segmentation_for", "segment_list", "label_array_from_segmentation", "write_result", "load_label_array",
           "workspace_items", "items_from_segmentation", "REVIEW_ID", "split_review", "write_review", "write_engine_result"]

CASE_ATTRIBUTE = "HILASegment.CaseID"
WORKSPACE_ATTRIBUTE = "HILASegment.Workspace"  # the workspace folder the case ID belongs to
SEGMENTATION_REFERENCE = "HILASegment.Segmentation"
OWN_PREFIX = "hila_"  # segment IDs this module creates; it never modifies any other segment
CREATOR_TAG = "HILA.creator"
TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment::GetTerminologyEntryTagName()
REVIEW_ID = OWN_PREFIX + "review"  # the likely-error outline; no label value is ever written under this ID


@dataclass
class WriteReport:
    """What an AI result did to the segmentation: per segment, voxels predicted and kept out by masking."""

    names: List[str] = field(default_factory=list)
    predicted: Dict[str, int] = field(default_factory=dict)
    clipped: Dict[str, int] = field(default_factory=dict)
    mask_mode: str = ""
    review_voxels: Optional[int] = None

    @property
    def clipped_total(self) -> int:
        return int(sum(self.clipped.values()))

    def message(self) -> str:
        """One line for the status: the segments, and what the Segment Editor's masking kept out."""
        text = "Segmented: " + ", ".join(f"{n} ({self.predicted.get(n, 0)} voxels)" for n in self.names)
        if self.clipped_total:
            lost = [n for n in self.names if self.predicted.get(n, 0) and self.clipped.get(n, 0) >= self.predicted[n]]
            text += (f"; masking ({self.mask_mode}) kept {self.clipped_total} voxels of the AI result out"
                     + (f" — nothing written for {', '.join(lost)}" if lost else "")
                     + "; set Masking to 'Everywhere' in the editor and Segment again to get all of it")
        if self.review_voxels is not None:
            text += f"; likely errors outlined in '{REVIEW_NAME}' ({self.review_voxels} voxels; hide it in the segment list)"
        return text


def segmentation_for(scene: Any, volume: Any, create: bool = True) -> Any:
    """This module's segmentation node of ``volume`` (created on first use), under the volume's parent transform."""
    segNode = volume.GetNodeReference(SEGMENTATION_REFERENCE)
    if segNode is None:
        if not create:
            return None
        segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + " segmentation")
        segNode.CreateDefaultDisplayNodes()
        segNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        volume.SetNodeReferenceID(SEGMENTATION_REFERENCE, segNode.GetID())
    if segNode.GetTransformNodeID() != volume.GetTransformNodeID():
        # the engine works in the volume's own (local) coordinates; so must the segmentation
        segNode.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    return segNode


def _tags(segment: Any, keys: Sequence[str], mutable: Callable[[str], Any]) -> Dict[str, str]:
    out = {}
    for key in keys:
        value = mutable("")
        if segment.GetTag(key, value):
            out[key] = str(value.get())
    return out


def segment_list(segNode: Any, label_values: Sequence[int], mutable: Callable[[str], Any]) -> List[Tuple[str, str, dict]]:
    """(segment ID, name, the tags label matching reads) of every segment, in order."""
    segmentation = segNode.GetSegmentation()
    keys = [labelmatch.TAG_KEY, TERMINOLOGY_TAG, REVIEW_TAG] + [f"hila_{int(v)}" for v in label_values]
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segId = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segId)
        out.append((segId, segment.GetName(), _tags(segment, keys, mutable)))
    return out


def label_array_from_segmentation(util: Any, segNode: Any, volume: Any, labels: Sequence[Any],
                                  mutable: Callable[[str], Any]) -> np.ndarray:
    """The label array (k, j, i) of the volume, value per workspace label, from the segments that stand for them.

    Refuses (HilaError naming them) labels no segment matches: a correction without them would
    say "background" where the radiologist said nothing. An empty segment counts as present.
    """
    pairs = [(str(lab.name), int(lab.value)) for lab in labels]
    segs = [(i, n, t) for i, n, t in segment_list(segNode, [v for _, v in pairs], mutable)
            if i != REVIEW_ID and REVIEW_TAG not in t]  # the likely-error outline is never anatomy
    missing = labelmatch.missing_labels([(name, tags) for _, name, tags in segs], pairs)
    if missing:
        have = ", ".join(repr(name) for _, name, _ in segs) or "none"
        raise HilaError(f"no segment stands for label {', '.join(repr(m) for m in missing)} (segments: {have}); "
                        "name a segment like the label, or add an empty one if the structure is absent")
    shape = util.arrayFromVolume(volume).shape
    masks: Dict[int, np.ndarray] = {}
    for segId, name, tags in segs:
        value = labelmatch.match_label(name, tags, pairs)
        if value is None:
            continue
        arr = np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume)) > 0
        masks[value] = masks[value] | arr if value in masks else arr
    return mrmlgeometry.masks_to_label({v: m.astype(np.uint8) for v, m in masks.items()}, shape)


def _bbox(masks: Sequence[np.ndarray], shape: Tuple[int, ...]) -> Tuple[slice, ...]:
    """The smallest (k, j, i) box holding every voxel of ``masks`` (one voxel at the corner when there is none)."""
    lo, hi = np.full(3, np.iinfo(np.int64).max), np.full(3, -1)
    for m in masks:
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hit = np.flatnonzero(np.any(m, axis=other))
            if hit.size:
                lo[axis], hi[axis] = min(lo[axis], hit[0]), max(hi[axis], hit[-1])
    if hi[0] < 0:
        return (slice(0, 1),) * 3
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))


def _region_volume(util: Any, scene: Any, volume: Any, region: Tuple[slice, ...]) -> Any:
    """A small volume node on ``volume``'s lattice covering ``region`` (k, j, i) only, under the volume's transform:
    exported and imported through it, a segment costs the region, not the whole volume."""
    matrix = util.vtkMatrixFromArray(np.eye(4))
    volume.GetIJKToRASMatrix(matrix)
    ijk_to_ras = util.arrayFromVTKMatrix(matrix)
    ijk_to_ras[:3, 3] = mrmlgeometry.voxel_to_ras(ijk_to_ras, [region[2].start, region[1].start, region[0].start])
    regionVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "__hila_region__")
    util.updateVolumeFromArray(regionVolume, np.zeros(tuple(sl.stop - sl.start for sl in region), np.uint8))
    regionVolume.SetIJKToRASMatrix(util.vtkMatrixFromArray(ijk_to_ras))
    regionVolume.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    return regionVolume


def write_result(util: Any, segments: Sequence[Tuple[int, str, tuple, np.ndarray, dict]], segNode: Any, volume: Any,
                 editorNode: Any = None, mask_mode: Optional[str] = None, scene: Any = None) -> WriteReport:
    """Write AI masks into this module's own segments only, inside the Segment Editor's mask.

    ``segments``: (label value, name, colour, 0/1 array (k, j, i) on the volume's grid, tags) per label.
    A ``hila_label`` tag belongs in ``tags`` only when ``value`` is a *workspace* label value
    (:func:`workspace_items` does that); a model's own values may mean other labels in a workspace.
    ``mask_mode``: the editor's mask mode name (``vtkMRMLSegmentationNode.ConvertMaskModeToString``).

    Work in proportion to the result, not to the segmentation (this runs on the GUI thread): only the segments
    the mask mode reads are exported (none for "everywhere", ``mrmlgeometry.mask_segment_ids``), one at a time,
    and every array is cut to the region the result can change: its own voxels and those of the segments it
    replaces. Outside that region nothing changes (the result is empty there and so is what it replaces).
    With the ``scene`` (real Slicer), segments are exported and written through a volume node of that region
    only (:func:`_region_volume`); without it, at the volume's full size (the same voxels, more memory).
    """
    segmentation = segNode.GetSegmentation()
    shape = tuple(util.arrayFromVolume(volume).shape)
    report = WriteReport(mask_mode=mask_mode or "")
    news = {}
    for value, name, _color, mask, _tags in segments:
        new = np.asarray(mask) > 0
        if new.shape != shape:
            raise HilaError(f"the result for {name!r} has shape {new.shape}, the volume {shape}")
        news[f"{OWN_PREFIX}{int(value)}"] = new
    existing = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    existing = [i for i in existing if i != REVIEW_ID]  # the review outline masks nothing
    masking = editorNode is not None and bool(mask_mode) and "everywhere" not in mask_mode.lower()
    intensity_on = editorNode is not None and bool(editorNode.GetSourceVolumeIntensityMask())
    old = {}  # what the segments being replaced hold now: needed only where a mask keeps some of it
    if masking or intensity_on:
        old = {i: np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, i, volume)) > 0 for i in news if i in existing}
    region = _bbox(list(news.values()) + list(old.values()), shape)
    display = segNode.GetDisplayNode()
    visible = [i for i in existing if display is None or display.GetSegmentVisibility(i)]
    mask_segment = editorNode.GetMaskSegmentID() if editorNode is not None else None
    cut: Dict[str, np.ndarray] = {i: a[region] for i, a in old.items()}  # segment -> its voxels in the region
    reference = _region_volume(util, scene, volume, region) if scene is not None else None
    if masking:
        read = set()
        for segId in news:  # the other segments the rule reads for any of the edited ones
            read.update(mrmlgeometry.mask_segment_ids(mask_mode, existing, visible, mask_segment, edited=segId))
        for i in sorted(read - set(cut)):  # one export alive at a time, of the region only where it can be
            cut[i] = (np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, i, reference)) > 0) if reference is not None \
                else (np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, i, volume)) > 0)[region]
    intensity = lohi = None
    if intensity_on:
        intensity, lohi = np.asarray(util.arrayFromVolume(volume))[region], editorNode.GetSourceVolumeIntensityMaskRange()
    cropped_shape = tuple(sl.stop - sl.start for sl in region)
    wasModified = segNode.StartModify()
    try:
        for value, name, color, _mask, tags in segments:
            segId = f"{OWN_PREFIX}{int(value)}"
            new = news[segId][region]
            merged = new
            if masking or intensity_on:
                allowed = mrmlgeometry.edit_allowed_mask(
                    mask_mode if masking else "EditAllowedEverywhere", cropped_shape, cut, visible=visible,
                    mask_segment=mask_segment, intensity=intensity, intensity_range=lohi, edited=segId)
                merged = np.where(allowed, new, cut.get(segId, np.zeros(cropped_shape, bool)))
            if segmentation.GetSegment(segId) is None:  # a known structure: the one table's colour (colors.label_color)
                segmentation.AddEmptySegment(segId, name, mrmlgeometry.color_to_float(label_color(name, color)))
            segmentation.SeparateSegmentLabelmap(segId)  # its own layer: writing it cannot touch other segments
            if reference is not None:  # replaces the segment: outside the region it is empty, as the result is
                util.updateSegmentBinaryLabelmapFromArray(merged.astype(np.uint8), segNode, segId, reference)
            else:
                full = np.zeros(shape, np.uint8)
                full[region] = merged
                util.updateSegmentBinaryLabelmapFromArray(full, segNode, segId, volume)
                del full
            segment = segmentation.GetSegment(segId)
            for key, val in dict(terminology.with_entry(name, tags), **{CREATOR_TAG: "HILASegment"}).items():
                segment.SetTag(str(key), str(val))  # the structure's TerminologyEntry, never Slicer's default "Tissue"
            if segId in cut or masking:
                cut[segId] = merged  # later items of this result see it as the segment it now is
            report.names.append(name)
            report.predicted[name] = int(news[segId].sum())
            report.clipped[name] = int(np.count_nonzero(merged != new))
        segmentation.CollapseBinaryLabelmaps(False)  # merge layers back where segments do not overlap
    finally:
        segNode.EndModify(wasModified)
        if reference is not None:
            scene.RemoveNode(reference)
    return report


def items_from_segmentation(seg: Any) -> list:
    """An engine Segmentation (``segfile``) as the (value, name, colour, 0/1 array (k, j, i), tags) items the writers
    here take: one way from an engine result to segments, for the panel and for batch mode."""
    return [(s.label_value, s.name, s.color, seg.mask_array(s.id), dict(s.tags)) for s in seg.segments]


def split_review(items: Sequence[Tuple[int, str, tuple, np.ndarray, dict]]):
    """(anatomy items, the review segment's mask or None): the engine tags its review segment ``hila_review``."""
    anatomy = [it for it in items if REVIEW_TAG not in (it[4] or {})]
    review = [it for it in items if REVIEW_TAG in (it[4] or {})]
    return anatomy, (review[0][3] if review else None)


def write_review(util: Any, segNode: Any, volume: Any, mask: np.ndarray, tags: Optional[Dict[str, str]] = None) -> int:
    """The likely-error region as an outline the user can hide: segment ``hila_review`` in its own layer, replaced
    by each new result, outline only in the slice views and hidden in 3-D. Returns its voxel count."""
    segmentation = segNode.GetSegmentation()
    if segmentation.GetSegment(REVIEW_ID) is None:
        segmentation.AddEmptySegment(REVIEW_ID, REVIEW_NAME, mrmlgeometry.color_to_float(REVIEW_COLOR))
    segmentation.SeparateSegmentLabelmap(REVIEW_ID)  # never shares a layer with anatomy
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    util.updateSegmentBinaryLabelmapFromArray(mask, segNode, REVIEW_ID, volume)
    segment = segmentation.GetSegment(REVIEW_ID)
    for key, val in dict(terminology.with_entry(REVIEW_NAME, tags), **{REVIEW_TAG: "1", CREATOR_TAG: "HILASegment"}).items():
        segment.SetTag(str(key), str(val))
    display = segNode.GetDisplayNode()
    if display is not None:
        display.SetSegmentVisibility2DFill(REVIEW_ID, False)
        display.SetSegmentVisibility2DOutline(REVIEW_ID, True)
        display.SetSegmentVisibility3D(REVIEW_ID, False)
    return int(mask.sum())


def write_engine_result(util: Any, items: Sequence[Tuple[int, str, tuple, np.ndarray, dict]], segNode: Any,
                        volume: Any, editorNode: Any = None, mask_mode: Optional[str] = None, scene: Any = None) -> WriteReport:
    """An engine result (anatomy and, when present, the review segment) into the volume's own segmentation."""
    anatomy, review = split_review(items)
    report = write_result(util, anatomy, segNode, volume, editorNode, mask_mode, scene)
    if review is not None:
        report.review_voxels = write_review(util, segNode, volume, review)
    return report


def load_label_array(util: Any, segNode: Any, volume: Any, label: np.ndarray, labels: Sequence[Any]) -> List[str]:
    """Put a stored label array (a case's latest correction) into this module's segments; returns the names.

    Reopening a case continues from its latest correction instead of a blank segmentation.
    """
    segments = [(int(lab.value), str(lab.name), tuple(getattr(lab, "color", (0.9, 0.6, 0.3))),
                 (np.asarray(label) == int(lab.value)).astype(np.uint8),
                 {"HILA.source": "latest correction", labelmatch.TAG_KEY: str(int(lab.value))})
                for lab in labels]
    return write_result(util, segments, segNode, volume).names


def workspace_items(items: Sequence[Tuple[int, str, tuple, np.ndarray, dict]], labels: Optional[Sequence[Any]]) -> list:
    """Result segments renumbered to the workspace's label values (by THE matching rule) and tagged with them.

    A model's value 1 may be the workspace's value 2; segments the workspace has no label for keep
    the model's value and get no ``hila_label`` tag. Without a workspace (``labels`` None) nothing changes.
    """
    if not labels:
        return list(items)
    pairs = [(str(lab.name), int(lab.value)) for lab in labels]
    out = []
    for value, name, color, mask, tags in items:
        ws_value = labelmatch.match_label(name, {k: v for k, v in (tags or {}).items() if k != labelmatch.TAG_KEY}, pairs)
        if ws_value is None:
            out.append((value, name, color, mask, tags))
        else:
            out.append((ws_value, name, color, mask, dict(tags or {}, **{labelmatch.TAG_KEY: str(ws_value)})))
    return out
