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


def spread_features(case: Mapping) -> List[Optional[float]]:
    """A case item's :data:`strategies.SPREAD_FEATURES` from its latest prediction's summary (None where absent, and
    all None for an empty prediction: an early model's empty outputs would all sit on one point and say nothing
    about the case)."""
    summary = case.get("uncertainty")
    feats = summary.get("quality_features") if isinstance(summary, Mapping) else None
    feats = feats if isinstance(feats, Mapping) else {}
    if feats.get("empty_label_fraction") == 1.0:
        feats = {}
    return [feats.get(k) for k in strategies.SPREAD_FEATURES]


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
               rng: Optional[np.random.Generator] = None, label_scorer: Optional[LabelScorer] = None,
               reviewed: Iterable[Mapping] = ()) -> List[dict]:
    """Order unreviewed cases, most in need of review first, by the registered strategy ``by``.

    Each item has ``case_id``, ``predicted`` (bool) and ``uncertainty`` (the latest prediction's
    stored summary, see :class:`PredictionSummary`, or None). ``scorer(summary)`` gives the learned
    quality model's predicted Dice where one is in use for the prediction's model version (else None:
    the summary's own expected Dice stands); only strategies marked ``learned`` ask it. Predicted cases
    with a known need come first (highest need first; a ``shuffled`` strategy: in a random order), then
    predicted cases without a summary, then unpredicted cases; ties by case id. A ``spread`` strategy orders the
    predicted cases with a known need by :func:`spread_order` instead, away from the ``reviewed`` cases (items as
    ``cases``: their latest prediction's summary describes them) and from each other.

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
        tier0 = sorted((it for it in ranked if it["_key"][0] == 0), key=lambda it: it["_key"])
        picks = spread_order([it["review_need"] for it in tier0], [spread_features(it) for it in tier0],
                             strategy.spread, [spread_features(c) for c in reviewed])
        for pos, i in enumerate(picks):
            tier0[i]["_key"] = (0, float(pos), tier0[i]["_key"][2])
    ranked.sort(key=lambda it: it["_key"])
    for i, it in enumerate(ranked, 1):
        del it["_key"]
        it["rank"] = i
    return ranked


#: Standardised features are capped at this many robust standard deviations: one odd case must not take the first
#: spread pick whatever its need.
Z_CAP = 3.0


def _feature_rows(rows: Sequence[Sequence[Optional[float]]], width: int) -> np.ndarray:
    """Rows of features as floats; what is not a finite number is NaN."""
    return np.array([[float(v) if strategies.finite(v) else np.nan for v in row] for row in rows],
                    dtype=np.float64).reshape(len(rows), width)


def _need_ranks(needs: Sequence[float]) -> np.ndarray:
    """Each need's rank in [0, 1] (1: the highest); equal needs share their average rank."""
    v = np.asarray(needs, dtype=np.float64)
    n = v.size
    ranks = np.empty(n)
    ranks[np.argsort(v, kind="stable")] = np.arange(n)
    for u in np.unique(v):
        ranks[v == u] = ranks[v == u].mean()
    return ranks / max(n - 1, 1)


def spread_order(needs: Sequence[float], features: Sequence[Sequence[Optional[float]]], weight: float,
                 reviewed: Sequence[Sequence[Optional[float]]] = ()) -> List[int]:
    """Indices in the order maximal marginal relevance picks them: each time the case with the best
    ``(1 - weight) * need rank + weight * distance to the nearest case reviewed or picked before it`` (the distance
    over the largest left, so the weight on unlikeness is the same however alike the cases are); with nothing
    reviewed, the highest need first. Features are standardised robustly over the candidates and the reviewed cases
    together and capped at :data:`Z_CAP` (so cases beyond the cap on the same side look alike); a missing feature sits
    at the median, a reviewed case without any is left out.

    Why: the cases most likely wrong are often one kind of case (the largest glands, say); a correction unlike those
    already made teaches the model more per minute of review (the core-set argument), so the next case is spread
    away from what has been reviewed, also when cases are ranked again after each review (``hila rank --by diverse``).
    """
    n = len(needs)
    width = max((len(r) for r in list(features) + list(reviewed)), default=0)
    x = _feature_rows(list(features), width)
    seen = _feature_rows(list(reviewed), width)
    seen = seen[np.isfinite(seen).any(axis=1)] if seen.size else seen.reshape(0, width)
    both = np.vstack([x, seen])
    z = np.zeros_like(both)
    for j in range(width):
        ok = np.isfinite(both[:, j])
        if ok.sum() < 2:
            continue
        q75, med, q25 = np.percentile(both[ok, j], [75, 50, 25])
        scale = (q75 - q25) / 1.349 or float(both[ok, j].std())
        if scale > 1e-9:
            z[ok, j] = np.clip((both[ok, j] - med) / scale, -Z_CAP, Z_CAP)
    zc = z[:n]
    rank = _need_ranks(needs)
    nearest = np.full(n, np.inf)
    for row in z[n:]:
        nearest = np.minimum(nearest, np.linalg.norm(zc - row, axis=1))
    order: List[int] = []
    picked = np.zeros(n, bool)
    for _ in range(n):
        if np.isfinite(nearest).any():
            far = max(float(nearest[~picked].max()), 1e-12)
            score = (1.0 - weight) * rank + weight * nearest / far
        else:
            score = rank.copy()
        score[picked] = -np.inf
        i = int(np.argmax(score))  # ties: the first (the order given)
        order.append(i)
        picked[i] = True
        nearest = np.minimum(nearest, np.linalg.norm(zc - zc[i], axis=1))
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
