"""``hila train WORKSPACE``: one training round on the workspace's corrections (a new, gated model version).

Runs in this process (which is already separate from Slicer: the module starts it as a child and
reads its ``--json`` lines). torch/MONAI load only inside the handler, so ``hila --help`` stays fast.
"""
from __future__ import annotations

import argparse
import time

from ..ground.errors import HilaError
from ..training import architectures  # the network registry (light: names, builders import torch inside)
from ..training.gatedefaults import GATE_MARGIN, GATE_MIN_CASES, INITS, WARM_STARTS  # light: no torch
from . import argtypes as at

_T0 = time.monotonic()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a training run (``hila train``)."""
    p.add_argument("workspace", help="workspace folder (hila init)")
    p.add_argument("--max-minutes", type=at.positive, default=10.0,
                   help="wall-clock budget of the whole run, export and validation included (default 10)")
    p.add_argument("--device", default="cpu", help="auto (CUDA when torch sees a GPU), cpu or cuda (default cpu)")
    p.add_argument("--promote", default="auto", choices=["auto", "never", "always"],
                   help="auto (default): make the new version current only when its mean per-case Dice gain over the "
                        "current model, on gate corrections neither was trained on, is more than --gate-margin "
                        f"(by default: it loses less than {-GATE_MARGIN:g}; see --gate-min-cases)")
    p.add_argument("--gate-margin", type=at.real(-1.0, 1.0), default=GATE_MARGIN,
                   help="auto promotes when the mean per-case Dice gain over the current model is more than this; "
                        "negative: a candidate that loses less than that much is promoted (default %(default)s: "
                        "2-3 gate corrections can show a candidate worse, not better)")
    p.add_argument("--gate-min-cases", type=at.integer(1), default=GATE_MIN_CASES,
                   help="auto promotes only with at least this many gate corrections that neither model was "
                        "trained on (default %(default)s; held out from training, about 20%% once there are more than 10)")
    p.add_argument("--init", default="auto", choices=INITS,
                   help="auto: fine-tune the current version's weights; where there are none (an imported preset "
                        "such as taps whose labels and modality fit), as --warm-start says; else from scratch; "
                        "calibrate: the current sigmoid model's threshold fitted to the corrections (no weights change); "
                        "distill: a fresh network first learns the current model's predictions on every imported "
                        "case, then the corrections; "
                        "imported: convert the current (imported) ONNX model with onnx2torch and fine-tune it")
    p.add_argument("--warm-start", default="auto", choices=WARM_STARTS,
                   help="how --init auto starts from an imported preset: auto or calibrate (fit a sigmoid model's "
                        "threshold to the corrections; any other model: a fresh network on the corrections), distill "
                        "(a fresh network learns the preset's output first), none (a fresh network on the corrections)")
    p.add_argument("--config", default="auto", choices=["auto", "3d_fullres", "3d_lowres", "2d", "2.5d"],
                   help="a new model's configuration: auto (default) plans 3d_lowres on a CPU and 3d_fullres on a GPU, "
                        "as measured by scripts/bench_recipe.py; fine-tuning keeps the current model's")
    p.add_argument("--arch", default=None, choices=architectures.choices(),
                   help="a new model's network (default: the configuration's): "
                        + "; ".join(f"{a}: {architectures.get(a).help}" for a in architectures.choices()))
    p.add_argument("--precision", default="auto", metavar="auto|float32",
                   help="auto (default): mixed precision where the hardware runs it natively (float16 on CUDA, "
                   "bfloat16 on a CPU with AVX512-BF16 or AMX; the card records which); float32: never")
    p.add_argument("--freeze", default="", choices=["", "encoder"], help="freeze the encoder half (big imported models on CPU)")
    p.add_argument("--steps", type=at.integer(1), default=None, help="stop after this many optimisation steps")
    p.add_argument("--patch", type=at.int_list(3, lo=1), default=None, help="patch size X,Y,Z in voxels (new models only)")
    p.add_argument("--spacing", type=at.real_list(3), default=None, help="model grid spacing X,Y,Z in mm (new models only)")
    p.add_argument("--channels", type=at.int_list(lo=1, least=2), default=None, help="U-Net channels per level (two or more levels), e.g. 16,32,64,128 (new models only)")
    p.add_argument("--lr", type=at.real(0.0, 1.0, lo_open=True), default=None, help="AdamW learning rate (default 3e-3 new, 1e-3 fine-tune)")
    p.add_argument("--batch", type=at.integer(1), default=None, help="patches per step (default 2)")
    p.add_argument("--quality-weights", type=at.weights(["reviewed", "rough", "weak"]), default=None,
                   help="sampling weight per correction quality, e.g. reviewed=1,rough=0.5,weak=0.25")
    p.add_argument("--ignore-band", action="store_true", help="the loss leaves out voxels within 1 (rough) or 3 "
                   "(weak) voxels of a label boundary: only a weak label's core and clear outside count (default off)")
    p.add_argument("--threads", type=at.threads, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--seed", type=at.integer(0), default=0)
    p.add_argument("--watch", action="store_true",
                   help="keep running: train a round whenever new corrections land (SIGTERM/Ctrl-C ends it cleanly)")
    p.add_argument("--poll", type=at.real(0.1, 3600.0), default=2.0, help="--watch: seconds between looks at the ledger")
    p.add_argument("--nproc", type=at.processes, default=1,
                   help="data-parallel processes under torchrun (DistributedDataParallel: NCCL, one GPU each, with "
                        "--device cuda; gloo on CPU); one run, one candidate, the same gate (default 1)")


def register(sub, parent) -> None:
    p = sub.add_parser("train", parents=[parent], help="train a new model version on the corrections (gated)",
                       description="Fine-tune (or train) a U-Net on the workspace's latest corrections, export it to "
                                   "ONNX, check parity, validate it and the current model on the same corrections, "
                                   "register it and promote it when its mean per-case Dice gain over the current model on gate "
                                   f"corrections neither was trained on is more than --gate-margin (default: it loses "
                                   f"less than {-GATE_MARGIN:g}), on at least --gate-min-cases of them.")
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and args.threads and args.nproc * args.threads > at.machine_threads():
        raise HilaError(f"--nproc {args.nproc} --threads {args.threads}: {args.nproc * args.threads} threads in all, "
                        f"but this machine has {at.machine_threads()} CPU cores")
    if args.nproc > 1:  # this process only starts torchrun, which runs N copies of this command without --nproc
        import sys

        from ..training.ddp import launch  # torch: only when training runs

        return launch(_without_nproc(sys.argv[1:]), args.nproc, args.threads)
    from ..training.run import TrainOptions, train_workspace  # torch: only when training runs
    from . import emit, make_progress

    opts = TrainOptions(max_minutes=args.max_minutes, device=args.device, promote=args.promote, init=args.init, warm_start=args.warm_start, config=args.config, arch=args.arch,
                        steps=args.steps, patch_size=args.patch, spacing=args.spacing, channels=args.channels,
                        lr=args.lr, batch_size=args.batch, freeze=args.freeze, precision=args.precision,
                        gate_margin=args.gate_margin, gate_min_cases=args.gate_min_cases,
                        quality_weights=args.quality_weights or {}, ignore_band=args.ignore_band, threads=args.threads, seed=args.seed,
                        started=getattr(args, "started", None) or _T0)
    progress = make_progress(args, "train")
    if args.watch:
        return _watch(args, opts, progress)
    try:
        res = train_workspace(args.workspace, opts, progress=progress)
    finally:
        close = getattr(progress, "close", None)
        if close:
            close()
    if res.get("worker"):  # a data-parallel process other than rank 0: rank 0 reports the run
        return 0
    v = res["validation"]
    summary = (f"model v{res['model_version']} ({res['status']}): mean Dice {v['mean_dice']} on "
               f"{'gate' if res['held_out'] else 'its training'} corrections; {res['reason']}")
    q = res.get("quality_model") or {}
    summary += (f"\nquality model for v{q['model_version']}: {'in use' if q['in_use'] else 'not used'} ({q['reason']})"
                if "in_use" in q else f"\nquality model not fitted: {q.get('error')}")
    if q.get("per_label"):
        summary += f"\nper-label predicted Dice: {q['per_label']['source']} ({q['per_label']['reason']})"
    emit(args, res, summary)
    return 0


def _without_nproc(argv: list) -> list:
    """``argv`` less ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _watch(args: argparse.Namespace, opts, progress) -> int:
    """``--watch``: one line (or JSON event) per round, a summary when a signal ends it."""
    import json

    from ..training.watch import watch_workspace  # torch: only when training runs
    from . import emit

    def on_round(res: dict) -> None:
        if args.json:
            print(json.dumps({"event": "round", **res}, default=str), flush=True)
        elif "error" in res:
            print(f"round not trained: {res['error']}", flush=True)
        else:
            print(f"model v{res['model_version']} ({res['status']}): {res['reason']}", flush=True)

    try:
        out = watch_workspace(args.workspace, opts, progress=None if not args.json else progress, poll_s=args.poll,
                              on_round=on_round)
    finally:
        close = getattr(progress, "close", None)
        if close:
            close()
    emit(args, out, f"watch ended ({out['stopped']}): {out['rounds']} round(s), {out['promoted']} promoted; "
                    f"current model v{out['current']}")
    return 0
