"""Which corrections gate a candidate, how both models are scored on them, and the promotion rule.

Why this shape (issue 10): a gate that judges a candidate on the corrections its checkpoint was chosen
on, or on corrections the current model was trained on, is biased. So:

* **One evaluator.** Both models are scored exactly as users get them: ``inference.Segmenter`` (the
  ONNX engine) on the case's original image, the label map on the original grid, Dice per workspace
  label (``metrics.dice``) against the correction. Labels are matched by name, so an imported model
  with fewer labels (TAPS: prostate only) scores 0 on the labels it cannot produce.
* **Gate corrections neither model has seen.** :func:`split_for_gate` holds out corrections of cases
  that the current model was not trained on (its card's ``training_set``) and that no checkpoint was
  chosen on (the trainer takes the last weights: nothing is chosen on anything). Corrections that
  gated the current model stay gate corrections, so the gate set is stable across rounds and no
  model made by this trainer ever trains on it.
* **Per case, with a margin and a minimum count.** :func:`decide` pairs the two models' mean Dice on
  each gate correction; ``auto`` promotes only when there are at least ``min_cases`` such
  corrections and the mean per-case gain is *more than* ``margin``. Below the count it says so and
  keeps the candidate (``hila models WS promote V`` promotes it by hand).
* **Not worse, rather than better** (the default margin is negative, :class:`GateRule`): a candidate is
  trained on every correction its current model had and more, and 2–3 gate corrections cannot show that it
  is better; they can show that it is clearly worse (forgetting, an imported model it cannot match). A
  candidate that scores Dice 0 on them is never promoted, however weak the current model. Each promotion
  may lose up to the margin against the model before it (the measurement: :class:`GateRule`).
* **Post-processing chosen on the same corrections** (:data:`POSTPROCESS_CHOICES`, as nnU-Net chooses its
  post-processing on cross-validation): a step is added to the candidate's card for the label (or all labels)
  whose mean Dice on the gate corrections it raises; the candidate is then judged as it will be deployed. The
  choice is made on the corrections that judge it, so its gate figure is slightly optimistic (in-sample; the
  current model's own step was chosen so in its round). Without gate corrections nothing is chosen and a step
  inherited from the parent's card is dropped (it was chosen for other weights).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import read_image
from ..formats.labelio import read_label
from ..ground.errors import HilaError
from ..ground.metrics import dice
from ..inference.segmenter import Segmenter
from ..models.modelcard import ModelCard
from ..models.modelgrid import convex_slices, si_axis
from ..workspace.records import SnapshotItem
from .gatedefaults import GATE_MARGIN, GATE_MIN_CASES

POLICIES = ("auto", "never", "always")

#: card ``postprocess`` key -> (label array on the image grid, the image, one label's value) -> label array. A user
#: adding a step here also teaches the Segmenter the key (``Segmenter._to_input_grid``) and the card its schema.
POSTPROCESS_CHOICES: Dict[str, Callable[[np.ndarray, sitk.Image, int], np.ndarray]] = {
    # an under-trained model leaves bites out of a large gland; a well-trained one loses a little to the hull (the
    # 15-minute ceiling 0.923 -> 0.918), so it is chosen per candidate, not always on (README: *Post-processing
    # chosen by the gate, replayed*)
    "convex_slices": lambda pred, image, value: convex_slices(pred, [value], si_axis(image)),
}


@dataclass
class GateRule:
    """The stated promotion rule (``hila train --gate-margin/--gate-min-cases``; recorded in the card).

    Defaults: 2 gate corrections (one is a coin toss; more would stall the tiny cohorts of the first
    rounds, see scripts/bench_gate.py), 20 % of the corrections held out once there are more than 10, and
    a non-inferiority margin: promoted unless the candidate loses more than 0.05 Dice per gate case on
    average. Why not "better by 0.01" (the rule until December 2026): on 2–3 gate corrections one hard case
    decides the mean, and the rule held weak models for rounds while the candidates behind them were far
    better on unseen cases (0.42 kept four rounds against 0.68–0.79). Replayed over 19 simulate runs
    (``scripts/bench_gate.py --part replay``: every model of each run scored on its test cases, each round's
    decision taken again under another margin), final test Dice 0.757 under the old rule, 0.793 at margins
    -0.05 to -0.10, no single promotion costing more than 0.032 test Dice under either (cumulative drift
    not measured); -0.03 and less negative fall back towards the old figure. Measured on the runs the margin
    was chosen on; on three fresh runs the two rules ended the same (0.811 vs 0.816, README).
    """

    margin: float = GATE_MARGIN
    min_cases: int = GATE_MIN_CASES
    fraction: float = 0.2
    min_train: int = 2          # never hold out so many that fewer than this many are left to train on

    def check(self) -> "GateRule":
        if not (isinstance(self.margin, (int, float)) and np.isfinite(self.margin) and -1.0 <= self.margin < 1.0):
            raise HilaError(f"--gate-margin {self.margin!r}: must be a Dice difference between -1 and 1")
        if not (isinstance(self.min_cases, int) and self.min_cases >= 1):
            raise HilaError(f"--gate-min-cases {self.min_cases!r}: must be a whole number of at least 1")
        if not (np.isfinite(self.fraction) and 0.0 <= self.fraction < 1.0):
            raise HilaError(f"gate fraction {self.fraction!r}: must be in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- which corrections gate

def _seen_by(card: Optional[ModelCard]) -> Tuple[set, set]:
    """(case ids the model trained or chose a checkpoint on, case ids that gated it) from its card."""
    if card is None:
        return set(), set()
    seen = card.seen_cases()
    return seen, card.gated_cases() - seen


def _cid(c: SnapshotItem) -> str:
    return str(c.case_id)


def split_for_gate(cases: Sequence[SnapshotItem], current_card: Optional[ModelCard], rule: GateRule,
                   seed: int = 0, also_seen: Optional[ModelCard] = None) -> Tuple[list, list, str]:
    """(train, gate, why): the corrections to train on and those that gate, never overlapping.

    ``cases``: snapshot items; the latest correction of each case.

    Gate candidates are corrections of cases the current model never trained on and no checkpoint
    was chosen on; the ones that gated the current model come first (a stable gate set), then the
    others in a fixed per-case hash order. Without a current model there is nothing to compare
    against, so nothing is held out. Too few eligible corrections: no gate set (``why`` says so).
    ``also_seen``: the card of the model the round's weights continue when that is not the current model (a
    candidate the gate kept back): what it trained on is no gate correction either.
    """
    cases = list(cases)
    if current_card is None:
        return cases, [], "no current model: trained on every correction, nothing to compare against"
    seen, gated = _seen_by(current_card)
    seen |= _seen_by(also_seen)[0]
    gated -= seen
    eligible = [c for c in cases if _cid(c) not in seen]
    order = sorted(eligible, key=lambda c: (_cid(c) not in gated,
                                            hashlib.sha256(f"{seed}:{_cid(c)}".encode()).hexdigest()))
    want = max(rule.min_cases, int(round(rule.fraction * len(cases))))
    k = min(want, len(order), len(cases) - rule.min_train)
    if k < rule.min_cases:
        return cases, [], (f"{len(eligible)} correction(s) of cases the current model "
                           f"{'and the continued candidate have' if also_seen else 'has'} not seen "
                           f"({len(cases)} in all); the gate needs {rule.min_cases} while leaving "
                           f"{rule.min_train} to train on (--gate-min-cases)")
    gate = order[:k]
    ids = {_cid(c) for c in gate}
    return [c for c in cases if _cid(c) not in ids], gate, \
        f"{k} correction(s) neither model was trained on gate the candidate"


def line_keeps_gate(cases: Sequence[SnapshotItem], current_card: Optional[ModelCard], head_card: Optional[ModelCard],
                    rule: GateRule, seed: int = 0) -> bool:
    """Whether a round may continue a kept-back candidate (``head_card``) rather than the current model: only when
    that leaves a gate set wherever the current model alone would have one. A head that trained on every correction
    (it had too few to gate with) would otherwise leave only the newest correction to gate with, one a round, and
    nothing would ever be promoted again."""
    def n(card):
        return len(split_for_gate(cases, current_card, rule, seed=seed, also_seen=card)[1])
    return n(head_card) >= rule.min_cases or n(None) < rule.min_cases


# --------------------------------------------------------------------------- the one evaluator

def evaluate_model(model_path: Path, cases: Sequence[SnapshotItem], labels: Sequence[Tuple[int, str]],
                   threads: Optional[int] = None, progress: Optional[Callable] = None,
                   should_stop: Callable[[], bool] = lambda: False, card: Optional[ModelCard] = None,
                   evidence: Optional[Callable[[Any, sitk.Image, np.ndarray], dict]] = None) -> dict:
    """Dice per workspace label of ``model_path`` on ``cases`` (snapshot items: case_id, correction_version,
    image_path, label_path).

    ``card``: the registry's card for files that carry none inside (an imported model such as TAPS).
    ``evidence``: as :func:`evaluate_models`.
    """
    res = evaluate_models([(model_path, card)], cases, labels, threads, progress, should_stop, evidence)[0]
    if isinstance(res, HilaError):
        raise res
    return res


def evaluate_models(models: Sequence[Tuple[Path, Optional[ModelCard]]], cases: Sequence[SnapshotItem],
                    labels: Sequence[Tuple[int, str]], threads: Optional[int] = None,
                    progress: Optional[Callable] = None,
                    should_stop: Callable[[], bool] = lambda: False,
                    evidence: Optional[Callable[[Any, sitk.Image, np.ndarray], dict]] = None,
                    choices: bool = False) -> List[Union[dict, HilaError]]:
    """:func:`evaluate_model` of several models on the same ``cases``, each case read once and scored by every one
    (the gate's candidate and current model). ``models``: (ONNX path, its card or None: the card inside the file).
    A model that does not load or run gets its HilaError in its place; the others are still scored.
    ``evidence(result, image, correction array)``: more figures per case from the same inference (run with the
    probabilities), stored as the case row's ``evidence`` (the suspect scan's boundary figures). ``choices``: each
    case row also gets ``choices``: per step of :data:`POSTPROCESS_CHOICES`, each label's Dice with the step on it
    alone and on every label (what :func:`choose_postprocess` reads)."""
    t0 = time.monotonic()
    segs: List[Union[Segmenter, HilaError]] = []
    spent = []
    for path, card in models:
        t = time.monotonic()
        try:
            segs.append(Segmenter(path, threads=threads, device="cpu", card=card) if card is not None
                        else Segmenter(path, threads=threads, device="cpu"))
        except HilaError as exc:
            segs.append(exc)
        spent.append(time.monotonic() - t)
    per_case: List[List[dict]] = [[] for _ in models]
    for i, c in enumerate(cases):
        live = [k for k, seg in enumerate(segs) if not isinstance(seg, HilaError)]
        if should_stop() or not live:
            break
        if progress:
            progress(i / max(1, len(cases)), f"validating on {c.case_id}")
        t = time.monotonic()
        img = read_image(c.image_path)
        ref = sitk.GetArrayFromImage(read_label(c.label_path))
        for k in live:
            spent[k] += time.monotonic() - t  # each model's figure includes reading the case, as when it read it
        for k in live:
            seg = segs[k]
            t = time.monotonic()
            try:
                res = seg.segment(img, where=str(c.image_path),  # type: ignore[union-attr]
                                  probabilities=evidence is not None)
            except HilaError as exc:
                segs[k] = exc
                continue
            by_name = {lab.name.lower(): lab.value for lab in seg.card.labels}  # type: ignore[union-attr]
            pred = sitk.GetArrayFromImage(res.label)
            d = {}
            for value, name in labels:
                mv = by_name.get(name.lower())
                d[name] = round(dice(pred == mv, ref == value), 4) if mv is not None else 0.0
            per_case[k].append({"case_id": c.case_id, "correction_version": c.correction_version,
                                "dice": d, "mean_dice": round(float(np.mean(list(d.values()))), 4),
                                "seconds": round(res.seconds, 2),
                                **({"evidence": evidence(res, img, ref)} if evidence is not None else {}),
                                **({"choices": _choice_dice(pred, img, ref, labels, seg.card)} if choices else {})})
            spent[k] += time.monotonic() - t
    names = [n for _, n in labels]
    out: List[Union[dict, HilaError]] = []
    for k, (path, _) in enumerate(models):
        seg = segs[k]
        if isinstance(seg, HilaError):
            out.append(seg)
            continue
        by_name = {lab.name.lower(): lab.value for lab in seg.card.labels}
        rows = per_case[k]
        mean = {n: round(float(np.mean([pc["dice"][n] for pc in rows])), 4) for n in names} if rows else {}
        out.append({"model": str(path), "dice": mean,
                    "mean_dice": round(float(np.mean(list(mean.values()))), 4) if mean else None,
                    "cases": rows, "seconds": round(spent[k] if len(models) > 1 else time.monotonic() - t0, 2),
                    "labels_missing": [n for n in names if n.lower() not in by_name]})
    return out


def _choice_dice(pred: np.ndarray, image: sitk.Image, ref: np.ndarray, labels: Sequence[Tuple[int, str]],
                 card: ModelCard) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per step, each label's Dice with the step on that label alone ("alone": a step only fills background, so the
    other labels are untouched) and with it on every label in the card's order, as the Segmenter applies it ("all")."""
    values = {lab.name.lower(): lab.value for lab in card.labels}
    wanted = {name.lower() for _, name in labels}
    order = [lab.value for lab in card.labels if lab.name.lower() in wanted]
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for step, fn in POSTPROCESS_CHOICES.items():
        alone, every = {}, pred
        for v in order:
            every = fn(every, image, v)
        for value, name in labels:
            mv = values.get(name.lower())
            if mv is not None:
                alone[name] = round(dice(fn(pred, image, mv) == mv, ref == value), 4)
        out[step] = {"alone": alone, "all": {name: round(dice(every == values[name.lower()], ref == value), 4)
                                             for value, name in labels if name.lower() in values}}
    return out


