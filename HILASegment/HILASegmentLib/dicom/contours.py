"""Planar contours <-> voxel masks on an image grid, exactly (the geometry under RTSTRUCT).

Why our own and not rt-utils (OpenCV ``fillPoly``/``findContours``): measured on the real pelvic CT
RTSTRUCT (``Pelvic-Ref002``), rt-utils' masks differ from the reference rasterisation of the manual
contours by 879 / 751 / 2010 voxels (Dice 0.974 / 0.971 / 0.972 for prostate / bladder / rectum),
because OpenCV rounds vertices to whole pixels and fills boundary pixels; this module reproduces
the reference exactly (0 voxels differ, Dice 1.0). highdicom does not handle RTSTRUCT at all.

The rule: a voxel belongs to a structure when its centre lies inside the contours of its slice by
the even-odd rule, so contours on one slice combine by XOR (an inner contour is a hole, as the DICOM
standard's examples and the planning systems mean it). :func:`trace` is the exact inverse: it
returns the voxel-edge boundary of a mask, whose even-odd interior is that mask again, voxel for
voxel (the round trip mask -> RTSTRUCT -> mask is lossless).

Coordinates: ``index`` arrays are continuous (i, j, k) voxel indices of a SimpleITK image; points
are physical LPS millimetres (DICOM patient coordinates).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.voxelgrid import index_to_lps, lps_to_index

# How far (in voxels) a contour may lie from a slice centre and still belong to that slice, or beyond
# the image's outer voxel faces (planning systems clip the body outline there, rounding the
# coordinates they store: 4e-5 voxel on the real pelvic CT).
SLICE_TOLERANCE = 0.01


def points_to_index(points: np.ndarray, img: sitk.Image) -> np.ndarray:
    """Physical points (N, 3) -> continuous voxel indices (N, 3) on ``img``'s grid."""
    return lps_to_index(img, points)


def index_to_points(index: np.ndarray, img: sitk.Image) -> np.ndarray:
    """Continuous voxel indices (N, 3) -> physical points (N, 3) on ``img``'s grid."""
    return index_to_lps(img, index)


def contour_slice(index: np.ndarray, size: Sequence[int]) -> Tuple[int | None, str | None]:
    """The slice a planar contour (continuous indices) lies on, or (None, why not)."""
    k = index[:, 2]
    kr = int(round(float(k.mean())))
    if np.any(np.abs(k - kr) > SLICE_TOLERANCE):
        return None, f"lies between slices (k from {k.min():.3f} to {k.max():.3f})"
    lo = np.array([-0.5, -0.5, -0.5])
    hi = np.asarray(size, float) - 0.5
    outside = (index < lo - SLICE_TOLERANCE) | (index > hi + SLICE_TOLERANCE)
    if np.any(outside):
        return None, (f"lies outside the image (index range i {index[:, 0].min():.1f}..{index[:, 0].max():.1f}, "
                      f"j {index[:, 1].min():.1f}..{index[:, 1].max():.1f}, k {kr}; image size "
                      f"{'x'.join(str(s) for s in size)})")
    return kr, None


def fill_even_odd(polygons: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixel centres inside ``polygons`` ((N, 2) arrays of (i, j))
    by the even-odd rule over all of them together.

    Scan-line parity: each non-horizontal edge toggles, on every row j it spans (half-open in j), the
    pixels right of its crossing; a running sum mod 2 along the row gives inside/outside.
    """
    toggles = np.zeros((height, width + 1), np.int32)
    for poly in polygons:
        x = np.asarray(poly[:, 0], float)
        y = np.asarray(poly[:, 1], float)
        x2, y2 = np.roll(x, -1), np.roll(y, -1)
        keep = y != y2
        xa, ya, xb, yb = x[keep], y[keep], x2[keep], y2[keep]
        lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
        r0 = np.clip(np.ceil(lo).astype(int), 0, height)
        r1 = np.clip(np.ceil(hi).astype(int), 0, height)
        counts = r1 - r0
        if not counts.sum():
            continue
        edge = np.repeat(np.arange(len(xa)), counts)
        rows = np.repeat(r0, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        xs = xa[edge] + (rows - ya[edge]) * (xb[edge] - xa[edge]) / (yb[edge] - ya[edge])
        cols = np.clip(np.ceil(xs).astype(int), 0, width)
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2) == 1


def rasterise(contours_by_slice: Dict[int, List[np.ndarray]], size: Sequence[int]) -> np.ndarray:
    """Boolean (k, j, i) mask of size ``size`` (i, j, k) from planar contours in continuous indices."""
    out = np.zeros((size[2], size[1], size[0]), bool)
    for k, polys in contours_by_slice.items():
        out[k] = fill_even_odd([p[:, :2] for p in polys], size[0], size[1])
    return out


def _drop_collinear(loop: List[Tuple[float, float]]) -> np.ndarray:
    """A closed voxel-edge loop without its vertices in the middle of straight runs."""
    a = np.asarray(loop, float)
    prev, nxt = np.roll(a, 1, axis=0), np.roll(a, -1, axis=0)
    cross = (a[:, 0] - prev[:, 0]) * (nxt[:, 1] - a[:, 1]) - (a[:, 1] - prev[:, 1]) * (nxt[:, 0] - a[:, 0])
    return a[cross != 0]


def trace(mask: np.ndarray) -> List[np.ndarray]:
    """Closed loops ((N, 2) arrays of (i, j) at voxel corners) along the boundary of a 2-D (j, i) mask.

    Every boundary edge appears in exactly one loop, oriented with the mask on its left, so the
    even-odd interior of all loops is exactly the mask (holes and separate islands included).
    """
    m = np.pad(np.asarray(mask, bool), 1)
    edges: Dict[Tuple[float, float], List[Tuple[float, float]]] = {}

    def add(a, b):
        edges.setdefault(a, []).append(b)

    # padded row/column p is image row/column p - 1; dj[j, i] is the edge between padded rows j and
    # j + 1, at image y = j - 0.5. Orientation (inside below: walk -x; inside right: walk +y) makes
    # every vertex have as many edges in as out, so walks from any vertex close into loops.
    dj = m[1:, :] != m[:-1, :]
    for j, i in zip(*np.nonzero(dj)):
        y = j - 0.5
        x0, x1 = i - 1.5, i - 0.5
        if m[j + 1, i]:
            add((x1, y), (x0, y))
        else:
            add((x0, y), (x1, y))
    di = m[:, 1:] != m[:, :-1]
    for j, i in zip(*np.nonzero(di)):
        x = i - 0.5
        y0, y1 = j - 1.5, j - 0.5
        if m[j, i + 1]:
            add((x, y0), (x, y1))
        else:
            add((x, y1), (x, y0))
    loops = []
    while edges:
        start = next(iter(edges))
        loop = [start]
        cur = start
        while True:
            outs = edges[cur]
            nxt = outs.pop()
            if not outs:
                del edges[cur]
            if nxt == start:
                break
            loop.append(nxt)
            cur = nxt
        loops.append(_drop_collinear(loop))
    return loops
