#!/usr/bin/env python3
"""How often does a gate promote a candidate that is worse on fresh cases? And does choosing a checkpoint pay?

Small synthetic setup (Testing/tiny_models.synthetic_ct: a pelvis-like CT with bladder and rectum, 48x48x20
voxels), tiny U-Nets (8-64 channels, 32x32x16 patches) and short runs, so it fits a shared 2-core CPU.

``--part gate`` (per trial, seed t): a current model v1 is trained on 3 corrections (``--v1-steps``); 3 new corrections
arrive, each a *rough* one (bladder dilated 2 voxels, rectum shifted 3 voxels) with probability 0.5, and
a candidate is fine-tuned on the same workspace by

* the OLD trainer (the ``training`` package of ``--old-commit``, from ``git archive``, on today's engine): one held-out
  correction, the best checkpoint chosen on it, promoted when its mean Dice on that same correction is
  at least the current model's (a tie promotes);
* the NEW trainer (this checkout): gate corrections neither model was trained on, the last weights,
  promoted when the mean per-case gain is more than the margin on at least the minimum count.

Both candidates and v1 are then scored with the inference engine on 6 fresh cases. A promotion is *bad*
when the promoted candidate's fresh mean Dice is below v1's.

``--part checkpoint``: trains on 3 corrections, keeps the weights every 5 steps, and scores each with
the engine on one selection correction and on 6 fresh cases: fresh Dice of the last weights vs the
weights a selection case would choose (and vs the best possible, the oracle).

``--part replay RUN...`` (finished ``hila simulate`` runs): every model version a run registered is scored by the
gate's own evaluator (``gate.evaluate_models``) on the run's test cases and on every gate correction any of its rounds
used (cached in RUN/gate_replay.json); then each round's decision is taken again by ``gate.decide`` under each
``--margins`` value, the candidate against whichever model that history made current, on the gate corrections that
round used. Reported per margin: the mean final test Dice of the model current at the end, its mean over rounds 2+,
promotions, and the worst test-Dice change a promotion made. What is NOT counterfactual: the corrections (made on
the proposals of the run's own current models, so the training data), the gate sets (chosen relative to the run's
own current models) and the candidates' line. The line is the same whatever the gate decides only where every round
continued the previous round's candidate (``candidate.line_head``; not where ``gate.line_keeps_gate`` sent it back
to the current model): the script counts the rounds where that did not hold (``line_breaks``, with a warning). The
replay of the margin a run was made with reproduces its recorded final Dice (the script checks).

usage: nice -n 10 python scripts/bench_gate.py --part gate --trials 12 [--out FILE]
       python scripts/bench_gate.py --part replay --runs RUN... [--margins 0.01,-0.05]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))
sys.path.insert(0, str(ROOT / "Testing"))

from tiny_models import synthetic_ct  # noqa: E402

import HILASegmentLib.training  # noqa: E402,F401  (OpenMP wait policy before torch loads)
from HILASegmentLib.workspace.records import SnapshotItem  # noqa: E402

LABELS = [(1, "bladder"), (2, "rectum")]


def rough(label: sitk.Image, rng) -> sitk.Image:
    """A careless correction: the bladder dilated by 2 voxels, the rectum shifted 3 voxels."""
    arr = sitk.GetArrayFromImage(label)
    bl = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.Cast(label == 1, sitk.sitkUInt8), [2, 2, 1])) > 0
    re = np.roll(arr == 2, int(rng.choice([-3, 3])), axis=1)
    out = np.zeros_like(arr)
    out[bl] = 1
    out[re] = 2
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(label)
    return img


def write_cases(folder: Path, seeds) -> list:
    out = []
    for s in seeds:
        img, lab = synthetic_ct(int(s))
        p, q = folder / f"ct{s}.nii.gz", folder / f"lab{s}.nii.gz"
        sitk.WriteImage(img, str(p))
        sitk.WriteImage(lab, str(q))
        out.append((SnapshotItem(f"fresh{s}", 1, p, q, "reviewed"), lab))
    return out


def fresh_dice(model: Path, fresh: list) -> float:
    from HILASegmentLib.training import gate

    return gate.evaluate_model(model, [c for c, _ in fresh], LABELS, threads=1)["mean_dice"]


def old_tree(commit: str, dest: Path) -> Path:
    """This engine with the ``training`` package as it was at ``commit`` (the old trainer on today's workspace,
    whose ledger the old workspace code could not open); read-only extraction, the repository is untouched."""
    pkg = dest / "HILASegment" / "HILASegmentLib"
    shutil.copytree(ROOT / "HILASegment" / "HILASegmentLib", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(pkg / "training")
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "HILASegment/HILASegmentLib/training"],
                          check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest / "HILASegment"


_OLD_RUN = """
import json, sys
import HILASegmentLib.training
from HILASegmentLib.training.run import TrainOptions, train_workspace
ws, steps, lr, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
r = train_workspace(ws, TrainOptions(steps=steps, lr=lr, seed=seed, val_every_steps=5, max_minutes=10, threads=1,
                                     patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64]))
