"""Intensity normalisation and body detection, exactly as a model card describes them.

MR: z-score, optionally over non-zero voxels only (MONAI ``NormalizeIntensity(nonzero=True)``, what
TAPS does) and optionally after clipping to percentiles (robust to the bright outliers of MR).
CT: a Hounsfield window (level/width) scaled to ``out_range``. The same functions must be used for
training (the trainer imports them) so a model sees the same numbers in both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ..ground.errors import HilaError


def _zscore(a: np.ndarray, spec: Mapping[str, Any], where: str) -> np.ndarray:
    nonzero = bool(spec.get("nonzero", False))
    mask = a != 0 if nonzero else None
    values = a[mask] if mask is not None else a.ravel()
    if values.size == 0:
        raise HilaError(f"{where}: no body in the image (every voxel is 0)")
    clip = spec.get("clip_percentiles")
    out = a.copy()
    if clip:
        lo, hi = np.percentile(values, [float(clip[0]), float(clip[1])])
        values = np.clip(values, lo, hi)
        if mask is not None:
            out[mask] = np.clip(out[mask], lo, hi)
        else:
            np.clip(out, lo, hi, out=out)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    if not np.isfinite(std) or std <= 0:
        raise HilaError(f"{where}: no body in the image (all {'non-zero ' if nonzero else ''}voxels have one value)")
    if mask is not None:
        out[mask] = (out[mask] - mean) / std
    else:
        out -= mean
        out /= std
    return out


def _zscore_problem(spec: Mapping[str, Any], modality: str) -> Optional[str]:
    clip = spec.get("clip_percentiles")
    if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(finite_number(c) for c in clip)
                                 and 0 <= clip[0] < clip[1] <= 100):
        return f"normalization.clip_percentiles must be [low, high] within 0..100, got {clip!r}"
    if modality == "CT" and not spec.get("allow_ct", False):
        return "normalization zscore is for MR; a CT card uses ct_window (level/width)"
    return None


def _ct_window(a: np.ndarray, spec: Mapping[str, Any], where: str) -> np.ndarray:
    level, width = float(spec["level"]), float(spec["width"])
    lo, hi = level - width / 2.0, level + width / 2.0
    r0, r1 = (float(v) for v in spec.get("out_range", [0.0, 1.0]))
    out = np.clip(a, lo, hi)
    out -= lo
    out *= (r1 - r0) / (hi - lo)
    out += r0
    return out


def _ct_window_problem(spec: Mapping[str, Any], modality: str) -> Optional[str]:
    for k in ("level", "width"):
        if not finite_number(spec.get(k)):
            return f"normalization ct_window needs a number {k}, got {spec.get(k)!r}"
    if spec["width"] <= 0:
        return f"normalization.width must be positive, got {spec['width']!r}"
    rng = spec.get("out_range", [0.0, 1.0])
    if not (isinstance(rng, list) and len(rng) == 2 and all(finite_number(r) for r in rng) and rng[0] < rng[1]):
        return f"normalization.out_range must be [low, high], got {rng!r}"
    if modality != "CT":
        return "normalization ct_window (Hounsfield units) needs modality CT"
    return None


@dataclass(frozen=True)
class Normalization:
    """One scheme: how to apply it and what is wrong with a card's spec of it (None: nothing)."""

    apply: Callable[[np.ndarray, Mapping[str, Any], str], np.ndarray]
    problem: Callable[[Mapping[str, Any], str], Optional[str]]


#: The schemes by name (nnU-Net's pattern): a card's ``normalization.kind`` picks one; a new scheme
#: is one entry here, and both ``normalize`` and the card validation know it.
NORMALIZATIONS: Dict[str, Normalization] = {
    "zscore": Normalization(_zscore, _zscore_problem),
    "ct_window": Normalization(_ct_window, _ct_window_problem),
}


def normalization_problem(spec: Any, modality: str) -> Optional[str]:
    """What is wrong with a card's ``normalization`` for a modality, or None (used by card validation)."""
    if not isinstance(spec, dict) or spec.get("kind") not in NORMALIZATIONS:
        return f"normalization.kind must be one of {'/'.join(NORMALIZATIONS)}, got {spec!r}"
    return NORMALIZATIONS[spec["kind"]].problem(spec, modality)


