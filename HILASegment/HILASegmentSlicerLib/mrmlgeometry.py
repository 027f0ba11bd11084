"""Arrays and geometry exchanged between engine objects (SimpleITK, LPS) and MRML nodes (numpy, RAS).

Slicer hands volumes over as a numpy array in IJK order reversed (``array[k, j, i]``, the same
order as ``sitk.GetArrayFromImage``) plus a 4x4 IJKToRAS matrix; the engine works on SimpleITK
images whose origin/direction are LPS. The glue does nothing but call these functions, so every
conversion is tested here on real oblique MRI and CT without Slicer.

Also here: the Segment Editor's masking rule as a pure function, so writing AI output into a
segmentation can respect it exactly as an editor effect would.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # SimpleITK is imported where an image is made, not when Slicer loads the module
    import SimpleITK as sitk

__all__ = [
    "LPS_TO_RAS", "lps_to_ras", "ras_to_lps", "ijk_to_ras_matrix", "geometry_from_ijk_to_ras",
    "image_to_array", "array_to_image", "grid_image", "voxel_to_ras", "same_geometry", "label_masks",
    "masks_to_label", "edit_allowed_mask", "mask_segment_ids", "color_to_float",
]

#: RAS = LPS_TO_RAS @ LPS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(points: Sequence[float] | np.ndarray) -> np.ndarray:
    """Points (..., 3) from LPS to RAS; the same flip converts RAS back to LPS."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJKToRAS matrix of a SimpleITK image (what ``volumeNode.SetIJKToRASMatrix`` takes): the engine's one
    IJK -> LPS (``HILASegmentLib.formats.voxelgrid.ijk_to_lps``), flipped to RAS."""
    from HILASegmentLib.formats.voxelgrid import ijk_to_lps  # SimpleITK: loaded where an image is handled

    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    return _FLIP4 @ ijk_to_lps(image)


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """(origin, spacing, direction) in SimpleITK's LPS terms from a 4x4 IJKToRAS matrix (the RAS flip of the engine's
    ``voxelgrid.grid_of``)."""
    from HILASegmentLib.formats.voxelgrid import grid_of  # SimpleITK: loaded where an image is handled

    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise ValueError(f"IJKToRAS must be 4x4, got {m.shape}")
    try:
        return grid_of(_FLIP4 @ m)
    except ValueError:
        raise ValueError("IJKToRAS has a zero or non-finite axis") from None


def image_to_array(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """(array indexed [k, j, i], IJKToRAS) for ``slicer.util.updateVolumeFromArray`` / ``addVolumeFromArray``."""
    import SimpleITK as sitk  # lazily: importing the Slicer module must not load SimpleITK

    return sitk.GetArrayFromImage(image), ijk_to_ras_matrix(image)


def array_to_image(array: np.ndarray, ijk_to_ras: np.ndarray, reference: Optional[sitk.Image] = None) -> sitk.Image:
    """A SimpleITK image from a Slicer array ``[k, j, i]`` and its IJKToRAS matrix.

    ``reference`` (optional) supplies metadata the matrix cannot carry (none is copied now, the
    argument exists so callers can pass the source image and get its exact grid checked).
    """
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D array [k, j, i], got shape {arr.shape}")
    import SimpleITK as sitk  # lazily: importing the Slicer module must not load SimpleITK

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    if reference is not None and reference.GetSize() != img.GetSize():
        raise ValueError(f"array size {img.GetSize()} differs from the reference {reference.GetSize()}")
    return img


def grid_image(shape: Sequence[int], ijk_to_ras: np.ndarray) -> sitk.Image:
    """An empty (zero, uint8) SimpleITK image of the grid of ``shape`` (k, j, i) and ``ijk_to_ras``."""
    import SimpleITK as sitk  # lazily: importing the Slicer module must not load SimpleITK

    img = sitk.Image([int(shape[2]), int(shape[1]), int(shape[0])], sitk.sitkUInt8)
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def voxel_to_ras(ijk_to_ras: np.ndarray, ijk: Sequence[float] | np.ndarray) -> np.ndarray:
    """RAS position(s) of continuous index/indices (i, j, k) — note the order: i first, as MRML does."""
    p = np.atleast_2d(np.asarray(ijk, dtype=float))
    h = np.c_[p, np.ones(len(p))] @ np.asarray(ijk_to_ras, dtype=float).T
    out = h[:, :3]
    return out[0] if np.ndim(ijk) == 1 else out


def same_geometry(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    """Two IJKToRAS matrices describe the same grid (within ``tol`` mm / direction units)."""
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), atol=tol, rtol=0))


def label_masks(label: np.ndarray, values: Iterable[int]) -> Dict[int, np.ndarray]:
    """One uint8 0/1 array per label value (what ``updateSegmentBinaryLabelmapFromArray`` takes)."""
    lab = np.asarray(label)
    return {int(v): (lab == v).astype(np.uint8) for v in values}


def masks_to_label(masks: Mapping[int, np.ndarray], shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """A label array from per-value 0/1 masks, later values winning where they overlap (deterministic)."""
    arrays = {int(v): np.asarray(m) for v, m in masks.items()}
    if shape is None:
        if not arrays:
            raise ValueError("no masks and no shape given")
        shape = next(iter(arrays.values())).shape
    out = np.zeros(shape, dtype=np.uint8 if max(arrays, default=0) < 256 else np.uint16)
    for v in sorted(arrays):
        m = arrays[v]
        if m.shape != tuple(shape):
            raise ValueError(f"mask for label {v} has shape {m.shape}, expected {tuple(shape)}")
        out[m > 0] = v
    return out


def edit_allowed_mask(mode: str, shape: Tuple[int, ...], segments: Mapping[str, np.ndarray] | None = None,
                      visible: Iterable[str] = (), mask_segment: Optional[str] = None,
                      intensity: Optional[np.ndarray] = None,
                      intensity_range: Optional[Tuple[float, float]] = None,
                      edited: Optional[str] = None) -> np.ndarray:
    """Where the Segment Editor's masking lets an edit write (bool array), as its own rule does.

    The rule is ``vtkMRMLSegmentationNode::GenerateEditMask`` (read in Slicer's source): "inside"
    modes allow the union of all / the visible segments, the edited one included; "outside" modes
    forbid that union with the ``edited`` segment left out; "inside single segment" with no mask
    segment allows nothing; the intensity range then removes voxels outside it.

    ``mode`` is the mask mode's name (``vtkMRMLSegmentationNode.ConvertMaskModeToString``, e.g.
    "PaintAllowedEverywhere", "...InsideAllSegments", "...InsideVisibleSegments",
    "...OutsideAllSegments", "...OutsideVisibleSegments", "...InsideSingleSegment"); ``segments``
    are the *other* segments' 0/1 arrays (never the ones being written). An intensity range, when
    on, further restricts to source voxels inside it.
    """
    segments = dict(segments or {})
    key = mode.lower().replace("_", "")
    if "everywhere" in key:
        allowed = np.ones(shape, dtype=bool)
    else:
        union = np.zeros(shape, dtype=bool)
        for s in mask_segment_ids(mode, segments, visible, mask_segment, edited):
            union |= np.asarray(segments[s]) > 0
        allowed = union if "inside" in key else ~union
    if intensity is not None and intensity_range is not None:
        lo, hi = intensity_range
        iv = np.asarray(intensity)
        allowed &= (iv >= lo) & (iv <= hi)
    return allowed


def mask_segment_ids(mode: str, segment_ids: Iterable[str], visible: Iterable[str] = (),
                     mask_segment: Optional[str] = None, edited: Optional[str] = None) -> list:
    """The segments whose union the mask ``mode`` reads (:func:`edit_allowed_mask`'s rule), so a writer exports only
    those: none for "everywhere", the mask segment for "single", the visible or all ones, the edited one left out
    in "outside" modes."""
    key = mode.lower().replace("_", "")
    ids = list(segment_ids)
    if "everywhere" in key:
        return []
    if "single" in key:
        chosen = [mask_segment] if mask_segment in ids else []
    elif "visible" in key:
        shown = set(visible)
        chosen = [s for s in ids if s in shown]
    elif "all" in key:
        chosen = ids
    else:
        raise ValueError(f"unknown Segment Editor mask mode: {mode!r}")
    return [s for s in chosen if s != edited] if "outside" in key and edited is not None else chosen


def color_to_float(color: Sequence[float]) -> Tuple[float, float, float]:
    """A colour as three floats in [0, 1] (cards may store 0-255 integers or 0-1 floats)."""
    c = [float(x) for x in list(color)[:3]]
    if any(x > 1.0 for x in c):
        c = [x / 255.0 for x in c]
    return tuple(max(0.0, min(1.0, x)) for x in c)  # type: ignore[return-value]