print(json.dumps({k: r[k] for k in ("model_version", "promoted", "reason")}))
"""


def run_old(pythonpath: Path, ws: Path, steps: int, lr: float, seed: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", _OLD_RUN, str(ws), str(steps), str(lr), str(seed)],
                       capture_output=True, text=True, env=env, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"old trainer failed: {p.stderr[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def part_gate(trials: int, old_commit: str, steps: int, v1_steps: int) -> dict:
    from HILASegmentLib.training.run import TrainOptions, train_workspace
    from HILASegmentLib.workspace import Workspace

    tiny = dict(patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64], threads=1, max_minutes=10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmpd:
        tmp = Path(tmpd)
        old_pp = old_tree(old_commit, tmp / "old")
        for t in range(trials):
            t0 = time.monotonic()
            rng = np.random.default_rng(1000 + t)
            d = tmp / f"t{t}"
            d.mkdir()
            fresh = write_cases(d, [5000 + 10 * t + i for i in range(6)])
            ws = Workspace.create(d / "ws", "CT", [n for _, n in LABELS])
            ids, labs, rough_flags = [], [], []
            for i in range(6):
                img, lab = synthetic_ct(100 * t + i)
                sitk.WriteImage(img, str(d / f"c{i}.nii.gz"))
                ids.append(ws.import_volume(d / f"c{i}.nii.gz").case_id)
                labs.append(lab)
            for i in range(3):
                ws.submit(ids[i], labs[i])
            train_workspace(ws, TrainOptions(steps=v1_steps, promote="always", seed=t, **tiny))
            for i in range(3, 6):
                is_rough = bool(rng.random() < 0.5)
                rough_flags.append(is_rough)
                ws.submit(ids[i], rough(labs[i], rng) if is_rough else labs[i])
            ws.close()
            lr = float(rng.choice([1e-3, 3e-3, 1e-2]))
            shutil.copytree(d / "ws", d / "ws_old")
            old = run_old(old_pp, d / "ws_old", steps, lr, t)
            with Workspace.open(d / "ws") as w:
                new = train_workspace(w, TrainOptions(steps=steps, lr=lr, seed=t, **tiny))
                v1 = w.model(1).path
                new_path = w.model(new["model_version"]).path
            with Workspace.open(d / "ws_old") as w:
                old_path = w.model(old["model_version"]).path
            f1, fo, fn = fresh_dice(v1, fresh), fresh_dice(old_path, fresh), fresh_dice(new_path, fresh)
            row = {"trial": t, "lr": lr, "rough_new": sum(rough_flags), "fresh_v1": f1,
                   "old": {"promoted": old["promoted"], "fresh": fo, "worse": fo < f1, "reason": old["reason"]},
                   "new": {"promoted": new["promoted"], "fresh": fn, "worse": fn < f1, "reason": new["reason"]},
                   "seconds": round(time.monotonic() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(d, ignore_errors=True)
    summary = {}
    for k in ("old", "new"):
        r = [x[k] for x in rows]
        summary[k] = {"trials": len(r), "promoted": sum(x["promoted"] for x in r),
                      "worse_candidates": sum(x["worse"] for x in r),
                      "promoted_worse": sum(x["promoted"] and x["worse"] for x in r),
                      "kept_better": sum((not x["promoted"]) and not x["worse"] for x in r),
                      "mean_fresh_after": round(float(np.mean([x["fresh"] if x["promoted"] else y["fresh_v1"]
                                                               for x, y in zip(r, rows)])), 4)}
    summary["mean_fresh_v1"] = round(float(np.mean([x["fresh_v1"] for x in rows])), 4)
    return {"rows": rows, "summary": summary}


def part_checkpoint(trials: int, steps: int) -> dict:
    import torch

    from HILASegmentLib.models.modelcard import LabelInfo, ModelCard
    from HILASegmentLib.training import dataset as ds
    from HILASegmentLib.training import network as nw
    from HILASegmentLib.training import onnxexport as ex
    from HILASegmentLib.training.loop import LoopConfig, train_loop
    from HILASegmentLib.training.plan import ct_window

    torch.set_num_threads(1)
    card = ModelCard(name="bench", labels=[LabelInfo(v, n) for v, n in LABELS], spacing=(3.0, 3.0, 3.0),
                     patch_size=(32, 32, 16), normalization=ct_window(), modality="CT",
                     inference={"overlap": 0.5, "mode": "gaussian", "margin_vox": 5, "size_divisor": 8,
                                "max_window_voxels": 32 * 32 * 16}, postprocess={"largest_component": True})
    prep = ds.Preprocessing.from_card(card)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmpd:
        tmp = Path(tmpd)
        for t in range(trials):
            d = tmp / f"t{t}"
            d.mkdir()
            cases = write_cases(d, [7000 + 10 * t + i for i in range(10)])
            train, select, fresh = cases[:3], cases[3:4], cases[4:]
            arrays = []
            for c, label in train:
                x, y = ds.to_model_grid(sitk.ReadImage(str(c.image_path)), label, prep)
                x, y = ds.pad_to(x, y, prep.patch_size)
                flat = y[0].ravel()
                arrays.append({"image": x, "label": y, "weight": 1.0, "fg_indices": np.flatnonzero(flat > 0),
                               "bg_indices": np.flatnonzero(flat == 0)})
            arch = dict(nw.default_architecture("CT", 2), channels=[8, 16, 32, 64], strides=[2, 2, 2])
            torch.manual_seed(t)
            net = nw.build_network(arch)
            snaps = {}
            train_loop(net, arrays, 3, LoopConfig(patch_size=[32, 32, 16], max_steps=steps, max_seconds=1e9, lr=3e-3,
                                                  seed=t),
                       on_step=lambda s, n: snaps.__setitem__(s, {k: v.detach().clone() for k, v in n.state_dict().items()})
                       if s % 5 == 0 or s == steps else None)
            scores = {}
            for s, state in sorted(snaps.items()):
                net.load_state_dict(state)
                raw = ex.export_onnx(net, d / "raw.onnx", [32, 32, 16])
                path = ex.embed_card(raw, card, d / f"s{s}.onnx")
                scores[s] = (fresh_dice(path, select), fresh_dice(path, fresh))
            last = max(scores)
            chosen = max(scores, key=lambda s: (scores[s][0], s))
            oracle = max(scores, key=lambda s: scores[s][1])
            row = {"trial": t, "last_step": last, "chosen_step": chosen, "fresh_last": scores[last][1],
                   "fresh_chosen": scores[chosen][1], "fresh_oracle": scores[oracle][1],
                   "curve": {s: v[1] for s, v in scores.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(d, ignore_errors=True)
    diff = [r["fresh_chosen"] - r["fresh_last"] for r in rows]
    gap = [r["fresh_oracle"] - r["fresh_last"] for r in rows]
    return {"rows": rows, "summary": {
        "trials": len(rows), "steps": steps,
        "chosen_minus_last_mean": round(float(np.mean(diff)), 4),
        "chosen_minus_last_sd": round(float(np.std(diff, ddof=1)), 4) if len(diff) > 1 else None,
        "chosen_better": sum(x > 0 for x in diff), "chosen_worse": sum(x < 0 for x in diff),
        "oracle_minus_last_mean": round(float(np.mean(gap)), 4)}}


def _replay_scores(run: Path, choices: bool = False) -> dict:
    """Each model version's Dice on the run's test cases and on every gate correction its rounds used (cached); with
    ``choices``, per case also its per-label Dice and the gate's post-processing figures (``evaluate_models``)."""
    from HILASegmentLib.training.gate import evaluate_models, without_choices
    from HILASegmentLib.workspace import Workspace

    cache = run / ("gate_replay_choices.json" if choices else "gate_replay.json")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    with Workspace.open(run / "workspace", readonly=True) as ws:
        runs = [tr for tr in ws.training_runs() if tr.model_version is not None]
        if cache.is_file():
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if [r["candidate"] for r in cached["rounds"]] == [tr.model_version for tr in runs]:
                return cached  # the same rounds (a resumed run with more rounds is scored again)
        labels = [(lab.value, lab.name) for lab in ws.settings.labels]
        rounds, gate_items = [], {}
        for tr in runs:
            g = (tr.metrics or {}).get("gate") or {}
            rows = g.get("comparison", {}).get("cases", [])
            init = next((ln.split(":", 1)[1].strip() for ln in tr.log.splitlines() if ln.startswith("init:")), "")
            rounds.append({"candidate": tr.model_version, "gate": [r["case_id"] for r in rows],
                           "promoted": bool(g.get("promote")), "margin": (g.get("rule") or {}).get("margin"),
                           "min_cases": (g.get("rule") or {}).get("min_cases"),
                           "continues": int(init.split("finetune v")[1]) if "finetune v" in init else None})
            for r in rows:
                c = next(x for x in ws.corrections(r["case_id"]) if x.version == r["correction_version"])
                gate_items[r["case_id"]] = SnapshotItem(r["case_id"], c.version, ws.case(r["case_id"]).path, c.path,
                                                        c.quality)
        test = [SnapshotItem(n, 0, run / "cases" / f"{n}_image.nii.gz", run / "cases" / f"{n}_ref.nii.gz", "reviewed")
                for n in summary["test_cases"]]
        versions = sorted({r["candidate"] for r in rounds})
        # with choices, each model is scored without the steps the gate chooses (a run made since the gate chose them
        # has them in its cards; the replay chooses them again)
        models = [(ws.model(v).path, dataclasses.replace(ws.model(v).card, postprocess=without_choices(
            ws.model(v).card.postprocess)) if choices else None) for v in versions]
        scored = {}
        for part, items in (("test", test), ("gate", list(gate_items.values()))):
            for v, res in zip(versions, evaluate_models(models, items, labels, threads=2, choices=choices)):
                if isinstance(res, Exception):
                    raise res
                scored.setdefault(str(v), {})[part] = {
                    c["case_id"]: ({k: c[k] for k in ("mean_dice", "dice", "choices")} if choices else c["mean_dice"])
                    for c in res["cases"]}
    recorded = json.loads((run / "rounds.json").read_text(encoding="utf-8"))
    recorded = recorded["rounds"] if isinstance(recorded, dict) else recorded
    out = {"rounds": rounds, "models": scored, "recorded_final": recorded[-1]["mean_dice"]}
    cache.write_text(json.dumps(out), encoding="utf-8")
    return out


