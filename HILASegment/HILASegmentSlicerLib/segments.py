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
           "segmentation_for", "segment_list", "label_array_from_segmentation", "LayerPart", "export_layers",
           "LabelExport",
           "label_export", "SegmentsExport", "segments_export", "write_result", "load_label_array",
           "workspace_items", "result_items", "REVIEW_ID", "split_review", "write_review", "write_engine_result",
           "own_voxels", "redraw_in_block"]

CASE_ATTRIBUTE = "HILASegment.CaseID"
WORKSPACE_ATTRIBUTE = "HILASegment.Workspace"  # the workspace folder the case ID belongs to
SEGMENTATION_REFERENCE = "HILASegment.Segmentation"
OWN_PREFIX = "hila_"  # segment IDs this module creates; it never modifies any other segment
CREATOR_TAG = "HILA.creator"
TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment::GetTerminologyEntryTagName()
REVIEW_ID = OWN_PREFIX + "review"  # the likely-error outline; no label value is ever written under this ID
UNION_ID = " user segments"  # write_result's stand-in for the union of the user's segments a mask reads (no segment ID)


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


@dataclass
class LayerPart:
    """A copy of one Slicer layer's voxels at its own extent (not the volume's), and where it lies on the volume."""

    start: Tuple[int, int, int]  # (k, j, i) of its first voxel in the volume (may lie outside it: cut on use)
    array: np.ndarray  # (k, j, i), the layer's voxel values (each segment of the layer has its own value)

    def cut(self, shape: Tuple[int, ...]) -> Optional[Tuple[Tuple[slice, ...], Tuple[slice, ...]]]:
        """(box of the volume, box of this part) where they overlap, or None."""
        lo = [max(0, s) for s in self.start]
        hi = [min(n, s + m) for s, m, n in zip(self.start, self.array.shape, shape)]
        if any(h <= low for low, h in zip(lo, hi)):
            return None
        return (tuple(slice(a, b) for a, b in zip(lo, hi)),
                tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, self.start)))


def export_layers(util: Any, segNode: Any, segmentIds: Sequence[str], volume: Any,
                  ijk_to_ras: Optional[np.ndarray] = None) -> Tuple[List[LayerPart], Dict[str, Tuple[int, int]]]:
    """The GUI thread's part of taking segments out of the scene: every layer holding one of ``segmentIds`` copied
    once, at its own extent (Slicer's internal labelmap, nothing exported), with where it lies on the volume. Returns
    (parts, {segment ID: (part index, its voxel value there)}); an empty segment is not in the map. A segment without
    a labelmap of its own on the volume's lattice is exported by Slicer onto the volume (one full part, value 1).
    Merging and writing are the worker's (:class:`LabelExport`, :class:`SegmentsExport`)."""
    segmentation = segNode.GetSegmentation()
    to_volume = None
    parts: List[LayerPart] = []
    where: Dict[str, Tuple[int, int]] = {}
    seen: Dict[Any, int] = {}
    for segId in segmentIds:
        image = segNode.GetBinaryLabelmapInternalRepresentation(segId)
        if image is not None and _empty(image.GetExtent()):
            continue
        if image is not None and to_volume is None:
            to_volume = np.linalg.inv(ijk_to_ras if ijk_to_ras is not None else _ijk_to_ras(util, volume))
        start = _layer_start(util, image, to_volume) if image is not None else None
        if start is None:  # no layer on the volume's lattice: Slicer resamples it onto the volume
            exported = (np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume)) > 0).view(np.uint8)
            parts.append(LayerPart((0, 0, 0), exported))
            where[segId] = (len(parts) - 1, 1)
            continue
        if image not in seen:
            seen[image] = len(parts)
            layer = np.array(util.arrayFromSegmentInternalBinaryLabelmap(segNode, segId))  # a copy: edits may follow
            parts.append(LayerPart((int(start[2]), int(start[1]), int(start[0])), layer))
        where[segId] = (seen[image], int(segmentation.GetSegment(segId).GetLabelValue()))
    return parts, where


