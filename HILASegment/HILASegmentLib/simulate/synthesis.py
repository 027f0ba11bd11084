"""Synthetic images from label maps (SynthSeg-style): per-label and background-structure intensities,
a smooth bias field, blur and noise, on the appearance's spacing, cropped around the labels.

Appearance (a preset name or a JSON file with exactly these keys)::

    {"modality": "MR"|"CT", "spacing": [x, y, z], "labels": {"<value>": {"mean": m, "sd": s}},
     "background": {"mean": m, "sd": s, "structures": n}, "bias_field": b, "noise_sd": n,
     "blur_sd_mm": r, "case_jitter": j}

Per case, each listed label value gets the intensity mean ``m * (1 + j * N(0,1))`` and texture sd ``s``;
the background is split into ``n`` smooth structures whose means are drawn from N(m, s); the field
``exp(b * smooth noise)`` multiplies the image; then a Gaussian blur of ``r`` mm and noise of sd ``n``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..ground.errors import HilaError

PRESETS: Dict[str, dict] = {
    # T2-weighted prostate MRI on the MR training grid (1x1x3 mm); MSD/NCI zone values 1 (PZ, bright) and
    # 2 (TZ, darker); arbitrary units (the trainer z-scores). Contrast values are assumptions, not fitted.
    "t2w": {"modality": "MR", "spacing": [1.0, 1.0, 3.0],
            "labels": {"1": {"mean": 0.75, "sd": 0.06}, "2": {"mean": 0.38, "sd": 0.05}},
            "background": {"mean": 0.5, "sd": 0.15, "structures": 6}, "bias_field": 0.25, "noise_sd": 0.04,
            "blur_sd_mm": 0.6, "case_jitter": 0.08},
    # Pelvic CT in HU on the CT training grid (3 mm); values of the bundled pelvic CT labels 1..3.
    "ct": {"modality": "CT", "spacing": [3.0, 3.0, 3.0],
           "labels": {"1": {"mean": 40.0, "sd": 12.0}, "2": {"mean": 10.0, "sd": 8.0}, "3": {"mean": 30.0, "sd": 15.0}},
           "background": {"mean": 0.0, "sd": 60.0, "structures": 8}, "bias_field": 0.0, "noise_sd": 12.0,
           "blur_sd_mm": 1.0, "case_jitter": 0.1},
}
KEYS = {"modality", "spacing", "labels", "background", "bias_field", "noise_sd", "blur_sd_mm", "case_jitter"}
CROP_MARGIN_MM = 30.0


def load_appearance(spec: str) -> dict:
    """A preset name or a JSON file; unknown/missing keys, negative sd or a bad spacing are one-line errors."""
    if spec in PRESETS:
        return json.loads(json.dumps(PRESETS[spec]))
    p = Path(spec)
    if not p.is_file():
        raise HilaError(f"--appearance {spec}: neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        a = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HilaError(f"{p}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(a, dict):
        raise HilaError(f"{p}: appearance must be a JSON object")
    if set(a) - KEYS:
        raise HilaError(f"{p}: unknown appearance key(s) {', '.join(sorted(set(a) - KEYS))}")
    if KEYS - set(a):
        raise HilaError(f"{p}: missing appearance key(s) {', '.join(sorted(KEYS - set(a)))}")
    _validate(a, p)
    return a


def _num(v, where: str, p: Path, minimum: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise HilaError(f"{p}: {where} must be a finite number (JSON's NaN and Infinity are not)")
    if v < minimum:
        raise HilaError(f"{p}: {where} = {v} is negative" if minimum == 0 else f"{p}: {where} must be >= {minimum}")
    return float(v)


def _validate(a: dict, p: Path) -> None:
    if a["modality"] not in ("MR", "CT"):
        raise HilaError(f"{p}: modality must be MR or CT")
    sp = a["spacing"]
    if not (isinstance(sp, list) and len(sp) == 3) or any(_num(v, "spacing", p) <= 0 for v in sp):
        raise HilaError(f"{p}: spacing must be three positive numbers [x, y, z]")
    if not isinstance(a["labels"], dict):
        raise HilaError(f"{p}: labels must be an object {{\"<value>\": {{\"mean\": m, \"sd\": s}}}}")
    for k, d in list(a["labels"].items()) + [("background", a["background"])]:
        want = {"mean", "sd", "structures"} if k == "background" else {"mean", "sd"}
        if not isinstance(d, dict) or set(d) != want:
            raise HilaError(f"{p}: labels/{k} needs exactly the keys {', '.join(sorted(want))}")
        if k != "background" and not k.isdigit():
            raise HilaError(f"{p}: label key {k!r} is not a label value")
        _num(d["mean"], f"{k} mean", p, minimum=-1e9)
        _num(d["sd"], f"{k} sd", p)
    if not isinstance(a["background"]["structures"], int) or a["background"]["structures"] < 1:
        raise HilaError(f"{p}: background structures must be a positive integer")
    for k in ("bias_field", "noise_sd", "blur_sd_mm", "case_jitter"):
        _num(a[k], k, p)


def resample_crop(label: sitk.Image, spacing, margin_mm: float = CROP_MARGIN_MM) -> sitk.Image:
    """Nearest-neighbour onto ``spacing`` (same origin/direction), cropped to the labels' box plus a margin."""
    old_sp, old_sz = np.array(label.GetSpacing()), np.array(label.GetSize())
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(old_sz, old_sp, spacing)]
    res = sitk.Resample(label, size, sitk.Transform(), sitk.sitkNearestNeighbor, label.GetOrigin(), list(spacing),
                        label.GetDirection(), 0, label.GetPixelID())
    arr = sitk.GetArrayViewFromImage(res)
    idx = np.argwhere(arr > 0)
    if not idx.size:
        return res
    m = np.ceil(margin_mm / np.array(spacing)[::-1]).astype(int)
    lo = np.maximum(idx.min(0) - m, 0)
    hi = np.minimum(idx.max(0) + m + 1, arr.shape)
    return sitk.RegionOfInterest(res, [int(v) for v in (hi - lo)[::-1]], [int(v) for v in lo[::-1]])


