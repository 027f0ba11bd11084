"""The simulated radiologist: a corrector (tolerant | exact, registered by name) and the effort model.

Effort model (seconds = FIXED_S per case + SLICE_S per touched slice + MM_S per mm of contour redrawn).
The constants are ASSUMPTIONS, not fitted to a study: they are set so that drawing a prostate gland from
scratch on ~15 slices of T2 MRI costs about 5-7 minutes, the order of magnitude reported for manual
prostate contouring; a case accepted as predicted still costs FIXED_S for opening and reviewing it.
Contour length is the reference's boundary in a redrawn slice; a slice that only needs erasing (nothing
to draw) costs SLICE_S alone (select the segment on the slice and delete). When correcting a proposal
would cost more than clearing it (one SLICE_S) and drawing the case from scratch, the radiologist does
that instead: a useless proposal never costs more than no proposal.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
from scipy import ndimage

from . import registrar

FIXED_S = 30.0    # open, scroll through and accept a case (assumption)
SLICE_S = 8.0     # select a slice, pick the segment and the tool (assumption)
MM_S = 0.1        # per mm of contour redrawn: ~10 mm/s with a brush or pen (assumption)

CORRECTORS: Dict[str, Callable] = {}


register_corrector = registrar(CORRECTORS)  # ``@register_corrector("weak")`` makes ``--corrector weak`` available


def slice_axis(spacing_zyx) -> int:
    """The array axis (z,y,x order) with the largest spacing: the axis a radiologist scrolls along."""
    return int(np.argmax(np.asarray(spacing_zyx, float)))


def _inplane(spacing_zyx, axis: int):
    return [s for i, s in enumerate(spacing_zyx) if i != axis]


def contour_mm(mask2d: np.ndarray, sp2d) -> float:
    """Boundary length of a 2-D mask: boundary pixels times the mean in-plane spacing."""
    if not mask2d.any():
        return 0.0
    edge = mask2d & ~ndimage.binary_erosion(mask2d)
    return float(edge.sum()) * float(np.mean(sp2d))


def boundary_distance_mm(a: np.ndarray, b: np.ndarray, sp2d) -> float:
    """Symmetric in-slice boundary distance (max of both directions, mm); inf when one is empty."""
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    ea, eb = a & ~ndimage.binary_erosion(a), b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~eb, sampling=sp2d)
    db = ndimage.distance_transform_edt(~ea, sampling=sp2d)
    return float(max(da[ea].max(), db[eb].max()))


def seconds(slices: int, mm: float) -> float:
    return FIXED_S + SLICE_S * slices + MM_S * mm


def _effort(slices: int, mm: float) -> dict:
    return {"slices": int(slices), "contour_mm": round(mm, 1), "seconds": round(seconds(slices, mm), 1)}


def draw_from_scratch(ref: np.ndarray, spacing_zyx) -> dict:
    """Effort of drawing every labelled slice of every label."""
    ax = slice_axis(spacing_zyx)
    sp2d = _inplane(spacing_zyx, ax)
    slices, mm = 0, 0.0
    for k in range(ref.shape[ax]):
        s = np.take(ref, k, axis=ax)
        if s.any():
            slices += 1
            mm += sum(contour_mm(s == v, sp2d) for v in np.unique(s) if v)
    return _effort(slices, mm)


def _or_from_scratch(corrected: Tuple[np.ndarray, dict], ref: np.ndarray, spacing_zyx) -> Tuple[np.ndarray, dict]:
    """The cheaper of correcting the proposal and clearing it to draw from scratch (see the module docstring)."""
    scratch = draw_from_scratch(ref, spacing_zyx)
    if corrected[1]["seconds"] <= scratch["seconds"] + SLICE_S:
        return corrected
    return ref.copy(), dict(scratch, seconds=round(scratch["seconds"] + SLICE_S, 1), cleared=True)


@register_corrector("tolerant")
def tolerant(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 2.0) -> Tuple[np.ndarray, dict]:
    """Redraw (to the reference) each slice where some label is off by more than ``tolerance_mm``; accept the rest."""
    ax = slice_axis(spacing_zyx)
    sp2d = _inplane(spacing_zyx, ax)
    out = pred.copy()
    values = [int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v]
    slices, mm = 0, 0.0
    for k in range(ref.shape[ax]):
        p, r = np.take(pred, k, axis=ax), np.take(ref, k, axis=ax)
        if not p.any() and not r.any():
            continue
        if all(boundary_distance_mm(p == v, r == v, sp2d) <= tolerance_mm for v in values):
            continue
        idx = [slice(None)] * ref.ndim
        idx[ax] = k
        out[tuple(idx)] = r
        slices += 1
        mm += sum(contour_mm(r == v, sp2d) for v in values)  # erasing a slice: select + delete, no drawing
    return _or_from_scratch((out, _effort(slices, mm)), ref, spacing_zyx)


@register_corrector("exact")
def exact(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 0.0) -> Tuple[np.ndarray, dict]:
    """Corrected to the reference everywhere; every slice that differs is touched."""
    ax = slice_axis(spacing_zyx)
    sp2d = _inplane(spacing_zyx, ax)
    slices, mm = 0, 0.0
    for k in range(ref.shape[ax]):
        p, r = np.take(pred, k, axis=ax), np.take(ref, k, axis=ax)
        if not np.array_equal(p, r):
            slices += 1
            mm += sum(contour_mm(r == v, sp2d) for v in np.unique(r) if v)
    return _or_from_scratch((ref.copy(), _effort(slices, mm)), ref, spacing_zyx)


def degrade(label: np.ndarray, spacing_zyx, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    """A rough label: in-plane dilation or erosion by 1-2 voxels, a missed end slice, or boundary noise."""
    ax = slice_axis(spacing_zyx)
    kind = ["dilate", "erode", "missed_end_slice", "boundary_noise"][int(rng.integers(4))]
    out = label.copy()
    st = np.ones((3, 3, 3), bool)
    sl = [slice(None)] * 3
    sl[ax] = [0, 2]
    st[tuple(sl)] = False  # in-plane only
    it = int(rng.integers(1, 3))
    for v in [int(v) for v in np.unique(label) if v]:
        m = label == v
        if kind == "dilate":
            out[ndimage.binary_dilation(m, st, iterations=it) & (out == 0)] = v
        elif kind == "erode":
            out[m & ~ndimage.binary_erosion(m, st, iterations=it)] = 0
        elif kind == "boundary_noise":
            edge = m ^ ndimage.binary_erosion(m, st)
            out[edge & (rng.random(m.shape) < 0.5)] = 0
    if kind == "missed_end_slice":
        ks = np.flatnonzero(np.any(label > 0, axis=tuple(i for i in range(3) if i != ax)))
        if ks.size > 1:
            sl = [slice(None)] * 3
            sl[ax] = int(ks[-1] if rng.random() < 0.5 else ks[0])
            out[tuple(sl)] = 0
    return out, kind