def line_breaks(scores: dict) -> int:
    """Rounds after the first that did not continue the previous round's candidate: there the candidates' line did
    depend on the gate's decisions, and the replay would not be a counterfactual of that round."""
    rounds = scores["rounds"]
    return sum(r["continues"] != prev["candidate"] for prev, r in zip(rounds, rounds[1:]))


def replay_run(scores: dict, margin: float, min_cases: int, postprocess: bool = False) -> dict:
    """One run's rounds decided again by ``gate.decide`` under ``margin``: the current model's test Dice after each
    round and the test-Dice change of each promotion. ``min_cases``: the run's own where it recorded one.
    ``postprocess`` (scores made with ``choices``): each candidate's post-processing chosen on its round's gate
    corrections by the gate's own ``choose_postprocess``, and the candidate judged and tested with it."""
    from HILASegmentLib.training.gate import GateRule, choose_postprocess, decide, with_postprocess

    recorded = {r["min_cases"] for r in scores["rounds"] if r.get("min_cases")}
    rule = GateRule(margin=margin, min_cases=recorded.pop() if len(recorded) == 1 else min_cases).check()
    models = scores["models"]
    chosen: dict = {}  # version -> its post-processing, chosen in the round it was the candidate

    def result(v, part, ids):
        rows = [dict(models[str(v)][part][g], case_id=g) if isinstance(models[str(v)][part][g], dict)
                else {"case_id": g, "mean_dice": models[str(v)][part][g]} for g in ids]
        res = {"mean_dice": float(np.mean([r["mean_dice"] for r in rows])) if rows else 0.0, "cases": rows}
        if rows and "dice" in rows[0]:
            res["dice"] = {n: float(np.mean([r["dice"][n] for r in rows])) for n in rows[0]["dice"]}
        return with_postprocess(res, chosen[v]) if chosen.get(v) else res

    def ev(v, gate):
        return result(v, "gate", gate)

    def test(v):
        return result(v, "test", list(models[str(v)]["test"]))["mean_dice"]

    current, curve, changes = None, [], []
    for r in scores["rounds"]:
        cand = r["candidate"]
        if postprocess and r["gate"]:
            chosen[cand] = choose_postprocess(result(cand, "gate", r["gate"]))
        if current is None:
            current = cand if r["promoted"] else None  # the first model: nothing to compare with (as recorded)
        else:
            ok = decide("auto", ev(cand, r["gate"]), ev(current, r["gate"]), rule, True, len(r["gate"]))[0]
            if ok:
                changes.append(test(cand) - test(current))
                current = cand
        curve.append(test(current) if current is not None else 0.0)
    return {"final": curve[-1], "mean_from_round_2": float(np.mean(curve[2:])) if len(curve) > 2 else curve[-1],
            "promotions": len(changes), "worst_change": min(changes) if changes else 0.0, "curve": curve,
            "chosen": {str(v): c for v, c in chosen.items() if c}}