#: the least mean-Dice gain on the gate corrections that adds a step: more than rounding (Dice is kept to 4 decimals)
CHOICE_MIN_GAIN = 1e-3


def _options(names: Sequence[str]) -> List[Tuple[str, ...]]:
    """The label sets a step may be chosen for, each scored exactly: one label, or all of them."""
    return [(n,) for n in names] + ([tuple(names)] if len(names) > 1 else [])


def choose_postprocess(result: dict) -> Dict[str, Tuple[List[str], float, float]]:
    """Per step of :data:`POSTPROCESS_CHOICES`: the label set (one label, or all) that raises ``result``'s mean Dice
    over its cases the most, by at least :data:`CHOICE_MIN_GAIN`: {step: (labels, mean Dice without, with)}.
    ``result``: an :func:`evaluate_models` result scored with ``choices``. The sets are scored exactly as the
    Segmenter would apply them (one label alone, or every label in the card's order), not every subset."""
    rows = result.get("cases") or []
    names = list(result.get("dice") or {})
    chosen: Dict[str, Tuple[List[str], float, float]] = {}
    if not rows or not all("choices" in c for c in rows):
        return chosen
    plain = float(np.mean([np.mean(list(c["dice"].values())) for c in rows]))  # the same figures as the options'
    for step in POSTPROCESS_CHOICES:
        best = None
        for option in _options([n for n in names if all(n in c["choices"][step]["alone"] for c in rows)]):
            score = float(np.mean([np.mean(list(_stepped(c, step, option).values())) for c in rows]))
            if score >= plain + CHOICE_MIN_GAIN and (best is None or score > best[1]):
                best = (list(option), score)
        if best is not None:
            chosen[step] = (best[0], round(plain, 4), round(best[1], 4))
    return chosen


