"""Labels of every quality (issue 13), the parts measured so far, on the real pelvic CT:

1. Suspect detection: the three CTs in one workspace with the CT starter as the parent model; one case's
   corrections replaced by its auto-contour set (`labels_dl` or `labels_mbs`), the others manual; which
   corrections the peer rule (HILASegmentLib.quality.suspectrule) flags. Plus all-manual (should flag nothing).
   Caveat: the starter was trained on these three CTs' manual contours, so it agrees with them in-sample.
2. Weak labels: Dice of the box pseudo-mask (HILASegmentLib.formats.weak.box_mask, tight box from the manual
   label) against the manual prostate and bladder.

3. ``--simulate-run RUN`` (repeatable): suspect precision/recall of a finished
   ``hila simulate --rough-rate P --rough-unmarked`` run: the injected (degraded, submitted as reviewed)
   corrections of rounds >= 1 (round 0 has no parent model to score it) against the flags in its workspace.

4. ``--rough RUNS`` (resumable; then prints the tables and writes ``--figure``): accuracy against the
   rough-label rate, with and without quality-aware training, at a fixed number of optimisation steps (the
   same for every arm, so the shared CPU's load does not decide the result):
   - synthetic (``hila simulate``, 16 corrections from scratch, 8 test cases, seeds 1-3, ``--seeds`` for
     more; the simulated radiologist degrades each submission with probability 0 / 0.2 / 0.5), arms
     ``plain`` (degraded labels submitted as reviewed: no quality awareness), ``weighted`` (marked rough:
     sampled at half weight, the default) and ``band`` (marked rough, sampled at half weight, and
     ``--ignore-band``); at rate 0 the arms are the same run;
   - real CT (the three pelvic CTs, each the test case once, trained from scratch on the other two; in the
     rough arms the first of the two gets its ``labels_dl`` or ``labels_mbs`` set instead of the manual one,
     i.e. a rough rate of 1/2), arms as above against all-manual.
   Then suspect precision/recall: per seed, 16 corrections from scratch and a round of 12 more, 20 % / 50 % of
   all degraded and submitted unmarked; the round-0 model scores the round-1 corrections (it never trained on
   them): the flags against the injected cases. And the weak cold start: one training from scratch on 5 weak
   (box) cases, with and without the band, against 5 and 1 full contours (seeds 1-3); the seconds are the
   simulated radiologist's effort model (simulate/radiologist.py), not a timing of people.

Usage: nice -n 10 python scripts/bench_labels.py [--data ../shared/data] [--simulate-run RUN] [--out F.json]
       python scripts/bench_labels.py --rough /tmp/rough [--steps 400] [--figure docs/labels_rough.png]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_simulate import _ms, shapes_folder  # noqa: E402  (one mean ± sd, one synthetic cohort folder)

from HILASegmentLib.formats.weak import box_mask  # noqa: E402
from HILASegmentLib.ground.durable import atomic_write_bytes  # noqa: E402
from HILASegmentLib.ground.metrics import dice  # noqa: E402
from HILASegmentLib.training import suspectscan as tsus  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")
LABELS = [(1, "prostate"), (2, "bladder"), (3, "rectum")]


def _organs(path: Path) -> sitk.Image:
    lab = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(lab)
    arr[arr > 3] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(lab)
    return out


def suspect_configs(data: Path, tmp: Path) -> list:
    ws = Workspace.create(tmp / "ws", "CT", [n for _, n in LABELS], model="pelvic_ct_unet")
    ids = {c: ws.import_volume(data / "pelvic_ct" / c / "ct.nii.gz", name=c).case_id for c in CASES}
    model = ws.current_model()
    cache = {}
    rows = []
    configs = [(None, None)] + [(c, s) for c in CASES for s in ("labels_dl", "labels_mbs")]
    for bad, kind in configs:
        items = []
        for c in CASES:
            key = (c, kind if c == bad else "labels_manual")
            if key not in cache:  # one correction per (case, set), submitted once: versions stay comparable
                ws.submit(ids[c], _organs(data / "pelvic_ct" / c / f"{key[1]}.nii.gz"))
                cache[key] = ws.snapshot()
            items.append(next(s for s in cache[key] if s.case_id == ids[c]))
        t = time.monotonic()
        res = tsus.scan(_NoFlags(), None, model, items, LABELS)
        flagged = sorted(next(c for c in CASES if ids[c] == f["case_id"]) for f in res["flagged"])
        rows.append({"intruder": f"{bad} {kind}" if bad else "none (all manual)", "flagged": flagged,
                     "reasons": [f["reason"] for f in res["flagged"]], "seconds": round(time.monotonic() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    # every set of every case among the peers at once (9 corrections: enough for the boundary figures to be judged);
    # the DL and MBS sets are the positives. Three images only, each three times (a workspace never has that: one
    # latest correction per case), so the figures mostly track the starter's error per image; and the starter was
    # trained on the manual contours.
    items = [next(s for s in cache[(c, k)] if s.case_id == ids[c]) for c in CASES
             for k in ("labels_manual", "labels_dl", "labels_mbs")]
    kind = {(s.case_id, s.correction_version): k for s, k in zip(items, [k for _ in CASES
                                                                          for k in ("manual", "dl", "mbs")])}
    res = tsus.scan(_NoFlags(), None, model, items, LABELS)
    flagged = [(next(c for c in CASES if ids[c] == f["case_id"]), kind[(f["case_id"], f["correction_version"])])
               for f in res["flagged"]]
    auto = sum(k != "manual" for _, k in flagged)
    rows.append({"intruder": "all sets mixed (3 manual, 3 DL, 3 MBS)", "flagged": [f"{c} {k}" for c, k in flagged],
                 "precision": round(auto / len(flagged), 3) if flagged else None, "recall": round(auto / 6, 3),
                 "reasons": [f["reason"] for f in res["flagged"]]})
    print(json.dumps(rows[-1]), flush=True)
    ws.close()
    return rows


class _NoFlags:
    """The bench scores and reports; it records no flags (configurations share one workspace)."""

    def flag_suspects(self, flagged, **_):
        return len(flagged)


def weak_dice(data: Path) -> dict:
    out = {}
    for c in CASES:
        img = sitk.ReadImage(str(data / "pelvic_ct" / c / "ct.nii.gz"))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "pelvic_ct" / c / "labels_manual.nii.gz")))
        for value, name in LABELS[:2]:
            k, j, i = np.nonzero(lab == value)
            pts = [img.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
                   for x in (i.min(), i.max()) for y in (j.min(), j.max()) for z in (k.min(), k.max())]
            corners = list(np.min(pts, 0)) + list(np.max(pts, 0))
            m = box_mask(img, corners)
            out[f"{c} {name}"] = round(dice(m, lab == value), 3)
    return out


def simulate_detection(run: Path) -> dict:
    scored = [e for r in _rounds(run) if r["round"] >= 1 for e in r["efforts"]]
    injected = {e["case"] for e in scored if "rough" in e}
    with Workspace.open(run / "workspace", readonly=True) as ws:
        flagged = {s["name"] for s in ws.suspects()}
    hit = flagged & injected
    return {"run": str(run), "scored": len(scored), "injected": len(injected), "flagged": len(flagged),
            "true_flags": len(hit), "precision": round(len(hit) / len(flagged), 3) if flagged else None,
            "recall": round(len(hit) / len(injected), 3) if injected else None,
            "kinds_missed": sorted(e["rough"] for e in scored if "rough" in e and e["case"] not in flagged),
            "kinds": {k: (sum(e.get("rough") == k for e in scored), sum(e.get("rough") == k and e["case"] in flagged
                                                                       for e in scored))
                      for k in sorted({e["rough"] for e in scored if "rough" in e})}}


# ------------------------------------------------------------------ 4. rough-label rate (accuracy) and suspects
RATES = (0.0, 0.2, 0.5)
ARMS = {"plain": ["--rough-unmarked"], "weighted": [], "band": ["--ignore-band"]}
SEEDS = (1, 2, 3)
SUSPECT_RATES = (0.2, 0.5)


def _synth_args(runs: Path) -> List[str]:
    return ["--synthetic", str(shapes_folder(runs)), "--appearance", "t2w", "--labels", "prostate=1+2",
            "--test", "8", "--threads", "1", "--json"]


def _hila(out: Path, args: List[str]) -> List[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "HILASegmentLib", "simulate", "--out", str(out), *args]


def rough_jobs(runs: Path, steps: int, data: Path, seeds=SEEDS, rates=RATES) -> List[Tuple[Path, List[str]]]:
    """(result file, command) of every synthetic rough-rate run (``seeds`` at ``rates``, seeds 1-3 elsewhere) and
    every real-CT training; run_jobs skips those whose result file exists."""
    jobs = []
    for rate in RATES:
        for arm, extra in ARMS.items() if rate else [("none", [])]:
            for seed in seeds if rate in rates else SEEDS:
                out = runs / f"synth_r{int(rate * 100)}_{arm}_s{seed}"
                cmd = _hila(out, [*_synth_args(runs), "--initial", "16", "--rounds", "0", "--train-steps", str(steps),
                                  "--seed", str(seed), "--rough-rate", str(rate), *extra])
                jobs.append((out / "summary.json", cmd))
    for test in CASES:
        for source, arm in [(None, "none")] + [(s, a) for s in ("labels_dl", "labels_mbs") for a in ARMS]:
            name = f"ct_{test}_{source or 'manual'}_{arm}"
            jobs.append((runs / f"{name}.json", [sys.executable, __file__, "--ct-one", f"{test},{source},{arm}",
                                                 "--data", str(data.resolve()), "--steps", str(steps),
                                                 "--out", str(runs / f"{name}.json")]))
    return jobs


def suspect_jobs(runs: Path, steps: int, seeds=SEEDS) -> List[Tuple[Path, List[str]]]:
    """16 corrections from scratch, then 12 more scored by the round-0 model (which never trained on them);
    a share of every round's submissions degraded and submitted unmarked (as reviewed)."""
    return [(runs / f"suspect_r{int(rate * 100)}_s{seed}" / "summary.json",
             _hila(runs / f"suspect_r{int(rate * 100)}_s{seed}",
                   [*_synth_args(runs), "--initial", "16", "--per-round", "12", "--rounds", "1", "--train-steps",
                    str(steps), "--seed", str(seed), "--rough-rate", str(rate), "--rough-unmarked", "--promote", "always"]))
            for rate in SUSPECT_RATES for seed in seeds]


def suspect_report(runs: Path) -> dict:
    """Precision and recall of the suspect flags per rough rate: pooled over the seeds, and per seed (mean ± sd of
    the seeds' figures), with the share of each kind of degradation flagged."""
    rep = {}
    for rate in SUSPECT_RATES:
        det = [simulate_detection(p.parent) for p in sorted(runs.glob(f"suspect_r{int(rate * 100)}_s*/summary.json"))]
        if not det:
            continue
        inj, fl, hit = (sum(d[k] for d in det) for k in ("injected", "flagged", "true_flags"))
        kinds: dict = {}
        for d in det:
            for k, (n, caught) in d["kinds"].items():
                kinds[k] = [kinds.get(k, [0, 0])[0] + n, kinds.get(k, [0, 0])[1] + caught]
        rep[str(rate)] = {"seeds": len(det), "injected": inj, "flagged": fl, "true_flags": hit,
                          "precision": round(hit / fl, 3) if fl else None, "recall": round(hit / inj, 3) if inj else None,
                          "precision_per_seed": [d["precision"] for d in det], "recall_per_seed": [d["recall"] for d in det],
                          "kinds_caught": kinds, "runs": det}
        r = rep[str(rate)]
        print(f"  {rate:.0%} unmarked, {len(det)} seeds: injected {inj}, flagged {fl}, true {hit}: precision "
              f"{r['precision']}, recall {r['recall']}; per seed precision {_ms([x for x in r['precision_per_seed'] if x is not None])}, "
              f"recall {_ms([x for x in r['recall_per_seed'] if x is not None])}; caught per kind "
              + ", ".join(f"{k} {c}/{n}" for k, (n, c) in sorted(kinds.items())))
    return rep