@dataclass
class LabelExport:
    """Accept's label map as the GUI thread hands it to the worker: the layers of the segments standing for the
    workspace's labels (:func:`export_layers`) and which voxel values are which label; :meth:`array` merges them
    (off the GUI thread), later label values winning where segments overlap (``mrmlgeometry.masks_to_label``)."""

    shape: Tuple[int, ...]
    ijk_to_ras: Optional[np.ndarray]
    parts: List[LayerPart]
    by_value: Dict[int, List[Tuple[int, int]]]  # label value -> (part index, voxel value) of each of its segments

    def array(self) -> np.ndarray:
        top = max(self.by_value, default=0)
        out = np.zeros(self.shape, np.uint8 if top < 256 else np.uint16)
        for value in sorted(self.by_value):
            for index, voxel in self.by_value[value]:
                part = self.parts[index]
                box = part.cut(self.shape)
                if box is not None:
                    out[box[0]][part.array[box[1]] == voxel] = value
        return out

    def image(self) -> Any:
        """The label map as a SimpleITK image on the volume's grid (what ``hila submit`` takes)."""
        return mrmlgeometry.array_to_image(self.array(), self.ijk_to_ras)


def label_export(util: Any, segNode: Any, volume: Any, labels: Sequence[Any], mutable: Callable[[str], Any],
                 ijk_to_ras: Optional[np.ndarray] = None) -> LabelExport:
    """The GUI thread's part of Accept's label map: the checks and the layers (:func:`export_layers`) of the segments
    that stand for ``labels``; the worker merges them (:meth:`LabelExport.array`).

    Refuses (HilaError naming them) labels no segment matches: a correction without them would
    say "background" where the radiologist said nothing. An empty segment counts as present.
    """
    pairs = [(str(lab.name), int(lab.value)) for lab in labels]
    segs = [(i, n, t) for i, n, t in segment_list(segNode, [v for _, v in pairs], mutable)
            if i != REVIEW_ID and REVIEW_TAG not in t]  # the likely-error outline is never anatomy
    for _, name, tags in segs:
        renamed = labelmatch.renamed_to_another(name, tags, pairs)
        if renamed:
            raise HilaError(f"segment {name!r} was {renamed[0]!r} (its hila_label tag) and is now named like the label "
                            f"{renamed[1]!r}: rename it back, or delete it and draw {renamed[1]!r} in a segment of its own")
    missing = labelmatch.missing_labels([(name, tags) for _, name, tags in segs], pairs)
    if missing:
        have = ", ".join(repr(name) for _, name, _ in segs) or "none"
        raise HilaError(f"no segment stands for label {', '.join(repr(m) for m in missing)} (segments: {have}); "
                        "name a segment like the label, or add an empty one if the structure is absent")
    values = {segId: labelmatch.match_label(name, tags, pairs) for segId, name, tags in segs}
    values = {segId: v for segId, v in values.items() if v is not None}
    parts, where = export_layers(util, segNode, list(values), volume, ijk_to_ras)
    by_value: Dict[int, List[Tuple[int, int]]] = {}
    for segId, value in values.items():
        if segId in where:
            by_value.setdefault(value, []).append(where[segId])
    return LabelExport(tuple(util.arrayFromVolume(volume).shape), ijk_to_ras, parts, by_value)


def label_array_from_segmentation(util: Any, segNode: Any, volume: Any, labels: Sequence[Any],
                                  mutable: Callable[[str], Any]) -> np.ndarray:
    """The label array (k, j, i) of the volume, value per workspace label, from the segments that stand for them
    (:func:`label_export` merged at once: scripts and tests; the panel's Accept merges in its worker)."""
    return label_export(util, segNode, volume, labels, mutable).array()


#: The tags a segment's copy keeps (``SegmentsExport``): what label matching, terminology and provenance read.
COPY_TAGS = (labelmatch.TAG_KEY, TERMINOLOGY_TAG, REVIEW_TAG, CREATOR_TAG, "HILA.model", "HILA.source")


