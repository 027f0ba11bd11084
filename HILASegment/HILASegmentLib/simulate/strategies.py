"""Which pool cases the radiologist sees next: a registry by name (``--strategy NAME``).

A strategy is ``fn(candidates, k, rng, ctx) -> chosen case names``; ``ctx.predict(name)`` returns the
current model's ``InferenceResult`` for a case (cached for the round, so chosen cases are not predicted twice).
``ctx.sim.ws`` is the run's workspace. Adding one is one line: ``@register("name")`` on such a function.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from ..inference.summary import PredictionSummary
from . import registrar

STRATEGIES: Dict[str, Callable] = {}


register = registrar(STRATEGIES)


@register("random")
def random(candidates: List[str], k: int, rng: np.random.Generator, ctx) -> List[str]:
    return [candidates[i] for i in sorted(rng.choice(len(candidates), size=min(k, len(candidates)), replace=False))]


@register("sequential")
def sequential(candidates: List[str], k: int, rng: np.random.Generator, ctx) -> List[str]:
    return list(candidates[:k])


@register("uncertainty")
def uncertainty(candidates: List[str], k: int, rng: np.random.Generator, ctx) -> List[str]:
    """Most uncertain first: the prediction summary's mean uncertainty over its foreground (no model: random)."""
    if not ctx.has_model():
        return random(candidates, k, rng, ctx)
    score = {c: float(PredictionSummary.from_dict(ctx.predict(c).summary).mean_uncertainty or 0.0) for c in candidates}
    return sorted(candidates, key=lambda c: (-score[c], c))[:k]


@register("quality")
def quality(candidates: List[str], k: int, rng: np.random.Generator, ctx) -> List[str]:
    """Lowest predicted Dice first: the learned quality model's where one is in use for the current model
    version (``hila status`` says which), else the expected soft Dice (no model: random)."""
    if not ctx.has_model():
        return random(candidates, k, rng, ctx)
    ws = ctx.sim.ws
    version = ws.current_model().version
    qm = ws.quality_model(version)
    score = {}
    for c in candidates:
        s = PredictionSummary.from_dict(ctx.predict(c).summary)
        s.model_version = version  # the workspace's version (the card's own number may differ for a starter)
        learned = qm.score(s, where=f"pool case {c}") if qm is not None and qm.in_use else None
        score[c] = float(learned if learned is not None else (s.predicted_dice if s.predicted_dice is not None else 1.0))
    return sorted(candidates, key=lambda c: (score[c], c))[:k]