def _stepped(case: dict, step: str, option: Sequence[str]) -> Dict[str, float]:
    d = dict(case["dice"])
    source = case["choices"][step]["all" if len(option) > 1 else "alone"]
    for name in option:
        d[name] = source[name]
    return d


def with_postprocess(result: dict, chosen: Dict[str, Tuple[List[str], float, float]]) -> dict:
    """``result`` scored as the card segments with ``chosen`` (one step at a time; the registry has one)."""
    rows = []
    for c in result.get("cases") or []:
        d = dict(c["dice"])
        for step, (names, _, _) in chosen.items():
            d = _stepped(dict(c, dice=d), step, names)
        rows.append(dict(c, dice=d, mean_dice=round(float(np.mean(list(d.values()))), 4)))
    mean = {n: round(float(np.mean([r["dice"][n] for r in rows])), 4) for n in (result.get("dice") or {})}
    return dict(result, cases=rows, dice=mean,
                mean_dice=round(float(np.mean(list(mean.values()))), 4) if mean else result.get("mean_dice"))


def without_choices(postprocess: Optional[dict]) -> dict:
    """A card's post-processing less the steps the gate chooses (the candidate is scored without them)."""
    return {k: v for k, v in (postprocess or {}).items() if k not in POSTPROCESS_CHOICES}


