"""Weak labels: quick clinical marks (a box, RECIST-style diameter lines) in physical mm -> a pseudo-mask.

Plain functions on SimpleITK images (numpy + SimpleITK only). Points are LPS (ITK's physical space)
unless ``ras=True`` (Slicer's RAS: x and y negated).

- ``box_mask(image, corners)``: two opposite corners X0,Y0,Z0,X1,Y1,Z1 -> the ellipsoid inscribed in
  the box, refined by the image: voxels of the ellipsoid whose
  intensity lies within the robust range (median +- 3.5 MAD-sigma) of the ellipsoid's central core, then
  holes filled and the largest connected piece kept. Falls back to the plain ellipsoid when the
  refinement keeps less than half of it.
- ``lines_mask(image, long, short)``: a long and a short diameter (each two points, 6 numbers) that
  cross in one slice -> their bounding box in 3-D (the third half-axis = half the short diameter),
  then as ``box_mask``.
- ``pseudo_label(image, marks, label_pairs)``: the label image of a whole set of marks, one item per
  label; the ONE builder behind ``hila submit --box/--lines``, Slicer's *Accept as weak* and
  ``hila simulate --corrector weak`` (all through ``Workspace.submit_marks``).

Marks (what the ledger keeps in the correction's effort JSON, key ``marks``)::

    {"space": "LPS" | "RAS",
     "items": [{"label": "prostate", "box": [x0, y0, z0, x1, y1, z1]},
               {"label": "bladder", "lines": [[x0, y0, z0, x1, y1, z1], [x0, y0, z0, x1, y1, z1]]}]}
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from .voxelgrid import index_to_lps


def parse_numbers(value, n: int, what: str) -> np.ndarray:
    """``n`` finite numbers from text ("1,2,3", as the command line gives them) or a sequence (stored marks)."""
    try:
        if isinstance(value, str):
            vals = np.asarray([float(v) for v in value.replace(";", ",").split(",") if v.strip()], float)
        else:
            vals = np.asarray(value, float).ravel()
    except (TypeError, ValueError):
        raise HilaError(f"{what} {value!r}: not numbers") from None
    if vals.size != n:
        raise HilaError(f"{what} {value!r}: need {n} comma-separated numbers (mm), got {vals.size}")
    if not np.all(np.isfinite(vals)):
        raise HilaError(f"{what} {value!r}: not finite (nan or inf); need {n} numbers in mm")
    return vals


def _to_lps(points: np.ndarray, ras: bool) -> np.ndarray:
    p = np.asarray(points, float).reshape(-1, 3).copy()
    if ras:
        p[:, :2] *= -1
    return p


def _physical_grid(image: sitk.Image, lo_idx: np.ndarray, hi_idx: np.ndarray) -> np.ndarray:
    """Physical points (z, y, x, 3) of the index sub-block [lo, hi] (ITK i, j, k order)."""
    ii, jj, kk = (np.arange(lo_idx[a], hi_idx[a] + 1) for a in range(3))
    K, J, I = np.meshgrid(kk, jj, ii, indexing="ij")
    return index_to_lps(image, np.stack([I, J, K], -1).astype(float))


def _index_block(image: sitk.Image, corners: np.ndarray, what: str):
    size = np.asarray(image.GetSize())
    pts = [np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(map(float, c)))) for c in
           [(x, y, z) for x in corners[:, 0] for y in corners[:, 1] for z in corners[:, 2]]]
    pts = np.asarray(pts)
    lo = np.floor(pts.min(0)).astype(int)
    hi = np.ceil(pts.max(0)).astype(int)
    if np.any(hi < 0) or np.any(lo > size - 1):
        raise HilaError(f"{what}: outside the image (index {lo.tolist()}..{hi.tolist()}, image size {size.tolist()})")
    return np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)


def _mm(c: np.ndarray) -> str:
    """Coordinates for a message, as given (no arithmetic on them: 1e308 would overflow with a warning)."""
    return "[" + ", ".join(f"{float(v):g}" for v in np.ravel(c)) + "]"


def image_extent(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) LPS corner in mm of the box holding the whole image (voxel edges included)."""
    size = np.asarray(image.GetSize(), float)
    corners = [image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in np.where(bits, size - 0.5, -0.5)))
               for bits in np.ndindex(2, 2, 2)]
    pts = np.asarray(corners, float)
    return pts.min(0), pts.max(0)


