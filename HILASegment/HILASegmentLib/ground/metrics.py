"""Overlap and boundary metrics: the one definition of Dice and HD95 that the gate, the simulator and effort use.

Surface distances come from SimpleITK's Maurer distance maps (physical units, any spacing), so the
inference tier needs no scipy.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    sa, sb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(np.logical_and(a, b))) / (sa + sb)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the surface of ``b`` (arrays in k,j,i order)."""
    ia = sitk.GetImageFromArray(a.astype(np.uint8))
    ib = sitk.GetImageFromArray(b.astype(np.uint8))
    sp = tuple(float(s) for s in reversed(list(spacing_zyx)))
    ia.SetSpacing(sp)
    ib.SetSpacing(sp)
    contour_a = sitk.GetArrayFromImage(sitk.LabelContour(ia, fullyConnected=False)) > 0
    # Distance to b's surface voxels (not to b's region): 0 on the surface, positive on both sides.
    dist_b = sitk.GetArrayFromImage(sitk.DanielssonDistanceMap(sitk.LabelContour(ib, fullyConnected=False),
                                                               inputIsBinary=True, useImageSpacing=True))
    return dist_b[contour_a]


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> Optional[float]:
    """Symmetric 95th-percentile Hausdorff distance in mm; 0 when both are empty, None when exactly one is."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        return 0.0
    if ea or eb:
        return None
    # Distances need only the box around both masks (plus a voxel so contours stay closed): CT grids are large.
    idx = np.nonzero(a | b)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    a, b = a[box], b[box]
    d = np.concatenate([_surface_distances(a, b, spacing_zyx), _surface_distances(b, a, spacing_zyx)])
    return float(np.percentile(d, 95))


def per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[Tuple[int, str]],
              spacing_zyx: Optional[Sequence[float]] = None) -> Dict[str, dict]:
    """``{name: {"dice": d, "hd95": h}}`` for label maps on one grid (hd95 only when ``spacing_zyx`` is given)."""
    if pred.shape != ref.shape:
        raise ValueError(f"label arrays differ in shape: {pred.shape} vs {ref.shape}")
    out: Dict[str, dict] = {}
    for value, name in labels:
        a, b = pred == value, ref == value
        m = {"dice": round(dice(a, b), 6)}
        if spacing_zyx is not None:
            h = hd95(a, b, spacing_zyx)
            m["hd95"] = None if h is None else round(h, 4)
        out[name] = m
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (ties get their mean rank); None with fewer than 3 pairs or a constant side.

    The quality measurements ask whether a predicted Dice *orders* cases like the true one, so ranks,
    not values, are compared.
    """
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.size < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return None
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v``, tied values sharing their mean rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, float)
    sv = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks
