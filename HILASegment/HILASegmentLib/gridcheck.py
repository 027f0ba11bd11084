"""Checks that a voxel grid is what it claims to be, before it is trusted or written.

Two ways a volume silently gets another geometry, both found by trying bad inputs:

* a *sheared* grid (axes not perpendicular) written to NIfTI, whose header can only hold a
  rotation: ITK coerces the axes and the corners move by centimetres, with a warning nobody sees;
* a DICOM series with a missing, duplicated or displaced slice, which ITK stacks as a uniform grid
  using the first slices' spacing, so every slice after the gap is drawn at the wrong place.

Both are refused with one line: a different geometry is never written or read without a word.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import HilaError

#: corners may move by float rounding only (NIfTI stores float32), never by a geometry change
CORNER_TOLERANCE_MM = 1e-3
#: slice positions must match the series spacing to this fraction of the spacing
SLICE_TOLERANCE = 0.05


def corner_points(size: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
                  direction: Sequence[float]) -> np.ndarray:
    """The physical (LPS) centres of the 8 corner voxels of a grid, shape (8, 3)."""
    D = np.asarray(direction, float).reshape(3, 3)
    s = np.asarray(spacing, float)
    n = np.asarray(size, float) - 1
    idx = np.array([np.array(bits) * n for bits in np.ndindex(2, 2, 2)], float)
    return np.asarray(origin, float) + (idx * s) @ D.T


def image_corners(img: sitk.Image) -> np.ndarray:
    return corner_points(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def corner_shift_mm(a: sitk.Image, reader: sitk.ImageFileReader) -> float:
    """How far (mm) the corners of the grid ``reader`` reports lie from those of ``a`` (inf if sizes differ)."""
    if tuple(reader.GetSize()) != tuple(a.GetSize()):
        return float("inf")
    b = corner_points(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    return float(np.abs(image_corners(a) - b).max())


def shear(direction: Sequence[float]) -> Optional[str]:
    """``None`` for a rotation (perpendicular axes); else which axes meet at which angle."""
    D = np.asarray(direction, float).reshape(3, 3)
    cols = D / np.linalg.norm(D, axis=0)
    worst, where = 0.0, ""
    for i, j in ((0, 1), (0, 2), (1, 2)):
        c = float(np.clip(cols[:, i] @ cols[:, j], -1.0, 1.0))
        if abs(c) > abs(worst):
            worst, where = c, f"axes {i + 1} and {j + 1} meet at {np.degrees(np.arccos(c)):.2f} degrees"
    return where if abs(worst) > 1e-5 else None


def slice_gap(positions: Sequence[float], files: Sequence[str]) -> Optional[str]:
    """``None`` when slice positions (mm along the slice normal, in reading order) are evenly spaced; else one
    phrase naming the first missing, duplicated or misplaced slice and its files."""
    z = np.asarray(positions, float)
    if len(z) < 3:
        return None if len(z) < 2 or abs(z[1] - z[0]) > 1e-6 else f"two slices at {z[0]:.3f} mm ({files[0]}, {files[1]})"
    d = np.diff(z)
    step = float(np.median(d))
    if abs(step) < 1e-6:
        return f"slices share one position ({z[0]:.3f} mm)"
    for k, dk in enumerate(d):
        if abs(dk - step) <= SLICE_TOLERANCE * abs(step):
            continue
        a, b = files[k], files[k + 1]
        if abs(dk) < SLICE_TOLERANCE * abs(step):
            return f"a duplicated slice: {a} and {b} are both at {z[k]:.3f} mm"
        ratio = dk / step
        if ratio > 1 and abs(ratio - round(ratio)) < SLICE_TOLERANCE:
            return (f"{int(round(ratio)) - 1} slice(s) missing between {a} ({z[k]:.3f} mm) and {b} "
                    f"({z[k + 1]:.3f} mm); the spacing is {abs(step):.3f} mm")
        return (f"uneven slice positions: {a} ({z[k]:.3f} mm) to {b} ({z[k + 1]:.3f} mm) is {abs(dk):.3f} mm, "
                f"the series spacing is {abs(step):.3f} mm")
    return None


def check_series_positions(folder: Path, reader: sitk.ImageSeriesReader, files: Sequence[str], img: sitk.Image) -> None:
    """Refuse a series whose slices are not evenly spaced (missing, duplicated, truncated or misplaced
    slices): ITK stacks them on a uniform grid regardless, drawing every slice after the gap elsewhere."""
    if len(files) != img.GetSize()[2] or len(files) < 2:
        return  # one multi-frame file (or a single slice): positions come from the frame headers
    normal = np.asarray(img.GetDirection(), float).reshape(3, 3)[:, 2]
    z = []
    for i in range(len(files)):
        try:
            pos = [float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
        except (RuntimeError, ValueError):
            return  # no ImagePositionPatient: nothing to check against
        z.append(float(np.dot(pos, normal)))
    names = [Path(f).name for f in files]
    gap = slice_gap(z, names)
    if gap is None:
        return
    unread = sorted(p.name for p in folder.iterdir() if p.is_file() and str(p) not in set(map(str, files))
                    and not p.name.startswith("."))
    extra = f"; not read as part of the series: {', '.join(unread[:3])}{' ...' if len(unread) > 3 else ''}" if unread else ""
    raise HilaError(f"{folder}: the DICOM series is not evenly spaced: {gap}{extra}; it would be read with slices "
                    "in the wrong places")