COLD = {"weak5": ["--corrector", "weak", "--initial", "5"], "weak5_band": ["--corrector", "weak", "--initial", "5",
                                                                     "--ignore-band"],
        "full5": ["--initial", "5"], "full1": ["--initial", "1"]}


def cold_jobs(runs: Path, steps: int) -> List[Tuple[Path, List[str]]]:
    """Weak cold start: one training from scratch on 5 weak (box) cases, with and without the band, against 5
    and 1 full contours, the same steps and test split per seed."""
    return [(runs / f"cold_{arm}_s{seed}" / "summary.json",
             _hila(runs / f"cold_{arm}_s{seed}", [*_synth_args(runs), *extra, "--rounds", "0", "--train-steps",
                                                  str(steps), "--seed", str(seed), "--promote", "always"]))
            for arm, extra in COLD.items() for seed in SEEDS]


def run_jobs(jobs: List[Tuple[Path, List[str]]], runs: Path, parallel: int) -> List[str]:
    """Run the unfinished jobs, ``parallel`` at a time (one thread each), logs next to their results; the names
    of the jobs that failed."""
    running: List[Tuple[str, subprocess.Popen, object]] = []
    failed: List[str] = []

    def reap(block: bool) -> None:
        for item in list(running):
            name, proc, log = item
            if block:
                proc.wait()
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                if proc.returncode:
                    failed.append(name)
                    print(f"FAILED {name} (exit {proc.returncode}; see {runs / name}.log)", flush=True)

    for done, cmd in jobs:
        if done.is_file():
            continue
        while len(running) >= parallel:
            reap(False)
            time.sleep(2)
        name = done.parent.name if done.name == "summary.json" else done.stem
        log = open(runs / f"{name}.log", "a", encoding="utf-8")
        running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
        print("started", name, flush=True)
    reap(True)
    return failed