@dataclass
class SegmentsExport:
    """A segmentation as the GUI thread hands it to the worker for a .seg.nrrd copy (a volume that is no case):
    its layers at their extents and each segment's (ID, name, colour, tags, part index or None, voxel value)."""

    shape: Tuple[int, ...]
    ijk_to_ras: np.ndarray
    parts: List[LayerPart]
    segments: List[Tuple[str, str, tuple, Dict[str, str], Optional[int], int]]

    def segmentation(self) -> Any:
        """The engine's Segmentation of it (off the GUI thread): layers on the box holding every part, the volume's
        full grid kept where Slicer looks for it (the conversion parameters, the extent offset)."""
        from HILASegmentLib.formats.segmentation import (
            DEFAULT_CONVERSION_PARAMETERS,
            Segment,
            Segmentation,
            slicer_geometry_string,
        )
        boxes = [b[0] for b in (p.cut(self.shape) for p in self.parts) if b is not None] or [(slice(0, 1),) * 3]
        box = boxes[0]
        for other in boxes[1:]:
            box = _union(box, other)
        origin = mrmlgeometry.voxel_to_ras(self.ijk_to_ras, [box[2].start, box[1].start, box[0].start])
        on_box = np.array(self.ijk_to_ras, float)
        on_box[:3, 3] = origin
        layers = []
        for part in self.parts or [LayerPart((0, 0, 0), np.zeros((1, 1, 1), np.uint8))]:
            arr = np.zeros(tuple(sl.stop - sl.start for sl in box), part.array.dtype)
            cut = part.cut(self.shape)
            if cut is not None:
                arr[tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(cut[0], box))] = part.array[cut[1]]
            layers.append(mrmlgeometry.array_to_image(arr, on_box))
        free = int(max((v for *_, i, v in self.segments if i == 0), default=0))
        out = []
        for segId, name, color, tags, index, value in self.segments:
            if index is None:  # empty: a value no voxel of layer 0 has
                free += 1
                index, value = 0, free
            out.append(Segment(id=segId, name=name, color=tuple(mrmlgeometry.color_to_float(label_color(name, color))),
                               label_value=int(value), layer=int(index), tags=terminology.with_entry(name, tags)))
        full = mrmlgeometry.grid_image(self.shape, self.ijk_to_ras)
        seg = Segmentation(segments=out, layers=layers)
        seg.conversion_parameters = DEFAULT_CONVERSION_PARAMETERS.replace("{geometry}", slicer_geometry_string(full))
        seg.reference_extent_offset = (box[2].start, box[1].start, box[0].start)
        return seg


def segments_export(util: Any, segNode: Any, volume: Any, mutable: Callable[[str], Any],
                    ijk_to_ras: np.ndarray) -> SegmentsExport:
    """The GUI thread's part of a copy of the volume's segmentation: names, colours, tags and layers (no export
    where Slicer has them on the volume's lattice); the likely-error outline is left out, as at Accept."""
    segmentation = segNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    meta = []
    for segId in ids:
        segment = segmentation.GetSegment(segId)
        tags = _tags(segment, COPY_TAGS, mutable)
        if segId != REVIEW_ID and REVIEW_TAG not in tags:
            meta.append((segId, segment.GetName(), tuple(segment.GetColor()), tags))
    parts, where = export_layers(util, segNode, [m[0] for m in meta], volume, ijk_to_ras)
    return SegmentsExport(tuple(util.arrayFromVolume(volume).shape), ijk_to_ras, parts,
                          [m + where.get(m[0], (None, 0)) for m in meta])


def _empty(extent: Sequence[int]) -> bool:
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def _layer_start(util: Any, image: Any, to_volume: np.ndarray) -> Optional[np.ndarray]:
    """The (i, j, k) of a layer's first voxel in the volume, or None when the layer is not on the volume's lattice
    (``to_volume``: the volume's RAS -> IJK)."""
    matrix = util.vtkMatrixFromArray(np.eye(4))
    image.GetImageToWorldMatrix(matrix)
    step = to_volume @ util.arrayFromVTKMatrix(matrix)  # the layer's index -> the volume's index
    if not np.allclose(step[:3, :3], np.eye(3), atol=1e-4) or np.abs(step[:3, 3] - np.round(step[:3, 3])).max() > 1e-3:
        return None
    return np.round(step[:3, 3]).astype(int) + np.array(image.GetExtent()[0::2])


def _bbox(masks: Sequence[np.ndarray]) -> Tuple[slice, ...]:
    """The smallest (k, j, i) box holding every voxel of ``masks`` (one voxel at the corner when there is none)."""
    from HILASegmentLib.formats.segmentation import voxel_box  # SimpleITK: loaded when a result arrives

    return voxel_box(masks) or (slice(0, 1),) * 3


def _union(a: Tuple[slice, ...], b: Tuple[slice, ...]) -> Tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _place(mask: np.ndarray, region: Tuple[slice, ...], into: Tuple[slice, ...]) -> np.ndarray:
    """``mask`` (covering ``region``) as an array covering the larger box ``into``."""
    out = np.zeros(tuple(sl.stop - sl.start for sl in into), bool)
    out[tuple(slice(r.start - i.start, r.stop - i.start) for r, i in zip(region, into))] = mask
    return out


