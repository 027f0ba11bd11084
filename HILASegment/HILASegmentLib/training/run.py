"""One training run against a workspace: snapshot -> train -> export -> parity -> validate -> register -> gate.

The run is recorded in the ledger from the moment it starts (``start_training_run`` with the exact
correction versions) to its end (``done``, ``cancelled`` or ``failed``). Nothing reaches the model
registry before the ONNX file is exported, its parity checked and both models validated; SIGTERM or
SIGINT before that point ends the run as ``cancelled`` with the workspace's models untouched, and
the few milliseconds of registration itself run with those signals held back.
"""
from __future__ import annotations

import math
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import CancelledError, HilaError
from .dataset import QUALITY_WEIGHTS

#: seconds kept back from --max-minutes for export, parity, validation and registration (plus per-case costs)
RESERVE_BASE_S = 12.0


@dataclass
class TrainOptions:
    """Everything ``hila train`` accepts (tests shrink patch/steps; defaults are the shipped recipe)."""

    max_minutes: Optional[float] = 10.0
    device: str = "cpu"
    promote: str = "auto"
    init: str = "auto"                 # auto (current checkpoint, else scratch) | scratch | imported (onnx2torch)
    steps: Optional[int] = None        # cap on optimisation steps (tests, benchmarks)
    patch_size: Optional[List[int]] = None
    spacing: Optional[List[float]] = None
    channels: Optional[List[int]] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    val_every_steps: int = 0
    freeze: str = ""                   # "" | "encoder"
    quality_weights: Dict[str, float] = field(default_factory=dict)
    threads: Optional[int] = None
    seed: int = 0
    started: Optional[float] = None    # time.monotonic() when the process started (the budget counts from it)


# --------------------------------------------------------------------------- recipes

def ct_window() -> dict:
    """Soft-tissue window for pelvic CT: -200..300 HU -> 0..1 (air, fat and bone saturate)."""
    return {"kind": "ct_window", "level": 50.0, "width": 500.0, "out_range": [0.0, 1.0]}


def recipe(modality: str) -> dict:
    """Grid, patch and normalisation of a fresh own model, per modality.

    CT: 3 mm isotropic (loses < 3 % Dice on the pelvic organs when resampled back, measured on the
    real CTs) with 64x64x48 patches (192x192x144 mm: the whole pelvis around the organs), so a 2-core
    CPU gets through ~500 steps in 5 minutes. MR: the prostate needs in-plane detail: 1x1x3 mm.
    """
    from .network import DEFAULT_PATCH, DEFAULT_SPACING

    if modality == "CT":
        return {"spacing": [3.0, 3.0, 3.0], "patch_size": [64, 64, 48], "normalization": ct_window()}
    return {"spacing": list(DEFAULT_SPACING["MR"]), "patch_size": list(DEFAULT_PATCH["MR"]),
            "normalization": {"kind": "zscore", "nonzero": True}}


# --------------------------------------------------------------------------- signals

class StopFlag:
    """Set by SIGTERM/SIGINT; polled by the loop so a run stops between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __call__(self) -> bool:
        return self.signal is not None

    def handler(self, signum, _frame) -> None:
        self.signal = signum


@contextmanager
def stop_on_signals(flag: StopFlag):
    installed = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            installed[s] = signal.signal(s, flag.handler)
        except ValueError:  # not the main thread (e.g. called from a worker thread): no signal handling
            pass
    try:
        yield flag
    finally:
        for s, old in installed.items():
            signal.signal(s, old)


@contextmanager
def signals_held():
    """Hold SIGTERM/SIGINT back while the model is registered, so no half-registered model can exist."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):  # pragma: no cover - Windows
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --------------------------------------------------------------------------- the run

def check_device(device: str) -> str:
    import torch

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


def _infer_cost_s(onnx_path: Optional[Path], modality: str) -> float:
    """Rough seconds one validation inference takes on CPU (bigger ONNX files are bigger networks)."""
    if onnx_path is None or not Path(onnx_path).exists():
        return 0.0
    mb = os.path.getsize(onnx_path) / 1e6
    return 4.0 + 0.5 * mb


