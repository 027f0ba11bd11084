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
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

K_MAD = 3.0
FLOOR = 0.5
MIN_SPREAD = 0.05
MIN_PEERS = 3


def find_suspects(scored: Sequence[dict], k: float = K_MAD, floor: float = FLOOR, min_spread: float = MIN_SPREAD,
                  min_peers: int = MIN_PEERS) -> List[dict]:
    """The outliers among ``scored`` (dicts with ``dice``: {label: Dice or None}), each returned as a copy
    with ``labels`` (the labels it is an outlier on) and ``reason`` (one line with the figures)."""
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
        med = float(np.median(vals))
        spread = max(1.4826 * float(np.median(np.abs(vals - med))), min_spread)
        cut[n] = (med, min(med - k * spread, floor))
    out = []
    for s in rows:
        bad = [(n, s["dice"][n], cut[n]) for n in names
               if cut.get(n) is not None and s["dice"].get(n) is not None and s["dice"][n] < cut[n][1]]
        if bad:
            why = "; ".join(f"{n} Dice {d:.3f} vs peers' median {c[0]:.3f} (cut {c[1]:.3f})" for n, d, c in bad)
            out.append(dict(s, labels=[n for n, _, _ in bad], reason=why))
    return out