def _export(util: Any, segNode: Any, segId: str, reference: Any, volume: Any, region: Tuple[slice, ...]) -> np.ndarray:
    """A segment's voxels in ``region`` (bool): exported through the region's volume node where there is one."""
    if reference is not None:
        return np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, segId, reference)) > 0
    return (np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, segId, volume)) > 0)[region]


def _layer_union(util: Any, segNode: Any, segmentIds: Sequence[str], volume: Any,
                 region: Tuple[slice, ...]) -> Optional[np.ndarray]:
    """Where any of ``segmentIds`` is in ``region`` of the volume (bool), read from their layers' own voxels (Slicer's
    internal labelmaps, a view, nothing exported): per layer one cut and one comparison with its segments' label
    values. None (the caller exports instead) when a segment has no labelmap yet or a layer is not on the volume's
    lattice."""
    segmentation = segNode.GetSegmentation()
    layers: Dict[Any, Tuple[str, List[int]]] = {}
    for segId in segmentIds:
        image = segNode.GetBinaryLabelmapInternalRepresentation(segId)
        if image is None:
            return None
        layers.setdefault(image, (segId, []))[1].append(int(segmentation.GetSegment(segId).GetLabelValue()))
    to_volume = np.linalg.inv(_ijk_to_ras(util, volume))
    out = np.zeros(tuple(sl.stop - sl.start for sl in region), bool)
    for image, (first, values) in layers.items():
        if _empty(image.GetExtent()):
            continue
        start = _layer_start(util, image, to_volume)  # the layer's first voxel in the volume (i, j, k)
        if start is None:
            return None
        array = util.arrayFromSegmentInternalBinaryLabelmap(segNode, first)  # (k, j, i) from that voxel
        lo = [max(region[a].start, int(start[2 - a])) for a in range(3)]
        hi = [min(region[a].stop, int(start[2 - a]) + array.shape[a]) for a in range(3)]
        if any(h <= lo_ for lo_, h in zip(lo, hi)):
            continue
        part = array[tuple(slice(lo[a] - int(start[2 - a]), hi[a] - int(start[2 - a])) for a in range(3))]
        out[tuple(slice(lo[a] - region[a].start, hi[a] - region[a].start) for a in range(3))] |= np.isin(part, values)
    return out


def _segment_box(util: Any, segNode: Any, segId: str, volume: Any, shape: Tuple[int, ...]) -> Optional[Tuple[slice, ...]]:
    """The (k, j, i) box of ``volume`` that a segment's own labelmap covers (its layer's extent, read without touching a
    voxel), or None when it has none; the segmentation lies in the volume's coordinates (``segmentation_for``)."""
    segment = segNode.GetSegmentation().GetSegment(segId)
    image = segment.GetRepresentation("Binary labelmap") if segment is not None else None
    extent = image.GetExtent() if image is not None else (0, -1, 0, -1, 0, -1)
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return None
    matrix = util.vtkMatrixFromArray(np.eye(4))
    image.GetImageToWorldMatrix(matrix)
    to_volume = np.linalg.solve(_ijk_to_ras(util, volume), util.arrayFromVTKMatrix(matrix))
    corners = np.array([[extent[a], extent[b], extent[c], 1.0] for a in (0, 1) for b in (2, 3) for c in (4, 5)])
    ijk = (to_volume @ corners.T)[:3]
    lo = np.clip(np.floor(ijk.min(axis=1) + 1e-3).astype(int), 0, np.array(shape[::-1]) - 1)
    hi = np.clip(np.ceil(ijk.max(axis=1) - 1e-3).astype(int), 0, np.array(shape[::-1]) - 1)
    return tuple(slice(int(lo[a]), int(hi[a]) + 1) for a in (2, 1, 0))


def _ijk_to_ras(util: Any, volume: Any) -> np.ndarray:
    matrix = util.vtkMatrixFromArray(np.eye(4))
    volume.GetIJKToRASMatrix(matrix)
    return util.arrayFromVTKMatrix(matrix)


