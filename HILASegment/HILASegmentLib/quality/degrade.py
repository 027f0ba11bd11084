"""Synthetic degradations of an accepted correction, with their true Dice: training pairs for the per-label quality
model before the workspace has many real (prediction, correction) pairs.

Why: a learned quality model needs dozens of pairs, a workspace has a handful after its first cases. An accepted
correction, eroded, dilated, shifted or with slices dropped, is a plausible wrong prediction of a *known* Dice (its
overlap with the correction), on the real image, so its shape and intensity figures (``plausibility.label_shape``)
can be paired with that Dice. They are only ever extra pairs: the decision whether the learned model is used is
taken on real pairs alone (``labelmodel``), and a case's degraded copies never train the model that scores it.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.metrics import dice

#: (name, parameter): erosion/dilation radius in voxels (in-plane, one slice through-plane at radius 2), in-plane
#: shift in voxels, share of the label's slices dropped (from one end); eight copies per label.
DEGRADATIONS: Tuple[Tuple[str, float], ...] = (("erode", 1), ("erode", 2), ("dilate", 1), ("dilate", 2),
                                               ("shift", 2), ("shift", 4), ("drop_slices", 0.2), ("drop_slices", 0.4))


def _morph(mask: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    r = [int(radius), int(radius), 1 if radius >= 2 else 0]
    out = sitk.BinaryDilate(img, r) if grow else sitk.BinaryErode(img, r)
    return sitk.GetArrayFromImage(out) > 0


def degrade(mask: np.ndarray, kind: str, amount: float, rng: np.random.Generator) -> np.ndarray:
    """One degraded copy of a boolean mask (z-y-x)."""
    mask = np.asarray(mask, bool)
    if kind in ("erode", "dilate"):
        return _morph(mask, int(amount), kind == "dilate")
    if kind == "shift":
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = int(round(amount * np.sin(ang))), int(round(amount * np.cos(ang)))
        out = np.zeros_like(mask)
        src = mask[:, max(-dy, 0):mask.shape[1] - max(dy, 0), max(-dx, 0):mask.shape[2] - max(dx, 0)]
        out[:, max(dy, 0):max(dy, 0) + src.shape[1], max(dx, 0):max(dx, 0) + src.shape[2]] = src
        return out
    if kind == "drop_slices":
        ks = np.nonzero(mask.any(axis=(1, 2)))[0]
        k = int(round(amount * len(ks)))
        out = mask.copy()
        if k:
            out[ks[:k] if rng.random() < 0.5 else ks[len(ks) - k:]] = False
        return out
    raise ValueError(f"unknown degradation {kind!r}")


def degraded_copies(mask: np.ndarray, seed: int = 0) -> Iterator[Tuple[str, np.ndarray, float]]:
    """Each of :data:`DEGRADATIONS` applied to ``mask``: (name, degraded mask, its true Dice against ``mask``)."""
    rng = np.random.default_rng(seed)
    for kind, amount in DEGRADATIONS:
        out = degrade(mask, kind, amount, rng)
        yield f"{kind}:{amount:g}", out, round(float(dice(out, mask)), 5)
