"""Measure predicted quality, the likely-error map and review triage (issue "Look where it is wrong").

    nice -n 10 .venv/bin/python scripts/bench_quality.py [--seeds 0 1 2] [--out bench-quality] [--skip-ct]

1. Synthetic cohort (real MSD prostate label maps, synthetic T2-like images): per seed, one `hila simulate`
   run (random strategy) leaves model versions in its workspace; every case of the cohort is then segmented
   by every model version, and each prediction's predicted Dice is compared with its true Dice against the
   reference: Spearman rho for source (a) (expected soft Dice) and source (b) (the learned ridge model,
   nested leave-one-*case*-out over these predictions, the reference standing in for the accepted correction).
2. Error-map recall: flagged voxels = 20 % of the predicted foreground; the fraction of wrongly labelled
   voxels inside them, against random voxels (uniform in the predicted foreground's box grown by 5 voxels)
   and the band of voxels nearest the predicted boundary (the same count).
3. Triage: the final model's predictions of the cohort; reviewing (setting to the reference) the 15 % of
   cases with the lowest predicted Dice vs 15 % at random (expected value over all draws) vs the true worst.
4. Real CT rotations: each of the three pelvic CTs segmented by a model trained (briefly, on the CPU) on the
   other two; rho per label (3 cases x 3 labels), source (a) only (too few pairs to fit source (b)); and the
   shipped CT starter on the same CTs (well trained, but in-sample: it was trained on all three).
``--runs RUN...`` scores existing ``hila simulate`` runs instead (e.g. the README's campaign, whose models were
trained alone on the machine): the models current from ``--from-round`` on, on each run's test cases, and the last
model on the pool cases the loop never had corrected (triage of the cohort it finished).
Active selection (quality vs uncertainty vs random, 3 seeds each) is `hila simulate --strategy ...` and is not
run here (9 full runs do not fit a 15-minute budget on 2 shared cores).
Writes OUT/results.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))

from HILASegmentLib.ground.metrics import dice, spearman  # noqa: E402
from HILASegmentLib.inference.errormap import REVIEW_SHARE, review_region  # noqa: E402
from HILASegmentLib.inference.segmenter import Segmenter  # noqa: E402
from HILASegmentLib.quality.learned import add_quality_features, feature_vector, nested_loo  # noqa: E402
from HILASegmentLib.simulate.prepare import SimConfig  # noqa: E402
from HILASegmentLib.simulate.simulation import simulate  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TRIAGE = 0.15


COUNTS = ("wrong", "flagged", "ceiling", "map", "random", "band", "band_vox")


def recall(err: np.ndarray, pred: np.ndarray, ref: np.ndarray, rng: np.random.Generator, spacing_xyz) -> dict:
    """Wrong voxels caught by the review region, by random voxels and by the boundary band (same count): the
    band nearest the predicted boundary in mm (``band``) and in voxel steps (``band_vox``); ``ceiling`` is the
    most any choice of that many voxels can catch."""
    wrong = pred != ref
    n_wrong = int(wrong.sum())
    flagged = review_region(err, pred, REVIEW_SHARE)
    k = int(flagged.sum())
    fg = pred > 0
    idx = np.nonzero(fg | wrong)
    box = tuple(slice(max(int(i.min()) - 5, 0), int(i.max()) + 6) for i in idx)
    in_box = np.zeros(pred.shape, bool)
    in_box[box] = True
    box_ids = np.flatnonzero(in_box)
    rand = np.zeros(pred.size, bool)
    rand[rng.choice(box_ids, size=min(k, box_ids.size), replace=False)] = True
    w = wrong.ravel()
    out = {"wrong": n_wrong, "flagged": k, "ceiling": min(k, n_wrong), "map": int((flagged.ravel() & w).sum()),
           "random": int((rand & w).sum())}
    fg_img = sitk.GetImageFromArray(fg.astype(np.uint8))
    fg_img.SetSpacing([float(v) for v in spacing_xyz])
    for name, physical in (("band", True), ("band_vox", False)):
        dist = np.abs(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            fg_img, insideIsPositive=True, squaredDistance=False, useImageSpacing=physical))).ravel()
        dist = dist + rng.random(dist.size) * 1e-3  # ties broken at random
        band = np.zeros(pred.size, bool)
        band[np.argpartition(dist, k)[:k]] = True
        out[name] = int((band & w).sum())
    return out


def rates(counts: dict) -> dict:
    return {k: round(counts[k] / max(counts["wrong"], 1), 4) for k in COUNTS[2:]}


def triage(pred_dice: np.ndarray, true: np.ndarray) -> dict:
    """Rise of the cohort's mean Dice when the 15 % worst-predicted cases are reviewed (their Dice -> 1)."""
    k = max(1, int(math.ceil(TRIAGE * len(true) - 1e-9)))
    gain = 1.0 - true
    worst = np.argsort(pred_dice, kind="mergesort")[:k]
    return {"cases": len(true), "reviewed": k, "cohort_dice": round(float(true.mean()), 4),
            "rise_ranked": round(float(gain[worst].sum() / len(true)), 4),
            "rise_random": round(float(gain.mean() * k / len(true)), 4),
            "rise_oracle": round(float(np.sort(gain)[::-1][:k].sum() / len(true)), 4)}


def synthetic_seed(seed: int, out: Path, a) -> dict:
    run = out / f"synthetic_seed{seed}"
    t0 = time.perf_counter()
    cfg = SimConfig(out=str(run), synthetic=str(DATA / "prostate_shapes" / "msd"), appearance="t2w",
                    labels="prostate=1+2", test=a.test, initial=a.initial, per_round=a.per_round, rounds=a.rounds,
                    train_minutes=a.train_minutes, strategy="random", seed=seed, threads=a.threads,
                    gate_min_cases=1, gate_margin=-1.0)  # keep every candidate: more model versions to score
    simulate(cfg)
    sim_s = time.perf_counter() - t0
    names = sorted(p.name[:-len("_image.nii.gz")] for p in (run / "cases").glob("*_image.nii.gz"))
    with Workspace.open(run / "workspace", readonly=True) as ws:
        models = [(m.version, m.path) for m in ws.models()]
    out = score_models(run, models, names, seed, a.threads)
    out["seconds"] = {"simulate": round(sim_s, 1), "total": round(time.perf_counter() - t0, 1)}
    return out


def campaign_run(run: Path, from_round: int, threads: int) -> dict:
    """An existing ``hila simulate`` run (e.g. the README's campaign, trained alone on the machine): the models that
    were current in rounds >= ``from_round``, each scored on the run's test cases (never trained on)."""
    t0 = time.perf_counter()
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    rounds = json.loads((run / "rounds.json").read_text(encoding="utf-8"))
    versions = sorted({r["model_version"] for r in rounds if r["round"] >= from_round and r["model_version"]})
    with Workspace.open(run / "workspace", readonly=True) as ws:
        models = [(m.version, m.path) for m in ws.models() if m.version in versions]
    if not models:
        raise SystemExit(f"{run}: no model was current in round {from_round} or later (rounds.json); nothing to score")
    seed = json.loads((run / "config.json").read_text(encoding="utf-8")).get("seed", 0)
    out = score_models(run, models, list(summary["test_cases"]), seed, threads)
    # triage of the cohort the loop finished: the pool cases it never had corrected, as the last model segments them
    corrected = {c for r in rounds for c in r["cases"]}
    left = sorted(p.name[:-len("_image.nii.gz")] for p in (run / "cases").glob("*_image.nii.gz")
                  if p.name[:-len("_image.nii.gz")] not in corrected | set(summary["test_cases"]))
    if left:
        rest = score_models(run, models[-1:], left, seed, threads)
        out["uncorrected_pool"] = {k: rest[k] for k in ("predictions", "true_dice", "spearman", "mae", "triage_a",
                                                        "triage_b", "recall")}
    out.update(run=str(run), from_round=from_round, seconds={"total": round(time.perf_counter() - t0, 1)})
    return out


def score_models(run: Path, models, names, seed: int, threads: int) -> dict:
    """Every (model version, case) prediction: true vs predicted Dice (sources a and b), error-map recall, and
    triage with the last model."""
    rows, counts, rng = [], dict.fromkeys(COUNTS, 0), np.random.default_rng(seed)
    per_pred = []
    for version, path in models:
        seg = Segmenter(path, threads=threads)
        for n in names:
            img = sitk.ReadImage(str(run / "cases" / f"{n}_image.nii.gz"))
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "cases" / f"{n}_ref.nii.gz")))
            res = add_quality_features(seg.segment(img), img)
            pred = sitk.GetArrayFromImage(res.label)
            s = res.summary
            rows.append({"case": n, "model_version": version, "true": dice(pred == 1, ref == 1),
                         "a": s["predicted_dice"], "features": s["quality_features"]})
            r = recall(sitk.GetArrayViewFromImage(res.review_map), pred, ref, rng, img.GetSpacing())
            for k in counts:
                counts[k] += r[k]
            if r["wrong"]:
                per_pred.append((r["map"] / r["wrong"], r["random"] / r["wrong"], r["band"] / r["wrong"]))
    true = np.array([r["true"] for r in rows])
    a_pred = np.array([r["a"] for r in rows])
    X = np.stack([feature_vector(r["features"]) for r in rows])
    b_pred = nested_loo(X, true, [r["case"] for r in rows])
    last = [i for i, r in enumerate(rows) if r["model_version"] == models[-1][0]]
    per_version = {}
    for v, _ in models:
        idx = [i for i, r in enumerate(rows) if r["model_version"] == v]
        per_version[str(v)] = {"true_dice": round(float(true[idx].mean()), 4), "spearman_a": _r(spearman(a_pred[idx], true[idx])),
                               "spearman_b": _r(spearman(b_pred[idx], true[idx]))}
    pp = np.array(per_pred)
    return {
        "seed": seed, "predictions": len(rows), "cases": len(names), "model_versions": [v for v, _ in models],
        "true_dice": {"mean": round(float(true.mean()), 4), "min": round(float(true.min()), 4),
                      "max": round(float(true.max()), 4)},
        "spearman": {"a": _r(spearman(a_pred, true)), "b": _r(spearman(b_pred, true))},
        "mae": {"a": round(float(np.abs(a_pred - true).mean()), 4), "b": round(float(np.abs(b_pred - true).mean()), 4)},
        "per_version": per_version,
        "recall": {"micro": rates(counts),
                   "mean_per_prediction": dict(zip(("map", "random", "band"), np.round(pp.mean(axis=0), 4).tolist())),
                   "map_beats_band": int((pp[:, 0] > pp[:, 2]).sum()), "of": len(pp)},
        "triage_a": triage(a_pred[last], true[last]), "triage_b": triage(b_pred[last], true[last]),
    }


def real_ct(out: Path, a) -> dict:
    from HILASegmentLib.training.run import TrainOptions, train_workspace  # torch: only here

    cases = ["Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"]
    names = ["prostate", "bladder", "rectum"]
    src = ROOT / "Resources" / "DemoData" / "pelvic_ct"  # 2x2x3 mm copies: training fits the budget
    rows, t0 = [], time.perf_counter()
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(COUNTS, 0)
    for held in cases:
        with tempfile.TemporaryDirectory(prefix="bq-", dir=out) as tmp:
            ws = Workspace.create(Path(tmp) / "ws", "CT", names)
            for c in cases:
                if c == held:
                    continue
                cid = ws.import_volume(src / c / "ct.nii.gz", name=c).case_id
                man = sitk.ReadImage(str(src / c / "labels_manual.nii.gz"))
                arr = sitk.GetArrayFromImage(man)
                arr[arr > 3] = 0
                lab = sitk.GetImageFromArray(arr)
                lab.CopyInformation(man)
                ws.submit(cid, lab, quality="reviewed")
            res = train_workspace(ws, TrainOptions(max_minutes=a.ct_minutes, promote="always", threads=a.threads,
                                                   seed=0))
            seg = Segmenter(ws.model(res["model_version"]).path, threads=a.threads)
            img = sitk.ReadImage(str(src / held / "ct.nii.gz"))
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(src / held / "labels_manual.nii.gz")))
            ref[ref > 3] = 0
            _score_ct(seg, img, ref, held, rows, counts, rng)
            ws.close()
    out = {"loo": _ct_summary(rows, counts), "train_minutes": a.ct_minutes}
    # the shipped CT starter on the same three CTs: a well-trained model, but IN-SAMPLE (trained on all three)
    rows, counts = [], dict.fromkeys(COUNTS, 0)
    seg = Segmenter("pelvic_ct_unet", threads=a.threads)
    for c in cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "pelvic_ct" / c / "labels_manual.nii.gz")))
        ref[ref > 3] = 0
        _score_ct(seg, sitk.ReadImage(str(DATA / "pelvic_ct" / c / "ct.nii.gz")), ref, c, rows, counts, rng)
    out["starter_in_sample"] = _ct_summary(rows, counts)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _score_ct(seg, img, ref, case, rows, counts, rng) -> None:
    r = seg.segment(img)
    pred = sitk.GetArrayFromImage(r.label)
    for lab in r.summary["labels"]:
        rows.append({"case": case, "label": lab["name"], "a": lab["predicted_dice"],
                     "true": round(dice(pred == lab["value"], ref == lab["value"]), 4)})
    rc = recall(sitk.GetArrayViewFromImage(r.review_map), pred, ref, rng, img.GetSpacing())
    for k in counts:
        counts[k] += rc[k]


def _ct_summary(rows, counts) -> dict:
    true = np.array([r["true"] for r in rows])
    a_pred = np.array([r["a"] for r in rows])
    return {"pairs": rows, "spearman_a_per_label": _r(spearman(a_pred, true)),
            "mae_a": round(float(np.abs(a_pred - true).mean()), 4), "recall_micro": rates(counts)}


def _r(v):
    return None if v is None else round(v, 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-quality")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--initial", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--train-minutes", type=float, default=0.4)
    ap.add_argument("--ct-minutes", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--runs", type=Path, nargs="*", default=[],
                    help="score existing `hila simulate` runs (their models current from --from-round on, on their "
                         "test cases) instead of running new short simulations")
    ap.add_argument("--from-round", type=int, default=3)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results = {"config": json.loads(json.dumps(vars(a), default=str)), "synthetic": []}
    for seed_or_run in (a.runs or a.seeds):
        r = campaign_run(seed_or_run, a.from_round, a.threads) if a.runs else synthetic_seed(seed_or_run, a.out, a)
        results["synthetic"].append(r)
        print(json.dumps({k: r.get(k) for k in ("seed", "predictions", "true_dice", "spearman", "mae", "recall",
                                            "triage_a", "triage_b", "seconds", "per_version", "uncorrected_pool")}), flush=True)
        (a.out / "results.json").write_text(json.dumps(results, indent=1))
    if not a.skip_ct:
        results["real_ct"] = real_ct(a.out, a)
        print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "pairs"} if isinstance(v, dict) else v)
                          for k, v in results["real_ct"].items()}), flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
