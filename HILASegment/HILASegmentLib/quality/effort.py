"""Effort: how much a radiologist changed a prediction (or an earlier correction) to make a correction.

Dice per label and voxels changed are the per-iteration effort signal of the correction loop: it should fall as
the model improves (Lutnick et al. 2019). The workspace records it with every correction; ``hila status`` sums it.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from ..ground.metrics import dice


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
