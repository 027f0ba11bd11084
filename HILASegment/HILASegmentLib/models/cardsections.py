"""The typed sections of a model card: ``metrics`` (what the model scored) and ``training`` (how it was made).

Why: these sections were read as dicts in the gate, the dataset, the reports, the CLI and the Slicer panel, each with
its own ``.get`` chain and, in the panel, a guess among five Dice keys. Now :meth:`ModelCard.from_dict` reads and
checks them once, here, and every reader uses a named field or accessor (``card.mean_dice()``,
``card.training.loop``, ``card.seen_cases()``).

Exact round trip: a key a section does not know is kept verbatim in its ``extra``, a known key that was absent stays
absent and a known key stored as null stays null, so ``to_dict`` gives back the JSON that was read: cards in the
ledger and in ONNX metadata are written unchanged, old workspaces and model files load as before. Cards written
before these sections existed name their figures differently (``metrics.val_dice`` and four other Dice keys,
``training.held_out_cases``): :meth:`Metrics.from_dict` and :meth:`TrainingRecord.from_dict` map those, and only those.

To add a field: declare it on the section (with its check in ``_CHECKS``), write it in the trainer
(``training.candidate``/``training.run``), read it by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, FrozenSet, List, Optional, Sequence, Set, Type, TypeVar

from ..ground.errors import HilaError

#: Dice keys of cards written before ``metrics.validation`` (the Slicer panel once guessed among them), in the order
#: they were tried: a number, or a number per label (their mean)
LEGACY_DICE_KEYS = ("dice", "val_dice", "mean_dice", "dice_mean", "validation_dice")

S = TypeVar("S", bound="_Section")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def finite(x: Any) -> Optional[float]:
    """``x`` as a float when it is a finite number (not a bool), else None."""
    return float(x) if _number(x) and math.isfinite(x) else None


def _is(kind: str) -> Callable[[Any], bool]:
    return {"number": _number, "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool),
            "object": lambda x: isinstance(x, dict), "list": lambda x: isinstance(x, list),
            "objects": lambda x: isinstance(x, list) and all(isinstance(i, dict) for i in x),
            "numbers": lambda x: isinstance(x, dict) and all(v is None or _number(v) for v in x.values()),
            }[kind]


@dataclass
class _Section:
    """A card section: known keys as fields (None: absent), other keys verbatim in ``extra``."""

    #: field name -> the JSON kind its value must have (see ``_is``)
    _CHECKS: ClassVar[Dict[str, str]] = {}
    #: field name -> the section class its value is read as
    _NESTED: ClassVar[Dict[str, Type["_Section"]]] = {}
    #: whether a field left None is written as null (unless the section was read without it): the trainer states
    #: every training field, even one that is off; a metric not measured is left out
    _WRITE_NONE: ClassVar[bool] = False
    #: with ``_WRITE_NONE``: fields still left out while None (set by a later step, e.g. after the gate)
    _LATER: ClassVar[FrozenSet[str]] = frozenset()

    @classmethod
    def _names(cls) -> List[str]:
        return [f.name for f in fields(cls) if f.name != "extra" and f.metadata.get("card", True)]

    @classmethod
    def from_dict(cls: Type[S], d: Any, where: str = "model card section") -> S:
        """The section of ``d`` (a JSON object), each known value checked once; a bad one raises a HilaError naming it."""
        if not isinstance(d, dict):
            raise HilaError(f"{where} must be an object, got {type(d).__name__}")
        names = cls._names()
        kw: Dict[str, Any] = {}
        for name in names:
            v = d.get(name)
            if v is None:
                continue
            kind = cls._CHECKS.get(name)
            if name in cls._NESTED:
                v = cls._NESTED[name].from_dict(v, f"{where}.{name}")
            elif kind is not None and not _is(kind)(v):
                raise HilaError(f"{where}.{name} must be {_KIND_TEXT[kind]}, got {v!r}"[:300])
            kw[name] = v
        out = cls(**kw, extra={k: v for k, v in d.items() if k not in names})  # type: ignore[call-arg]
        out._nulls = frozenset(n for n in names if n in d and d[n] is None)
        out._absent = frozenset(n for n in names if n not in d)
        out._order = tuple(d)
        return out

    def to_dict(self) -> Dict[str, Any]:
        """The section as JSON: what was read, exactly, plus what was set since."""
        out: Dict[str, Any] = {}
        nulls = getattr(self, "_nulls", frozenset())
        absent = getattr(self, "_absent", frozenset())
        for name in self._names():
            v = getattr(self, name)
            if v is not None:
                out[name] = v.to_dict() if isinstance(v, _Section) else v
            elif name in nulls or (self._WRITE_NONE and name not in absent and name not in self._LATER):
                out[name] = None
        out.update(self.extra)  # type: ignore[attr-defined]
        order = getattr(self, "_order", ())  # a section read from a card keeps its key order: the same JSON text
        return {**{k: out[k] for k in order if k in out}, **out} if order else out


_KIND_TEXT = {"number": "a number", "int": "a whole number", "str": "a string", "bool": "true or false",
              "object": "an object", "list": "a list", "objects": "a list of objects",
              "numbers": "an object of numbers"}


# ------------------------------------------------------------------------------------------------ metrics

@dataclass
class Evaluation(_Section):
    """A model scored on a set of corrections by the gate's evaluator: ``metrics.validation`` (the model itself) and
    ``metrics.parent_validation`` (its parent on the same corrections; ``version`` names the parent)."""

    set: Optional[str] = None                      # which corrections: "gate" or "training corrections (...)"
    dice: Optional[Dict[str, Optional[float]]] = None   # per workspace label
    mean_dice: Optional[float] = None
    cases: Optional[List[dict]] = None             # per correction: case_id, correction_version, dice, mean_dice
    seconds: Optional[float] = None
    version: Optional[int] = None                  # parent_validation: the parent's version
    extra: Dict[str, Any] = field(default_factory=dict)

    _CHECKS = {"set": "str", "dice": "numbers", "mean_dice": "number", "cases": "objects", "seconds": "number",
               "version": "int"}

    def mean(self) -> Optional[float]:
        """The mean Dice when it is a finite number."""
        return finite(self.mean_dice)


@dataclass
class GateVerdict(_Section):
    """``metrics.gate``: the promotion policy, the decision and why, the rule, the split, the per-case comparison."""

    policy: Optional[str] = None
    promote: Optional[bool] = None
    reason: Optional[str] = None
    rule: Optional[dict] = None
    split: Optional[str] = None
    comparison: Optional[dict] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _CHECKS = {"policy": "str", "promote": "bool", "reason": "str", "rule": "object", "split": "str",
               "comparison": "object"}


@dataclass
class Metrics(_Section):
    """``metrics``: the ONNX export's parity, the model's validation, its parent's on the same corrections, the gate;
    for a starter model, its leave-one-out folds (``scripts/make_starter_models.py``).

    Other figures stay in ``extra``. ``legacy_dice`` is not stored: it is the Dice an
    old card gives under one of :data:`LEGACY_DICE_KEYS`, mapped once by :meth:`from_dict`."""

    parity: Optional[dict] = None
    validation: Optional[Evaluation] = None
    parent_validation: Optional[Evaluation] = None
    gate: Optional[GateVerdict] = None
    leave_one_out: Optional[dict] = None           # {"folds": [{held_out, trained_on, dice, ...}], "mean_dice", ...}
    extra: Dict[str, Any] = field(default_factory=dict)
    legacy_dice: Optional[float] = field(default=None, compare=False, metadata={"card": False})

    _CHECKS = {"parity": "object", "leave_one_out": "object"}
    _NESTED = {"validation": Evaluation, "parent_validation": Evaluation, "gate": GateVerdict}

    @classmethod
    def from_dict(cls, d: Any, where: str = "metrics") -> "Metrics":
        out = super().from_dict(d, where)
        out.legacy_dice = _legacy_dice(out.extra)
        return out

    def mean_dice(self) -> Optional[float]:
        """The model's validation Dice (mean over labels): the trainer's ``validation.mean_dice``, else an old card's."""
        own = self.validation.mean() if self.validation is not None else None
        return own if own is not None else self.legacy_dice