def _smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian-smoothed noise of ``shape``.

    Wide fields (bias, background structures: sigma of tens of voxels) are drawn on a grid coarser by
    about sigma/4 and interpolated up: the same smoothness for ~1/100 of the filtering cost, which keeps
    synthesis a small part of a simulate run's wall time.
    """
    sigma = np.broadcast_to(np.asarray(sigma_vox, float), (len(shape),))
    step = np.maximum(np.floor(sigma / 4.0), 1).astype(int)
    coarse = tuple(int(np.ceil(n / s)) for n, s in zip(shape, step))
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / step, mode="reflect")
    if (step > 1).any():
        f = ndimage.zoom(f, [n / c for n, c in zip(shape, coarse)], order=1, mode="nearest", grid_mode=True)
        f = np.pad(f, [(0, max(0, n - m)) for n, m in zip(shape, f.shape)], mode="edge")[tuple(map(slice, shape))]
        f = ndimage.gaussian_filter(f, step / 2.0, truncate=3.0)  # rounds the linear interpolation's kinks
    return (f - f.mean()) / (f.std() + 1e-8)


def synthesize(label: sitk.Image, appearance: dict, seed: int) -> Tuple[sitk.Image, Dict[str, float]]:
    """An image on ``label``'s grid from its values; same label + appearance + seed -> the same image."""
    rng = np.random.default_rng(seed)
    arr = sitk.GetArrayFromImage(label).astype(np.int32)
    sp = np.array(label.GetSpacing(), float)[::-1]        # z, y, x
    shape = arr.shape
    bg = appearance["background"]
    field_sigma = np.maximum(40.0 / sp, 1.0)             # ~4 cm structures
    n = int(bg["structures"])
    regions = np.argmax(np.stack([_smooth_noise(rng, shape, field_sigma) for _ in range(n)]), 0) if n > 1 \
        else np.zeros(shape, int)
    means = bg["mean"] + bg["sd"] * rng.standard_normal(n)
    texture = _smooth_noise(rng, shape, np.maximum(1.5 / sp, 0.5))
    img = means[regions] + 0.3 * bg["sd"] * texture
    drawn: Dict[str, float] = {}
    for key, d in sorted(appearance["labels"].items()):
        sel = arr == int(key)
        if not sel.any():
            continue
        m = d["mean"] * (1.0 + appearance["case_jitter"] * float(rng.standard_normal()))
        drawn[key] = m
        img[sel] = m + d["sd"] * texture[sel]
    if appearance["bias_field"]:
        img = img * np.exp(appearance["bias_field"] * 0.5 * _smooth_noise(rng, shape, np.maximum(80.0 / sp, 1.0)))
    if appearance["blur_sd_mm"]:
        img = ndimage.gaussian_filter(img, appearance["blur_sd_mm"] / sp)
    img = img + appearance["noise_sd"] * rng.standard_normal(shape)
    out = sitk.GetImageFromArray(img.astype(np.float32))
    out.CopyInformation(label)
    return out, drawn