def deploy_choices(result: dict, card: ModelCard, log: List[str]) -> dict:
    """Add to ``card`` the steps :func:`choose_postprocess` picks on ``result`` (the candidate scored with
    ``choices``, on gate corrections) and return ``result`` as the card now segments; say so in ``log``."""
    chosen = choose_postprocess(result) if result.get("cases") else {}
    if not chosen:
        return result
    own = {lab.name.lower(): lab.name for lab in card.labels}  # the card names its labels its own way
    card.postprocess = dict(card.postprocess or {}, **{step: [own[n.lower()] for n in names]
                                                       for step, (names, _, _) in chosen.items()})
    log.append("post-processing chosen on the gate corrections: " + "; ".join(
        f"{step} for {', '.join(names)} (mean Dice {a:.3f} -> {b:.3f})" for step, (names, a, b) in chosen.items()))
    return with_postprocess(result, chosen)


# --------------------------------------------------------------------------- the rule

def compare(candidate: dict, current: dict) -> dict:
    """Per-case pairs (candidate, current, gain) on the corrections both were scored on."""
    cur = {c["case_id"]: c for c in current.get("cases", [])}
    rows = [{"case_id": c["case_id"], "correction_version": c.get("correction_version"),
             "candidate": c["mean_dice"], "current": cur[c["case_id"]]["mean_dice"],
             "gain": round(c["mean_dice"] - cur[c["case_id"]]["mean_dice"], 4)}
            for c in candidate.get("cases", []) if c["case_id"] in cur]
    gains = [r["gain"] for r in rows]
    return {"cases": rows, "n": len(rows), "mean_gain": round(float(np.mean(gains)), 4) if gains else None,
            "wins": sum(g > 0 for g in gains), "losses": sum(g < 0 for g in gains)}


