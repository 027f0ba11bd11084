"""The simulated radiologist: a corrector (tolerant, redraw, exact, box, weak; registered by name), the effort model.

Effort model (seconds = FIXED_S per case + SLICE_S per touched slice + MM_S per mm of contour redrawn).
The constants are ASSUMPTIONS, not fitted to a study: they are set so that drawing a prostate gland from
scratch on ~15 slices of T2 MRI costs about 5-7 minutes, the order of magnitude reported for manual
prostate contouring; a case accepted as predicted still costs FIXED_S for opening and reviewing it.
The ``tolerant`` radiologist corrects a touched slice, as one does with Segment Editor's paint and erase: the
contour redrawn is the part of the reference's boundary that lies more than the tolerance from the proposal's
(the missing part drawn, the excess cut off along it). The corrected slice is then submitted as the reference's
(a simplification: the kept part of the proposal lay within the tolerance of it). (Until
2026-12 a touched slice cost its whole contour, so correcting a slice cost as much as drawing it and only
slices accepted untouched saved time; ``--corrector redraw`` keeps that model for comparison.) Drawing from
scratch and the ``exact`` corrector count the whole contour of every slice they draw. A slice that only
needs erasing (nothing to draw) costs SLICE_S alone (select the segment on the slice and delete). When correcting a proposal
would cost more than clearing it (one SLICE_S) and drawing the case from scratch, the radiologist does
that instead: a useless proposal never costs more than no proposal.

The ``box`` corrector is ``tolerant`` with the box assistant (``hila assist``): on a touched slice a label whose
off part would take longer to draw than a box (MM_S per mm vs SLICE_BOX_S) is first redrawn by the assistant from
a 2-D box around the reference (jittered as the weak corrector's boxes); where the assistant's slice is off by
more than the proposal's the radiologist undoes it (the box was spent anyway), then redraws by hand what is still
off; each box costs SLICE_BOX_S (an assumption).

The ``weak`` corrector draws nothing: per label it places a box or RECIST lines (a long and a short
diameter) from the reference, with jitter, and the pseudo-mask is built from them by ``weak.pseudo_label``,
the builder of ``hila submit --box/--lines``. It costs FIXED_S + BOX_S per box + LINE_S per line, ignores
any prediction (so it also starts a model from nothing in round 0) and never clears to draw from scratch.
Jitter (ASSUMPTIONS, in mm, seeded): each face of a box lies N(0, BOX_JITTER_MM) outside the organ's
extent (voxel centres), a line's end points lie N(0, LINE_JITTER_MM) off the organ's longest chord (and
the longest chord perpendicular to it) in the slice where the organ is largest, moved within that slice.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..formats import weak
from ..formats.voxelgrid import index_to_lps
from ..ground import metrics
from ..ground.errors import HilaError
from ..ground.namedregistry import NamedRegistry
from ..inference import boxassist

#: what ``tolerant`` charges for a touched slice, recorded in a run's config.json (a run made under the older
#: whole-contour model, now ``redraw``, is refused on resume rather than continued under another effort model)
TOLERANT_MODEL = "off part of a touched slice's contour (2026-12)"

FIXED_S = 30.0    # open, scroll through and accept a case (assumption)
SLICE_S = 8.0     # select a slice, pick the segment and the tool (assumption)
MM_S = 0.1        # per mm of contour redrawn: ~10 mm/s with a brush or pen (assumption)

BOX_S = 15.0           # one box: find an organ's first and last slice and drag a 3-D ROI around it (assumption)
SLICE_BOX_S = 4.0      # one 2-D box on a slice for the box assistant (--corrector box): drag it, wait (assumption)
LINE_S = 8.0           # one diameter line on the organ's largest slice; RECIST takes two per organ (assumption)
BOX_JITTER_MM = 2.0    # sd of each box face around the organ's extent (assumption)
LINE_JITTER_MM = 1.5   # sd of each line end point, in the slice plane (assumption)
WEAK_MARKS = ("box", "lines", "mixed")  # --weak-marks: every label boxed, every label measured, or a coin per label

#: name -> corrector(pred, ref, spacing_zyx, tolerance_mm, **case) -> (label array, effort dict); ``case`` gives
#: image (SimpleITK, the reference's grid), labels ((value, name) pairs), rng and marks (WEAK_MARKS), which
#: only the weak corrector reads. A corrector whose effort has ``marks`` is submitted by its marks
#: (Workspace.submit_marks, quality weak).
CORRECTORS: NamedRegistry[Callable] = NamedRegistry()


register_corrector = CORRECTORS.under  # ``@register_corrector("weak")`` makes ``--corrector weak`` available


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


def seconds(slices: int, mm: float, boxes: int = 0) -> float:
    return FIXED_S + SLICE_S * slices + MM_S * mm + SLICE_BOX_S * boxes


def _effort(slices: int, mm: float, boxes: int = 0) -> dict:
    out = {"slices": int(slices), "contour_mm": round(mm, 1), "seconds": round(seconds(slices, mm, boxes), 1)}
    return dict(out, slice_boxes=int(boxes)) if boxes else out


def draw_from_scratch(ref: np.ndarray, spacing_zyx) -> dict:
    """Effort of drawing every labelled slice of every label. A corrector's effort also carries ``scratch_s``, this
    cost for the same case: effort over it compares rounds whose cases differ in size."""
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
        return corrected[0], dict(corrected[1], scratch_s=scratch["seconds"])
    return ref.copy(), dict(scratch, seconds=round(scratch["seconds"] + SLICE_S, 1), cleared=True,
                            scratch_s=scratch["seconds"])


def off_contour_mm(pred2d: np.ndarray, ref2d: np.ndarray, sp2d, tolerance_mm: float) -> float:
    """Length of the reference's boundary farther than ``tolerance_mm`` from the proposal's: what correcting
    the proposal redraws in this slice (all of it when the proposal is empty)."""
    if not ref2d.any():
        return 0.0
    er = ref2d & ~ndimage.binary_erosion(ref2d)
    if not pred2d.any():
        return float(er.sum()) * float(np.mean(sp2d))
    ep = pred2d & ~ndimage.binary_erosion(pred2d)
    d = ndimage.distance_transform_edt(~ep, sampling=sp2d)
    return float((d[er] > tolerance_mm).sum()) * float(np.mean(sp2d))


def proposal_effort(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 2.0) -> dict:
    """What the tolerant radiologist would spend correcting a proposal, over drawing the case from scratch, and the
    share of its slices touched. Scored on the same unseen TEST cases every round, it is simulate's paired effort
    curve (the corrected pool cases differ in size from round to round) and, for the full-supervision ceiling, the
    floor the effort model leaves a converged model."""
    _, e = _tolerant(pred, ref, spacing_zyx, tolerance_mm, whole=False)
    ax = slice_axis(spacing_zyx)
    other = tuple(i for i in range(ref.ndim) if i != ax)
    shown = int(((ref > 0) | (pred > 0)).any(axis=other).sum())
    return {"vs_scratch": e["seconds"] / e["scratch_s"], "touched": e["slices"] / shown if shown else 0.0,
            "cleared": bool(e.get("cleared"))}


def mean_proposal_effort(efforts: Sequence[dict]) -> Optional[dict]:
    """The mean of :func:`proposal_effort` over cases (None for none)."""
    if not efforts:
        return None
    return {k: round(float(np.mean([e[k] for e in efforts])), 3) for k in ("vs_scratch", "touched", "cleared")} | \
        {"cases": len(efforts)}


@register_corrector("tolerant")
def tolerant(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 2.0, **_) -> Tuple[np.ndarray, dict]:
    """Correct (to the reference) each slice where some label is off by more than ``tolerance_mm``, redrawing only
    the off part of its contour; accept the rest."""
    return _tolerant(pred, ref, spacing_zyx, tolerance_mm, whole=False)


@register_corrector("redraw")
def redraw(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 2.0, **_) -> Tuple[np.ndarray, dict]:
    """As ``tolerant``, but each touched slice's whole contour is redrawn (the effort model before 2026-12)."""
    return _tolerant(pred, ref, spacing_zyx, tolerance_mm, whole=True)


