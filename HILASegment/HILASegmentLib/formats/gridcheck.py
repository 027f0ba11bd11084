"""Checks that a voxel grid is what it claims to be, before it is trusted or written.

Ways a volume silently gets another geometry, all found by trying bad inputs:

* a *sheared* grid (axes not perpendicular) written to NIfTI, whose header can only hold a
  rotation: ITK coerces the axes and the corners move by centimetres, with a warning nobody sees;
* a DICOM series whose slices do not make one regular grid (a missing, duplicated or displaced slice,
  slices of two orientations, sizes, spacings or frames of reference, a slice without a position) or
  whose tags cannot place a pixel (an invalid orientation, a zero spacing): ITK stacks whatever it is
  given on a uniform grid built from the first slices, substituting defaults for what is invalid, so
  slices are drawn elsewhere. A gantry tilt (slices on a sheared lattice) is kept exactly instead.

Each is refused with one line naming the file: a different geometry is never written or read without a word.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from .voxelgrid import ijk_to_lps, index_to_lps

#: corners may move by float rounding only (NIfTI stores float32), never by a geometry change
CORNER_TOLERANCE_MM = 1e-3
#: slice positions must match the series spacing to this fraction of the spacing
SLICE_TOLERANCE = 0.05


def corner_points(grid) -> np.ndarray:
    """The physical (LPS) centres of the 8 corner voxels of a grid (an image, or a reader that read the header),
    shape (8, 3)."""
    n = np.asarray(grid.GetSize(), float) - 1
    idx = np.array([np.array(bits) * n for bits in np.ndindex(2, 2, 2)], float)
    return index_to_lps(grid, idx)


def image_corners(img: sitk.Image) -> np.ndarray:
    return corner_points(img)


def corner_shift_mm(a: sitk.Image, reader: sitk.ImageFileReader) -> float:
    """How far (mm) the corners of the grid ``reader`` reports lie from those of ``a`` (inf if sizes differ)."""
    if tuple(reader.GetSize()) != tuple(a.GetSize()):
        return float("inf")
    b = corner_points(reader)
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


#: ImageOrientationPatient's two vectors must be unit length and perpendicular to this; beyond it GDCM (under
#: SimpleITK) silently substitutes the identity, reading an oblique series as an axial one
ORIENTATION_TOLERANCE = 1e-3
#: the slices of one series must share their orientation to this (largest direction-cosine difference)
SAME_ORIENTATION = 1e-4
#: a stack whose slices drift in-plane by more than this (mm, first to last slice: a gantry tilt) is read as
#: the sheared grid it is; below it, as the orthogonal grid ITK builds (rounding in the stored positions)
SHEAR_DRIFT_MM = 0.01

#: the DICOM tags (SimpleITK metadata keys) a slice's geometry is judged from
SLICE_TAGS = {"rows": "0028|0010", "columns": "0028|0011", "spacing": "0028|0030", "orientation": "0020|0037",
              "position": "0020|0032", "frame": "0020|0052", "echo": "0018|0086", "frames": "0028|0008"}


@dataclass
class SliceGeometry:
    """One DICOM file's geometry tags as stored (strings; ``None`` when the tag is absent)."""

    name: str
    tags: Dict[str, Optional[str]]

    def get(self, key: str) -> Optional[str]:
        v = self.tags.get(key)
        return None if v is None else str(v).strip().rstrip("\x00").strip()

    def numbers(self, key: str, count: int) -> Optional[np.ndarray]:
        """The tag as ``count`` finite numbers, else None."""
        text = self.get(key)
        try:
            v = np.array([float(x) for x in (text or "").split("\\")], float)
        except ValueError:
            return None
        return v if len(v) == count and np.all(np.isfinite(v)) else None


@dataclass
class SeriesGeometry:
    """What :func:`check_slices` found: the files in slice order, and whether they step along a sheared
    lattice (a gantry tilt: the slices drift in their own plane), which the grid's third axis must follow."""

    order: List[int]
    sheared: bool = False


