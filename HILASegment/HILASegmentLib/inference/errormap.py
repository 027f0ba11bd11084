"""The likely-error map: where a prediction is probably wrong, from the model's own probabilities.

The Segmenter computes it while the probabilities exist (they are never kept): a per-voxel probability that the
chosen label is wrong, the expected Dice per label, and the "Review: likely error" segment drawn from it. The
quality layer's learned model reads the map afterwards (``quality.learned.add_quality_features``).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.segmentation import Segment, Segmentation
from ..ground.colors import REVIEW_COLOR
from ..ground.labelmatch import REVIEW_NAME, REVIEW_TAG

#: The share of the predicted foreground the likely-error segment covers (its name and tag: ``labelmatch``,
#: its colour: ``colors``).
REVIEW_SHARE = 0.2


def error_probability(probs: np.ndarray, lab_idx: np.ndarray, softmax: bool,
                      spread: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[Optional[float]]]:
    """Per-voxel probability that the chosen label is wrong, and the expected Dice per label.

    Under the model's own probabilities the chosen label is wrong with probability ``1 - p(chosen)``
    (softmax; sigmoid: ``1 - max p`` inside, ``max p`` outside); with flip-TTA the disagreement
    (spread) is a lower bound too, so the larger of the two is taken. The expected Dice of label c is
    the soft Dice of its probability against its thresholded mask, ``2 Σ p·m / (Σ p + Σ m)`` (a known
    unsupervised estimator). ``probs`` is (channels, z, y, x); ``lab_idx`` the chosen channel index.
    """
    if softmax:
        chosen = np.take_along_axis(probs, lab_idx[None].astype(np.intp), axis=0)[0]
        err = 1.0 - chosen
        chans = [(i, lab_idx == i) for i in range(1, probs.shape[0])]
    else:
        pmax = probs.max(axis=0)
        err = np.where(lab_idx > 0, 1.0 - pmax, pmax)
        chans = [(i, lab_idx == i + 1) for i in range(probs.shape[0])]
    if spread is not None:
        err = np.maximum(err, spread)
    dices: List[Optional[float]] = []
    for i, m in chans:
        p = probs[i]
        denom = float(p.sum()) + float(m.sum())
        dices.append(round(2.0 * float(p[m].sum()) / denom, 4) if denom > 0 else 1.0)
    return np.clip(err, 0.0, 1.0).astype(np.float32), dices


def cohort_dice(per_label: Mapping[str, Optional[float]]) -> Optional[float]:
    """The mean of the labels' predicted Dice (None when none is known)."""
    vals = [v for v in per_label.values() if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def review_region(err: np.ndarray, label: np.ndarray, share: float = REVIEW_SHARE) -> np.ndarray:
    """The voxels most likely wrong, as many as ``share`` of the predicted foreground (at least one)."""
    k = max(1, int(round(share * int(np.count_nonzero(label)))))
    flat = err.ravel()
    if k >= flat.size:
        return err > 0
    thr = np.partition(flat, flat.size - k)[flat.size - k]
    return (err >= thr) & (err > 0)


def add_review_segment(seg: Segmentation, review_map: sitk.Image, label: sitk.Image,
                       tags: Optional[Mapping[str, str]] = None) -> Segment:
    """Add the "Review: likely error" segment to a segfile.Segmentation, in a layer of its own, tagged
    ``hila_review`` (submit matches segments to labels by name, so it is never taken as anatomy)."""
    mask = review_region(sitk.GetArrayViewFromImage(review_map), sitk.GetArrayViewFromImage(label))
    layer = sitk.GetImageFromArray(mask.astype(np.uint8))
    layer.CopyInformation(seg.grid)
    seg.layers.append(layer)
    s = Segment(id="review_likely_error", name=REVIEW_NAME, color=REVIEW_COLOR, label_value=1,
                layer=len(seg.layers) - 1, tags={**dict(tags or {}), REVIEW_TAG: "1"})
    seg.segments.append(s)
    return s