#: (slice index along the slice axis, the reference's 2-D mask of one label) -> the box assistant's 2-D mask
SliceBoxer = Callable[[int, np.ndarray], np.ndarray]


def _tolerant(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float, whole: bool,
              boxer: Optional[SliceBoxer] = None) -> Tuple[np.ndarray, dict]:
    ax = slice_axis(spacing_zyx)
    sp2d = _inplane(spacing_zyx, ax)
    out = pred.copy()
    values = [int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v]
    slices, mm, boxes = 0, 0.0, 0
    for k in range(ref.shape[ax]):
        p, r = np.take(pred, k, axis=ax), np.take(ref, k, axis=ax)
        if not p.any() and not r.any():
            continue
        off = [v for v in values if boundary_distance_mm(p == v, r == v, sp2d) > tolerance_mm]
        if not off:
            continue
        idx = [slice(None)] * ref.ndim
        idx[ax] = k
        out[tuple(idx)] = r
        slices += 1
        if whole:  # erasing a slice: select + delete, no drawing
            mm += sum(contour_mm(r == v, sp2d) for v in values)
            continue
        for v in values:
            by_hand = off_contour_mm(p == v, r == v, sp2d, tolerance_mm)
            if boxer is not None and v in off and MM_S * by_hand > SLICE_BOX_S:  # a box; its slice kept if closer
                by_hand, boxes = min(by_hand, off_contour_mm(boxer(k, r == v), r == v, sp2d, tolerance_mm)), boxes + 1
            mm += by_hand
    return _or_from_scratch((out, _effort(slices, mm, boxes)), ref, spacing_zyx)


