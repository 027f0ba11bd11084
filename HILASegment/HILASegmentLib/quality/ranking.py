"""Review ranking: which unreviewed case to look at next, most likely wrong first (Zhang et al. 2023).

The strategies (``--by``) are a registry by name in ``strategies``; this module orders cases by one of them.

How unsure the model was about a case (its predicted Dice, learned or expected, or its mean uncertainty) decides
the order ``hila rank``, the workspace and Slicer's Next case use, so review effort goes where the model is most
likely wrong; ``review_budget`` says what reviewing the first share of them should gain.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..ground.errors import HilaError
from ..inference.summary import PredictionSummary
from . import strategies


def review_need(summary: Optional[PredictionSummary], by: str = strategies.DEFAULT,
                predicted_dice: Optional[float] = None) -> Optional[float]:
    """How much a prediction needs review by strategy ``by`` (higher = look first); None when its summary says nothing."""
    return strategies.get(by).need(summary, predicted_dice)


def learned_scorer(quality_model: Callable[[int], object]) -> Callable[[PredictionSummary], Optional[float]]:
    """``scorer`` for :func:`rank_cases`: the learned quality model of a summary's own model version where one is
    in use (``quality_model(version)``, loaded once per version), else None (the summary's expected Dice stands)."""
    models: Dict[int, object] = {}

    def score(summary: PredictionSummary) -> Optional[float]:
        v = summary.model_version
        if v is None:
            return None
        if int(v) not in models:
            models[int(v)] = quality_model(int(v))
        qm = models[int(v)]
        return qm.score(summary) if qm is not None and qm.in_use else None  # type: ignore[attr-defined]

    return score


LabelScorer = Callable[[PredictionSummary, str], Mapping[str, Tuple[Optional[float], str]]]


def rank_cases(cases: Iterable[Mapping], by: str = strategies.DEFAULT,
               scorer: Optional[Callable[[PredictionSummary], Optional[float]]] = None,
               rng: Optional[np.random.Generator] = None, label_scorer: Optional[LabelScorer] = None) -> List[dict]:
    """Order unreviewed cases, most in need of review first, by the registered strategy ``by``.

    Each item has ``case_id``, ``predicted`` (bool) and ``uncertainty`` (the latest prediction's
    stored summary, see :class:`PredictionSummary`, or None). ``scorer(summary)`` gives the learned
    quality model's predicted Dice where one is in use for the prediction's model version (else None:
    the summary's own expected Dice stands); only strategies marked ``learned`` ask it. Predicted cases
    with a known need come first (highest need first; a ``shuffled`` strategy: in a random order), then
    predicted cases without a summary, then unpredicted cases; ties by case id.

    ``label_scorer(summary, case_id)`` gives each label's predicted Dice and its source (``labelmodel``); each item
    then lists them (``labels``), and where the case has no learned Dice and its labels' source is not the expected
    soft Dice (the workspace chose the assistant's agreement or the per-label learned model), the case's predicted
    Dice is the mean over its labels, with that source.
    """
    strategy = strategies.get(by)
    items = list(cases)
    shuffle = (rng or np.random.default_rng(0)).permutation(len(items)) if strategy.shuffled else None
    ranked = []
    for i, c in enumerate(items):
        stored = c.get("uncertainty")
        summary = PredictionSummary.from_dict(stored) if isinstance(stored, Mapping) else None
        learned = scorer(summary) if (strategy.learned and scorer is not None and summary is not None
                                      and c.get("predicted")) else None
        source = "learned"
        per = dict(label_scorer(summary, str(c.get("case_id")))) if (label_scorer is not None and summary is not None
                                                                    and c.get("predicted")) else {}
        chosen = {s for d, s in per.values() if d is not None} - {"expected_soft_dice"}
        if learned is None and strategy.learned and chosen:
            known = [d for d, _ in per.values() if d is not None]
            learned, source = round(float(np.mean(known)), 4), sorted(chosen)[0]
        need = strategy.need(summary, learned) if c.get("predicted") else None
        tier = 0 if need is not None else (1 if c.get("predicted") else 2)
        item = dict(c)
        item["review_need"] = None if need is None else round(need, 6)
        item["predicted_dice"] = learned if learned is not None else (summary.predicted_dice if summary else None)
        if per:
            item["labels"] = [{"name": n, "predicted_dice": d, "source": s} for n, (d, s) in per.items()]
        item["predicted_dice_source"] = (source if learned is not None else
                                         (summary.predicted_dice_source if summary and summary.predicted_dice is not None
                                          else None))
        order = float(shuffle[i]) if shuffle is not None else -(need or 0.0)
        item["_key"] = (tier, order, str(c.get("case_id")))
        ranked.append(item)
    if strategy.spread > 0:  # tier 0 in the order that trades need against unlikeness to the cases before
        known = sorted((it for it in ranked if it["_key"][0] == 0), key=lambda it: it["_key"])
        feats = [((it.get("uncertainty") or {}).get("quality_features") or {}) for it in known]
        order = spread_order([-it["_key"][1] for it in known],
                             [[f.get(k) for k in strategies.SPREAD_FEATURES] for f in feats], strategy.spread)
        for pos, i in enumerate(order):
            known[i]["_key"] = (0, float(pos), known[i]["_key"][2])
    ranked.sort(key=lambda it: it["_key"])
    for i, it in enumerate(ranked, 1):
        del it["_key"]
        it["rank"] = i
    return ranked


def spread_order(needs: Sequence[float], features: Sequence[Sequence[Optional[float]]], weight: float) -> List[int]:
    """Indices in the order maximal marginal relevance picks them: first the highest need, then each time the case
    with the best ``(1 - weight) * need rank + weight * distance`` to the nearest case picked before it (features
    robustly standardised, distance over the largest left; a missing feature sits at the median).

    Why: a batch of the cases most likely wrong is often one kind of case (the largest glands, say); corrections of
    unlike cases teach the model more per minute of review (the core-set argument), so the batch is spread.
    """
    n = len(needs)
    if n <= 1:
        return list(range(n))
    x = np.array([[float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in row]
                  for row in features], dtype=np.float64).reshape(n, -1)
    z = np.zeros_like(x)
    for j in range(x.shape[1]):
        ok = np.isfinite(x[:, j])
        if ok.sum() < 2:
            continue
        q75, med, q25 = np.percentile(x[ok, j], [75, 50, 25])
        scale = (q75 - q25) / 1.349 or float(x[ok, j].std())
        if scale > 1e-9:
            z[ok, j] = (x[ok, j] - med) / scale
    rank = np.empty(n)  # the need's rank in [0, 1] (1: the highest), ties in the order given
    rank[np.lexsort((-np.arange(n), np.asarray(needs, dtype=np.float64)))] = np.arange(n) / (n - 1)
    left = list(range(n))
    first = max(left, key=lambda i: (rank[i], -i))
    order, nearest = [first], np.full(n, np.inf)
    left.remove(first)
    while left:
        nearest = np.minimum(nearest, np.linalg.norm(z - z[order[-1]], axis=1))
        far = max(float(nearest[left].max()), 1e-12)
        best = max(left, key=lambda i: ((1.0 - weight) * rank[i] + weight * nearest[i] / far, -i))
        order.append(best)
        left.remove(best)
    return order


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
