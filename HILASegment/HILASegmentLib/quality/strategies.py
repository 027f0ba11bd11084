"""Review strategies by name: the one registry behind ``hila rank --by``, the workspace's ``rank``, Slicer's Next
case and ``hila simulate --strategy`` (MONAI Label's ``Strategy`` idea), so the simulator measures the ranking users run.

A strategy says how much a prediction needs review (higher = look first) from its stored summary and, where one is
in use for its model version, the learned quality model's predicted Dice. ``ranking.rank_cases`` orders by it (cases
whose need is unknown after those with one, unpredicted cases last). To add one: a ``need`` function and one
``register(Strategy(...))`` line here, plus its test; the CLI's ``--by`` and simulate's ``--strategy`` list it.
Light on purpose (no numpy): the command line reads the names when it builds its parser.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..ground.namedregistry import NamedRegistry

if TYPE_CHECKING:  # annotations only
    from ..inference.summary import PredictionSummary

NeedFn = Callable[["PredictionSummary", Optional[float]], Optional[float]]


@dataclass(frozen=True)
class Strategy:
    """One way to order unreviewed cases (see the module docstring)."""

    name: str
    help: str
    #: ``need(summary, predicted_dice)``: how much the prediction needs review (higher first), None when unknown;
    #: ``predicted_dice`` is the learned quality model's where ``learned`` and one is in use, else None.
    need: NeedFn
    learned: bool = False    # scored by the learned quality model of the prediction's own version, where in use
    shuffled: bool = False   # in a random order (seeded) within each tier instead of by need
    reads_predictions: bool = True  # False: needs no prediction at all (the simulator predicts nothing for it)
    #: > 0: each next case trades its need against how unlike it is, in ``SPREAD_FEATURES``, to the cases already
    #: reviewed and those ranked before it (maximal marginal relevance, ``ranking.spread_order``), with this weight on
    #: unlikeness; the first case need not be the most needed
    spread: float = 0.0


STRATEGIES: NamedRegistry[Strategy] = NamedRegistry()
#: The case features a ``spread`` strategy keeps a batch spread over (``quality.learned.prediction_features``): size,
#: shape and appearance of the case as predicted, not the model's confidence (the need already weighs that).
SPREAD_FEATURES = ("log_volume_ml", "boundary_ratio", "intensity_contrast", "intensity_sd_fg")
#: What ``hila rank``, the workspace and Slicer's Next case use unless told otherwise.
DEFAULT = "quality"


register = STRATEGIES.register  # one line per strategy, below


def get(name: str) -> Strategy:
    """The strategy called ``name``; a HilaError naming the known ones otherwise."""
    return STRATEGIES.lookup(name, lambda known: f"--by {name!r}: use one of {', '.join(known)}")


def finite(value) -> bool:
    """A real, finite int or float (not a bool): a stored figure that can be used."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def uncertainty_need(summary: Optional["PredictionSummary"], predicted_dice: Optional[float] = None) -> Optional[float]:
    """The mean voxel uncertainty of the labelled region."""
    if summary is None or not finite(summary.mean_uncertainty):
        return None
    return float(summary.mean_uncertainty)


def quality_need(summary: Optional["PredictionSummary"], predicted_dice: Optional[float] = None) -> Optional[float]:
    """``1 - predicted Dice`` (``predicted_dice`` when given, e.g. the learned model's, else the summary's expected
    Dice), falling back to the mean uncertainty for summaries without one."""
    if summary is None:
        return None
    d = predicted_dice if predicted_dice is not None else summary.predicted_dice
    return 1.0 - float(d) if finite(d) else uncertainty_need(summary)


register(Strategy("quality", "order by predicted Dice (lowest first; default)", quality_need, learned=True))
register(Strategy("uncertainty", "mean uncertainty (highest first)", uncertainty_need))
register(Strategy("diverse", "predicted Dice traded against unlikeness (size, shape, contrast) to the cases reviewed and ranked before",
                  quality_need, learned=True, spread=0.5))
register(Strategy("random", "at random (--seed)", quality_need, shuffled=True, reads_predictions=False))