def ct_one(data: Path, spec: str, steps: int) -> dict:
    """One real-CT training: the two other CTs (the first with ``source`` when given), test on ``test``."""
    from HILASegmentLib.ground.metrics import per_label
    from HILASegmentLib.inference.segmenter import Segmenter
    from HILASegmentLib.training.run import TrainOptions, train_workspace

    test, source, arm = spec.split(",")
    source = None if source == "None" else source
    train = [c for c in CASES if c != test]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "ws", "CT", [n for _, n in LABELS])
        for k, c in enumerate(train):
            cid = ws.import_volume(data / "pelvic_ct" / c / "ct.nii.gz", name=c).case_id
            rough = k == 0 and source is not None
            lab = _organs(data / "pelvic_ct" / c / f"{source if rough else 'labels_manual'}.nii.gz")
            ws.submit(cid, lab, quality="rough" if rough and arm != "plain" else "reviewed")
        t = time.monotonic()
        train_workspace(ws, TrainOptions(max_minutes=None, steps=steps, init="scratch", promote="always", threads=1,
                                         seed=1, ignore_band=arm == "band"))
        img = sitk.ReadImage(str(data / "pelvic_ct" / test / "ct.nii.gz"))
        pred = sitk.GetArrayFromImage(Segmenter(ws.current_model().path, threads=1, device="cpu").segment(img).label)
        ref = sitk.GetArrayFromImage(_organs(data / "pelvic_ct" / test / "labels_manual.nii.gz"))
        per = per_label(pred, ref, LABELS)
        ws.close()
    dice_ = {n: round(v["dice"], 4) for n, v in per.items()}
    return {"test": test, "source": source, "arm": arm, "steps": steps, "dice": dice_,
            "mean_dice": round(float(np.mean(list(dice_.values()))), 4), "seconds": round(time.monotonic() - t, 1)}


def _final(path: Path):
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d.get("final_dice", d.get("mean_dice"))


def _rounds(run: Path) -> list:
    f = run / "rounds.json"
    if not f.is_file():
        return []
    r = json.loads(f.read_text())
    return r["rounds"] if isinstance(r, dict) else r


def _rough_count(run: Path) -> int:
    """How many submissions the simulated radiologist actually degraded (each is degraded with probability P)."""
    return sum("rough" in e for r in _rounds(run) for e in r["efforts"])


