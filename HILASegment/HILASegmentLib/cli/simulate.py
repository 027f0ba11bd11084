"""``hila simulate``: learning curves of the loop with a simulated radiologist (see HILASegmentLib.simulate)."""
from __future__ import annotations

import argparse

from ..ground.progress import json_line
from ..quality import strategies  # the ranking registry (light)
from ..training import architectures  # the network registry (light: names, builders import torch inside)
from ..training.gatedefaults import GATE_MARGIN, GATE_MIN_CASES, WARM_STARTS  # light: no torch
from . import argtypes as at


def register(sub, parent) -> None:
    p = sub.add_parser("simulate", parents=[parent], help="simulate the loop with a simulated radiologist (learning curves)",
                       description="Rounds of predict -> correct (simulated) -> submit -> train (gated) -> evaluate on a "
                                   "fixed test split, in a real workspace in RUN; resumable; writes rounds.csv/json, "
                                   "summary.json and curves.png.")
    p.add_argument("--out", required=True, help="run folder (created; rerun to resume)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cohort", help="manifest CSV with columns case,image,reference (paths relative to it)")
    src.add_argument("--synthetic", help="folder of label maps; images are synthesised from them")
    p.add_argument("--appearance", default=None, help="preset (t2w, ct) or JSON file (synthetic images; default t2w)")
    p.add_argument("--labels", required=True, help="NAME=V[+V...][,NAME=V...], e.g. prostate=1+2")
    p.add_argument("--test", type=at.integer(1), default=4, help="test cases (never trained on or corrected)")
    p.add_argument("--initial", type=at.integer(0), default=2, help="pool cases drawn from scratch in round 0")
    p.add_argument("--per-round", type=at.integer(1), default=2, help="cases corrected per round")
    p.add_argument("--rounds", type=at.integer(0), default=4, help="rounds after round 0")
    p.add_argument("--train-minutes", type=at.positive, default=1.5, help="training budget per round")
    p.add_argument("--train-steps", type=at.integer(1), default=None, help=argparse.SUPPRESS)  # tests: tiny deterministic runs
    p.add_argument("--train-budget", default="fixed", metavar="fixed|effort[:F]",
                   help="fixed (default): --train-minutes per round; effort[:F]: each round trains for the seconds the "
                        "simulated radiologist spent on that round's cases, times F (default 1): learning while they work")
    p.add_argument("--config", default="auto", choices=["auto", "3d_fullres", "3d_lowres", "2d", "2.5d"],
                   help="as hila train: a new model's configuration (auto: by device)")
    p.add_argument("--arch", default=None, choices=architectures.choices(),
                   help="as hila train: a new model's network (default: the configuration's): "
                        + ", ".join(architectures.choices()))
    p.add_argument("--strategy", default="random", help="sequential (the pool in order) or a strategy of hila rank --by: "
                   + " | ".join(strategies.STRATEGIES))
    p.add_argument("--corrector", default="tolerant", help="tolerant (correct slices off by > tolerance: "
                   "the off part of the contour is redrawn) | redraw (the whole contour of such slices) | exact | box (as tolerant, "
                   "each off slice first redrawn by the box assistant from a 2-D box; needs hila assist installed) | weak "
                   "(a box or RECIST lines per label from the reference, with jitter; submitted as weak pseudo-masks)")
    p.add_argument("--weak-marks", default="box", help="--corrector weak: box | lines | mixed (a coin per label)")
    p.add_argument("--weak-builder", default="ellipsoid", choices=at.WEAK_BUILDERS,
                   help="--corrector weak: the pseudo-mask builder, as hila submit --builder (auto: the box assistant "
                        "when installed)")
    p.add_argument("--tolerance-mm", type=at.real(0.0), default=2.0)
    p.add_argument("--rough-rate", type=at.real(0.0, 1.0), default=0.0, help="fraction of submissions degraded and marked rough")
    p.add_argument("--rough-unmarked", action="store_true", help="submit the degraded labels as reviewed (unmarked): "
                   "what suspect detection after each round must find")
    p.add_argument("--ignore-band", action="store_true", help="as hila train: the loss leaves out a band around "
                   "rough and weak boundaries (quality-aware training)")
    p.add_argument("--baseline", action="store_true", help="also train on every pool reference (full supervision)")
    p.add_argument("--baseline-minutes", type=at.real(0.0, lo_open=True), default=None,
                   help="--baseline's training minutes (default: the loop's total training time; give more for a "
                   "full-supervision ceiling trained to convergence)")
    p.add_argument("--model", default=None, help="start from this model instead of drawing --initial cases")
    p.add_argument("--warm-start", default="auto", choices=WARM_STARTS,
                   help="as hila train --warm-start: how a round starts from a --model preset (e.g. taps)")
    p.add_argument("--gate-margin", type=at.real(-1.0, 1.0), default=GATE_MARGIN,
                   help="as hila train: the mean per-case Dice gain a candidate must exceed to be promoted; negative: "
                        "the loss it may have (default %(default)s)")
    p.add_argument("--gate-min-cases", type=at.integer(1), default=GATE_MIN_CASES,
                   help="as hila train: gate corrections (unseen by both models) needed to promote (default %(default)s)")
    p.add_argument("--promote", choices=["auto", "always"], default="auto",
                   help="as hila train: auto (the gate decides) or always (for a pool too small to gate, e.g. 2 cases)")
    p.add_argument("--seed", type=at.integer(0), default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=at.threads, default=None, help="CPU threads (default: all cores)")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..simulate.prepare import SimConfig, prepare
    from ..simulate.simulation import Simulation
    from . import emit, make_progress

    cfg = SimConfig(out=args.out, cohort=args.cohort, synthetic=args.synthetic, appearance=args.appearance,
                    labels=args.labels, test=args.test, initial=args.initial, per_round=args.per_round,
                    rounds=args.rounds, train_minutes=args.train_minutes, train_steps=args.train_steps,
                    train_budget=args.train_budget, config=args.config, arch=args.arch, warm_start=args.warm_start,
                    strategy=args.strategy, corrector=args.corrector, tolerance_mm=args.tolerance_mm,
                    rough_rate=args.rough_rate, rough_unmarked=args.rough_unmarked,
                    ignore_band=args.ignore_band,
                    weak_marks=args.weak_marks, weak_builder=args.weak_builder, baseline=args.baseline or args.baseline_minutes is not None,
                    baseline_minutes=args.baseline_minutes, model=args.model, seed=args.seed,
                    device=args.device, threads=args.threads,
                    gate_margin=args.gate_margin, gate_min_cases=args.gate_min_cases, promote=args.promote)
    plan = prepare(cfg)  # every check before anything is written
    progress = make_progress(args, "simulate")

    def on_round(r: dict) -> None:
        if args.json:
            print(json_line({"event": "round", **{k: v for k, v in r.items() if k != "efforts"}}), flush=True)
        else:
            print(f"round {r['round']}: model v{r['model_version']}, {len(r['cases'])} case(s), "
                  f"effort/case {r['effort_per_case_s']} s, cumulative {r['effort_fraction']:.2%} of full annotation, "
                  f"test Dice {r['mean_dice']:.3f}", flush=True)

    try:
        s = Simulation(cfg, plan, progress, on_round).execute()
    finally:
        close = getattr(progress, "close", None)
        if close:
            close()
    b = f", baseline {s['baseline_dice']:.3f}" if s["baseline_dice"] is not None else ""
    emit(args, s, f"{args.out}: {s['rounds']} rounds, final test Dice {s['final_dice']:.3f}{b}, "
                  f"effort at 95% of baseline: {s['effort_fraction_at_95pct_baseline']}, {s['wall_seconds']:.0f} s")
    return 0