def _bad_slice(sl: SliceGeometry) -> Optional[str]:
    """Why one slice's own geometry tags cannot place its pixels (None when they can)."""
    for key, tag in (("rows", "Rows"), ("columns", "Columns")):
        v = sl.numbers(key, 1)
        if v is None or v[0] < 1:
            return f"{sl.name} has no valid {tag} ({sl.get(key) or 'missing'})"
    spacing = sl.numbers("spacing", 2)
    if sl.get("spacing") is None:
        return f"{sl.name} has no PixelSpacing: the size of its pixels is unknown"
    if spacing is None or np.any(spacing <= 0):
        return f"{sl.name} has PixelSpacing {sl.get('spacing')}: not two positive numbers (mm)"
    if sl.get("orientation") is None:
        return f"{sl.name} has no ImageOrientationPatient: the direction of its rows and columns is unknown"
    iop = sl.numbers("orientation", 6)
    if iop is None:
        return f"{sl.name} has ImageOrientationPatient {sl.get('orientation')}: not six numbers"
    x, y = iop[:3], iop[3:]
    nx, ny, dot = float(np.linalg.norm(x)), float(np.linalg.norm(y)), float(x @ y)
    if abs(nx - 1) > ORIENTATION_TOLERANCE or abs(ny - 1) > ORIENTATION_TOLERANCE:
        return (f"{sl.name} has ImageOrientationPatient {sl.get('orientation')}: its vectors are not unit length "
                f"({nx:.4g}, {ny:.4g}), so the orientation is unknown")
    if abs(dot) > ORIENTATION_TOLERANCE * nx * ny:
        angle = float(np.degrees(np.arccos(np.clip(dot / (nx * ny), -1, 1))))
        return (f"{sl.name} has ImageOrientationPatient {sl.get('orientation')}: rows and columns meet at "
                f"{angle:.2f} degrees, not 90 (not a valid orientation)")
    if sl.get("position") is None:
        return f"{sl.name} has no ImagePositionPatient: where its slice lies is unknown"
    if sl.numbers("position", 3) is None:
        return f"{sl.name} has ImagePositionPatient {sl.get('position')}: not three finite numbers (mm)"
    return None


def _plane(iop: np.ndarray) -> str:
    n = np.abs(np.cross(iop[:3], iop[3:]))
    k = int(np.argmax(n))
    return ("sagittal", "coronal", "axial")[k] if n[k] > 0.99 else "oblique"


def _odd_one(values: list, same) -> Tuple[int, int]:
    """(index of the reference value: the one most slices share, index of the first slice that differs from it,
    or -1). Compares the distinct values only, so a series of thousands of slices costs little."""
    key = lambda v: tuple(np.ravel(v).tolist()) if isinstance(v, np.ndarray) else v  # noqa: E731
    first: Dict[object, int] = {}
    count: Dict[object, int] = {}
    for i, v in enumerate(values):
        first.setdefault(key(v), i)
        count[key(v)] = count.get(key(v), 0) + 1
    if len(first) == 1:
        return 0, -1
    distinct = list(first)
    agree = [sum(count[b] for b in distinct if same(values[first[a]], values[first[b]])) for a in distinct]
    ref = first[distinct[int(np.argmax(agree))]]
    odd = next((i for i, v in enumerate(values) if not same(values[ref], v)), -1)
    return ref, odd


