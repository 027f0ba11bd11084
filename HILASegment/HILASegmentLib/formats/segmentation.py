"""The segmentation model: what a radiologist sees in the Segment Editor.

A :class:`Segmentation` is named, coloured segments (with Slicer's IDs, label values, layers,
extents and tags) over voxel layers that share one physical grid. Layers are SimpleITK images
(geometry in LPS, like every image in the engine), so a segmentation made from a label map on a
volume has exactly that volume's grid. Reading and writing ``.seg.nrrd`` files is ``segnrrd``'s job
(``segfile`` is the face both are used through).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..ground.colors import Color, label_color
from ..ground.errors import HilaError
from .imageio import as_label_image, describe_grid, grid_difference
from .terminology import with_entry
from .voxelgrid import ijk_to_lps

LabelSpec = Tuple[int, str, Optional[Color]]

MASTER_REPRESENTATION = "Binary labelmap"
EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)
MAX_SEGMENTS = 255

DEFAULT_CONVERSION_PARAMETERS = (
    "Collapse labelmaps|1|Merge the labelmaps into as few shared labelmaps as possible 1 = created labelmaps will be "
    "shared if possible without overwriting each other.&Compute surface normals|1|Compute surface normals. 1 (default) "
    "= surface normals are computed. 0 = surface normals are not computed (slightly faster but produces less smooth "
    "surface display).&Crop to reference image geometry|0|Crop the model to the extent of reference geometry. 0 "
    "(default) = created labelmap will contain the entire model. 1 = created labelmap extent will be within reference "
    "image extent.&Decimation factor|0.0|Desired reduction in the total number of polygons. Range: 0.0 (no "
    "decimation) to 1.0 (as much simplification as possible). Value of 0.8 typically reduces data set size by 80% "
    "without losing too much details.&Default slice thickness|0.0|Default thickness for contours if slice spacing "
    "cannot be calculated.&End capping|1|Create end cap to close surface inside contours on the top and bottom of the "
    "structure.\n0 = leave contours open on surface exterior.\n1 (default) = close surface by generating smooth end "
    "caps.\n2 = close surface by generating straight end caps.&Fractional labelmap oversampling factor|1|Determines "
    "the oversampling of the reference image geometry. All segments are oversampled with the same value (value of 1 "
    "means no oversampling).&Joint smoothing|0|Perform joint smoothing.&Oversampling factor|1|Determines the "
    "oversampling of the reference image geometry. If it's a number, then all segments are oversampled with the same "
    "value (value of 1 means no oversampling). If it has the value \"A\", then automatic oversampling is calculated."
    "&Reference image geometry|{geometry}|Image geometry description string determining the geometry of the labelmap "
    "that is created in course of conversion. Can be copied from a volume, using the button.&Smoothing factor|-0.5|"
    "Smoothing factor. Range: 0.0 (no smoothing) to 1.0 (strong smoothing).&Threshold fraction|0.5|Determines the "
    "threshold that the closed surface is created at as a fractional value between 0 and 1.&"
)



@dataclass
class Segment:
    """One Slicer segment: its identity, look, where its voxels are (layer + label value) and its tags.

    ``tags`` holds every Slicer tag as a string, e.g. ``Segmentation.Status``, ``TerminologyEntry``
    and free-form provenance such as ``HILA.ModelVersion``. ``extent`` is the (i0, i1, j0, j1, k0, k1)
    written by Slicer (None: computed on write). ``extra`` keeps unknown ``SegmentN_*`` fields.
    """

    id: str
    name: str
    color: Color
    label_value: int = 1
    layer: int = 0
    tags: Dict[str, str] = field(default_factory=dict)
    name_auto_generated: bool = False
    color_auto_generated: bool = False
    extent: Optional[Tuple[int, int, int, int, int, int]] = None
    extra: Dict[str, str] = field(default_factory=dict)


@dataclass
class Segmentation:
    """Segments over voxel layers (uint8 SimpleITK images on one grid, one per layer).

    A segment's voxels are those of ``layers[segment.layer]`` equal to ``segment.label_value``.
    ``conversion_parameters`` and ``contained_representations`` are Slicer's (kept as read, or
    Slicer's defaults for new segmentations); ``header`` keeps unknown NRRD fields for round trips.
    """

    segments: List[Segment]
    layers: List[sitk.Image]
    master_representation: str = MASTER_REPRESENTATION
    contained_representations: List[str] = field(default_factory=lambda: [MASTER_REPRESENTATION])
    conversion_parameters: Optional[str] = None
    reference_extent_offset: Tuple[int, int, int] = (0, 0, 0)
    header: Dict[str, str] = field(default_factory=dict)
    source: Optional[str] = None

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_label_image(cls, label: sitk.Image, labels: Union[Sequence[LabelSpec], Mapping[int, str], None] = None,
                         tags: Optional[Mapping[str, str]] = None) -> "Segmentation":
        """A one-layer segmentation on ``label``'s exact grid: one segment per ``(value, name, colour)``.

        Values present in the image but not in ``labels`` still become segments (``Segment_<v>``), so no
        voxel is silently dropped; listed values absent from the image become empty segments.
        ``tags`` (e.g. model provenance) are set on every segment.
        """
        label = as_label_image(label)
        if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
            raise HilaError(f"label map: a scalar 3-D image is needed, got {label.GetDimension()}-D")
        specs = _normalise_label_specs(labels)
        arr = sitk.GetArrayViewFromImage(label)
        present = [int(v) for v in np.unique(arr) if v != 0]
        if len(present) > MAX_SEGMENTS:
            raise HilaError(f"label map: {len(present)} distinct values, more than the {MAX_SEGMENTS} segments a label "
                            "map plausibly holds (an intensity image?)")
        listed = {v for v, _, _ in specs}
        for v in present:
            if v not in listed:
                specs.append((v, f"Segment_{v}", None))
        specs.sort(key=lambda s: s[0])
        max_value = max([v for v, _, _ in specs], default=0)
        if max_value > 65535:
            raise HilaError(f"label map: label value {max_value} is too large for a segmentation")
        dtype = sitk.sitkUInt8 if max_value <= 255 else sitk.sitkUInt16
        layer = sitk.Cast(label, dtype)
        segments: List[Segment] = []
        used_ids: set = set()
        for i, (value, name, color) in enumerate(specs):
            if value < 1:
                raise HilaError(f"label map: label value {value} for '{name}' must be 1 or more (0 is background)")
            auto_color = color is None
            color = label_color(name, color, i)  # a known structure: the one table's colour, whatever was given
            seg_id = _unique_id(name, used_ids)
            segments.append(Segment(
                id=seg_id, name=name, color=_check_color(color, name), label_value=int(value), layer=0,
                tags=with_entry(name, tags), name_auto_generated=name == f"Segment_{value}",
                color_auto_generated=auto_color,
            ))
        seg = cls(segments=segments, layers=[layer])
        seg.conversion_parameters = DEFAULT_CONVERSION_PARAMETERS.replace("{geometry}", slicer_geometry_string(layer))
        seg.validate()
        return seg

    # -- queries ---------------------------------------------------------------------------------
    @property
    def grid(self) -> sitk.Image:
        """The first layer: its size/origin/spacing/direction are the segmentation's grid."""
        return self.layers[0]

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.segments]

    def segment(self, key: str) -> Segment:
        """A segment by ID, else by name (case-insensitive when unambiguous)."""
        for s in self.segments:
            if s.id == key:
                return s
        matches = [s for s in self.segments if s.name == key] or \
                  [s for s in self.segments if s.name.lower() == str(key).lower()]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise HilaError(f"no segment '{key}' (segments: {', '.join(self.names) or 'none'})")
        raise HilaError(f"several segments are named '{key}'; use the segment ID")

    def mask_array(self, key: str) -> np.ndarray:
        """Boolean voxel mask (k, j, i order, as ``sitk.GetArrayFromImage``) of one segment."""
        s = self.segment(key)
        return sitk.GetArrayViewFromImage(self.layers[s.layer]) == s.label_value

    def mask(self, key: str) -> sitk.Image:
        """A 0/1 uint8 image of one segment (by name or ID) on the segmentation's grid."""
        m = sitk.GetImageFromArray(self.mask_array(key).astype(np.uint8))
        m.CopyInformation(self.grid)
        return m

    def label_values(self) -> Dict[str, int]:
        """Segment ID -> value used by :meth:`to_label_image` (the label values when they are unique)."""
        values = [s.label_value for s in self.segments]
        if len(set(values)) == len(values):
            return {s.id: s.label_value for s in self.segments}
        return {s.id: i + 1 for i, s in enumerate(self.segments)}

    def to_label_image(self, reference: Optional[sitk.Image] = None,
                       values: Optional[Mapping[str, int]] = None) -> sitk.Image:
        """Merge all segments into one label image (later segments win where segments overlap).

        Label values are the segments' own when unique across layers, else 1..n in segment order
        (``values`` maps segment ID -> value to choose). With ``reference`` the result is placed on
        the reference grid, which must be the same lattice (only padding/cropping, no resampling);
        voxels that would fall outside it are an error.
        """
        values = dict(values) if values is not None else self.label_values()
        top = max(values.values(), default=0)
        dtype = np.uint8 if top <= 255 else np.uint16
        out = np.zeros(sitk.GetArrayViewFromImage(self.grid).shape, dtype=dtype)
        arrays = [sitk.GetArrayViewFromImage(layer) for layer in self.layers]
        for s in self.segments:
            if s.id in values:
                out[arrays[s.layer] == s.label_value] = values[s.id]
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(self.grid)
        if reference is not None:
            img = onto_lattice(img, reference, self.source or "segmentation")
        return img

    def overlap_error(self, where: str, remedy: Optional[str] = None,
                      values: Optional[Mapping[str, int]] = None) -> Optional[HilaError]:
        """The error for the first two segments (in different layers) that share voxels, or None (see
        :func:`overlap_error`). ``values`` (segment ID -> label value): only those segments, and segments
        given one value may overlap (they become one label anyway)."""
        chosen = [s for s in self.segments if values is None or s.id in values]
        for i, a in enumerate(chosen):
            for b in chosen[i + 1:]:
                if a.layer == b.layer or (values is not None and values[a.id] == values[b.id]):
                    continue
                err = overlap_error([(a.name, lambda a=a: self.mask_array(a.id)),
                                     (b.name, lambda b=b: self.mask_array(b.id))],
                                    self.grid, where, remedy or OVERLAP_REMEDY["workspace"])
                if err:
                    return err
        return None

    # -- editing ---------------------------------------------------------------------------------
    def add_segment(self, mask: Union[sitk.Image, np.ndarray], name: str, color: Optional[Color] = None,
                    tags: Optional[Mapping[str, str]] = None, segment_id: Optional[str] = None) -> Segment:
        """Add a segment from a 0/1 mask on this grid, in the first layer where it overlaps nothing
        (else a new layer), as Slicer does."""
        if isinstance(mask, sitk.Image):
            diff = grid_difference(mask, self.grid)
            if diff:
                raise HilaError(f"segment '{name}': mask is not on the segmentation's grid ({diff})")
            mask = sitk.GetArrayViewFromImage(mask)
        m = np.asarray(mask) != 0
        shape = sitk.GetArrayViewFromImage(self.grid).shape
        if m.shape != shape:
            raise HilaError(f"segment '{name}': mask shape {m.shape} != segmentation shape {shape}")
        for li, layer in enumerate(self.layers):
            arr = sitk.GetArrayViewFromImage(layer)
            used = [s.label_value for s in self.segments if s.layer == li]
            value = max(used, default=0) + 1
            if value <= np.iinfo(arr.dtype).max and not np.any(arr[m]):
                break
        else:
            li, value = len(self.layers), 1
            empty = sitk.Image(self.grid.GetSize(), sitk.sitkUInt8)
            empty.CopyInformation(self.grid)
            self.layers.append(empty)
        arr = sitk.GetArrayFromImage(self.layers[li])
        arr[m] = value
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(self.grid)
        self.layers[li] = new
        auto_color = color is None
        color = label_color(name, color, len(self.segments))
        seg = Segment(id=segment_id or _unique_id(name, {s.id for s in self.segments}), name=name,
                      color=_check_color(color, name), label_value=int(value), layer=li, tags=with_entry(name, tags),
                      color_auto_generated=auto_color)
        if any(s.id == seg.id for s in self.segments):
            raise HilaError(f"segment ID '{seg.id}' already exists")
        self.segments.append(seg)
        return seg

    def copy(self) -> "Segmentation":
        layers = [sitk.Image(layer) for layer in self.layers]
        return Segmentation(segments=copy.deepcopy(self.segments), layers=layers,
                            master_representation=self.master_representation,
                            contained_representations=list(self.contained_representations),
                            conversion_parameters=self.conversion_parameters,
                            reference_extent_offset=tuple(self.reference_extent_offset),
                            header=dict(self.header), source=self.source)

    def cropped(self) -> "Segmentation":
        """The same segments with every layer cut to the box holding all their voxels, as Slicer's writer crops: the
        file's origin moves there and ``reference_extent_offset`` says where the box starts on the full grid (whose
        description stays in the conversion parameters). Who reads it pays for the result, not for the volume."""
        box = voxel_box([sitk.GetArrayViewFromImage(layer) for layer in self.layers]) or (slice(0, 1),) * 3
        start = [box[2].start, box[1].start, box[0].start]  # (i, j, k); nothing segmented: one voxel keeps the grid
        size = [box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
        out = self.copy()
        if out.conversion_parameters is None:  # the full grid stays described where Slicer looks for it
            out.conversion_parameters = DEFAULT_CONVERSION_PARAMETERS.replace("{geometry}", slicer_geometry_string(self.grid))
        out.layers = [sitk.RegionOfInterest(layer, size, start) for layer in self.layers]
        out.reference_extent_offset = tuple(int(o) + s for o, s in zip(self.reference_extent_offset, start))
        for s in out.segments:
            s.extent = None  # recomputed on write, in the cropped file's voxels
        return out

    # -- checks ----------------------------------------------------------------------------------
    def validate(self, where: str = "segmentation") -> None:
        """Raise HilaError when segments and layers do not fit together (IDs, layers, values, grids)."""
        if not self.layers:
            raise HilaError(f"{where}: no voxel layer")
        for i, layer in enumerate(self.layers):
            if layer.GetDimension() != 3 or layer.GetNumberOfComponentsPerPixel() != 1:
                raise HilaError(f"{where}: layer {i} is not a scalar 3-D image")
            if i and grid_difference(layer, self.layers[0], 1e-9):
                raise HilaError(f"{where}: layer {i} is on another grid than layer 0")
        ids = set()
        slots = set()
        for s in self.segments:
            if s.id in ids:
                raise HilaError(f"{where}: segment ID '{s.id}' appears twice")
            ids.add(s.id)
            if not 0 <= s.layer < len(self.layers):
                raise HilaError(f"{where}: segment '{s.id}' has layer {s.layer}, but there are "
                                f"{len(self.layers)} layer(s)")
            if not 1 <= s.label_value <= 65535:
                raise HilaError(f"{where}: segment '{s.id}' has label value {s.label_value} (must be 1..65535)")
            if (s.layer, s.label_value) in slots:
                raise HilaError(f"{where}: two segments share layer {s.layer} and label value {s.label_value}")
            slots.add((s.layer, s.label_value))
            for text, what in ((s.id, "ID"), (s.name, "name")):
                if not text or "\n" in text or "\r" in text:
                    raise HilaError(f"{where}: segment {what} {text!r} is empty or has a line break")
            for k, v in s.tags.items():
                if not k or ":" in k or "|" in k or "|" in str(v):
                    raise HilaError(f"{where}: segment '{s.id}' tag {k!r} contains ':' or '|'")
            _check_color(s.color, s.name)


def _unique_id(name: str, used: set) -> str:
    base = re.sub(r"[\r\n]+", " ", name).strip() or "Segment"
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


def _check_color(color: Iterable[float], name: str) -> Color:
    try:
        c = tuple(float(x) for x in color)
    except (TypeError, ValueError):
        raise HilaError(f"segment '{name}': colour {color!r} is not three numbers") from None
    if len(c) != 3 or not all(0.0 <= x <= 1.0 for x in c):
        raise HilaError(f"segment '{name}': colour {color!r} must be three numbers between 0 and 1")
    return c  # type: ignore[return-value]


def _normalise_label_specs(labels) -> List[LabelSpec]:
    if labels is None:
        return []
    if isinstance(labels, Mapping):
        items = [(int(v), str(n), None) for v, n in labels.items()]
    else:
        items = []
        for spec in labels:
            spec = tuple(spec)
            if len(spec) == 2:
                items.append((int(spec[0]), str(spec[1]), None))
            elif len(spec) == 3:
                items.append((int(spec[0]), str(spec[1]), None if spec[2] is None else tuple(spec[2])))
            else:
                raise HilaError(f"label spec {spec!r}: expected (value, name[, colour])")
    seen = set()
    for v, n, _ in items:
        if v in seen:
            raise HilaError(f"label value {v} is named twice")
        seen.add(v)
    return items


def voxel_box(arrays: Sequence[np.ndarray]) -> Optional[Tuple[slice, slice, slice]]:
    """The smallest (k, j, i) box holding every non-zero voxel of ``arrays`` (one shape), or None when all are empty;
    the first axis is searched over the whole array, the other two only in the slab it found (small results are cheap
    on big volumes)."""
    box: List[Optional[Tuple[int, int]]] = [None, None, None]
    for arr in arrays:
        ks = np.flatnonzero(np.asarray(arr).any(axis=(1, 2)))
        if not ks.size:
            continue
        slab = np.asarray(arr)[ks[0]:ks[-1] + 1]
        for a, hit in enumerate((ks, np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1))))):
            lo, hi = int(hit[0]), int(hit[-1])
            box[a] = (lo, hi) if box[a] is None else (min(box[a][0], lo), max(box[a][1], hi))
    if box[0] is None:
        return None
    return tuple(slice(lo, hi + 1) for lo, hi in box)  # type: ignore[return-value,misc]