def train_workspace(workspace, opts: TrainOptions, progress: Optional[Callable] = None) -> dict:
    """Run one training round on ``workspace`` (path or Workspace); returns the result dict the CLI prints."""
    import torch

    from ..workspace import Workspace
    from . import dataset as ds
    from . import export as ex
    from . import gate
    from . import network as nw
    from .loop import LoopConfig, train_loop

    t_start = opts.started if opts.started is not None else time.monotonic()
    budget_s = None if opts.max_minutes is None else float(opts.max_minutes) * 60.0
    if budget_s is not None and budget_s <= 0:
        raise HilaError(f"--max-minutes {opts.max_minutes}: must be positive")
    if opts.promote not in gate.POLICIES:
        raise HilaError(f"--promote {opts.promote!r}: use auto, never or always")
    if opts.init not in ("auto", "scratch", "imported"):
        raise HilaError(f"--init {opts.init!r}: use auto, scratch or imported")
    device = check_device(opts.device)
    torch.set_num_threads(int(opts.threads or os.cpu_count() or 1))
    ws = workspace if hasattr(workspace, "snapshot") else Workspace.open(workspace)
    settings = ws.settings
    labels = [(lab.value, lab.name) for lab in settings.labels]
    n_labels = len(labels)
    snapshot = ws.snapshot()
    if not snapshot:
        raise HilaError(f"{ws.root}: no corrections to train on yet; submit some with `hila submit`")
    current = ws.current_model()

    # ---- where the weights start, and the card the candidate inherits its grid from
    torch.manual_seed(opts.seed)  # a fresh network's initial weights too: same corrections + seed, same model
    init, base_card, arch, net, sigmoid = _initial_network(ws, current, opts, settings, n_labels, nw)
    card_base = dict(base_card)
    patch = [int(p) for p in card_base["patch_size"]]
    prep = ds.Preprocessing.from_card(card_base)

    flag = StopFlag()
    # handlers first, then the ledger row: a signal can never leave a 'running' row behind
    sig_ctx = stop_on_signals(flag)
    sig_ctx.__enter__()
    try:
        run_id = ws.start_training_run(snapshot, parent_model=current.version if current else None)
    except BaseException:
        sig_ctx.__exit__(None, None, None)
        raise
    log: List[str] = [f"init: {init}", f"snapshot: {[(s.case_id, s.correction_version, s.quality) for s in snapshot]}"]
    timings: Dict[str, float] = {}
    metrics: Dict[str, object] = {}
    registered = None
    try:
        with tempfile.TemporaryDirectory(prefix="hila-train-") as tmpdir:
            tmp = Path(tmpdir)
            # ---- data
            t = time.monotonic()
            _emit(progress, 0.0, "preparing cases", phase="prepare", epoch=0, step=0, loss=None, val_dice=None,
                  seconds_left=None)
            cache = Path(ws.root) / "cache" / "training"
            cases = ds.cases_from_snapshot(snapshot, prep, n_labels, cache_dir=cache, quality_weights=opts.quality_weights)
            train, val = ds.split_cases(cases, seed=opts.seed)
            held_out = bool(val)
            if not held_out:
                val = [dict(c, is_training=True) for c in cases]
            timings["prepare_s"] = round(time.monotonic() - t, 2)
            if flag():
                raise CancelledError("training cancelled while preparing cases")

            # ---- budget: what is left after startup, minus export/validation/registration
            cost = _infer_cost_s(current.path if current else None, settings.modality)
            reserve = RESERVE_BASE_S + len(val) * (6.0 + cost)
            train_s = 1e9 if budget_s is None else budget_s - (time.monotonic() - t_start) - reserve
            if train_s < 5:
                raise HilaError(f"--max-minutes {opts.max_minutes}: too short; this round needs about "
                                f"{math.ceil((time.monotonic() - t_start + reserve + 30) / 60)} minutes")
            cfg = LoopConfig(patch_size=patch, device=device, seed=opts.seed, max_seconds=train_s,
                             max_steps=int(opts.steps) if opts.steps else 10**9,
                             lr=float(opts.lr or (1e-3 if init.startswith(("finetune", "imported")) else 3e-3)),
                             batch_size=int(opts.batch_size or 2), samples_per_case=min(2, int(opts.batch_size or 2)),
                             val_every_steps=int(opts.val_every_steps or 0), freeze=opts.freeze,
                             early_stopping=held_out)

            def loop_progress(frac, msg, **rec):
                _emit(progress, 0.02 + 0.83 * frac, msg, **rec)

            t = time.monotonic()
            res = train_loop(net, train, val if held_out else [], n_labels + 1, cfg, progress=loop_progress,
                             should_stop=flag, sigmoid_single=sigmoid)
            timings["train_s"] = round(time.monotonic() - t, 2)
            log.append(f"trained {res.steps} steps in {res.seconds:.0f} s ({res.stopped})")
            if flag() or res.stopped == "cancelled":
                raise CancelledError(f"training cancelled after {res.steps} steps")

            # ---- export + parity
            t = time.monotonic()
            _emit(progress, 0.86, "exporting ONNX", phase="export", epoch=int(res.epochs), step=res.steps,
                  loss=res.final_loss, val_dice=res.best_val_dice, seconds_left=None)
            version = ws.next_model_version()
            raw_onnx = ex.export_onnx(net, tmp / "raw.onnx", patch)
            ck = nw.save_checkpoint(net, arch, tmp / f"model_v{version}.pt")
            sample = _validation_patch(val[0], patch)
            par = ex.parity(net, raw_onnx, sample)
            timings["export_s"] = round(time.monotonic() - t, 2)

            card = _candidate_card(card_base, settings, arch, version, current, snapshot, cfg, res, par, init,
                                   nw.count_parameters(net), timings, opts, device, held_out, val)
            onnx_path = tmp / f"model_v{version}.onnx"
            ex.embed_card(raw_onnx, card, onnx_path)
            if flag():
                raise CancelledError("training cancelled after export")

            # ---- validation of both models on the same corrections, with the inference engine
            t = time.monotonic()
            _emit(progress, 0.9, "validating", phase="validate", epoch=int(res.epochs), step=res.steps,
                  loss=res.final_loss, val_dice=res.best_val_dice, seconds_left=None)
            vcases = [{k: c[k] for k in ("case_id", "correction_version", "image_path", "label_path")} for c in val]
            cand_eval = gate.evaluate_model(onnx_path, vcases, labels, threads=opts.threads, should_stop=flag)
            cur_eval = None
            if current is not None and not flag():
                try:
                    cur_eval = gate.evaluate_model(current.path, vcases, labels, threads=opts.threads, should_stop=flag,
                                                   card=current.card or None)
                except HilaError as exc:
                    log.append(f"current model v{current.version} could not be validated: {exc}")
                    metrics["parent_validation_error"] = str(exc)
            timings["validate_s"] = round(time.monotonic() - t, 2)
            if flag():
                raise CancelledError("training cancelled during validation")
            promote, why = gate.decide(opts.promote, cand_eval, cur_eval, held_out, current is not None)
            card["metrics"]["validation"] = _slim_eval(cand_eval, held_out)
            if cur_eval is not None:
                card["metrics"]["parent_validation"] = dict(_slim_eval(cur_eval, held_out), version=current.version)
            card["metrics"]["gate"] = {"policy": opts.promote, "promote": promote, "reason": why}
            if "parent_validation_error" in metrics:
                card["metrics"]["parent_validation_error"] = metrics["parent_validation_error"]
            timings["total_s"] = round(time.monotonic() - t_start, 2)
            card["training"]["timings"] = dict(timings)
            ex.embed_card(raw_onnx, card, onnx_path)

            # ---- register (signals held: the model row and the run's end are written together)
            with signals_held():
                registered = ws.add_model(onnx_path, card, parent=current.version if current else None,
                                          status="candidate", checkpoint_path=ck, training_run=run_id)
                if promote:
                    ws.promote(registered.version)
                metrics.update({"validation": card["metrics"]["validation"], "parent_validation": card["metrics"].get("parent_validation"),
                           "gate": card["metrics"]["gate"], "parity": par, "steps": res.steps, "timings": timings})
                ws.finish_training_run(run_id, "done", metrics, registered.version, "\n".join(log))
    except CancelledError as exc:
        _finish_quietly(ws, run_id, "cancelled", {"timings": timings}, "\n".join(log + [str(exc)]))
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must close the run row
        if registered is None:
            _finish_quietly(ws, run_id, "failed", {"timings": timings},
                            "\n".join(log + [f"{exc.__class__.__name__}: {exc}"]))
        raise
    finally:
        sig_ctx.__exit__(None, None, None)
    _emit(progress, 1.0, "done", phase="done", epoch=int(res.epochs), step=res.steps, loss=res.final_loss,
          val_dice=cand_eval.get("mean_dice"), seconds_left=0)
    return {"run_id": run_id, "model_version": registered.version, "promoted": promote, "reason": why,
            "status": "current" if promote else "candidate", "path": str(registered.path),
            "init": init, "held_out": held_out, "validation": card["metrics"]["validation"],
            "parent_validation": card["metrics"].get("parent_validation"), "parity": par,
            "steps": res.steps, "stopped": res.stopped, "timings": timings,
            "training_set": card["training_set"]}