#: how far a box may reach beyond the image (mm, and as a fraction of the image's extent): a box drawn to the
#: edge of the field of view may overshoot a little; a box kilometres wide is a typing error, not a label
BOX_MARGIN_MM, BOX_MARGIN_FRACTION = 10.0, 0.05


def check_reach(image: sitk.Image, lo_mm: np.ndarray, hi_mm: np.ndarray, what: str) -> None:
    """HilaError when the box [lo_mm, hi_mm] (LPS) reaches further beyond the image's extent than
    :data:`BOX_MARGIN_MM` + :data:`BOX_MARGIN_FRACTION` of it: the one rule for boxes (weak labels, the assistant,
    Slicer's Fix with box)."""
    ext_lo, ext_hi = image_extent(image)
    margin = BOX_MARGIN_MM + BOX_MARGIN_FRACTION * (ext_hi - ext_lo)
    if np.any(lo_mm < ext_lo - margin) or np.any(hi_mm > ext_hi + margin):
        raise HilaError(f"{what}: reaches far beyond the image (outside its extent), which spans {_mm(ext_lo)} to "
                        f"{_mm(ext_hi)} mm; draw the box around the structure")


def box_mask(image: sitk.Image, corners: Sequence[float], ras: bool = False, refine: bool = True) -> np.ndarray:
    """Pseudo-mask (z, y, x bool array on the image grid) from two opposite box corners in mm."""
    c = _to_lps(corners, ras)
    if c.shape != (2, 3):
        raise HilaError("box: need X0,Y0,Z0,X1,Y1,Z1")
    lo_mm, hi_mm = c.min(0), c.max(0)
    check_reach(image, lo_mm, hi_mm, f"box {_mm(c)} (LPS mm)")
    if np.any(hi_mm <= lo_mm):
        raise HilaError(f"box {_mm(c)}: zero size along an axis")
    lo, hi = _index_block(image, np.stack([lo_mm, hi_mm]), f"box {_mm(c)}")
    centre, half = (lo_mm + hi_mm) / 2, (hi_mm - lo_mm) / 2
    half = np.maximum(half, np.asarray(image.GetSpacing()).min() / 2)
    # grow the block so that the grown ellipsoid fits
    lo2, hi2 = _index_block(image, np.stack([centre - 1.0 * half, centre + 1.0 * half]), "box")
    lo, hi = np.minimum(lo, lo2), np.maximum(hi, hi2)
    pts = _physical_grid(image, lo, hi)
    r = np.sqrt((((pts - centre) / half) ** 2).sum(-1))
    out = np.zeros(image.GetSize()[::-1], bool)
    sl = tuple(slice(lo[a], hi[a] + 1) for a in (2, 1, 0))
    ell = r <= 1.0
    if not ell.any():
        raise HilaError(f"box {_mm(c)}: smaller than one voxel of the image")
    mask = ell
    if refine:
        vals = sitk.GetArrayViewFromImage(image)[sl].astype(float)
        core = vals[r <= 0.5] if (r <= 0.5).any() else vals[ell]
        med = np.median(core)
        sig = 1.4826 * np.median(np.abs(core - med)) + 1e-6
        ok = (r <= 1.0) & (np.abs(vals - med) <= 3.5 * sig)
        ref = _largest_filled(ok)
        if ref.sum() >= 0.5 * ell.sum():
            mask = ref
    out[sl] = mask
    return out


