"""Which corrections disagree far more than their peers with a model that never trained on them.

Why a robust peer rule: a model's Dice against good corrections varies with the case and the organ
(a small prostate scores lower than a bladder), so a fixed threshold alone flags whole organs when the
model is weak and nothing when it is strong. Per label, among the corrections scored by the same model
in the same round (the peers), a correction is an outlier when its Dice is below
``median - k * 1.4826 * MAD`` (the MAD scaled to a normal standard deviation; k = 3 by default) *and*
below an absolute ``floor`` (0.5 by default: a correction the model agrees with at Dice 0.6 is not
suspect however tight its peers are). The MAD is taken at least ``min_spread`` (0.05) so that peers
that agree almost perfectly do not make an ordinary correction an outlier. With fewer than
``min_peers`` (3) scored corrections nothing is flagged: there is no "typical" to compare with.
A label that neither the correction nor the prediction contains (Dice of two empty masks) is skipped.

Mild errors (a contour drawn a voxel or two off, a ragged brush edge) move Dice less than a good model's own
error does, so Dice alone never finds them (recall 0 on them, issue 26). Two boundary figures, judged against the
peers in the same robust way when the scan supplies them (``boundary_evidence``): the model's median probability
on the voxels just outside the correction (``outside_p``; two-sided: high where the contour stops inside what the
model calls organ, low where it runs beyond it), and how ragged the contour is (``ragged``: voxels a closing
(in-plane where the slices are coarser) fills, per boundary voxel; a painted or traced contour is smooth). Cut-offs chosen by measurement on real
models and the simulated radiologist's degradations (README, *Suspect labels*), and judged only among at least
``BOUNDARY_MIN_PEERS`` corrections.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

K_MAD = 3.0
FLOOR = 0.5
MIN_SPREAD = 0.05
MIN_PEERS = 3
K_EDGE = 2.0                # |robust z| of outside_p
MIN_SPREAD_EDGE = 0.05      # outside_p's spread is at least this (a skewed figure near 0 for most models)
K_RAGGED = 3.0              # robust z of ragged (one-sided) ...
MIN_SPREAD_RAGGED = 0.02
RAGGED_FLOOR = 0.08         # ... and at least this: 120 clean corrections reached 0.052, half an edge missing 0.16
BOUNDARY_MIN_PEERS = 6      # a median and MAD of 3-5 cases' figures mostly measure the model's per-case error


def _neighbourhood(spacing_zyx: Sequence[float]) -> List[Tuple[int, int, int]]:
    """The offsets of a 3x3 box within the slices when one axis is much coarser (MR, CT slices), else a 3x3x3 cube."""
    sp = np.asarray(spacing_zyx, float)
    flat = int(np.argmax(sp)) if sp.max() > 1.5 * sp.min() else None
    return [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
            if flat is None or (a, b, c)[flat] == 0]


def _shifted(mask: np.ndarray, offsets: List[Tuple[int, int, int]], fill: bool, combine) -> np.ndarray:
    """``combine`` (any: dilation, all: erosion) of ``mask`` moved by each offset; ``fill`` beyond the array."""
    pad = np.pad(mask, 1, constant_values=fill)
    n = mask.shape
    out = None
    for a, b, c in offsets:
        moved = pad[1 + a:1 + a + n[0], 1 + b:1 + b + n[1], 1 + c:1 + c + n[2]]
        out = moved.copy() if out is None else combine(out, moved, out=out)
    return out


def boundary_evidence(correction: np.ndarray, probabilities: Mapping[str, np.ndarray],
                      labels: Sequence[Tuple[int, str]], spacing_zyx: Sequence[float]) -> Dict[str, dict]:
    """Per label name with a non-empty correction and a model probability: ``outside_p`` and ``ragged`` (above).

    ``correction``: the label map (z, y, x); ``probabilities``: the model's probability per label name on the same
    grid (0 outside the region it ran on). Computed on the label's bounding box plus a margin: a pelvic CT is large,
    an organ small. Plain numpy shifts (no scipy: the training tier does not ship it)."""
    offsets = _neighbourhood(spacing_zyx)
    out: Dict[str, dict] = {}
    for value, name in labels:
        prob = probabilities.get(name)
        full = correction == value
        if prob is None or not full.any():
            continue
        idx = np.nonzero(full)
        box = tuple(slice(max(0, int(i.min()) - 3), int(i.max()) + 4) for i in idx)
        m, p = full[box], np.asarray(prob)[box]
        dilated = _shifted(m, offsets, False, np.logical_or)
        edge = m & ~_shifted(m, offsets, True, np.logical_and)
        ring = dilated & ~m
        gaps = _shifted(dilated, offsets, True, np.logical_and) & ~m  # closing = erosion of the dilation
        figures = {"ragged": round(float(gaps.sum() / max(1, edge.sum())), 4)}
        if ring.any():  # a label filling its whole box has no outside to read
            figures["outside_p"] = round(float(np.median(p[ring])), 4)
        out[name] = figures
    return out


def _cut(vals: np.ndarray, min_spread: float) -> Tuple[float, float]:
    """(median, robust spread): the MAD scaled to a normal standard deviation, at least ``min_spread``."""
    med = float(np.median(vals))
    return med, max(1.4826 * float(np.median(np.abs(vals - med))), min_spread)


def _boundary_outliers(rows: Sequence[dict], min_peers: int = BOUNDARY_MIN_PEERS) -> Dict[int, List[Tuple[str, str]]]:
    """Row index -> [(label, reason)] for the boundary figures, where at least ``min_peers`` rows carry them."""
    found: Dict[int, List[Tuple[str, str]]] = {}
    names = sorted({n for s in rows for n in (s.get("boundary") or {})})
    for n in names:
        have = [(i, s["boundary"][n]) for i, s in enumerate(rows) if n in (s.get("boundary") or {})]
        if len(have) < min_peers:
            continue
        for key, k, two_sided, min_spread, floor in (("outside_p", K_EDGE, True, MIN_SPREAD_EDGE, None),
                                                     ("ragged", K_RAGGED, False, MIN_SPREAD_RAGGED, RAGGED_FLOOR)):
            known = [(i, b) for i, b in have if b.get(key) is not None]
            if len(known) < min_peers:
                continue
            vals = np.array([b[key] for _, b in known], float)
            med, spread = _cut(vals, min_spread)
            for (i, b), v in zip(known, vals):
                z = (v - med) / spread
                if (z > k and (floor is None or v >= floor)) or (two_sided and z < -k):
                    what = {"ragged": "ragged contour",
                            "outside_p": "contour inside the model's organ" if z > 0 else "contour beyond the model's organ"}[key]
                    found.setdefault(i, []).append((n, f"{n} {what}: {key} {v:.3f} vs peers' median {med:.3f} "
                                                       f"(robust z {z:+.1f})"))
    return found


def find_suspects(scored: Sequence[dict], k: float = K_MAD, floor: float = FLOOR, min_spread: float = MIN_SPREAD,
                  min_peers: int = MIN_PEERS) -> List[dict]:
    """The outliers among ``scored`` (dicts with ``dice``: {label: Dice or None} and, where the scan measured them,
    ``boundary``: {label: boundary_evidence's figures}), each returned as a copy with ``labels`` (the labels it is
    an outlier on) and ``reason`` (one line with the figures)."""
    rows = [s for s in scored if isinstance(s.get("dice"), dict)]
    if len(rows) < min_peers:
        return []
    names = sorted({n for s in rows for n in s["dice"]})
    cut: Dict[str, Optional[tuple]] = {}
    for n in names:
        vals = np.array([s["dice"][n] for s in rows if s["dice"].get(n) is not None], dtype=float)
        if vals.size < min_peers:
            cut[n] = None
            continue
        med, spread = _cut(vals, min_spread)
        cut[n] = (med, min(med - k * spread, floor))
    boundary = _boundary_outliers(rows, max(min_peers, BOUNDARY_MIN_PEERS))
    out = []
    for i, s in enumerate(rows):
        bad = [(n, f"{n} Dice {s['dice'][n]:.3f} vs peers' median {cut[n][0]:.3f} (cut {cut[n][1]:.3f})")
               for n in names if cut.get(n) is not None and s["dice"].get(n) is not None and s["dice"][n] < cut[n][1]]
        bad += boundary.get(i, [])
        if bad:
            out.append(dict(s, labels=sorted({n for n, _ in bad}), reason="; ".join(w for _, w in bad)))
    return out
