"""Effort and quality signals of the correction loop.

How much a radiologist changed a prediction (Dice per label, voxels changed) is the per-iteration
effort signal: it should fall as the model improves (Lutnick et al. 2019). How unsure the model was
about a case decides which unreviewed case to look at next (Zhang et al. 2023): review effort goes
where the model is most likely wrong.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.segmentation import Segment, Segmentation
from ..ground.colors import REVIEW_COLOR
from ..ground.errors import HilaError
from ..ground.labelmatch import REVIEW_NAME, REVIEW_TAG
from ..ground.metrics import dice
from ..inference.summary import PredictionSummary


def label_change(corrected: np.ndarray, reference: np.ndarray, labels: Sequence[Tuple[int, str]]) -> dict:
    """What a correction changed relative to ``reference`` (a prediction or an earlier correction).

    Returns ``{"dice": {name: d}, "voxels_changed": n, "voxels_changed_per_label": {name: n},
    "fraction_changed": n / labelled voxels of either}``. Arrays must share one grid.
    """
    if corrected.shape != reference.shape:
        raise ValueError(f"label arrays differ in shape: {corrected.shape} vs {reference.shape}")
    changed = corrected != reference
    n_changed = int(changed.sum())
    labelled = int(np.logical_or(corrected > 0, reference > 0).sum())
    out_dice: Dict[str, float] = {}
    per_label: Dict[str, int] = {}
    for value, name in labels:
        a, b = corrected == value, reference == value
        out_dice[name] = round(dice(a, b), 6)
        per_label[name] = int(np.logical_xor(a, b).sum())
    return {
        "dice": out_dice,
        "voxels_changed": n_changed,
        "voxels_changed_per_label": per_label,
        "fraction_changed": round(n_changed / labelled, 6) if labelled else 0.0,
    }


def drawn_from_scratch(corrected: np.ndarray, labels: Sequence[Tuple[int, str]]) -> dict:
    """The effort record of a label with nothing to compare against: every labelled voxel was drawn."""
    per_label = {name: int((corrected == value).sum()) for value, name in labels}
    return {"dice": {name: None for _, name in labels}, "voxels_changed": int((corrected > 0).sum()),
            "voxels_changed_per_label": per_label, "fraction_changed": 1.0 if (corrected > 0).any() else 0.0}


#: What ``rank`` can order by: predicted Dice (lowest first), mean uncertainty (highest first), or at random.
RANK_BY = ("quality", "uncertainty", "random")


def review_need(summary: Optional[PredictionSummary], by: str = "quality",
                predicted_dice: Optional[float] = None) -> Optional[float]:
    """How much a prediction needs review (higher = look first); None when its summary says nothing.

    ``quality``: ``1 - predicted Dice`` (``predicted_dice`` when given, e.g. the learned model's, else the
    summary's expected Dice), falling back to the mean uncertainty for summaries without one;
    ``uncertainty``: the mean voxel uncertainty of the labelled region.
    """
    if summary is None:
        return None
    d = predicted_dice if predicted_dice is not None else summary.predicted_dice
    signals = [(summary.mean_uncertainty, lambda v: v)]
    if by == "quality":
        signals.insert(0, (d, lambda v: 1.0 - v))
    for value, need in signals:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            return float(need(float(value)))
    return None


def rank_cases(cases: Iterable[Mapping], by: str = "quality",
               scorer: Optional[Callable[[PredictionSummary], Optional[float]]] = None,
               rng: Optional[np.random.Generator] = None) -> List[dict]:
    """Order unreviewed cases, most in need of review first.

    Each item has ``case_id``, ``predicted`` (bool) and ``uncertainty`` (the latest prediction's
    stored summary, see :class:`PredictionSummary`, or None). ``scorer(summary)`` gives the learned
    quality model's predicted Dice where one is in use for the prediction's model version (else None:
    the summary's own expected Dice stands). Predicted cases with a known need come first (highest
    need first; ``random``: in a random order), then predicted cases without a summary, then
    unpredicted cases; ties by case id.
    """
    if by not in RANK_BY:
        raise HilaError(f"--by {by!r}: use one of {', '.join(RANK_BY)}")
    items = list(cases)
    shuffle = (rng or np.random.default_rng(0)).permutation(len(items)) if by == "random" else None
    ranked = []
    for i, c in enumerate(items):
        stored = c.get("uncertainty")
        summary = PredictionSummary.from_dict(stored) if isinstance(stored, Mapping) else None
        learned = scorer(summary) if (scorer is not None and summary is not None and c.get("predicted")) else None
        need = review_need(summary, "uncertainty" if by == "uncertainty" else "quality", learned) \
            if c.get("predicted") else None
        tier = 0 if need is not None else (1 if c.get("predicted") else 2)
        item = dict(c)
        item["review_need"] = None if need is None else round(need, 6)
        item["predicted_dice"] = learned if learned is not None else (summary.predicted_dice if summary else None)
        item["predicted_dice_source"] = ("learned" if learned is not None else
                                         (summary.predicted_dice_source if summary and summary.predicted_dice is not None
                                          else None))
        order = float(shuffle[i]) if shuffle is not None else -(need or 0.0)
        item["_key"] = (tier, order, str(c.get("case_id")))
        ranked.append(item)
    ranked.sort(key=lambda it: it["_key"])
    for i, it in enumerate(ranked, 1):
        del it["_key"]
        it["rank"] = i
    return ranked


def review_budget(ranked: Sequence[Mapping], fraction: float) -> dict:
    """The first ``fraction`` (in (0, 1]) of the predicted cases of a ranking: the reviews that should raise
    the cohort's mean Dice most when the ranking is by quality (a reviewed case is taken to reach Dice 1).

    Returns the chosen case ids and the cohort's predicted mean Dice before and after those reviews.
    """
    if not (isinstance(fraction, (int, float)) and np.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise HilaError(f"--review-budget {fraction!r}: must be a fraction in (0, 1]")
    predicted = [r for r in ranked if r.get("predicted")]
    k = int(np.ceil(fraction * len(predicted) - 1e-9)) if predicted else 0
    chosen = predicted[:k]
    known = [r for r in predicted if r.get("predicted_dice") is not None]
    before = float(np.mean([r["predicted_dice"] for r in known])) if known else None
    ids = {r["case_id"] for r in chosen}
    after = float(np.mean([1.0 if r["case_id"] in ids else r["predicted_dice"] for r in known])) if known else None
    return {"fraction": fraction, "cases": [r["case_id"] for r in chosen], "of_predicted": len(predicted),
            "predicted_cohort_dice": None if before is None else round(before, 4),
            "predicted_cohort_dice_after": None if after is None else round(after, 4)}


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