def result_items(seg: Any, ijk_to_ras: np.ndarray, shape: Tuple[int, ...]) -> Tuple[list, Tuple[slice, ...]]:
    """(items, region): an engine result (``segfile.Segmentation``, e.g. the cropped .seg.nrrd of ``hila infer WS CASE
    --out``) as the (value, name, colour, 0/1 array, tags) items :func:`write_result` takes, every array cut to
    ``region``, the (k, j, i) box of the volume holding the result's voxels: the GUI thread handles the result, never
    the volume. A result on another lattice than the volume's (``ijk_to_ras``, ``shape``) is refused (HilaError)."""
    grid = mrmlgeometry.ijk_to_ras_matrix(seg.grid)
    start = np.linalg.solve(ijk_to_ras, grid[:, 3])[:3]  # the file's first voxel, as an index of the volume (i, j, k)
    if not np.allclose(grid[:3, :3], ijk_to_ras[:3, :3], atol=1e-4 * max(1.0, float(np.abs(ijk_to_ras[:3, :3]).max()))) \
            or np.abs(start - np.round(start)).max() > 1e-3:
        raise HilaError(f"the result {seg.source or ''} is not on the volume's voxel grid (the volume was resampled or "
                        "moved since Segment was pressed); Segment again")
    i0, j0, k0 = (int(round(x)) for x in start)
    arrays = [np.asarray(layer_array) for layer_array in _layer_arrays(seg)]
    box = _bbox(arrays)
    region = (slice(k0 + box[0].start, k0 + box[0].stop), slice(j0 + box[1].start, j0 + box[1].stop),
              slice(i0 + box[2].start, i0 + box[2].stop))
    if any(sl.start < 0 or sl.stop > n for sl, n in zip(region, shape)):
        raise HilaError(f"the result {seg.source or ''} reaches outside the volume ({shape[2]}x{shape[1]}x{shape[0]} voxels); "
                        "Segment again")
    items = [(s.label_value, s.name, s.color, (arrays[s.layer][box] == s.label_value).view(np.uint8), dict(s.tags))
             for s in seg.segments]
    return items, region


def _layer_arrays(seg: Any) -> list:
    import SimpleITK as sitk  # the engine's image library: loaded when a result arrives

    return [sitk.GetArrayViewFromImage(layer) for layer in seg.layers]


def _region_volume(util: Any, scene: Any, volume: Any, region: Tuple[slice, ...]) -> Any:
    """A small volume node on ``volume``'s lattice covering ``region`` (k, j, i) only, under the volume's transform:
    exported and imported through it, a segment costs the region, not the whole volume."""
    ijk_to_ras = _ijk_to_ras(util, volume)
    ijk_to_ras[:3, 3] = mrmlgeometry.voxel_to_ras(ijk_to_ras, [region[2].start, region[1].start, region[0].start])
    regionVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "__hila_region__")
    util.updateVolumeFromArray(regionVolume, np.zeros(tuple(sl.stop - sl.start for sl in region), np.uint8))
    regionVolume.SetIJKToRASMatrix(util.vtkMatrixFromArray(ijk_to_ras))
    regionVolume.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    return regionVolume