def rough_report(runs: Path, figure: Path = None) -> dict:
    """Tables (and a figure) of the finished runs: mean ± sd over seeds/folds, and the paired Dice points lost
    against the all-clean run of the same seed/fold."""
    rep = {"synthetic": {}, "ct": {}, "suspects": {}}
    cfg = runs / "synth_r0_none_s1" / "config.json"
    rep["steps"] = json.loads(cfg.read_text()).get("train_steps") if cfg.is_file() else None
    seeds = sorted(int(p.name.rsplit("_s", 1)[1]) for p in runs.glob("synth_r0_none_s*") if (p / "summary.json").is_file())
    print(f"synthetic (16 corrections, 8 test cases, seeds {seeds}): final test Dice; points lost vs rate 0, paired")
    for rate in RATES[1:]:
        for arm in ARMS:
            trip = [(_final(runs / f"synth_r0_none_s{s}" / "summary.json"),
                     _final(runs / f"synth_r{int(rate * 100)}_{arm}_s{s}" / "summary.json"),
                     _rough_count(runs / f"synth_r{int(rate * 100)}_{arm}_s{s}")) for s in seeds]
            trip = [t for t in trip if t[0] is not None and t[1] is not None]
            lost = [100 * (a - b) for a, b, _ in trip]
            rep["synthetic"][f"{rate}/{arm}"] = {"dice": [b for _, b, _ in trip], "clean": [a for a, _, _ in trip],
                                                 "points_lost": [round(x, 2) for x in lost],
                                                 "rough_cases": [n for _, _, n in trip]}
            print(f"  rough {rate:.0%} {arm:9s} n={len(trip)} Dice {_ms([b for _, b, _ in trip])}  "
                  f"(clean {_ms([a for a, _, _ in trip])})  lost {_ms(lost, 1)} points {[round(x, 1) for x in lost]}"
                  f"  rough cases {[n for _, _, n in trip]} of 16")
    print("real CT (train on 2, test on the third, 3 folds; rough = the first training CT's auto-contour set)")
    for source in ("labels_dl", "labels_mbs"):
        for arm in ARMS:
            pairs = [(_final(runs / f"ct_{t}_manual_none.json"), _final(runs / f"ct_{t}_{source}_{arm}.json"))
                     for t in CASES]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            lost = [100 * (a - b) for a, b in pairs]
            rep["ct"][f"{source}/{arm}"] = {"dice": [b for _, b in pairs], "clean": [a for a, _ in pairs],
                                            "points_lost": [round(x, 2) for x in lost]}
            print(f"  {source:10s} {arm:9s} n={len(pairs)} Dice {_ms([b for _, b in pairs])}  "
                  f"(manual {_ms([a for a, _ in pairs])})  lost {_ms(lost, 1)} points {[round(x, 1) for x in lost]}")
    print("suspects (16 + 12 corrections per seed, degraded ones submitted unmarked; the round-1 ones scored by the "
          "round-0 model, which never trained on them)")
    for rate in SUSPECT_RATES:
        det = [simulate_detection(runs / f"suspect_r{int(rate * 100)}_s{s}") for s in SEEDS
               if (runs / f"suspect_r{int(rate * 100)}_s{s}" / "summary.json").is_file()]
        inj, fl, hit = (sum(d[k] for d in det) for k in ("injected", "flagged", "true_flags"))
        rep["suspects"][str(rate)] = {"runs": det, "injected": inj, "flagged": fl, "true_flags": hit,
                                      "precision": round(hit / fl, 3) if fl else None,
                                      "recall": round(hit / inj, 3) if inj else None}
        print(f"  {rate:.0%} unmarked: {len(det)} seeds, injected {inj}, flagged {fl}, true {hit}, "
              f"precision {rep['suspects'][str(rate)]['precision']}, recall {rep['suspects'][str(rate)]['recall']}")
    print("weak cold start (one training from scratch, 8 test cases, seeds 1-3): test Dice, marking/drawing seconds")
    for arm in COLD:
        sums = [json.loads(p.read_text()) for p in (runs / f"cold_{arm}_s{s}" / "summary.json" for s in SEEDS)
                if p.is_file()]
        d = [x["final_dice"] for x in sums]
        sec = [_rounds(runs / f"cold_{arm}_s{s}")[0]["effort_s"] for s in SEEDS
               if (runs / f"cold_{arm}_s{s}" / "summary.json").is_file()]
        rep.setdefault("cold_start", {})[arm] = {"dice": d, "seconds": [round(x) for x in sec]}
        print(f"  {arm:10s} n={len(d)} Dice {_ms(d)}  seconds {_ms(sec, 0)} (the simulator's effort model)")
    if figure:
        rough_figure(rep, figure)
    return rep