def _finish_quietly(ws, run_id: int, status: str, metrics: dict, log: str) -> None:
    try:
        with signals_held():
            ws.finish_training_run(run_id, status, metrics, None, log)
    except HilaError:
        pass


def _slim_eval(ev: dict, held_out: bool) -> dict:
    return {"set": "held_out" if held_out else "training (fewer than 3 corrections: no held-out set)",
            "dice": ev["dice"], "mean_dice": ev["mean_dice"],
            "cases": [{"case_id": c["case_id"], "correction_version": c["correction_version"], "dice": c["dice"]}
                      for c in ev["cases"]], "seconds": ev["seconds"]}


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


def _initial_network(ws, current, opts: TrainOptions, settings, n_labels: int, nw):
    """(init description, base card dict, architecture, module, sigmoid?) for this round."""
    from ..modelcard import read_card

    names = [lab.name.lower() for lab in settings.labels]
    if current is not None and opts.init in ("auto",):
        cur_card = current.card or {}
        same_labels = [str(l.get("name", "")).lower() for l in cur_card.get("labels", [])] == names
        if current.checkpoint_path is not None and Path(current.checkpoint_path).exists() and same_labels:
            onnx_src = None
            arch0 = (cur_card.get("architecture") or {})
            if arch0.get("name") == "onnx2torch":
                onnx_src = ws.model(int(arch0["onnx_from_version"])).path
            net, arch = nw.load_checkpoint(current.checkpoint_path, onnx_path=onnx_src)
            sig = cur_card.get("activation") == "sigmoid"
            return f"finetune v{current.version}", cur_card, arch, net, sig
    if opts.init == "imported":
        if current is None:
            raise HilaError(f"{ws.root}: --init imported needs a current (imported) model to fine-tune")
        cur_card = read_card(current.path).to_dict()
        if [str(l.get("name", "")).lower() for l in cur_card.get("labels", [])] != names:
            raise HilaError(f"model v{current.version}: its labels differ from the workspace's; cannot fine-tune it on these corrections")
        net = nw.convert_onnx(current.path)
        diff = nw.check_conversion(net, current.path, shape=(1, 1, *[int(p) for p in cur_card["patch_size"]]))
        arch = {"name": "onnx2torch", "onnx_from_version": current.version, "conversion_max_abs_diff": diff,
                "source_architecture": cur_card.get("architecture", {})}
        card = dict(cur_card)
        return f"imported v{current.version} (onnx2torch, conversion max abs diff {diff:.2g})", card, arch, net, \
            cur_card.get("activation") == "sigmoid"
    # scratch: the modality's recipe, with test/benchmark overrides
    rec = recipe(settings.modality)
    if opts.spacing:
        rec["spacing"] = [float(s) for s in opts.spacing]
    if opts.patch_size:
        rec["patch_size"] = [int(p) for p in opts.patch_size]
    arch = nw.default_architecture(settings.modality, n_labels)
    if opts.channels:
        arch["channels"] = [int(c) for c in opts.channels]
        arch["strides"] = [2] * (len(arch["channels"]) - 1)
    div = 2 ** len(arch["strides"])
    if any(int(p) % div for p in rec["patch_size"]):
        raise HilaError(f"--patch {rec['patch_size']}: each size must be a multiple of {div} for this network")
    card = {"modality": settings.modality, "spacing": rec["spacing"], "patch_size": rec["patch_size"],
            "normalization": rec["normalization"], "orientation": "RAS", "activation": "softmax"}
    return "scratch", card, arch, nw.build_network(arch), False