def _largest_filled(m: np.ndarray) -> np.ndarray:
    img = sitk.GetImageFromArray(m.astype(np.uint8))
    img = sitk.BinaryMorphologicalClosing(img, [1, 1, 1])
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(img), sortByObjectSize=True)
    big = sitk.BinaryFillhole(sitk.Equal(cc, 1))
    return sitk.GetArrayFromImage(big).astype(bool)


def crossing(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Where two segments (2x3 LPS points each) cross: the midpoint of their closest points, which must lie
    inside both (5 % slack) and within ``tol`` mm of each other; HilaError otherwise."""
    a, b = np.asarray(a, float).reshape(2, 3), np.asarray(b, float).reshape(2, 3)
    u, v, w = a[1] - a[0], b[1] - b[0], a[0] - b[0]
    A, B, C, D, E = u @ u, u @ v, v @ v, u @ w, v @ w
    den = A * C - B * B
    s = 0.5 if den < 1e-9 else (B * E - C * D) / den
    t = 0.5 if den < 1e-9 else (A * E - B * D) / den
    if not (-0.05 <= s <= 1.05 and -0.05 <= t <= 1.05) or np.linalg.norm((a[0] + s * u) - (b[0] + t * v)) > tol:
        raise HilaError("lines: the long and the short diameter do not cross")
    return ((a[0] + s * u) + (b[0] + t * v)) / 2


def lines_mask(image: sitk.Image, long_line: Sequence[float], short_line: Sequence[float], ras: bool = False,
               refine: bool = True) -> np.ndarray:
    """Pseudo-mask from a long and a short diameter (each X0,Y0,Z0,X1,Y1,Z1 in mm) that cross."""
    return box_mask(image, lines_box(image, long_line, short_line, ras), ras=False, refine=refine)


def lines_box(image: sitk.Image, long_line: Sequence[float], short_line: Sequence[float], ras: bool = False) -> np.ndarray:
    """The LPS box (X0,Y0,Z0,X1,Y1,Z1) of two crossing diameters: their extent in the slice, half the short
    diameter either side of it across the slice (one box for the ellipsoid and the assistant alike)."""
    a, b = _to_lps(long_line, ras), _to_lps(short_line, ras)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 mm: refused below, in words, not with a warning
        la, lb = np.linalg.norm(a[1] - a[0]), np.linalg.norm(b[1] - b[0])
    pts = np.concatenate([a, b])
    check_reach(image, pts.min(0), pts.max(0), f"lines {_mm(a)} {_mm(b)} (LPS mm)")
    if la <= 0 or lb <= 0:
        raise HilaError("lines: a line of zero length")
    u, v = a[1] - a[0], b[1] - b[0]
    if np.linalg.norm(np.cross(u, v)) <= 0.05 * la * lb:  # within 3 degrees: no plane to span, no short diameter
        raise HilaError(f"lines: the long and the short diameter are parallel (long {_mm(a)}, short {_mm(b)}; the "
                        "same line twice?); draw the short diameter across the long one")
    centre = crossing(a, b, float(np.linalg.norm(image.GetSpacing())))
    n = np.cross(u, v)
    n = n / (np.linalg.norm(n) + 1e-12)
    pts = np.concatenate([a, b, [centre + n * lb / 2, centre - n * lb / 2]])
    return np.concatenate([pts.min(0), pts.max(0)])


def _items(marks: Mapping) -> list:
    """The items of ``marks``; HilaError when there are none (nothing to build a weak label from)."""
    items = marks.get("items") if isinstance(marks, Mapping) else None
    if not items:
        raise HilaError("marks: no box or lines given")
    return list(items)


def carry_marks(marks: Mapping, earlier: Optional[Mapping]) -> dict:
    """``marks`` plus the items of ``earlier`` (recorded marks) for labels ``marks`` does not name, in
    ``marks``' space; the earlier items come first. Empty ``marks`` are refused (HilaError)."""
    items = _items(marks)
    if not earlier or not earlier.get("items"):
        return dict(marks)
    swap = str(marks.get("space", "LPS")).upper() != str(earlier.get("space", "LPS")).upper()
    named = {str(i.get("label", "")).strip().lower() for i in items}
    kept = []
    for item in earlier["items"]:
        if str(item["label"]).lower() in named:
            continue
        # _to_lps negates x and y: its own inverse, so it maps either space to the other
        if "box" in item:
            kept.append({"label": item["label"], "box": _to_lps(item["box"], swap).ravel().tolist()})
        else:
            kept.append({"label": item["label"], "lines": [_to_lps(ln, swap).ravel().tolist() for ln in item["lines"]]})
    return dict(marks, items=kept + items)


def pseudo_label(image: sitk.Image, marks: Mapping, label_pairs: Sequence[Tuple[int, str]],
                 builder: Optional[Callable[[sitk.Image, np.ndarray], np.ndarray]] = None,
                 builder_name: str = "ellipsoid") -> Tuple[sitk.Image, dict]:
    """The weak label image (uint8, the image's grid) of ``marks`` (format in the module docstring) and the
    marks as recorded (label names as the workspace spells them, numbers as float lists, and ``builder``: what
    made the pseudo-masks).

    ``builder`` turns an LPS box (lines: their box, :func:`lines_box`) into a (z, y, x) mask, e.g. the box
    assistant's (``assist.box_builder``); None: the refined ellipsoid (:func:`box_mask`).

    Each item's pseudo-mask is painted with its label's value, largest first, so that where two overlap
    (a prostate box inside the bladder's lower end) the smaller organ keeps the contested voxels rather
    than vanishing inside the larger one. An unknown label, a label marked twice, an item with neither or
    both of box and lines, and an item whose pseudo-mask is empty are refused (HilaError naming it).
    """
    space = str(marks.get("space", "LPS")).upper()
    if space not in ("LPS", "RAS"):
        raise HilaError(f"marks: space {marks.get('space')!r}; use LPS or RAS")
    items = _items(marks)
    names = {str(n).lower(): (int(v), str(n)) for v, n in label_pairs}
    painted, recorded = [], []
    for item in items:
        asked = str(item.get("label", "")).strip()
        if asked.lower() not in names:
            raise HilaError(f"label {asked!r}: not a label of this workspace ({', '.join(n for _, n in names.values())})")
        value, name = names[asked.lower()]
        if any(r["label"] == name for r in recorded):
            raise HilaError(f"label {name}: marked twice; give one box or one pair of lines per label")
        if ("box" in item) == ("lines" in item):
            raise HilaError(f"label {name}: give a box or lines (a long and a short diameter), one of them")
        if "box" in item:
            box = parse_numbers(item["box"], 6, f"label {name}: box")
            mask = box_mask(image, box, ras=space == "RAS") if builder is None else \
                builder(image, _to_lps(box, space == "RAS").ravel())
            recorded.append({"label": name, "box": box.tolist()})
        else:
            lines = item["lines"]
            if len(lines) != 2:
                raise HilaError(f"label {name}: lines: need a long and a short diameter")
            long_l, short_l = (parse_numbers(ln, 6, f"label {name}: lines") for ln in lines)
            mask = lines_mask(image, long_l, short_l, ras=space == "RAS") if builder is None else \
                builder(image, lines_box(image, long_l, short_l, ras=space == "RAS"))
            recorded.append({"label": name, "lines": [long_l.tolist(), short_l.tolist()]})
        if not mask.any():
            raise HilaError(f"label {name}: the marks give an empty pseudo-mask")
        painted.append((int(mask.sum()), value, mask))
    out = np.zeros(image.GetSize()[::-1], np.uint8)
    for _, value, mask in sorted(painted, key=lambda t: -t[0]):
        out[mask] = value
    label = sitk.GetImageFromArray(out)
    label.CopyInformation(image)
    return label, {"space": space, "items": recorded, "builder": builder_name}