@register_corrector("box")
def box_assisted(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 2.0, *, image: sitk.Image,
                 rng: np.random.Generator, **_) -> Tuple[np.ndarray, dict]:
    """As ``tolerant``, but a label off on a touched slice by more contour than a box is worth (MM_S per mm against
    SLICE_BOX_S: the radiologist sees how far off it is) is first redrawn by the box assistant from a 2-D box around
    the reference on that slice (each side N(0, BOX_JITTER_MM) outwards); the radiologist keeps the assistant's
    slice where it is off by less than the proposal's (undoes it otherwise) and then redraws by hand the part of the
    contour still off by more than the tolerance. Costs SLICE_BOX_S per box on top of ``tolerant``'s model; the
    effort also carries ``tolerant_s``, what ``tolerant`` charges for the same proposal."""
    assistant = boxassist.shared_assistant()  # HilaError with the install line when it is not installed
    ax = slice_axis(spacing_zyx)
    sp2d = _inplane(spacing_zyx, ax)
    arr = sitk.GetArrayViewFromImage(image)
    norm = boxassist.intensity_0_255(arr, boxassist.guess_modality(image))

    def boxer(k: int, r2d: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(r2d)
        step = np.asarray([sp2d[1], sp2d[0], sp2d[1], sp2d[0]], float)  # x (columns), y (rows) pixel sizes
        grow = rng.normal(0.0, BOX_JITTER_MM, 4) / step  # as place_box: each side moved outwards by N(0, sd)
        h, w = r2d.shape
        x0, y0 = max(0, int(round(cols.min() - grow[0]))), max(0, int(round(rows.min() - grow[1])))
        x1, y1 = min(w - 1, int(round(cols.max() + grow[2]))), min(h - 1, int(round(rows.max() + grow[3])))
        # as place_box: never thinner than one pixel (sides jittered inwards past each other on a tiny slice)
        rect = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        return assistant.segment_slice(np.take(norm, k, axis=ax), rect)

    label, eff = _tolerant(pred, ref, spacing_zyx, tolerance_mm, whole=False, boxer=boxer)
    # paired: what ``tolerant`` charges for the same proposal (both submit the reference's slices, so a run's
    # models are the same either way and this ratio is the box's saving alone)
    return label, dict(eff, tolerant_s=_tolerant(pred, ref, spacing_zyx, tolerance_mm, whole=False)[1]["seconds"])


@register_corrector("exact")
def exact(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 0.0, **_) -> Tuple[np.ndarray, dict]:
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


@register_corrector("weak")
def weak_marks(pred, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 0.0, *, image: sitk.Image,
               labels: Sequence[Tuple[int, str]], rng: np.random.Generator, marks: str = "box",
               builder: str = "ellipsoid", **_) -> Tuple[np.ndarray, dict]:
    """Boxes and/or RECIST lines placed from ``ref`` with jitter; the pseudo-mask they give (``weak.pseudo_label``,
    built by ``builder`` as ``hila submit --builder`` builds it) and the effort, which carries the marks (LPS) and each
    label's pseudo-mask Dice against the reference."""
    if marks not in WEAK_MARKS:
        raise HilaError(f"--weak-marks {marks}: use one of {', '.join(WEAK_MARKS)}")
    items, boxes, lines = [], 0, 0
    for value, name in labels:
        m = ref == value
        if not m.any():
            continue  # nothing to mark: the label stays empty in the pseudo-mask
        use_lines = marks == "lines" or (marks == "mixed" and rng.random() < 0.5)
        if use_lines:
            items.append({"label": name, "lines": place_lines(m, image, spacing_zyx, rng)})
            lines += 2
        else:
            items.append({"label": name, "box": place_box(m, image, rng)})
            boxes += 1
    if not items:
        raise HilaError("the reference is empty: nothing to mark")
    from ..inference import boxassist  # the weak-label builders (the assistant's loads only when asked for)

    _, build = boxassist.box_builder(builder)
    label, recorded = weak.pseudo_label(image, {"space": "LPS", "items": items}, labels, builder=build,
                                        builder_name=boxassist.CATALOG_NAME if build else "ellipsoid")
    arr = sitk.GetArrayFromImage(label)
    dice = {n: round(metrics.dice(arr == v, ref == v), 4) for v, n in labels if (ref == v).any()}
    return arr, {"slices": 0, "contour_mm": 0.0, "boxes": boxes, "lines": lines,
                 "seconds": round(FIXED_S + BOX_S * boxes + LINE_S * lines, 1), "marks": recorded, "pseudo_dice": dice}


def place_box(mask: np.ndarray, image: sitk.Image, rng: np.random.Generator) -> List[float]:
    """Two opposite corners (LPS mm) of the organ's extent (voxel centres, axis-aligned in LPS), each face moved
    outwards by N(0, BOX_JITTER_MM); never thinner than one voxel."""
    k, j, i = np.nonzero(mask)
    corners = index_to_lps(image, [(x, y, z) for x in (i.min(), i.max()) for y in (j.min(), j.max())
                                    for z in (k.min(), k.max())])
    lo = corners.min(0) - rng.normal(0.0, BOX_JITTER_MM, 3)
    hi = corners.max(0) + rng.normal(0.0, BOX_JITTER_MM, 3)
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, min(image.GetSpacing()) / 2)
    return [float(x) for x in np.concatenate([mid - half, mid + half])]


