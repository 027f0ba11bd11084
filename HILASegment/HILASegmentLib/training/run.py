"""One training run against a workspace: snapshot -> split -> train -> export -> parity -> gate -> register.

The run is recorded in the ledger from the moment it starts (``start_training_run`` with the exact
correction versions) to its end (``done``, ``cancelled`` or ``failed``). Nothing reaches the model
registry before the ONNX file is exported, its parity checked and both models scored on the gate
corrections; SIGTERM or SIGINT before that point ends the run as ``cancelled`` with the workspace's
models untouched, and the few milliseconds of registration itself run with those signals held back.
Which corrections train and which gate, and the promotion rule, are :mod:`.gate`'s.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..ground.errors import CancelledError, HilaError
from ..models.cardsections import Evaluation, GateVerdict
from ..models.modelcard import read_card
from ..workspace import Workspace
from ..workspace.registry import VersionTaken
from . import calibrate, ddp, distill, gate
from . import dataset as ds
from . import network as nw
from . import onnxexport as ex
from . import suspectscan as suspects
from .candidate import candidate_card, initial_network, recipe_batch, recipe_data_path
from .gate import POLICIES, GateRule
from .gatedefaults import INITS, WARM_STARTS
from .loop import LoopConfig, train_loop
from .plan import choose_configuration as plan_config
from .plan import family as plan_family
from .plan import finetune_lr
from .signals import StopFlag, signals_held, stop_on_signals

#: --precision choices (TrainOptions.precision)
PRECISIONS = ("auto", "float32")
#: seconds kept back from --max-minutes for export, parity, validation and registration (plus per-case costs)
RESERVE_BASE_S = 12.0


@dataclass
class TrainOptions:
    """Everything ``hila train`` accepts (tests shrink patch/steps; defaults are the shipped recipe)."""

    max_minutes: Optional[float] = 10.0
    device: str = "cpu"
    promote: str = "auto"
    init: str = "auto"                 # auto (current checkpoint, else distil a preset, else scratch) | scratch |
                                       # imported (onnx2torch) | distill (training.distill)
    warm_start: str = "auto"           # how ``init auto`` starts from an imported preset (candidate.warm_start):
                                       # auto | calibrate | distill | none
    teacher_cases: Optional[List[str]] = None  # the cases a teacher labels (None: every imported case)
    config: str = "auto"               # a fresh model's configuration (plan.CONFIGURATIONS); auto: by device
    arch: Optional[str] = None         # a fresh model's network (architectures registry); None: the configuration's
    steps: Optional[int] = None        # cap on optimisation steps (tests, benchmarks)
    train_minutes: Optional[float] = None  # the optimisation's own budget (hila simulate): preparing, export and
                                           # validation come on top instead of out of it, as they do of --max-minutes
    patch_size: Optional[List[int]] = None
    spacing: Optional[List[float]] = None
    channels: Optional[List[int]] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    freeze: str = ""                   # "" | "encoder"
    quality_weights: Dict[str, float] = field(default_factory=dict)
    # --ignore-band: the loss leaves out a band around rough/weak boundaries (dataset.IGNORE_BAND). Off by default,
    # by measurement (scripts/bench_labels.py --rough): no gain on rough labels, 6 Dice points lost on a weak cold start
    ignore_band: bool = False
    threads: Optional[int] = None
    # auto: mixed precision where it is native (float16 on CUDA, bfloat16 on a CPU with AVX512-BF16/AMX: loop.cpu_bf16);
    # float32: never (the off switch, e.g. to compare or where a kernel misbehaves under autocast)
    precision: str = "auto"
    seed: int = 0
    gate_margin: float = GateRule.margin          # mean per-case Dice gain a candidate must exceed (negative: may lose)
    gate_min_cases: int = GateRule.min_cases      # gate corrections needed before auto promotes
    started: Optional[float] = None    # time.monotonic() when the process started (the budget counts from it)

    def check(self) -> GateRule:
        """Refuse bad options before anything is read or recorded; returns the gate rule they state."""
        if self.max_minutes is not None and not (math.isfinite(float(self.max_minutes)) and self.max_minutes > 0):
            raise HilaError(f"--max-minutes {self.max_minutes}: must be a positive number")
        if self.max_minutes is not None and float(self.max_minutes) * 60.0 < RESERVE_BASE_S + 5:
            raise HilaError(f"--max-minutes {self.max_minutes:g}: too short; a round needs at least "
                            f"{(RESERVE_BASE_S + 5) / 60:.2f} minutes (export and validation alone take "
                            f"{RESERVE_BASE_S:g} s)")
        if self.promote not in POLICIES:
            raise HilaError(f"--promote {self.promote!r}: use auto, never or always")
        if self.precision not in PRECISIONS:
            raise HilaError(f"--precision {self.precision!r}: use {' or '.join(PRECISIONS)}")
        if self.init not in INITS:
            raise HilaError(f"--init {self.init!r}: use {', '.join(INITS)}")
        if self.warm_start not in WARM_STARTS:
            raise HilaError(f"--warm-start {self.warm_start!r}: use {', '.join(WARM_STARTS)}")
        configuration, _ = plan_config(self.device, self.config)  # an unknown --config: refused before anything is read
        plan_family(configuration, self.arch)  # an --arch unknown or unfit for it, too
        return GateRule(margin=self.gate_margin, min_cases=self.gate_min_cases).check()


# --------------------------------------------------------------------------- the run

def check_device(device: str) -> str:
    if device == "auto":  # the Slicer panel's default: the GPU when torch sees one
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise HilaError(f"--device {device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise HilaError("--device cuda: no CUDA device is available to torch here (use --device cpu)")
    return device


def _emit(progress, fraction, message, **extra):
    if progress is not None:
        try:
            progress(fraction, message, **extra)
        except TypeError:  # a plain progress(fraction, message) callable
            progress(fraction, message)



def _infer_cost_s(onnx_path: Optional[Path]) -> float:
    """Rough seconds one validation inference takes on CPU (bigger ONNX files are bigger networks)."""
    if onnx_path is None or not Path(onnx_path).exists():
        return 0.0
    return 4.0 + 0.5 * os.path.getsize(onnx_path) / 1e6


def train_workspace(workspace, opts: TrainOptions, progress: Optional[Callable] = None,
                    stop: Optional[StopFlag] = None) -> dict:
    """Run one training round on ``workspace`` (path or Workspace); returns the result dict the CLI prints.

    ``stop``: the flag SIGTERM/SIGINT set (a caller that outlives the run, e.g. ``--watch``, passes its own to
    learn that a signal arrived, even one held back during registration)."""
    rule = opts.check()
    device = check_device(opts.device)
    group = ddp.Group(device) if ddp.under_torchrun() else None  # hila train --nproc N (see .ddp)
    try:
        return _train_workspace(workspace, opts, progress, rule, group.device if group else device, group,
                                stop or StopFlag())
    finally:
        if group is not None:
            group.close()


def _train_workspace(workspace, opts: TrainOptions, progress, rule: GateRule, device: str, group,
                     flag: StopFlag) -> dict:
    worker = group is not None and not group.is_main
    if worker:
        progress = None  # rank 0 speaks for the run
    torch.set_num_threads(int(opts.threads or os.cpu_count() or 1))
    ws = workspace if hasattr(workspace, "snapshot") else Workspace.open(workspace)
    snapshot = ws.snapshot()
    if not snapshot:
        raise HilaError(f"{ws.root}: no corrections to train on yet; submit some with `hila submit`")
    current = ws.current_model()
    torch.manual_seed(opts.seed)  # a fresh network's initial weights too: same corrections + seed, same model
    start = initial_network(ws, current, opts, snapshot, gateable=lambda head: gate.line_keeps_gate(
        snapshot, current.card, head.card, rule, seed=opts.seed))
    train_items, gate_items, split_why = gate.split_for_gate(
        snapshot, current.card if current else None, rule, seed=opts.seed,
        also_seen=start.origin.card if start.origin is not None else None)
    with stop_on_signals(flag):  # handlers first, then the ledger row: a signal never leaves a 'running' row
        rnd = _Round(ws, opts, rule, device, current, start, flag, progress)
        rnd.group = group
        if worker:  # trains with rank 0, records nothing
            return rnd.execute(train_items, gate_items, split_why)
        # the budget checked before the run row: a --max-minutes too short for this round is refused, not failed
        rnd._loop_config([int(p) for p in start.base.patch_size], n_scored=len(gate_items) or len(train_items))
        rnd.run_id = ws.start_training_run(snapshot, parent_model=current.version if current else None)
        rnd.log += [f"init: {start.init}", f"gate: {split_why}",
                    f"train on: {[(s.case_id, s.correction_version, s.quality) for s in train_items]}",
                    f"gate on: {[(s.case_id, s.correction_version) for s in gate_items]}"]
        try:
            out = rnd.execute(train_items, gate_items, split_why)
        except CancelledError as exc:
            rnd.finish_quietly("cancelled", str(exc))
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure must close the run row
            if rnd.registered is None:
                rnd.finish_quietly("failed", f"{exc.__class__.__name__}: {exc}")
            raise
    out["suspects"] = _scan_suspects(ws, rnd, snapshot, gate_items)
    out["quality_model"] = _refit_quality(ws)
    _emit(progress, 1.0, "done", phase="done", epoch=int(out["epochs"]), step=out["steps"], loss=out["final_loss"],
          val_dice=out["validation"].get("mean_dice"), seconds_left=0)
    return out


class _Round:
    """The steps of one run, sharing its workspace, options, timings and log."""

    def __init__(self, ws, opts: TrainOptions, rule: GateRule, device: str, current, start, flag, progress):
        self.ws, self.opts, self.rule, self.device, self.current = ws, opts, rule, device, current
        self.start, self.flag, self.progress = start, flag, progress
        self.labels = [(lab.value, lab.name) for lab in ws.settings.labels]
        self.t_start = opts.started if opts.started is not None else time.monotonic()
        self.run_id: Optional[int] = None
        self.parent_eval: Optional[dict] = None  # the parent model's scores (and boundary figures) on the gate corrections
        self.group = None  # a ddp.Group when this is one of several data-parallel processes
        self.registered = None
        self.log: List[str] = []
        self.timings: Dict[str, float] = {}

    def _tick(self, name: str, t: float) -> None:
        self.timings[name] = round(time.monotonic() - t, 2)
        if self.flag():
            raise CancelledError(f"training cancelled ({name[:-2]})")

    def execute(self, train_items, gate_items, split_why: str) -> dict:
        if self.start.init.startswith("calibrate"):
            return self._calibrate(train_items, gate_items, split_why)

        prep = ds.Preprocessing.from_card(self.start.base)
        patch = [int(p) for p in self.start.base.patch_size]
        with tempfile.TemporaryDirectory(prefix="hila-train-") as tmpdir:
            tmp = Path(tmpdir)
            t = time.monotonic()
            _emit(self.progress, 0.0, "preparing cases", phase="prepare", epoch=0, step=0, loss=None, val_dice=None,
                  seconds_left=None)
            cache = Path(self.ws.root) / "cache" / "training"
            group = self.group
            if group is not None and not group.is_main:
                group.barrier()  # rank 0 fills the cache first; the others read it
            train = ds.cases_from_snapshot(train_items, prep, len(self.labels), cache_dir=cache,
                                           quality_weights=self.opts.quality_weights, suspects=self.ws.suspect_keys(),
                                           bands=ds.IGNORE_BAND if self.opts.ignore_band else None,
                                           seen=self._parent_seen())
            if group is not None and group.is_main:
                group.barrier()
            self._tick("prepare_s", t)
            teach: List[dict] = []
            if self.start.teacher is not None:
                t = time.monotonic()
                teach = distill.teacher_cases(self.ws, self.start.teacher, prep, len(self.labels), cache,
                                              threads=self.opts.threads, should_stop=self.flag,
                                              case_ids=self.opts.teacher_cases,
                                              progress=lambda f, m: _emit(self.progress, 0.01 * f, m, phase="prepare",
                                                                          epoch=0, step=0, loss=None, val_dice=None,
                                                                          seconds_left=None))
                self.log.append(f"teacher v{self.start.teacher.version}: {len(teach)} case(s) labelled")
                self._tick("teacher_s", t)
            cfg = self._loop_config(patch, n_scored=len(gate_items) or len(train_items))
            if group is not None:
                cfg.processes = group.world
                cfg.max_seconds = group.mean(cfg.max_seconds)  # one budget for all (startup times differ a little)
            res = self._train(train, cfg, teach)
            if group is not None and not group.is_main:
                return {"worker": True, "rank": group.rank, "steps": res.steps, "final_loss": res.final_loss}

            t = time.monotonic()
            _emit(self.progress, 0.86, "exporting ONNX", phase="export", epoch=int(res.epochs), step=res.steps,
                  loss=res.final_loss, val_dice=None, seconds_left=None)
            version = self.ws.next_model_version()
            raw_onnx = ex.export_onnx(self.start.net, tmp / "raw.onnx", patch)
            ck = nw.save_checkpoint(self.start.net, self.start.arch, tmp / f"model_v{version}.pt", optimizer=res.optimizer)
            par = ex.parity(self.start.net, raw_onnx, _validation_patch(train[0], patch))
            card = candidate_card(self.start, self.ws.settings, version, self.current, train_items, cfg, res, par,
                                  self.opts, self.device)
            self._tick("export_s", t)

            promote, why, verdict = self._gate(raw_onnx, card, tmp, train_items, gate_items, split_why)
            self.timings["total_s"] = round(time.monotonic() - self.t_start, 2)
            card.training.timings = dict(self.timings)
            registered = self._register(raw_onnx, card, ck, promote, dict(verdict, parity=par, steps=res.steps), tmp)
        return {"run_id": self.run_id, "model_version": registered.version, "promoted": promote, "reason": why,
                "status": "current" if promote else "candidate", "path": str(registered.path),
                "init": self.start.init, "held_out": bool(gate_items), "parity": par, "steps": res.steps,
                "epochs": res.epochs, "final_loss": res.final_loss, "stopped": res.stopped, "timings": self.timings,
                "training_set": card.training_set, "postprocess": dict(card.postprocess or {}), **verdict}

    def _calibrate(self, train_items, gate_items, split_why: str) -> dict:
        """The current preset with its threshold fitted to the training corrections (no weights change), gated and
        registered like a trained candidate. Fitting stops at --max-minutes (on the corrections scored so far); an
        unchanged threshold registers nothing (a preset's ONNX is copied per version: TAPS 80 MB)."""
        cur = self.start.teacher.record
        budget_s = None if self.opts.max_minutes is None else float(self.opts.max_minutes) * 60.0 - RESERVE_BASE_S
        over = (lambda: False) if budget_s is None else (lambda: time.monotonic() - self.t_start > budget_s)
        with tempfile.TemporaryDirectory(prefix="hila-calibrate-") as tmpdir:
            t = time.monotonic()
            fit = calibrate.fit_threshold(cur.path, cur.card, train_items, self.labels, threads=self.opts.threads,
                                          should_stop=lambda: self.flag() or over(),
                                          progress=lambda f, m: _emit(self.progress, 0.02 + 0.83 * f, m, phase="train",
                                                                      epoch=0, step=0, loss=None, val_dice=None,
                                                                      seconds_left=None))
            self.log.append(f"threshold {fit['threshold']:g} (was {fit['was']:g}) on {fit['cases']} correction(s)")
            self._tick("calibrate_s", t)
            base = {"run_id": self.run_id, "init": self.start.init, "held_out": bool(gate_items), "parity": None,
                    "steps": 0, "epochs": 0.0, "final_loss": None, "stopped": "calibrated", "timings": self.timings,
                    "calibration": fit}
            if fit["threshold"] == fit["was"]:
                why = f"threshold unchanged ({fit['threshold']:g}) on {fit['cases']} correction(s): nothing registered"
                self.timings["total_s"] = round(time.monotonic() - self.t_start, 2)
                with signals_held():
                    self.ws.finish_training_run(self.run_id, "done", {"calibration": fit, "timings": self.timings},
                                                None, "\n".join(self.log + [why]))
                dice = fit["mean_dice"][f"{fit['threshold']:g}"]
                return dict(base, model_version=cur.version, promoted=False, reason=why, status="unchanged",
                            path=str(cur.path), training_set=[],
                            validation={"mean_dice": dice, "set": "training corrections (calibration)"},
                            parent_validation=None, gate=None)
            card = calibrate.calibrated_card(cur.card, self.ws.next_model_version(), cur.version, fit, train_items,
                                             self.start.init, self.device, int(self.opts.threads or os.cpu_count() or 1))
            promote, why, verdict = self._gate(cur.path, card, Path(tmpdir), train_items, gate_items, split_why)
            self.timings["total_s"] = round(time.monotonic() - self.t_start, 2)
            card.training.timings = dict(self.timings)
            registered = self._register(cur.path, card, None, promote, dict(verdict, calibration=fit, steps=0),
                                        Path(tmpdir))
        return dict(base, model_version=registered.version, promoted=promote, reason=why,
                    status="current" if promote else "candidate", path=str(registered.path),
                    training_set=card.training_set, postprocess=dict(card.postprocess or {}), **verdict)

    def _parent_seen(self) -> Optional[set]:
        """The corrections the round's starting weights were trained on (None for a fresh network)."""
        if not self.start.init.startswith("finetune") or self.start.origin is None:
            return None
        return self.start.origin.card.trained_corrections()

    def _loop_config(self, patch: List[int], n_scored: int):
        """The loop's budget: what is left of --max-minutes after startup, minus export/validation/registration."""
        opts, budget_s = self.opts, None if self.opts.max_minutes is None else float(self.opts.max_minutes) * 60.0
        reserve = RESERVE_BASE_S + n_scored * (6.0 + _infer_cost_s(self.current.path if self.current else None))
        train_s = 1e9 if budget_s is None else budget_s - (time.monotonic() - self.t_start) - reserve
        if opts.train_minutes is not None:
            train_s = min(train_s, float(opts.train_minutes) * 60.0)
        elif train_s < 5:
            raise HilaError(f"--max-minutes {opts.max_minutes}: too short; this round needs about "
                            f"{math.ceil((time.monotonic() - self.t_start + reserve + 30) / 60)} minutes")
        fine = self.start.init.startswith(("finetune", "imported"))
        batch = int(opts.batch_size or (recipe_batch(self.start) if self.start.own else 2))
        return LoopConfig(patch_size=patch, device=self.device, seed=opts.seed, max_seconds=train_s,
                          max_steps=int(opts.steps) if opts.steps else 10**9,
                          lr=float(opts.lr or (finetune_lr(self.start.base.modality) if fine else 3e-3)),
                          batch_size=batch,
                          samples_per_case=min(2, batch), freeze=opts.freeze, amp=opts.precision == "auto",
                          data_path=recipe_data_path(self.start) if self.start.own else "monai")

    def _train(self, train: List[dict], cfg, teach: Sequence[dict] = ()):
        """The loop on the corrections; with a teacher's cases, first on those for :data:`distill.SHARE` of the
        budget (and of a step cap), then on the corrections with the rest."""
        t = time.monotonic()
        phases = [(train, cfg, 0.02, 0.83)]
        first = None
        if teach:
            share = distill.SHARE
            c1 = replace(cfg, max_seconds=cfg.max_seconds * share, max_steps=max(1, int(cfg.max_steps * share)))
            c2 = replace(cfg, max_seconds=cfg.max_seconds * (1 - share), max_steps=max(1, cfg.max_steps - c1.max_steps))
            phases = [(list(teach), c1, 0.02, 0.41), (train, c2, 0.43, 0.42)]
        for cases, c, at, width in phases:
            res = train_loop(self.start.net, cases, len(self.labels) + 1, c,
                             progress=lambda f, m, **rec: _emit(self.progress, at + width * f, m, **rec),
                             should_stop=self.flag, sigmoid_single=self.start.sigmoid, group=self.group,
                             optimizer_state=self.start.optimizer)
            if first is None and len(phases) > 1:
                first = res
                self.log.append(f"distilled {res.steps} steps in {res.seconds:.0f} s on {len(cases)} teacher case(s)")
        if self.start.teacher is not None:  # a teacher that labelled nothing is said so, not passed over
            res.distill = {"teacher_version": self.start.teacher.version, "cases": len(teach),
                           "steps": first.steps if first else 0, "seconds": round(first.seconds, 1) if first else 0.0,
                           "share": distill.SHARE if first else 0.0}
            res.steps += first.steps if first else 0
        self.log.append(f"trained {res.steps} steps in {res.seconds:.0f} s ({res.stopped})")
        self._tick("train_s", t)
        return res

    def _gate(self, raw_onnx: Path, card, tmp: Path, train_items, gate_items, split_why: str):
        """Score candidate and current model with the inference engine on the gate corrections; decide."""
        t = time.monotonic()
        _emit(self.progress, 0.9, "validating", phase="validate", epoch=None, step=None, loss=None, val_dice=None,
              seconds_left=None)
        scored = gate_items or train_items  # no gate set: the card's figure is on the training corrections
        choose = bool(gate_items)  # post-processing is chosen on gate corrections only: training ones flatter it
        card.postprocess = gate.without_choices(card.postprocess)  # a parent's step was chosen for other weights
        # one pass: each case read once, scored by the candidate (its card passed, no probe copy) and the current
        models = [(raw_onnx, card)]
        if self.current is not None and gate_items:
            models.append((self.current.path, self.current.card))
        # the same inference gives the current model's boundary figures for the suspect scan (each case read once)
        evidence = suspects.boundary_figures(self.labels) if len(models) > 1 else None
        cand, *rest = gate.evaluate_models(models, scored, self.labels, threads=self.opts.threads, should_stop=self.flag,
                                           evidence=evidence, choices=choose)
        if isinstance(cand, HilaError):
            raise cand
        if choose:
            cand = gate.deploy_choices(cand, card, self.log)
        cur = rest[0] if rest and not self.flag() else None
        if isinstance(cur, HilaError):
            self.log.append(f"current model v{self.current.version} could not be validated: {cur}")
            cur = None
        self._tick("validate_s", t)
        self.parent_eval = cur
        promote, why, cmp = gate.decide(self.opts.promote, cand, cur, self.rule, self.current is not None,
                                        len(gate_items))
        where = "gate" if gate_items else f"training corrections (no gate set: {split_why})"
        met = card.metrics
        met.validation = Evaluation.from_dict(_slim(cand, where), "metrics.validation")
        if cur is not None:
            met.parent_validation = Evaluation.from_dict(dict(_slim(cur, where), version=self.current.version),
                                                         "metrics.parent_validation")
        met.gate = GateVerdict(policy=self.opts.promote, promote=promote, reason=why, rule=self.rule.to_dict(),
                               split=split_why, comparison=cmp)
        card.training.gate_set = [{"case_id": s.case_id, "correction_version": int(s.correction_version)}
                                  for s in gate_items]
        verdict = {"validation": met.validation.to_dict(),
                   "parent_validation": met.parent_validation.to_dict() if met.parent_validation else None,
                   "gate": met.gate.to_dict()}
        return promote, why, verdict

    def _register(self, raw_onnx: Path, card, ck: Path, promote: bool, metrics: dict, tmp: Path):
        """Add the model under the version its card names, promote it if the gate says so, close the run.

        The registry refuses a version other than the card's (another model added meanwhile, e.g. an
        import): the card is then re-embedded with the new next version and registration tried again.
        """

        for _ in range(5):
            onnx_path = ex.embed_card(raw_onnx, card, tmp / f"model_v{card.version}.onnx")
            try:
                with signals_held():
                    self.registered = self.ws.add_model(
                        onnx_path, card, parent=card.parent_version, status="candidate",
                        checkpoint_path=ck, training_run=self.run_id, version=card.version)
                    if int(read_card(self.registered.path).version) != self.registered.version:
                        self.registered = None
                        raise HilaError(f"{self.ws.root}: the registered model's card does not name its version")
                    if promote:
                        self.ws.promote(self.registered.version)
                    self.ws.finish_training_run(self.run_id, "done", dict(metrics, timings=self.timings),
                                                self.registered.version, "\n".join(self.log))
                return self.registered
            except VersionTaken as exc:
                self.log.append(str(exc))
                card.version = self.ws.next_model_version()
        raise HilaError(f"{self.ws.root}: could not register the model: other models keep being added")

    def finish_quietly(self, status: str, why: str) -> None:
        try:
            with signals_held():
                self.ws.finish_training_run(self.run_id, status, {"timings": self.timings}, None,
                                            "\n".join(self.log + [why]))
        except HilaError:
            pass


def _scan_suspects(ws, rnd: "_Round", snapshot, gate_items) -> dict:
    """After each run: flag training corrections the parent model disagrees with far more than their peers
    (``training.suspects``). A failure is reported in the result, never a failed run (the model is registered)."""
    try:
        return suspects.scan(ws, rnd.run_id, rnd.current, snapshot, rnd.labels, parent_eval=rnd.parent_eval,
                             threads=rnd.opts.threads)
    except Exception as exc:  # noqa: BLE001 - the model is registered by now: the scan may fail, the run may not
        return {"scored": 0, "flagged": [], "why": f"not scanned: {type(exc).__name__}: {exc}"}


def _refit_quality(ws) -> dict:
    """After each run: the learned quality model for the model now current, fitted on every accepted
    correction of a prediction (``qualitymodel``); whether it is used is decided there, by leave-one-out.
    A failure here is reported in the result, never a failed training run (the model is registered)."""
    try:
        qm = ws.fit_quality_model()
    except HilaError as exc:
        return {"error": str(exc)}
    out = {"model_version": qm.model_version, "in_use": qm.in_use, "source": qm.source, "n_pairs": qm.n_pairs,
           "reason": qm.reason}
    if qm.per_label:
        out["per_label"] = {k: qm.per_label.get(k) for k in ("source", "reason", "n_real", "n_synthetic")}
    return out


def _slim(ev: dict, where: str) -> dict:
    return {"set": where, "dice": ev["dice"], "mean_dice": ev["mean_dice"],
            "cases": [{"case_id": c["case_id"], "correction_version": c["correction_version"], "dice": c["dice"],
                       "mean_dice": c["mean_dice"]} for c in ev["cases"]], "seconds": ev["seconds"]}


def _validation_patch(case: dict, patch: List[int]) -> np.ndarray:
    """A (1,1,*patch) crop of a validation case around its labelled centre (parity is checked on real data)."""
    img, lab = case["image"], case["label"][0]
    idx = np.argwhere(lab > 0)
    centre = idx.mean(0).round().astype(int) if idx.size else np.array(lab.shape) // 2
    sl = []
    for c, p, n in zip(centre, patch, lab.shape):
        lo = int(min(max(0, c - p // 2), max(0, n - p)))
        sl.append(slice(lo, lo + p))
    x = img[(slice(None),) + tuple(sl)]
    pads = [(0, 0)] + [(0, p - s) for s, p in zip(x.shape[1:], patch)]
    return np.pad(x, pads)[None].astype(np.float32)