def _candidate_card(base: dict, settings, arch: dict, version: int, current, snapshot, cfg, res, par, init: str,
                    n_params: int, timings: dict, opts: TrainOptions, device: str, held_out: bool, val) -> dict:
    """The new version's card: the base grid/normalisation, the workspace's labels, the exact training set."""
    patch = [int(p) for p in base["patch_size"]]
    div = 2 ** len(arch.get("strides", [2, 2, 2])) if arch.get("name") == "UNet" else 16
    own = arch.get("name") in ("UNet", "DynUNet")
    inference = dict(base.get("inference") or {}) if not own else {
        "overlap": 0.5, "mode": "gaussian", "margin_vox": 5, "size_divisor": div,
        # windows of the training patch size (instance-norm statistics as in training)
        "max_window_voxels": int(np.prod(patch))}
    card = {
        "schema_version": 1,
        "name": f"hila-{settings.modality.lower()}-{'unet' if own else 'finetuned'}",
        "version": int(version),
        "parent_version": current.version if current else None,
        "description": (f"Trained by the HILASegment trainer on {len(snapshot)} correction(s) of this workspace "
                        f"({init}); {settings.modality}, labels {', '.join(l.name for l in settings.labels)}."),
        "modality": settings.modality,
        "labels": [{"value": l.value, "name": l.name, "color": [round(float(c), 4) for c in l.color]} for l in settings.labels],
        "spacing": [float(s) for s in base["spacing"]],
        "orientation": base.get("orientation", "RAS"),
        "patch_size": patch,
        "in_channels": 1,
        "activation": base.get("activation", "softmax"),
        "normalization": dict(base["normalization"]),
        "postprocess": dict(base.get("postprocess") or {}) if not own else {"largest_component": True},
        "inference": inference,
        "roi": dict(base.get("roi") or {}) if not own else {},
        "architecture": dict(arch, parameters=n_params),
        "training_set": [{"case_id": s.case_id, "case_name": getattr(s, "case_name", ""),
                          "correction_version": int(s.correction_version), "quality": s.quality} for s in snapshot],
        "metrics": {"parity": par,
                    "loop_validation": {"set": "held_out" if held_out else "training", "best": res.best_val_dice,
                                        "best_step": res.best_step, "history": res.history[-20:]}},
        "licence": "same as the workspace's data; weights trained by HILASegment (Apache-2.0 code)",
        "training": {"init": init, "loop": cfg.to_dict(), "steps": res.steps, "epochs": res.epochs,
                     "seconds_per_step": res.seconds_per_step, "stopped": res.stopped, "final_loss": res.final_loss,
                     "trainable_parameters": res.trainable_parameters, "device": device,
                     "threads": int(opts.threads or os.cpu_count() or 1),
                     "quality_weights": dict(QUALITY_WEIGHTS, **(opts.quality_weights or {})),
                     "held_out_cases": [c["case_id"] for c in val] if held_out else [],
                     "timings": dict(timings)},
    }
    return card