def part_replay(runs: list, margins: list, min_cases: int, postprocess: bool = False) -> dict:
    scores = {str(r): _replay_scores(Path(r), choices=postprocess) for r in runs}
    rows, summary = [], {}
    breaks = {run: line_breaks(sc) for run, sc in scores.items()}
    for run, n in breaks.items():
        if n:
            print(f"warning: {run}: {n} round(s) did not continue the previous candidate; their replay is not a "
                  f"counterfactual", file=sys.stderr)
    for run, sc in scores.items():
        made = {r["margin"] for r in sc["rounds"] if r["margin"] is not None}
        if len(made) == 1:  # the run's own rule must reproduce what it recorded
            mine = replay_run(sc, made.pop(), min_cases)["final"]
            if abs(mine - sc["recorded_final"]) > 0.002:
                raise RuntimeError(f"{run}: the replay of its own rule gives {mine:.3f}, it recorded "
                                   f"{sc['recorded_final']:.3f}")
        for m in margins:
            rows.append({"run": run, "margin": m, **replay_run(sc, m, min_cases)})
            if postprocess:
                rows.append({"run": run, "margin": m, "postprocess": True, **replay_run(sc, m, min_cases, True)})
    for m in margins:
        for pp in ([False, True] if postprocess else [False]):
            mine = [r for r in rows if r["margin"] == m and r.get("postprocess", False) == pp]
            summary[f"{m}{' +postprocess' if pp else ''}"] = _summary(mine)
    summary["line_breaks"] = sum(breaks.values())
    return {"summary": summary, "rows": rows}


