"""Warm start by calibration: a pretrained sigmoid model's decision threshold fitted to the site's corrections.

Why: a site's convention often differs from a pretrained model's by a systematic margin (a radiotherapy site
contouring the prostate with its capsule and a rim), and the model's smoothed probabilities already hold that
margin: on ProstateX with TAPS's output grown by 3 mm as the reference, TAPS scores 0.80-0.87 at its own threshold
0.55 and 0.93-0.97 at 0.1. Fitting the one output parameter on the corrections costs one inference per corrected
case (seconds), where fine-tuning the 19.9 M-parameter network costs 21-36 s per step and distilling it into the
own network did not reach TAPS's own Dice in 1.5 CPU minutes (README, Learning on a CPU). The calibrated model is
the same ONNX file with a card naming the new threshold, gated like any candidate. It can only widen or narrow the
model's masks: a convention whose boundary lies elsewhere (a shifted contour) gains nothing
(``scripts/bench_calibrate.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import read_image
from ..formats.labelio import read_label
from ..ground.errors import HilaError
from ..ground.metrics import dice
from ..inference.segmenter import Segmenter
from ..models.cardsections import Metrics, TrainingRecord, training_set_entries
from ..models.modelcard import ModelCard
from ..models.modelgrid import largest_components

#: the thresholds tried (the model's own is always among them)
THRESHOLDS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
#: the sentence a calibration adds to a card's description (replaced, not appended, by the next calibration)
NOTE = " Calibrated by the HILASegment trainer:"


def calibratable(card: ModelCard) -> bool:
    """A sigmoid model whose card names its threshold: one number decides its masks."""
    return card.activation == "sigmoid" and "threshold" in (card.postprocess or {})


def fit_threshold(model, card: ModelCard, items: Sequence, labels: Sequence[Tuple[int, str]],
                  threads: Optional[int] = None, should_stop: Callable[[], bool] = lambda: False,
                  progress: Optional[Callable[[float, str], None]] = None) -> dict:
    """The threshold (of :data:`THRESHOLDS` and the card's own) with the highest mean Dice over the corrections
    ``items`` (snapshot items), every workspace label the model segments counted, each mask post-processed as the
    card says (largest component); ties go to the card's own. ``should_stop`` (a cancel or the time budget) ends the
    fit early on the corrections scored so far. Returns the choice, the card's own threshold, the corrections scored
    and the mean Dice at each threshold tried."""
    if not calibratable(card):
        raise HilaError(f"model {card.name}: not a sigmoid model with a threshold; nothing to calibrate")
    own = float(card.postprocess["threshold"])
    grid = sorted(set(THRESHOLDS) | {own})
    largest = bool((card.postprocess or {}).get("largest_component"))  # as the deployed model post-processes
    seg = Segmenter(model, threads=threads, device="cpu", card=card)
    per_t: Dict[float, List[float]] = {t: [] for t in grid}
    for n, it in enumerate(items):
        if should_stop():
            break
        if progress:
            progress(n / max(1, len(items)), f"calibrating on {it.case_id}")
        image = read_image(it.image_path)
        ref = sitk.GetArrayFromImage(read_label(it.label_path))
        res = seg.segment(image, probabilities=True, where=str(it.image_path))
        on_grid = res.probabilities_on(image, [name for _, name in labels])
        probs = {value: on_grid[name] for value, name in labels if name in on_grid}
        if not probs:
            raise HilaError(f"model {card.name}: segments none of the workspace's labels; nothing to calibrate")
        for t in grid:
            masks = {v: (largest_components((p > t).astype(np.uint8), [1]) > 0) if largest else p > t
                     for v, p in probs.items()}
            per_t[t].append(float(np.mean([dice(m, ref == v) for v, m in masks.items()])))
    scored = {t: float(np.mean(d)) for t, d in per_t.items() if d}
    if not scored:
        raise HilaError("calibration cancelled before any correction was scored")
    best = max(scored.values())
    chosen = min((t for t, d in scored.items() if d >= best - 1e-9), key=lambda t: abs(t - own))
    if progress:
        progress(1.0, f"threshold {chosen:g} (was {own:g})")
    return {"threshold": chosen, "was": own, "cases": len(next(iter(per_t.values()))),
            "mean_dice": {f"{t:g}": round(d, 4) for t, d in scored.items()}}


def calibrated_card(card: ModelCard, version: int, parent: int, fit: dict, snapshot: Sequence, init: str,
                    device: str, threads: int) -> ModelCard:
    """``card`` as the calibrated version: the new threshold, its version and parent, the corrections it was
    fitted on and how (``training.calibration``); the weights and everything else unchanged."""
    pp = dict(card.postprocess or {}, threshold=float(fit["threshold"]))
    training = TrainingRecord(init=init, steps=0, device=device, threads=int(threads),
                              recipe={"inherited_from": init}, calibration=dict(fit))
    return dataclasses.replace(
        card, version=int(version), parent_version=int(parent), postprocess=pp, metrics=Metrics(), training=training,
        description=f"{(card.description or card.name).split(NOTE)[0].rstrip('.')}.{NOTE} threshold "
                    f"{fit['threshold']:g} (was {fit['was']:g}) fitted on {fit['cases']} correction(s).",
        training_set=training_set_entries(snapshot),
    ).validate(f"calibrated card v{version}")