def decide(policy: str, candidate: Optional[dict], current: Optional[dict], rule: GateRule,
           has_current: bool, n_gate: int) -> Tuple[bool, str, dict]:
    """(promote?, why, per-case comparison). ``candidate``/``current``: :func:`evaluate_model` results.

    ``n_gate``: how many gate corrections (seen by neither model) both were scored on. ``auto``:
    without a current model, a candidate that segments something beats none. With one, there must be
    at least ``rule.min_cases`` gate corrections and the candidate's mean per-case Dice gain over the
    current model on them must be more than ``rule.margin`` (negative by default: not worse by more than
    that); otherwise it stays a candidate.
    """
    if policy not in POLICIES:
        raise HilaError(f"--promote {policy!r}: use auto, never or always")
    cmp = compare(candidate, current) if candidate and current and n_gate else {"cases": [], "n": 0, "mean_gain": None}
    if policy == "never":
        return False, "promotion disabled (--promote never)", cmp
    if policy == "always":
        return True, "promoted unconditionally (--promote always)", cmp
    cm = None if candidate is None else candidate.get("mean_dice")
    if cm is None:
        return False, "candidate could not be validated", cmp
    if not has_current:
        if cm > 0:
            return True, f"no current model; the candidate segments something (mean Dice {cm:.3f})", cmp
        return False, "no current model, but the candidate segments nothing (mean Dice 0)", cmp
    if n_gate < rule.min_cases:
        return False, (f"only {n_gate} gate correction(s) that neither model was trained on; the gate needs "
                       f"{rule.min_cases} (--gate-min-cases); kept as candidate "
                       f"(promote it with `hila models WS promote V`)"), cmp
    if current is None or cmp["n"] < rule.min_cases:
        return False, "current model could not be validated on the gate corrections; kept as candidate", cmp
    n, gain = cmp["n"], cmp["mean_gain"]
    stats = f"on {n} gate corrections (better on {cmp['wins']}, worse on {cmp['losses']})"
    if cm <= 0:  # however weak the current model: a candidate that segments nothing is a broken run
        return False, f"candidate scores Dice 0 on the {n} gate corrections (it segments nothing, or nothing right); " \
                      f"kept as candidate", cmp
    if rule.margin < 0:  # non-inferiority: say it as a loss the candidate may not reach
        bound = f"{-rule.margin:.3f} (--gate-margin {rule.margin:+.3f})"
        if gain > rule.margin:
            if gain >= 0:
                return True, f"candidate gains {gain:+.3f} mean Dice per case over the current model {stats}", cmp
            return True, f"candidate loses {-gain:.3f} mean Dice per case against the current model {stats}: less " \
                         f"than {bound}", cmp
        return False, f"candidate loses {-gain:.3f} mean Dice per case against the current model {stats}, at " \
                      f"least {bound}; kept as candidate", cmp
    if gain > rule.margin:
        return True, f"candidate gains {gain:+.3f} mean Dice per case over the current model {stats}, " \
                     f"more than the margin {rule.margin:.3f}", cmp
    return False, f"candidate gains {gain:+.3f} mean Dice per case {stats}, not more than the margin " \
                  f"{rule.margin:.3f}; kept as candidate", cmp