def _summary(mine: list) -> dict:
    fin = [r["final"] for r in mine]
    curves = np.array([r["curve"] for r in mine]) if len({len(r["curve"]) for r in mine}) == 1 else None
    return {"final_mean": round(float(np.mean(fin)), 3), "final_sd": round(float(np.std(fin, ddof=1)), 3)
            if len(fin) > 1 else 0.0, "final_min": round(min(fin), 3),
            "mean_from_round_2": round(float(np.mean([r["mean_from_round_2"] for r in mine])), 3),
            "promotions": sum(r["promotions"] for r in mine),
            "worst_promotion": round(min(r["worst_change"] for r in mine), 3), "runs": len(mine),
            **({"per_round": [round(float(v), 3) for v in curves.mean(0)]} if curves is not None else {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["gate", "checkpoint", "replay"], required=True)
    ap.add_argument("--runs", nargs="+", type=Path, default=[], help="finished hila simulate runs (--part replay)")
    ap.add_argument("--margins", default="0.01,0,-0.02,-0.03,-0.05,-0.08,-0.1,-1",
                    help="comma-separated --gate-margin values to replay (--part replay)")
    ap.add_argument("--postprocess", action="store_true",
                    help="--part replay: also replay with the gate choosing each candidate's post-processing")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=30, help="optimisation steps per training run (candidates)")
    ap.add_argument("--v1-steps", type=int, default=80, help="steps of the current model v1 (--part gate)")
    ap.add_argument("--old-commit", default="d572eee", help="the commit whose training package is the OLD gate")
    ap.add_argument("--out", type=Path, default=None, help="append the summary (JSON) to this file")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    if a.part == "replay":
        from HILASegmentLib.training.gatedefaults import GATE_MIN_CASES

        res = part_replay(a.runs, [float(x) for x in a.margins.split(",")], GATE_MIN_CASES, a.postprocess)
    elif a.part == "gate":
        res = part_gate(a.trials, a.old_commit, a.steps, a.v1_steps)
    else:
        res = part_checkpoint(a.trials, a.steps)
    if a.part == "replay":
        print(f"{'--gate-margin':>13s} | final test Dice (mean ± sd, min) | mean, rounds 2+ | promotions | worst promotion")
        for m, v in res["summary"].items():
            if m == "line_breaks":
                print(f"rounds that did not continue the previous candidate (not counterfactual): {v}")
                continue
            print(f"{m:>13s} | {v['final_mean']:.3f} ± {v['final_sd']:.3f}, {v['final_min']:.3f} | "
                  f"{v['mean_from_round_2']:.3f} | {v['promotions']} | {v['worst_promotion']:+.3f}")
    res["summary"]["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(res["summary"], indent=1))
    if a.out:
        with open(a.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"part": a.part, "args": {k: str(v) for k, v in vars(a).items()},
                                 "summary": res["summary"], "rows": res["rows"]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
