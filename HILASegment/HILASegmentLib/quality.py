"""Effort and quality signals of the correction loop.

How much a radiologist changed a prediction (Dice per label, voxels changed) is the per-iteration
effort signal: it should fall as the model improves (Lutnick et al. 2019). How unsure the model was
about a case decides which unreviewed case to look at next (Zhang et al. 2023): review effort goes
where the model is most likely wrong.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


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


#: Uncertainty-summary keys, most specific first: (key, True when a higher value means more need of review).
_SCORE_KEYS: Tuple[Tuple[str, bool], ...] = (
    ("review_score", True),
    ("expected_dice", False), ("predicted_dice", False), ("estimated_dice", False), ("quality", False),
    ("mean_uncertainty", True), ("uncertainty", True), ("mean_entropy", True), ("entropy", True),
    ("uncertain_fraction", True), ("uncertain_voxels", True),
)


def review_need(summary: Optional[Mapping]) -> Optional[float]:
    """How much a prediction needs review, from its uncertainty summary (higher = look first); None if unknown.

    Understands an expected/predicted Dice (need = 1 - Dice) or a mean uncertainty/entropy, also
    nested one level (``{"prostate": {"mean_uncertainty": ...}}`` → the largest over labels).
    """
    if not summary or not isinstance(summary, Mapping):
        return None
    for key, higher_is_worse in _SCORE_KEYS:
        v = summary.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            return float(v) if higher_is_worse else 1.0 - float(v)
    nested = [review_need(v) for v in summary.values() if isinstance(v, Mapping)]
    nested = [v for v in nested if v is not None]
    return max(nested) if nested else None


def rank_cases(cases: Iterable[Mapping]) -> List[dict]:
    """Order unreviewed cases, most in need of review first.

    Each item has ``case_id`` and ``uncertainty`` (the latest prediction's summary or None, absent
    when unpredicted) and ``predicted`` (bool). Predicted cases with a known need come first (highest
    need first), then predicted cases without a summary, then unpredicted cases; ties by case id.
    """
    ranked = []
    for c in cases:
        need = review_need(c.get("uncertainty")) if c.get("predicted") else None
        tier = 0 if need is not None else (1 if c.get("predicted") else 2)
        item = dict(c)
        item["review_need"] = None if need is None else round(need, 6)
        item["_key"] = (tier, -(need or 0.0), str(c.get("case_id")))
        ranked.append(item)
    ranked.sort(key=lambda it: it["_key"])
    for i, it in enumerate(ranked, 1):
        del it["_key"]
        it["rank"] = i
    return ranked