def _legacy_dice(extra: Dict[str, Any]) -> Optional[float]:
    """The first of :data:`LEGACY_DICE_KEYS` that holds a finite number, or numbers per label (their mean)."""
    for key in LEGACY_DICE_KEYS:
        v = extra.get(key)
        if finite(v) is not None:
            return finite(v)
        if isinstance(v, dict):
            vals = [finite(x) for x in v.values() if finite(x) is not None]
            if vals:
                return sum(vals) / len(vals)  # type: ignore[arg-type]
    return None


# ------------------------------------------------------------------------------------------------ training

@dataclass
class CheckpointChoice(_Section):
    """``training.checkpoint``: how the weights were chosen and on which cases (none: the last weights)."""

    rule: Optional[str] = None
    chosen_on: Optional[List[Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _CHECKS = {"rule": "str", "chosen_on": "list"}


@dataclass
class TrainingRecord(_Section):
    """``training``: how the trainer made the model: start, loop, steps, precision, device, the corrections that gated
    it, the timings. Written by ``training.candidate.candidate_card`` and ``training.run`` in this order."""

    init: Optional[str] = None                     # "scratch" | "finetune vN" | "imported vN (...)"
    loop: Optional[dict] = None                    # training.loop.LoopConfig.to_dict()
    steps: Optional[int] = None
    epochs: Optional[float] = None
    optimizer_continued: Optional[bool] = None
    precision: Optional[str] = None
    seconds_per_step: Optional[float] = None
    stopped: Optional[str] = None
    final_loss: Optional[float] = None
    loss_history: Optional[list] = None
    trainable_parameters: Optional[int] = None
    device: Optional[str] = None
    threads: Optional[int] = None
    quality_weights: Optional[dict] = None
    ignore_band: Optional[dict] = None             # null when the band was off
    checkpoint: Optional[CheckpointChoice] = None
    recipe: Optional[dict] = None
    distill: Optional[dict] = None                 # a distilled start: teacher version, cases, steps, seconds, share
    calibration: Optional[dict] = None             # a calibrated preset: threshold chosen, was, Dice per threshold
    gate_set: Optional[List[dict]] = None          # {case_id, correction_version} that gated the model
    timings: Optional[dict] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    legacy_chosen_on: List[Any] = field(default_factory=list, compare=False, metadata={"card": False})

    _CHECKS = {"init": "str", "loop": "object", "steps": "int", "epochs": "number", "optimizer_continued": "bool",
               "precision": "str", "seconds_per_step": "number", "stopped": "str", "final_loss": "number",
               "loss_history": "list", "trainable_parameters": "int", "device": "str", "threads": "int",
               "quality_weights": "object", "ignore_band": "object", "recipe": "object", "distill": "object", "calibration": "object",
               "gate_set": "objects",
               "timings": "object"}
    _NESTED = {"checkpoint": CheckpointChoice}
    _WRITE_NONE = True
    _LATER = frozenset({"gate_set", "timings"})

    @classmethod
    def from_dict(cls, d: Any, where: str = "training") -> "TrainingRecord":
        out = super().from_dict(d, where)
        held = out.extra.get("held_out_cases")  # old cards: their checkpoint was chosen on these
        out.legacy_chosen_on = list(held) if isinstance(held, list) else []
        return out

    def chosen_on(self) -> List[Any]:
        """The cases a checkpoint was chosen on (an old card's held-out cases too)."""
        return list((self.checkpoint.chosen_on or []) if self.checkpoint is not None else []) + self.legacy_chosen_on


def case_ids(items: Optional[List[Any]]) -> Set[str]:
    """The ``case_id`` of each object in ``items`` (a training set or gate set), as strings."""
    return {str(t.get("case_id")) for t in items or [] if isinstance(t, dict)}


def training_set_entries(items: Sequence[Any]) -> List[Dict[str, Any]]:
    """A card's ``training_set``: one entry per correction (snapshot items: case id and name, version, quality)."""
    return [{"case_id": s.case_id, "case_name": s.case_name, "correction_version": int(s.correction_version),
             "quality": s.quality} for s in items]
