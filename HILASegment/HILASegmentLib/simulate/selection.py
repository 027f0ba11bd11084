"""Which pool cases the simulated radiologist sees next (``--strategy NAME``): the product's ranking, plus what is
the simulator's own.

Every review strategy of the product (``quality.strategies``: ``hila rank --by``, the workspace, Slicer's Next case)
is a ``--strategy`` here, ranked by the same ``quality.ranking.rank_cases`` on the current model's predictions of
the pool cases, so the learning curves measure the ranking users run. Only what no user runs is defined here:
``sequential`` (the pool in name order) and :func:`draw` (the cold start: a seeded draw before any model exists).

A choice is ``fn(candidates, k, rng, ctx) -> chosen case names``; ``ctx.predict(name)`` returns the current model's
``InferenceResult`` for a case (cached for the round, so chosen cases are not predicted twice), ``ctx.sim.ws`` is
the run's workspace.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List

import numpy as np

from ..ground.namedregistry import NamedRegistry
from ..quality import strategies as ranking_strategies
from ..quality.ranking import learned_scorer, rank_cases

#: The simulator's own choices (no user runs them); every other name comes from the product's registry.
OWN: NamedRegistry[Callable] = NamedRegistry()

register = OWN.under


def draw(candidates: List[str], k: int, rng: np.random.Generator, ctx=None) -> List[str]:
    """A seeded draw of ``k`` candidates (in pool order): round 0's cold start, and any round without a model."""
    return [candidates[i] for i in sorted(rng.choice(len(candidates), size=min(k, len(candidates)), replace=False))]


@register("sequential")
def sequential(candidates: List[str], k: int, rng: np.random.Generator, ctx) -> List[str]:
    return list(candidates[:k])


def ranked(name: str, candidates: List[str], k: int, rng: np.random.Generator, ctx) -> List[str]:
    """The first ``k`` candidates as the product ranks them by strategy ``name`` (``rank_cases``), each predicted by
    the current model (nothing is predicted for a strategy that reads no predictions); no model: :func:`draw`."""
    strategy = ranking_strategies.get(name)
    if ctx is None or not ctx.has_model():
        return draw(candidates, k, rng)
    version, scorer, per_label = None, None, None
    if strategy.learned:  # the workspace's version (the card's own number may differ for a starter)
        ws = ctx.sim.ws
        version, scorer = ws.current_model().version, learned_scorer(ws.quality_model)
        per_label = ws.parts.quality.label_scorer()  # the per-label source the workspace chose, as `hila rank`
    items = []
    for c in candidates:
        summary = dict(ctx.predict(c).summary) if strategy.reads_predictions else None
        if summary is not None and version is not None:
            summary["model_version"] = version
        items.append({"case_id": c, "predicted": summary is not None, "uncertainty": summary})
    # a spread strategy spreads away from the cases corrected so far (none of them is a candidate any more; the
    # workspace's ranking takes its reviewed cases, the ones it no longer ranks)
    reviewed = [c for c in ctx.sim.ws.case_states() if c["corrections"]] if strategy.spread > 0 else []
    return [r["case_id"] for r in rank_cases(items, by=name, scorer=scorer, rng=rng, label_scorer=per_label,
                                             reviewed=reviewed)][:k]


def strategies() -> Dict[str, Callable]:
    """Every ``--strategy`` by name: the simulator's own, then each of the product's ranking strategies."""
    out = dict(OWN)
    for name in ranking_strategies.STRATEGIES:
        out.setdefault(name, partial(ranked, name))
    return out