def check_slices(folder: Path, slices: Sequence[SliceGeometry], unread: Sequence[str] = ()) -> SeriesGeometry:
    """Check every slice's geometry against the series before a volume is built from it: each slice's own
    tags (size, PixelSpacing, ImageOrientationPatient, ImagePositionPatient present, finite and valid), the
    same size, spacing, orientation and frame of reference in every slice, no two slices at one position,
    positions along the normal evenly spaced, and every slice on one line (or one sheared lattice: a gantry
    tilt, kept exactly). Returns the slice order; anything else is one HilaError naming the file, because ITK
    stacks whatever it is given on a uniform grid and draws the odd slice (or all of them) elsewhere.
    ``unread``: files in the folder that were not read as part of the series (truncated ones), named in a gap."""
    where = f"{folder}: the DICOM series cannot be read exactly:"
    if not slices:
        return SeriesGeometry(order=[])
    frames = slices[0].numbers("frames", 1)
    if len(slices) == 1 and frames is not None and frames[0] > 1:
        return SeriesGeometry(order=[0])  # one multi-frame file: positions come from its frame headers
    for sl in slices:
        why = _bad_slice(sl)
        if why:
            raise HilaError(f"{where} {why}")
    names = [sl.name for sl in slices]
    for key, tag, same, show in (
        ("size", "size", lambda a, b: a == b, lambda sl: f"{sl.get('columns')}x{sl.get('rows')} pixels"),
        ("spacing", "PixelSpacing", lambda a, b: bool(np.allclose(a, b, rtol=1e-4, atol=0)),
         lambda sl: f"PixelSpacing {sl.get('spacing')} mm"),
        ("frame", "FrameOfReferenceUID", lambda a, b: a == b, lambda sl: f"frame of reference {sl.get('frame') or 'none'}"),
    ):
        if key == "size":
            values = [(int(sl.numbers("rows", 1)[0]), int(sl.numbers("columns", 1)[0])) for sl in slices]
        elif key == "spacing":
            values = [sl.numbers("spacing", 2) for sl in slices]
        else:
            values = [sl.get("frame") or "" for sl in slices]
        ref, odd = _odd_one(values, same)
        if odd >= 0:
            n_odd = sum(1 for v in values if not same(values[ref], v))
            raise HilaError(f"{where} slices of one series differ in {tag}: {names[odd]} has {show(slices[odd])}, "
                            f"{names[ref]} (and {len(slices) - n_odd - 1} more) {show(slices[ref])}")
    iops = [sl.numbers("orientation", 6) for sl in slices]
    ref, odd = _odd_one(iops, lambda a, b: float(np.abs(a - b).max()) <= SAME_ORIENTATION)
    if odd >= 0:
        frame = lambda v: np.column_stack([v[:3], v[3:], np.cross(v[:3], v[3:])])  # noqa: E731
        turn = float(np.degrees(np.arccos(np.clip((np.trace(frame(iops[odd]) @ frame(iops[ref]).T) - 1) / 2, -1, 1))))
        n_odd = sum(1 for v in iops if float(np.abs(iops[ref] - v).max()) > SAME_ORIENTATION)
        raise HilaError(f"{where} slice orientations differ (ImageOrientationPatient): {names[odd]} ({_plane(iops[odd])}) "
                        f"is turned {turn:.1f} degrees from {names[ref]} ({_plane(iops[ref])}); {n_odd} of "
                        f"{len(slices)} slices differ from the most common orientation")
    iop = iops[ref]
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    pos = np.array([sl.numbers("position", 3) for sl in slices])
    z = pos @ normal
    order = sorted(range(len(slices)), key=lambda i: (z[i], names[i]))
    z, pos = z[order], pos[order]
    names = [names[i] for i in order]
    if len(order) < 2:
        return SeriesGeometry(order=order)
    d = np.diff(z)
    moving = d[d > 1e-3]
    if not len(moving):
        raise HilaError(f"{where} all {len(order)} slices share one position ({z[0]:.3f} mm along the normal): "
                        "a time series or repeated acquisitions, not a volume")
    step = float(np.median(moving))
    dups = np.flatnonzero(d < SLICE_TOLERANCE * step)
    if len(dups):
        k = int(dups[0])
        a, b = slices[order[k]], slices[order[k + 1]]
        echoes = ""
        if (a.get("echo") or "") != (b.get("echo") or ""):
            echoes = (f" (EchoNumbers {a.get('echo') or 'none'} and {b.get('echo') or 'none'}: more than one echo in "
                      "one series; give each echo its own folder)")
        raise HilaError(f"{where} a duplicated slice position: {a.name} and {b.name} are both at {z[k]:.3f} mm"
                        f"{echoes}; {len(dups)} position(s) held by more than one slice")
    gap = slice_gap(z, names)
    if gap is not None:
        extra = f"; not read as part of the series: {', '.join(unread[:3])}{' ...' if len(unread) > 3 else ''}" if unread else ""
        raise HilaError(f"{folder}: the DICOM series is not evenly spaced: {gap}{extra}; it would be read with slices "
                        "in the wrong places")
    n = len(order)
    k = np.arange(n)[:, None]
    lattice = np.median(np.diff(pos, axis=0), axis=0)  # robust: one displaced slice moves neither step nor anchor
    anchor = np.median(pos - k * lattice, axis=0)
    off = np.linalg.norm(pos - anchor - k * lattice, axis=1)
    worst = int(np.argmax(off))
    if off[worst] > SLICE_TOLERANCE * np.linalg.norm(lattice):
        raise HilaError(f"{where} {names[worst]} lies {off[worst]:.3f} mm off the line through the other slices' "
                        "positions (displaced in its own plane)")
    drift = lattice - (lattice @ normal) * normal
    return SeriesGeometry(order=order, sheared=bool(np.linalg.norm(drift) * (n - 1) > SHEAR_DRIFT_MM))


def check_read_exactly(folder: Path, img: sitk.Image, slices: Sequence[SliceGeometry]) -> None:
    """The last word: every slice's first and far-corner pixels lie on the grid where its file puts them,
    else a HilaError naming the slice (whatever the reader did with the tags, nothing is drawn elsewhere)."""
    if img.GetDimension() != 3 or len(slices) != img.GetSize()[2]:
        return
    grid = ijk_to_lps(img)
    m, origin = grid[:3, :3], grid[:3, 3]
    step = float(np.linalg.norm(m[:, 2])) if len(slices) > 1 else float(min(img.GetSpacing()[:2]))
    for k, sl in enumerate(slices):
        iop, (dr, dc) = sl.numbers("orientation", 6), sl.numbers("spacing", 2)
        first = sl.numbers("position", 3)
        rows, cols = int(sl.numbers("rows", 1)[0]), int(sl.numbers("columns", 1)[0])
        far = first + (cols - 1) * dc * iop[:3] + (rows - 1) * dr * iop[3:]
        got_first = origin + m @ np.array([0.0, 0.0, k])
        got_far = origin + m @ np.array([cols - 1.0, rows - 1.0, k])
        err = max(float(np.linalg.norm(got_first - first)), float(np.linalg.norm(got_far - far)))
        if err > SLICE_TOLERANCE * max(step, float(min(dr, dc))):
            raise HilaError(f"{folder}: the DICOM series cannot be read exactly: {sl.name} would be read up to "
                            f"{err:.3g} mm from where its file puts it; refused rather than drawn there")