def place_lines(mask: np.ndarray, image: sitk.Image, spacing_zyx, rng: np.random.Generator) -> List[List[float]]:
    """RECIST-style long and short diameter (LPS mm) in the slice where the organ is largest: the longest chord,
    then the widest extent perpendicular to it, each end point jittered in the slice by N(0, LINE_JITTER_MM).
    Jitter that would make the lines miss each other is drawn again (a radiologist draws them crossing)."""
    ax = slice_axis(spacing_zyx)
    k = int(np.argmax(mask.sum(axis=tuple(i for i in range(3) if i != ax))))
    m2 = np.take(mask, k, axis=ax)

    def lps(rc: np.ndarray) -> np.ndarray:  # in-slice (row, col) -> LPS, through the 3-D index (k, j, i)
        zyx = np.insert(rc, ax, k, axis=1)
        return index_to_lps(image, zyx[:, ::-1])

    pts = lps(np.argwhere(m2))
    edge = lps(np.argwhere(m2 & ~ndimage.binary_erosion(m2)))
    if len(edge) > 400:
        edge = edge[np.linspace(0, len(edge) - 1, 400).astype(int)]
    d2 = ((edge[:, None, :] - edge[None, :, :]) ** 2).sum(-1)
    ia, ib = np.unravel_index(int(np.argmax(d2)), d2.shape)
    p, q = edge[ia], edge[ib]
    normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2 - ax]  # the slice axis in LPS
    if np.linalg.norm(q - p) < 1e-6:  # a one-voxel organ: a voxel-wide cross
        q = p + np.cross(normal, [1.0, 0, 0] if abs(normal[0]) < 0.9 else [0, 1.0, 0]) * min(spacing_zyx)
    u = (q - p) / np.linalg.norm(q - p)
    n = np.cross(normal, u)
    n /= np.linalg.norm(n)
    along, across = (pts - p) @ u, (pts - p) @ n
    step = float(min(spacing_zyx[i] for i in range(3) if i != ax))
    bins = np.round(along / step).astype(int)
    widths = {t: (across[bins == t].min(), across[bins == t].max()) for t in np.unique(bins)}
    t = max(widths, key=lambda t: widths[t][1] - widths[t][0])
    lo, hi = min(widths[t][0], -step / 2), max(widths[t][1], step / 2)  # across the long line
    s0, s1 = p + t * step * u + lo * n, p + t * step * u + hi * n
    placed = np.array([p, q, s0, s1])
    tol = float(np.linalg.norm(image.GetSpacing()))
    for _ in range(20):
        jit = placed + rng.normal(0.0, LINE_JITTER_MM, (4, 2)) @ np.stack([u, n])
        try:
            weak.crossing(jit[:2], jit[2:], tol)
            break
        except HilaError:
            continue
    else:
        jit = placed
    return [[float(x) for x in jit[:2].ravel()], [float(x) for x in jit[2:].ravel()]]


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