def write_result(util: Any, segments: Sequence[Tuple[int, str, tuple, np.ndarray, dict]], segNode: Any, volume: Any,
                 editorNode: Any = None, mask_mode: Optional[str] = None, scene: Any = None,
                 region: Optional[Tuple[slice, ...]] = None) -> WriteReport:
    """Write AI masks into this module's own segments only, inside the Segment Editor's mask.

    ``segments``: (label value, name, colour, 0/1 array (k, j, i), tags) per label; the arrays cover ``region`` (a
    (k, j, i) box of the volume, :func:`result_items`) or, without it, the whole volume (cut here to their voxels).
    A ``hila_label`` tag belongs in ``tags`` only when ``value`` is a *workspace* label value (the child's
    ``hila infer WS CASE --out`` writes them so; :func:`workspace_items` for other callers).
    ``mask_mode``: the editor's mask mode name (``vtkMRMLSegmentationNode.ConvertMaskModeToString``).

    Work in proportion to the result, not to the segmentation (this runs on the GUI thread): only the segments
    the mask mode reads are exported (none for "everywhere", ``mrmlgeometry.mask_segment_ids``), one at a time,
    and every array is cut to the region the result can change: its own voxels and those of the segments it
    replaces. Outside that region nothing changes (the result is empty there and so is what it replaces).
    With the ``scene`` (real Slicer), segments are exported and written through a volume node of that region
    only (:func:`_region_volume`); without it, at the volume's full size (the same voxels, more memory). The user's
    segments the mask reads are never edited here, so only their union matters: with the scene it is read straight
    from their layers' voxels in the region (:func:`_layer_union`, no export), else one export each. Layers are
    not merged back here (Slicer's storage node does that when it writes, ``CollapseBinaryLabelmaps``).
    """
    segmentation = segNode.GetSegmentation()
    shape = tuple(util.arrayFromVolume(volume).shape)
    report = WriteReport(mask_mode=mask_mode or "")
    expected = shape if region is None else tuple(sl.stop - sl.start for sl in region)
    news = {}
    for value, name, _color, mask, _tags in segments:
        new = np.asarray(mask) > 0
        if new.shape != expected:
            raise HilaError(f"the result for {name!r} has shape {new.shape}, the volume {expected}")
        news[f"{OWN_PREFIX}{int(value)}"] = new
    if region is None:  # whole-volume masks: cut to their voxels
        region = _bbox(list(news.values()))
        news = {i: a[region] for i, a in news.items()}
    existing = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    existing = [i for i in existing if i != REVIEW_ID]  # the review outline masks nothing
    masking = editorNode is not None and bool(mask_mode) and "everywhere" not in mask_mode.lower()
    intensity_on = editorNode is not None and bool(editorNode.GetSourceVolumeIntensityMask())
    replaced = [i for i in news if i in existing] if masking or intensity_on else []
    if replaced:  # a mask keeps some of the segments being replaced: the region grows to hold them
        if scene is not None:  # real Slicer: where their own labelmaps lie, no voxel read
            boxes = [b for b in (_segment_box(util, segNode, i, volume, shape) for i in replaced) if b is not None]
        else:
            boxes = [_bbox([np.asarray(util.arrayFromSegmentBinaryLabelmap(segNode, i, volume)) > 0 for i in replaced])]
        grown = region
        for box in boxes:
            grown = _union(grown, box)
        news = {i: _place(a, region, grown) for i, a in news.items()}
        region = grown
    display = segNode.GetDisplayNode()
    visible = [i for i in existing if display is None or display.GetSegmentVisibility(i)]
    mask_segment = editorNode.GetMaskSegmentID() if editorNode is not None else None
    reference = _region_volume(util, scene, volume, region) if scene is not None else None
    cut = {}  # segment -> its voxels in the region
    for i in replaced:
        own = _layer_union(util, segNode, [i], volume, region) if reference is not None else None
        cut[i] = own if own is not None else _export(util, segNode, i, reference, volume, region)
    rule_visible, rule_mask = visible, mask_segment
    if masking:
        rule_visible, rule_mask = _read_others(util, segNode, volume, region, reference, cut, list(news), mask_mode,
                                               existing, visible, mask_segment)
    intensity = lohi = None
    if intensity_on:
        intensity, lohi = np.asarray(util.arrayFromVolume(volume))[region], editorNode.GetSourceVolumeIntensityMaskRange()
    cropped_shape = tuple(sl.stop - sl.start for sl in region)
    wasModified = segNode.StartModify()
    try:
        for value, name, color, _mask, tags in segments:
            segId = f"{OWN_PREFIX}{int(value)}"
            new = news[segId]
            merged = new
            if masking or intensity_on:
                allowed = mrmlgeometry.edit_allowed_mask(
                    mask_mode if masking else "EditAllowedEverywhere", cropped_shape, cut, visible=rule_visible,
                    mask_segment=rule_mask, intensity=intensity, intensity_range=lohi, edited=segId)
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
            segment.SetName(name)  # the result's structure, even where the user had renamed this segment of ours
            for key, val in dict(terminology.with_entry(name, tags), **{CREATOR_TAG: "HILASegment"}).items():
                segment.SetTag(str(key), str(val))  # the structure's TerminologyEntry, never Slicer's default "Tissue"
            if segId in cut or masking:
                cut[segId] = merged  # later items of this result see it as the segment it now is
            report.names.append(name)
            report.predicted[name] = int(np.count_nonzero(new))
            report.clipped[name] = int(np.count_nonzero(merged != new))
    finally:
        segNode.EndModify(wasModified)
        if reference is not None:
            scene.RemoveNode(reference)
    return report