def rough_figure(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    clean = rep["synthetic"].get(f"{RATES[1]}/plain", {}).get("clean", [])
    for k, arm in enumerate(ARMS):
        xs, ms, sd = [0.0], [np.mean(clean) if clean else np.nan], [np.std(clean, ddof=1) if len(clean) > 1 else 0]
        for rate in RATES[1:]:
            d = rep["synthetic"][f"{rate}/{arm}"]["dice"]
            xs.append(rate)
            ms.append(np.mean(d) if d else np.nan)
            sd.append(np.std(d, ddof=1) if len(d) > 1 else 0)
        a.errorbar(np.array(xs) * 100 + (k - 1), ms, yerr=sd, marker="o", capsize=3, label=arm)
    a.set(xlabel="rough labels (%, nominal)", ylabel="test Dice (mean ± sd over seeds)",
          title=f"synthetic prostate, 16 cases, {rep.get('steps')} steps")
    a.legend()
    names = [f"{s.split('_')[1]}/{arm}" for s in ("labels_dl", "labels_mbs") for arm in ARMS]
    vals = [rep["ct"][f"{s}/{arm}"]["dice"] for s in ("labels_dl", "labels_mbs") for arm in ARMS]
    man = rep["ct"]["labels_dl/plain"]["clean"]
    b.bar(range(len(names) + 1), [np.mean(man) if man else 0] + [np.mean(v) if v else 0 for v in vals],
          color=["grey"] + [f"C{k % 3}" for k in range(len(names))])
    b.set_xticks(range(len(names) + 1), ["manual"] + names, rotation=30, ha="right", fontsize=8)
    b.set(ylabel="test Dice (mean of 3 folds)", title="real pelvic CT, 2 training cases, 1 rough")
    cold = rep.get("cold_start", {})
    arms = [k for k in cold if cold[k]["dice"]]
    c.bar(range(len(arms)), [np.mean(cold[k]["dice"]) for k in arms],
          yerr=[np.std(cold[k]["dice"], ddof=1) if len(cold[k]["dice"]) > 1 else 0 for k in arms], capsize=3,
          color=[f"C{k}" for k in range(len(arms))])
    c.set_xticks(range(len(arms)), [f"{k}\n{np.mean(cold[k]['seconds']):.0f} s" for k in arms], fontsize=8)
    c.set(ylabel="test Dice (mean ± sd, 3 seeds)", title="cold start: weak boxes vs full contours")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--simulate-run", type=Path, action="append", default=[])
    ap.add_argument("--rough", type=Path, default=None, help="run folder of the rough-label campaign (resumable)")
    ap.add_argument("--steps", type=int, default=400, help="optimisation steps per training (every arm the same)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seeds", default=None, help="seeds of the synthetic rough-rate runs (default 1,2,3; suspects and "
                                                  "cold start in --rough: 1-3) or of --suspects (default 1-5)")
    ap.add_argument("--seed-rates", default="0,0.2,0.5", help="the rough rates --seeds applies to (others: seeds 1-3)")
    ap.add_argument("--suspects", type=Path, default=None,
                    help="run folder of the suspect campaign alone (--seeds, default 1-5; resumable), then its report")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--ct-one", default=None, help=argparse.SUPPRESS)  # TEST,SOURCE,ARM: one real-CT training
    a = ap.parse_args()
    if a.ct_one:
        res = ct_one(a.data, a.ct_one, a.steps)
        print(json.dumps(res))
        _write(a.out, res)
        return 0
    if a.suspects:
        runs = a.suspects.resolve()
        runs.mkdir(parents=True, exist_ok=True)
        seeds = [int(x) for x in (a.seeds or "1,2,3,4,5").split(",")]
        if not a.report_only:
            run_jobs(suspect_jobs(runs, a.steps, seeds), runs, a.parallel)
        rep = suspect_report(runs)
        _write(a.out, rep)
        return 0
    if a.rough:
        runs = a.rough.resolve()
        runs.mkdir(parents=True, exist_ok=True)
        if not a.report_only:
            seeds = [int(x) for x in (a.seeds or "1,2,3").split(",")]
            rates = [float(x) for x in a.seed_rates.split(",")]
            run_jobs(rough_jobs(runs, a.steps, a.data, seeds, rates) + suspect_jobs(runs, a.steps) + cold_jobs(runs, a.steps),
                     runs, a.parallel)
        rep = rough_report(runs, a.figure)
        _write(a.out, rep)
        return 0
    if a.simulate_run:
        det = [simulate_detection(r) for r in a.simulate_run]
        print(json.dumps(det, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = {"suspects_real_ct": suspect_configs(a.data, Path(tmp)), "weak_box_dice_real_ct": weak_dice(a.data)}
    print(json.dumps(res["weak_box_dice_real_ct"]))
    _write(a.out, res)
    return 0


def _write(path, obj) -> None:
    if path:
        atomic_write_bytes(Path(path), json.dumps(obj, indent=1).encode("utf-8"))


if __name__ == "__main__":
    raise SystemExit(main())