def normalize(arr: np.ndarray, spec: Mapping[str, Any], where: str = "image") -> np.ndarray:
    """A float32 copy of ``arr`` normalised per ``spec`` (the card's ``normalization``)."""
    scheme = NORMALIZATIONS.get(spec.get("kind"))
    if scheme is None:
        raise HilaError(f"{where}: unknown normalization kind {spec.get('kind')!r}")
    return scheme.apply(np.asarray(arr, dtype=np.float32), spec, where)


def finite_number(x: Any) -> bool:
    """A real, finite int or float (not a bool): what card fields holding numbers must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def foreground_mask(raw: np.ndarray, normalized: np.ndarray, modality: str, rule: Optional[Any] = None) -> np.ndarray:
    """The body: where a model should look. Rules: ``above_mean`` (normalised z-score > 0, MONAI's
    CropForeground on a z-scored image, what TAPS crops to), ``nonzero``, or ``{"above": value}`` in
    raw intensity (CT default: > -500 HU, i.e. not air)."""
    if rule is None:
        rule = {"above": -500.0} if modality == "CT" else "above_mean"
    if rule == "above_mean":
        return normalized > 0
    if rule == "nonzero":
        return raw != 0
    if isinstance(rule, dict) and "above" in rule:
        return raw > float(rule["above"])
    raise HilaError(f"model card: unknown inference.foreground rule {rule!r}")


def bounding_box(mask: np.ndarray, margin=0) -> Optional[Tuple[Tuple[int, int], ...]]:
    """[lo, hi) per axis of the True voxels, widened by ``margin`` (one number or one per axis; the box
    may leave the array: it is zero-padded there)."""
    if not mask.any():
        return None
    margins = np.broadcast_to(np.asarray(margin, int), (mask.ndim,))
    box = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((int(idx[0]) - int(margins[ax]), int(idx[-1]) + 1 + int(margins[ax])))
    return tuple(box)


def guess_modality(arr: np.ndarray, metadata_modality: Optional[str] = None) -> Optional[str]:
    """'CT', 'MR' or None (cannot tell). A DICOM Modality tag wins; else CT shows air/fat below -200 HU."""
    if metadata_modality:
        m = metadata_modality.strip().upper()
        if m in ("CT", "MR"):
            return m
    sample = arr.ravel()[:: max(1, arr.size // 200_000)]
    if sample.size == 0:
        return None
    # Hounsfield units: air and fat lie below -200 (a pelvic CT cropped to the body still has ~1.7 %
    # there); MR intensities are >= 0, and z-scored MR never reaches -200.
    if float(np.mean(sample < -200)) > 0.001:
        return "CT"
    if float(sample.min()) >= -1.0:
        return "MR"
    return None


#: What says "a CT stored without its rescale" (Hounsfield units + 1024, e.g. uint16 from a DICOM whose RescaleIntercept
#: was dropped): soft tissue and fat (-150..100 HU) packed into 874..1124, bone above 1500. Measured on the three real
#: pelvic CTs shifted so (91 % of the body in the band) and four real T2 MR volumes (0.1-19 %).
OFFSET_CT_BAND = (874, 1124)
OFFSET_CT_SHARE = 0.6


def offset_ct_reason(arr: np.ndarray) -> Optional[str]:
    """Why ``arr`` looks like a CT stored without its rescale, in words, or None."""
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return None
    sample = arr.ravel()[:: max(1, arr.size // 200_000)]
    if float(sample.min()) < 0 or float(sample.max()) < 1500:
        return None
    body = sample[sample > 500]
    if body.size < 0.2 * sample.size:
        return None
    share = float(np.mean((body >= OFFSET_CT_BAND[0]) & (body <= OFFSET_CT_BAND[1])))
    if share <= OFFSET_CT_SHARE:
        return None
    return (f"it looks like a CT stored without its rescale, i.e. Hounsfield units + 1024 (no value below 0, "
            f"{share:.0%} of the body at {OFFSET_CT_BAND[0]}-{OFFSET_CT_BAND[1]}, where soft tissue would be, bone "
            f"up to {float(sample.max()):g}); store it in Hounsfield units (apply RescaleSlope/RescaleIntercept)")
