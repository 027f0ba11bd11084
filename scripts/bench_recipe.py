"""Which training recipe learns most per CPU second? Test Dice against optimisation steps and CPU seconds.

The planner (``training/plan.py``) picks a network configuration by device; this benchmark is the
measurement behind that choice. For each configuration (``plan.CONFIGURATIONS``: 3-D at the full grid,
3-D coarse, 2-D, 2.5-D; network width; the data path: cached arrays vs MONAI's per-step dictionary
transforms) and each training-set size N, a fresh network is trained with the product's own pieces
(``dataset.load_case`` — the Segmenter's model input —, ``loop.train_loop``, ONNX export with the card) and
scored at step checkpoints by the ONNX ``Segmenter`` on held-out test cases (``gate.evaluate_model``, the
evaluator users run). Seconds are the loop's own (evaluation excluded).

Cohorts: ``--cohort synthetic`` (the real MSD/NCI prostate label maps with synthetic T2-like images, as
``hila simulate --synthetic``), ``--cohort ct`` (the three real pelvic CTs, leave one out).

    python scripts/bench_recipe.py --out bench-recipe [--sizes 2,5,10,20] [--steps 100,200,400]
        [--configs 3d_fullres,3d_lowres,2d,2.5d,3d_lowres:narrow,3d_fullres:monai] [--seed 0] [--cohort synthetic|ct]

Writes OUT/results.json (every checkpoint) and prints a table (Dice at each step checkpoint, seconds per step,
Dice per CPU minute at the last checkpoint). Run it alone on the machine: parallel work makes seconds lie.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))

from HILASegmentLib.ground.colors import default_color  # noqa: E402
from HILASegmentLib.ground.durable import atomic_write_bytes  # noqa: E402
from HILASegmentLib.simulate import cohort as co  # noqa: E402
from HILASegmentLib.simulate import synthesis  # noqa: E402

SHAPES = [ROOT.parent / "shared" / "data" / "prostate_shapes" / "msd", ROOT.parent / "shared" / "data" / "prostate_shapes" / "nci_isbi"]
CT = ROOT.parent / "shared" / "data" / "pelvic_ct"
#: variants of a configuration: "NAME:variant"
VARIANTS = {"narrow": {"channels": [8, 16, 32, 64]}, "wide": {"channels": [32, 64, 128, 256]},
            "deep": {"channels": [16, 32, 64, 128, 256]}, "monai": {"data_path": "monai"}}


def synthetic_cases(out: Path, seed: int):
    """(image path, label path) of every shape, synthesised once into OUT/cases (t2w, prostate = 1+2)."""
    spec = co.parse_label_spec("prostate=1+2")
    app = synthesis.load_appearance("t2w")
    cases = []
    for folder in SHAPES:
        if folder.is_dir():
            cases += co.from_shapes(folder)
    if not cases:
        sys.exit(f"bench_recipe: no prostate shapes under {SHAPES[0].parent} (../shared/data)")
    d = out / "cases"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(sorted(cases, key=lambda c: c.case)):
        img_p, ref_p = d / f"{c.case}_image.nii.gz", d / f"{c.case}_ref.nii.gz"
        if not (img_p.is_file() and ref_p.is_file()):
            lab = synthesis.resample_crop(sitk.ReadImage(str(c.reference)), app["spacing"])
            img, _ = synthesis.synthesize(lab, app, seed=seed * 100003 + i)
            ref = sitk.GetImageFromArray(co.merge_labels(sitk.GetArrayFromImage(lab), spec))
            ref.CopyInformation(lab)
            sitk.WriteImage(ref, str(ref_p), True)
            sitk.WriteImage(img, str(img_p), True)
        paths.append((c.case, img_p, ref_p))
    return paths, "MR", ["prostate"]


def ct_cases():
    cases = sorted(p for p in CT.iterdir() if p.is_dir()) if CT.is_dir() else []
    if not cases:
        sys.exit(f"bench_recipe: no real CT under {CT}")
    return [(c.name, c / "ct.nii.gz", c / "labels_manual.nii.gz") for c in cases], "CT", ["prostate", "bladder", "rectum"]


def run_one(config: str, train, test, modality: str, names, steps, seed: int, threads: int, tmp: Path) -> dict:
    """Train a fresh network of ``config`` on ``train`` and score it on ``test`` at each of ``steps``."""
    import torch

    from HILASegmentLib.training import dataset as ds
    from HILASegmentLib.training import network as nw
    from HILASegmentLib.training import onnxexport as ex
    from HILASegmentLib.training import plan as planner
    from HILASegmentLib.training.candidate import Start, candidate_card, planned_base
    from HILASegmentLib.training.gate import evaluate_model
    from HILASegmentLib.training.loop import LoopConfig, train_loop
    from HILASegmentLib.workspace.records import SnapshotItem

    name, _, variant = config.partition(":")
    extra = VARIANTS.get(variant, {})
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    arch = planner.architecture(name, nw.default_architecture(modality, len(names)))
    if "channels" in extra:
        arch["channels"] = list(extra["channels"])
        arch["strides"] = [2] * (len(arch["channels"]) - 1)
    div = 2 ** len(arch["strides"])
    items = [SnapshotItem(c, 1, Path(i), Path(r), "reviewed") for c, i, r in train]
    rec = planner.plan(modality, planner.fingerprint(items, len(names)), div, configuration=name, why="benchmark")
    labels = [(i + 1, n) for i, n in enumerate(names)]
    settings = SimpleNamespace(modality=modality, labels=[SimpleNamespace(value=v, name=n, color=default_color(n, v))
                                                          for v, n in labels])
    base = planned_base(settings, rec)
    prep = ds.Preprocessing.from_card(base)
    t0 = time.monotonic()
    cases = ds.cases_from_snapshot(items, prep, len(names), cache_dir=tmp / "cache")
    prep_s = time.monotonic() - t0
    net = nw.build_network(arch)
    start = Start("scratch", base, arch, net, False, plan=rec)
    cfg = LoopConfig(patch_size=rec["patch_size"], batch_size=rec["batch_size"], samples_per_case=min(2, rec["batch_size"]),
                     lr=3e-3, max_steps=max(steps), max_seconds=1e9, seed=seed,
                     data_path=extra.get("data_path", rec["data_path"]))
    test_cases = [SnapshotItem(c, 1, Path(i), Path(r), "reviewed") for c, i, r in test]
    points, clock = [], {"train_s": 0.0, "t": time.monotonic()}

    def on_step(step, model):
        if step not in steps:
            return
        clock["train_s"] += time.monotonic() - clock["t"]
        res = SimpleNamespace(steps=step, epochs=0, seconds_per_step=0, stopped="bench", final_loss=None, history=[],
                              trainable_parameters=nw.count_parameters(model))
        card = candidate_card(start, settings, 1, None, items, cfg, res, {}, SimpleNamespace(threads=threads,
                              quality_weights={}, ignore_band=False), "cpu")
        raw = ex.export_onnx(model, tmp / "raw.onnx", rec["patch_size"])
        onnx = ex.embed_card(raw, card, tmp / "m.onnx")
        ev = evaluate_model(onnx, test_cases, labels, threads=threads)
        model.train()
        points.append({"step": step, "train_s": round(clock["train_s"], 1), "test_dice": ev["mean_dice"],
                       "per_label": ev["dice"]})
        print(f"    {config:<18} N={len(train):<3} step {step:>4}: {clock['train_s']:6.1f} s, test Dice {ev['mean_dice']:.3f}",
              flush=True)
        clock["t"] = time.monotonic()

    train_loop(net, cases, len(names) + 1, cfg, on_step=on_step)
    return {"config": config, "n_train": len(train), "spacing": rec["spacing"], "patch": rec["patch_size"],
            "batch": rec["batch_size"], "parameters": nw.count_parameters(net), "prepare_s": round(prep_s, 1),
            "points": points}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-recipe")
    ap.add_argument("--cohort", choices=["synthetic", "ct"], default="synthetic")
    ap.add_argument("--sizes", default="2,5,10,20")
    ap.add_argument("--steps", default="100,200,400")
    ap.add_argument("--configs", default="3d_fullres:monai,3d_fullres,3d_lowres,2d,2.5d")
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    steps = sorted(int(s) for s in a.steps.split(","))
    configs = a.configs.split(",")
    results_p = a.out / f"results_{a.cohort}.json"
    results = json.loads(results_p.read_text()) if results_p.is_file() else []
    done = {(r["config"], r["n_train"], r.get("fold"), r.get("seed", 0)) for r in results}
    if a.cohort == "synthetic":
        cases, modality, names = synthetic_cases(a.out, a.seed)
        order = np.random.default_rng(a.seed).permutation(len(cases))
        test = [cases[i] for i in order[: a.test]]
        pool = [cases[i] for i in order[a.test:]]
        runs = [(n, None, pool[:n], test) for n in (int(s) for s in a.sizes.split(","))]
    else:
        cases, modality, names = ct_cases()
        runs = [(len(cases) - 1, f, [c for c in cases if c is not t], [t]) for f, t in enumerate(cases)]
    for n, fold, train, test in runs:
        for config in configs:
            if (config, n, fold, a.seed) in done:
                continue
            with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
                r = run_one(config, train, test, modality, names, steps, a.seed, a.threads, Path(tmp))
            r.update(fold=fold, seed=a.seed, cohort=a.cohort)
            results.append(r)
            atomic_write_bytes(results_p, json.dumps(results, indent=1).encode())
    table(results, steps)
    return 0


def table(results, steps) -> None:
    """Per configuration and N (mean over folds/seeds): Dice at each checkpoint, s/step, Dice per CPU minute."""
    groups = {}
    for r in results:
        groups.setdefault((r["config"], r["n_train"]), []).append(r)
    print(f"\n{'configuration':<20}{'N':>4} " + " ".join(f"{'@' + str(s):>7}" for s in steps) + f"{'s/step':>8}")
    for (config, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for s in steps:
            v = [p["test_dice"] for r in rs for p in r["points"] if p["step"] == s]
            cells.append(f"{np.mean(v):7.3f}" if v else f"{'-':>7}")
        last = [(p["train_s"], p["step"]) for r in rs for p in r["points"] if p["step"] == steps[-1]]
        sps = np.mean([t / s for t, s in last]) if last else float("nan")
        print(f"{config:<20}{n:>4} " + " ".join(cells) + f"{sps:8.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