def own_voxels(util: Any, segNode: Any, segId: str, volume: Any, region: Optional[Tuple[slice, ...]] = None) -> np.ndarray:
    """A segment's voxels in ``region`` (a (k, j, i) box of the volume; None: the box its own labelmap covers), read
    from its layer where they lie (nothing exported) for an edit that writes them back: HilaError (one line) when its
    labelmap is on another voxel grid (the write would resample all of it) or has voxels outside the volume (the write
    would lose them)."""
    segmentation = segNode.GetSegmentation()
    shape = tuple(util.arrayFromVolume(volume).shape)
    if region is None:
        region = _segment_box(util, segNode, segId, volume, shape) or (slice(0, 1),) * 3
    layer = segNode.GetBinaryLabelmapInternalRepresentation(segId)
    if layer is None or _empty(layer.GetExtent()):
        return np.zeros(tuple(sl.stop - sl.start for sl in region), bool)
    name = segmentation.GetSegment(segId).GetName()
    old = _layer_union(util, segNode, [segId], volume, region)
    if old is None:
        raise HilaError(f"the segment {name!r} is not on the volume's voxel grid (its labelmap has another geometry): "
                        "fixing it would resample all of it; nothing was changed")
    value = int(segmentation.GetSegment(segId).GetLabelValue())
    if np.count_nonzero(np.asarray(util.arrayFromSegmentInternalBinaryLabelmap(segNode, segId)) == value) \
            != np.count_nonzero(old):
        raise HilaError(f"the segment {name!r} has voxels outside the volume {volume.GetName()!r}: fixing it would "
                        "lose them; nothing was changed")
    return old


def redraw_in_block(util: Any, scene: Any, segNode: Any, segId: str, volume: Any, block: Tuple[slice, ...],
                    mask: np.ndarray, editorNode: Any = None, mask_mode: Optional[str] = None) -> Tuple[int, int, int]:
    """*Fix with box*'s write: the segment ``segId`` (any segment, the user's own too) redrawn inside ``block`` (a
    (k, j, i) box of the volume) as ``mask`` (the block's shape), by the engine's one rule
    (``boxassist.redraw_in_box``) under the Segment Editor's masking as its "set" modification applies it: where the
    mask mode or the intensity range forbids, the segment keeps its voxels. Outside the block the segment is unchanged;
    no other segment is touched (the editor's overwrite-other-segments setting is not applied: the fix never takes
    voxels from another segment, so segments may overlap after it). Returns (the segment's voxels in the block before,
    after, the assistant's voxels the masking changed). Written through a volume node of the region only (the block
    and the segment's own extent), as :func:`write_result` does."""
    from HILASegmentLib.inference.boxassist import redraw_in_box  # SimpleITK: loaded when a fix is written

    segmentation = segNode.GetSegmentation()
    if segmentation.GetSegment(segId) is None:
        raise HilaError(f"the segmentation {segNode.GetName()!r} has no segment {segId!r}")
    shape = tuple(util.arrayFromVolume(volume).shape)
    mask = np.asarray(mask) > 0
    if mask.shape != tuple(sl.stop - sl.start for sl in block):
        raise HilaError(f"the fix's mask has shape {mask.shape}, its box {tuple(sl.stop - sl.start for sl in block)}")
    region = block
    own = _segment_box(util, segNode, segId, volume, shape)
    if own is not None:  # the segment outside the block is written back unchanged: the region holds all of it
        region = _union(region, own)
    existing = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    existing = [i for i in existing if i != REVIEW_ID]  # the review outline masks nothing (as for AI results)
    masking = editorNode is not None and bool(mask_mode) and "everywhere" not in mask_mode.lower()
    intensity_on = editorNode is not None and bool(editorNode.GetSourceVolumeIntensityMask())
    cropped = tuple(sl.stop - sl.start for sl in region)
    old = own_voxels(util, segNode, segId, volume, region)
    reference = _region_volume(util, scene, volume, region)
    try:
        allowed = None
        if masking or intensity_on:
            display = segNode.GetDisplayNode()
            visible = [i for i in existing if display is None or display.GetSegmentVisibility(i)]
            mask_segment = editorNode.GetMaskSegmentID()
            cut = {segId: old}  # inside modes read the edited segment too (GenerateEditMask)
            rule_visible, rule_mask = visible, mask_segment
            if masking:
                rule_visible, rule_mask = _read_others(util, segNode, volume, region, reference, cut, [segId], mask_mode,
                                                       existing, visible, mask_segment)
            intensity = lohi = None
            if intensity_on:
                intensity = np.asarray(util.arrayFromVolume(volume))[region]
                lohi = editorNode.GetSourceVolumeIntensityMaskRange()
            allowed = mrmlgeometry.edit_allowed_mask(
                mask_mode if masking else "EditAllowedEverywhere", cropped, cut, visible=rule_visible,
                mask_segment=rule_mask, intensity=intensity, intensity_range=lohi, edited=segId)
        lo = [block[a].start - region[a].start for a in (2, 1, 0)]  # (i, j, k) in the region
        hi = [block[a].stop - 1 - region[a].start for a in (2, 1, 0)]
        placed = _place(mask, block, region)
        new = redraw_in_box(old, placed, lo, hi, allowed)
        inner = tuple(slice(block[a].start - region[a].start, block[a].stop - region[a].start) for a in range(3))
        counts = (int(np.count_nonzero(old[inner])), int(np.count_nonzero(new[inner])),
                  int(np.count_nonzero(new[inner] != placed[inner])))
        wasModified = segNode.StartModify()
        try:
            segmentation.SeparateSegmentLabelmap(segId)  # its own layer: writing it cannot touch other segments
            util.updateSegmentBinaryLabelmapFromArray(new.astype(np.uint8), segNode, segId, reference)
        finally:
            segNode.EndModify(wasModified)
    finally:
        scene.RemoveNode(reference)
    return counts