def onto_lattice(img: sitk.Image, reference: sitk.Image, where: str) -> sitk.Image:
    """Pad/crop ``img`` onto ``reference`` when both share one lattice (same spacing and direction,
    voxel centres aligned); otherwise return it unchanged (callers compare grids and report)."""
    if not grid_difference(img, reference):
        return img
    sp_a, sp_b = np.asarray(img.GetSpacing()), np.asarray(reference.GetSpacing())
    if np.any(np.abs(sp_a - sp_b) > 1e-5 * np.maximum(1, sp_a)) or \
            np.any(np.abs(np.asarray(img.GetDirection()) - np.asarray(reference.GetDirection())) > 1e-5):
        return img
    idx = img.TransformPhysicalPointToContinuousIndex(reference.GetOrigin())
    if any(abs(x - round(x)) > 1e-3 for x in idx):
        return img
    out = sitk.Resample(img, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
    lost = int(np.count_nonzero(sitk.GetArrayViewFromImage(img))) - int(np.count_nonzero(sitk.GetArrayViewFromImage(out)))
    if lost > 0:
        raise HilaError(f"{where}: {lost} segmented voxels lie outside the image grid [{describe_grid(reference)}]")
    return out


#: what to do about an overlap, by where it was found
OVERLAP_REMEDY = {
    "label map": "write a .seg.nrrd, which keeps overlapping segments in layers",
    "workspace": "remove the overlap (Segment Editor, masking 'overwrite other segments') and submit again",
}


def first_overlap(named: Sequence[Tuple[str, object]]) -> Optional[Tuple[str, str, int, Tuple[int, int, int]]]:
    """(name a, name b, shared voxels, IJK of the first) for the first two of ``named`` (name, boolean (k, j, i)
    mask, or a function giving it) that overlap; None when none do."""
    masks: Dict[int, np.ndarray] = {}

    def mask(i: int) -> np.ndarray:
        if i not in masks:
            m = named[i][1]
            masks[i] = np.asarray(m() if callable(m) else m, bool)
        return masks[i]

    for i in range(len(named)):
        for j in range(i + 1, len(named)):
            both = mask(i) & mask(j)
            n = int(np.count_nonzero(both))
            if n:
                k, jj, ii = (int(v) for v in np.argwhere(both)[0])
                return str(named[i][0]), str(named[j][0]), n, (ii, jj, k)
    return None


def overlap_error(named: Sequence[Tuple[str, object]], grid: sitk.Image, where: str,
                  remedy: str = OVERLAP_REMEDY["workspace"]) -> Optional[HilaError]:
    """The error for the first two of ``named`` that overlap (see :func:`first_overlap`), or None: a label map
    holds one value per voxel, and letting the later segment win silently would erase part of an organ. Names
    the segments, the voxel count and where the first shared voxel is."""
    found = first_overlap(named)
    if found is None:
        return None
    a, b, n, ijk = found
    lps = grid.TransformIndexToPhysicalPoint(ijk)
    return HilaError(f"{where}: segments '{a}' and '{b}' overlap in {n} voxel(s), the first at IJK {ijk}, "
                     f"LPS ({lps[0]:.1f}, {lps[1]:.1f}, {lps[2]:.1f}) mm; a voxel can carry one label: {remedy}")


def same_name_twice(names: Sequence[str]) -> Optional[Tuple[str, str]]:
    """The first two names that are the same in any case (and spacing), or None: two segments or structures
    of one name would be merged into one organ (and another left empty) or one of them dropped."""
    seen: Dict[str, str] = {}
    for name in names:
        key = " ".join(str(name).casefold().split())
        if key in seen:
            return seen[key], str(name)
        seen[key] = str(name)
    return None


def _short(x: float) -> str:
    """The shortest round-trip form (Slicer's geometry strings): 3.0468759536743195, 0, 1."""
    x = float(x)
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)



def slicer_geometry_string(img: sitk.Image) -> str:
    """Slicer's serialized image geometry: IJK-to-RAS matrix (row-major, 16 values) then the extent."""
    ijk_to_ras = ijk_to_lps(img)
    ijk_to_ras[:2, :] *= -1
    vals = [_short(v) for v in ijk_to_ras.flatten()]
    size = img.GetSize()
    ext = [0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1]
    return ";".join(vals + [str(e) for e in ext]) + ";"