def _read_others(util: Any, segNode: Any, volume: Any, region: Tuple[slice, ...], reference: Any, cut: Dict[str, Any],
                 edited: Sequence[str], mask_mode: str, existing: Sequence[str], visible: Sequence[str],
                 mask_segment: Optional[str]) -> Tuple[list, Optional[str]]:
    """The segments the mask rule reads for an edit of any of ``edited`` (other than those), put into ``cut`` over
    ``region``: their union read from their own layers (no export) where it can be, standing for them in the rule,
    else one export each (one alive at a time, of the region only where there is a ``reference`` node). Returns the
    (visible segments, mask segment) the rule (``mrmlgeometry.edit_allowed_mask``) must then be called with."""
    read = set()
    for segId in edited:
        read.update(mrmlgeometry.mask_segment_ids(mask_mode, existing, visible, mask_segment, edited=segId))
    others = sorted(read - set(edited))  # the user's segments: read whichever segment is edited
    union = _layer_union(util, segNode, others, volume, region) if others and reference is not None else None
    if union is None:
        for i in others:
            cut[i] = _export(util, segNode, i, reference, volume, region)
        return list(visible), mask_segment
    cut[UNION_ID] = union
    return [i for i in visible if i not in others] + [UNION_ID], (UNION_ID if mask_segment in others else mask_segment)


def split_review(items: Sequence[Tuple[int, str, tuple, np.ndarray, dict]]):
    """(anatomy items, the review segment's mask or None): the engine tags its review segment ``hila_review``."""
    anatomy = [it for it in items if REVIEW_TAG not in (it[4] or {})]
    review = [it for it in items if REVIEW_TAG in (it[4] or {})]
    return anatomy, (review[0][3] if review else None)


def write_review(util: Any, segNode: Any, volume: Any, mask: np.ndarray, tags: Optional[Dict[str, str]] = None,
                 scene: Any = None, region: Optional[Tuple[slice, ...]] = None) -> int:
    """The likely-error region as an outline the user can hide: segment ``hila_review`` in its own layer, replaced
    by each new result, outline only in the slice views and hidden in 3-D. Returns its voxel count.
    ``region`` (with the ``scene``): the box ``mask`` covers, written through a volume node of that box only."""
    segmentation = segNode.GetSegmentation()
    if segmentation.GetSegment(REVIEW_ID) is None:
        segmentation.AddEmptySegment(REVIEW_ID, REVIEW_NAME, mrmlgeometry.color_to_float(REVIEW_COLOR))
    segmentation.SeparateSegmentLabelmap(REVIEW_ID)  # never shares a layer with anatomy
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    reference = _region_volume(util, scene, volume, region) if scene is not None and region is not None else None
    try:
        util.updateSegmentBinaryLabelmapFromArray(mask, segNode, REVIEW_ID, reference or volume)
    finally:
        if reference is not None:
            scene.RemoveNode(reference)
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
                        volume: Any, editorNode: Any = None, mask_mode: Optional[str] = None, scene: Any = None,
                        region: Optional[Tuple[slice, ...]] = None) -> WriteReport:
    """An engine result (anatomy and, when present, the review segment) into the volume's own segmentation;
    ``region``: the box the items' arrays cover (:func:`result_items`), None for whole-volume arrays."""
    anatomy, review = split_review(items)
    report = write_result(util, anatomy, segNode, volume, editorNode, mask_mode, scene, region)
    if review is not None:
        if region is not None and scene is None:  # no region volume without a scene: the whole volume's array
            review = _place(np.asarray(review) > 0, region, tuple(slice(0, n) for n in util.arrayFromVolume(volume).shape))
            region = None
        report.review_voxels = write_review(util, segNode, volume, review, scene=scene, region=region)
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
