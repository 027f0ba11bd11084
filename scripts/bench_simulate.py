"""Issue 11's measurement campaign for `hila simulate`: run it (resumable) and aggregate it.

Why a driver: the claims (test Dice rises, effort per case falls, uncertainty vs random) are about the
spread over seeds, not one run, and the campaign is long on shared CPU cores, so it must be restartable and
its runs must live outside the repository (only the table and one small figure are committed).

    python scripts/bench_simulate.py run    --runs /tmp/runs [--campaign synth_random] [--train-minutes 0.4]
    python scripts/bench_simulate.py report --runs /tmp/runs --figure docs/simulate_campaign.png

Campaigns: `synth_random` / `synth_uncertainty` / `synth_quality` (3 seeds each, the synthetic cohort below),
`sel_random` / `sel_quality` / `sel_uncertainty` / `sel_diverse` (5 seeds each, 5 rounds at 1 training minute: the strategies compared paired by seed, with
95 % intervals) and
`ct_rotations` / `prostatex_rotations` (three real cases each, every case the test case once: tiny cohorts), and
`conv_calibrate_rotations` / `conv_distill_rotations` / `conv_scratch_rotations` (the convention shift: ProstateX
whose reference is TAPS's output grown by 3 mm, from the TAPS preset, rounds of one corrected case; TAPS's threshold
fitted, TAPS distilled into the own network first, or the own network on the corrections alone).

`run` starts every run of a campaign that has no summary.json yet, one after another by default (learning
figures are measured alone on the machine: parallel runs make a time budget lie; `--jobs N` runs N at once under
`nice -n 10`, for a quick look only); rerunning resumes each after its last completed round. `synth_random`'s
first seed also trains the full-supervision ceiling (`--baseline-minutes`, default 15: trained towards
convergence, not time-matched). `report` reads each run's rounds.json (complete or
partial) and summary.json and prints, per campaign, mean ± sd over seeds per round of test Dice, radiologist
seconds per case, the share of proposals the radiologist cleared and drew from scratch (round 0: all drawn
from scratch) and cumulative effort as a fraction of full annotation, plus the baseline and
effort_fraction_at_95pct_baseline per seed; for uncertainty vs random, the effort each needed to reach the
same Dice (the lower of the two campaigns' best mean Dice).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the headless backend is chosen)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHAPES = DATA / "prostate_shapes"
SEEDS = (1, 2, 3)
#: Synthetic cohort: both shape sets (MSD 32 + NCI-ISBI 60), whole gland, 12 test cases, 80-case pool.
SYNTH = ["--appearance", "t2w", "--labels", "prostate=1+2", "--test", "12", "--initial", "2", "--per-round", "3",
         "--rounds", "8"]
#: Selection strategies over more seeds (5, paired: the same seed draws the same split, pool and round-0 cases for
#: every strategy): the synthetic cohort, 5 rounds of 3 at 1 training minute, so 10 runs fit about 80 minutes alone.
SEL = ["--appearance", "t2w", "--labels", "prostate=1+2", "--test", "12", "--initial", "2", "--per-round", "3",
       "--rounds", "5"]
SEL_SEEDS = (1, 2, 3, 4, 5)
SEL_MINUTES = 1.0
#: Tiny real cohorts, one run per rotation (each case the test case once): rounds over the 2-case pool.
TINY = ["--test", "1", "--initial", "1", "--per-round", "1", "--rounds", "1", "--strategy", "random", "--baseline",
        "--promote", "always"]  # a 2-case pool leaves nothing to gate with
#: From the TAPS preset, 1 test case, rounds of 1 corrected case over the 2-case pool.
CONV = ["--model", "taps", "--test", "1", "--initial", "0", "--per-round", "1", "--rounds", "2", "--strategy", "random",
        "--promote", "always"]
#: The real pelvic CTs (manual labels) and ProstateX T2 with TAPS's output as the reference (one series per
#: patient: ProstateX-0001's two series would put the same prostate in the pool and the test split).
REAL = {"ct": [(d.name, d / "ct.nii.gz", d / "labels_manual.nii.gz") for d in sorted((DATA / "pelvic_ct").glob("Pelvic-*"))],
        "prostatex": [(n, DATA / "prostate_mri" / f"{n}.nrrd", DATA / "prostate_mri" / f"{n}_taps.nii.gz")
                      for n in ("ProstateX-0000_t2_s4", "ProstateX-0001_t2_s10", "ProstateX-0218_t2_s5")]}
CAMPAIGNS = {"synth_random": ["--strategy", "random"],
             "synth_uncertainty": ["--strategy", "uncertainty"],
             "synth_quality": ["--strategy", "quality"],
             # the tolerant radiologist with the box assistant; the models are synth_random's own (both submit the
             # reference's slices), and each case's effort carries what tolerant charges for the same proposal
             "synth_box": ["--strategy", "random", "--corrector", "box"],
             "sel_random": ["--strategy", "random"],
             "sel_quality": ["--strategy", "quality"],
             "sel_uncertainty": ["--strategy", "uncertainty"],
             "sel_diverse": ["--strategy", "diverse"],
             "ct_rotations": ["--labels", "prostate=1,bladder=2,rectum=3", *TINY],
             "prostatex_rotations": ["--labels", "prostate=1", *TINY],
             # the convention shift: ProstateX with TAPS's output grown by 3 mm as the reference (constructed,
             # scripts/make_convention_cohort.py), starting from the TAPS preset, rounds of one corrected case:
             # TAPS's threshold fitted to the corrections; the first own network distilling TAPS on the pool first;
             # or the own network on the corrections alone
             "conv_calibrate_rotations": ["--labels", "prostate=1", *CONV, "--warm-start", "calibrate"],
             "conv_distill_rotations": ["--labels", "prostate=1", *CONV, "--warm-start", "distill"],
             "conv_scratch_rotations": ["--labels", "prostate=1", *CONV, "--warm-start", "none"]}


def rotation_seeds(n: int) -> List[int]:
    """Per case index, the first seed whose split puts that case alone in the test set (simulate's own rule:
    the first ``--test`` of ``default_rng(seed).permutation``)."""
    return [next(s for s in range(1000) if int(np.random.default_rng(s).permutation(n)[0]) == i) for i in range(n)]


def seeds_of(name: str) -> List[int]:
    if name.startswith("sel_"):
        return list(SEL_SEEDS)
    return rotation_seeds(len(REAL.get(name.split("_")[0], REAL["prostatex"]))) if name.endswith("_rotations") \
        else list(SEEDS)


def shapes_folder(runs: Path) -> Path:
    """`--synthetic` takes one folder: link both shape sets into one (their file names do not collide)."""
    folder = runs / "shapes_all"
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted(SHAPES.glob("*/*")):
        link = folder / src.name
        if not link.exists():
            link.symlink_to(src)
    return folder


def manifest(runs: Path, kind: str) -> Path:
    """A ``--cohort`` CSV for a real cohort (absolute paths; simulate resolves relative ones against the CSV)."""
    if kind == "conv":
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_convention_cohort.py"), str(runs / "conv")],
                       check=True, stdout=subprocess.DEVNULL)
        return runs / "conv" / "manifest.csv"
    path = runs / f"{kind}.csv"
    path.write_text("case,image,reference\n" + "".join(f"{c},{i},{r}\n" for c, i, r in REAL[kind]), encoding="utf-8")
    return path


def cohort_args(runs: Path, name: str) -> List[str]:
    if name.startswith("synth_"):
        return ["--synthetic", str(shapes_folder(runs)), *SYNTH]
    if name.startswith("sel_"):
        return ["--synthetic", str(shapes_folder(runs)), *SEL]
    return ["--cohort", str(manifest(runs, name.split("_")[0]))]


def run_campaign(runs: Path, names: List[str], minutes: float, jobs: int = 1, ceiling_minutes: float = 15.0) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    procs: List[subprocess.Popen] = []
    # seed by seed across the campaigns (random s1, quality s1, random s2, ...): a campaign stopped early still
    # leaves paired seeds to compare
    order = sorted(((i, j, name, seed) for j, name in enumerate(names) for i, seed in enumerate(seeds_of(name))))
    for _, _, name, seed in order:
        out = runs / f"{name}_s{seed}"
        if (out / "summary.json").is_file():
            continue
        ceiling = ["--baseline-minutes", str(ceiling_minutes)] if name == "synth_random" and seed == SEEDS[0] else []
        parallel = jobs > 1
        cmd = [*(["nice", "-n", "10"] if parallel else []), sys.executable, "-m", "HILASegmentLib", "simulate",
               "--out", str(out), *cohort_args(runs, name), *CAMPAIGNS[name], *ceiling,
               "--train-minutes", str(SEL_MINUTES if name.startswith("sel_") else minutes), "--seed", str(seed),
               *(["--threads", "1"] if parallel else []),
               "--json"]
        while len([p for p in procs if p.poll() is None]) >= jobs:
            procs[[p.poll() is None for p in procs].index(True)].wait()
        with open(runs / f"{name}_s{seed}.commit", "a", encoding="utf-8") as f:  # every start (a resume too)
            f.write(commit() + "\n")
        with open(runs / f"{name}_s{seed}.log", "a", encoding="utf-8") as log:  # the child keeps its own handle
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        print("started", " ".join(cmd[cmd.index("simulate"):]), flush=True)
    for p in procs:
        p.wait()


def commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load(run: Path) -> Optional[dict]:
    if not (run / "rounds.json").is_file():
        return None
    rounds = json.loads((run / "rounds.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8")) if (run / "summary.json").is_file() else {}
    return {"rounds": rounds, "summary": summary}


def _ms(xs: List[Optional[float]], digits: Optional[int] = None) -> str:
    """Mean ± sd (sample) of the values given (a round without cases has none); 3 decimals for Dice-like values,
    none for seconds, unless ``digits`` says."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    d = digits if digits is not None else (3 if max(xs) <= 1.5 else 0)
    return f"{statistics.mean(xs):.{d}f} ± {sd:.{d}f}"


def _vs_scratch(run: Path, r: dict) -> Optional[float]:
    """A round's mean effort over drawing the same cases from scratch (rounds.json's ``effort_vs_scratch``; for runs
    made before it was recorded, from the run's own references)."""
    if r.get("effort_vs_scratch") is not None:
        return r["effort_vs_scratch"]
    import SimpleITK as sitk

    sys.path.insert(0, str(ROOT / "HILASegment"))
    from HILASegmentLib.simulate import radiologist as rad

    rel = []
    for e in r["efforts"]:
        ref = sitk.ReadImage(str(run / "cases" / f"{e['case']}_ref.nii.gz")) if e.get("case") else None
        if ref is None:
            return None
        scratch = rad.draw_from_scratch(sitk.GetArrayFromImage(ref), ref.GetSpacing()[::-1])["seconds"]
        rel.append(e["seconds"] / scratch)
    return round(float(np.mean(rel)), 3) if rel else None


#: ``report --posthoc``: runs made before the test cases' effort was recorded get it from their own models
POSTHOC = {"on": False}


def _test_effort(run: Path, r: Optional[dict], folder: str = "workspace") -> Optional[float]:
    """A round's (or, with ``r`` None and folder ``baseline``, the ceiling's) tolerant effort on the test cases over
    drawing them from scratch: rounds.json's / baseline.json's ``test_effort``; with ``--posthoc``, for runs made
    before it was recorded, the round's model segments the test split again (cached per model version in
    RUN/test_effort_posthoc.json; the ceiling's under the baseline's model version)."""
    recorded = r if r is not None else (json.loads((run / "baseline.json").read_text(encoding="utf-8"))
                                        if (run / "baseline.json").is_file() else None)
    if recorded is not None and recorded.get("test_effort"):
        return recorded["test_effort"]["vs_scratch"]
    if not POSTHOC["on"] or (r is not None and not r.get("model_version")) or not (run / folder).is_dir():
        return None
    cache_f = run / "test_effort_posthoc.json"
    cache = json.loads(cache_f.read_text(encoding="utf-8")) if cache_f.is_file() else {}
    version = r["model_version"] if r else ((recorded or {}).get("train") or {}).get("model_version", "current")
    key = f"{folder}:v{version}"
    if key not in cache:
        import SimpleITK as sitk

        sys.path.insert(0, str(ROOT / "HILASegment"))
        from HILASegmentLib.simulate import radiologist as rad
        from HILASegmentLib.workspace import Workspace

        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        tol = json.loads((run / "config.json").read_text(encoding="utf-8")).get("tolerance_mm", 2.0)
        with Workspace.open(run / folder, readonly=True) as ws:
            m = ws.model(version) if version != "current" else ws.current_model()
            seg = m.segmenter()
            efforts = []
            for n in summary["test_cases"]:
                ref = sitk.ReadImage(str(run / "cases" / f"{n}_ref.nii.gz"))
                pred = sitk.GetArrayFromImage(seg.segment(sitk.ReadImage(str(run / "cases" / f"{n}_image.nii.gz"))).label)
                efforts.append(rad.proposal_effort(pred, sitk.GetArrayFromImage(ref), ref.GetSpacing()[::-1], tol))
        cache[key] = rad.mean_proposal_effort(efforts)
        cache_f.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    return (cache[key] or {}).get("vs_scratch")


def aggregate(runs: Path, name: str) -> Dict[str, object]:
    """Per round (over the seeds that reached it): Dice, seconds per case, cumulative effort fraction."""
    seeds = {s: _load(runs / f"{name}_s{s}") for s in seeds_of(name)}
    seeds = {s: d for s, d in seeds.items() if d}
    n = max((len(d["rounds"]) for d in seeds.values()), default=0)
    table = []
    for i in range(n):
        at = [d["rounds"][i] for d in seeds.values() if len(d["rounds"]) > i]
        table.append({"round": i, "n": len(at), "dice": [r["mean_dice"] for r in at],
                      "effort_per_case_s": [r["effort_per_case_s"] for r in at],
                      "effort_fraction": [r["effort_fraction"] for r in at],
                      "cleared": [sum(bool(e.get("cleared")) for e in r["efforts"]) / max(1, len(r["efforts"])) for r in at],
                      "steps": [float((r.get("train") or {}).get("steps") or 0) for r in at],
                      "vs_tolerant": [r["effort_vs_tolerant"] for r in at if r.get("effort_vs_tolerant") is not None],
                      "vs_scratch": [v for s, d in seeds.items() if len(d["rounds"]) > i
                                     for v in [_vs_scratch(runs / f"{name}_s{s}", d["rounds"][i])] if v is not None],
                      "test_effort": [v for s, d in seeds.items() if len(d["rounds"]) > i
                                      for v in [_test_effort(runs / f"{name}_s{s}", d["rounds"][i])] if v is not None]})
    ceiling = {s: v for s in seeds for v in [_test_effort(runs / f"{name}_s{s}", None, "baseline")] if v is not None}
    commits = {s: ("+".join(dict.fromkeys(f.read_text(encoding="utf-8").split())) if f.is_file() else "not recorded")
               for s in seeds for f in [runs / f"{name}_s{s}.commit"]}
    return {"name": name, "seeds": seeds, "table": table, "ceiling_test_effort": ceiling, "commits": commits}


def print_campaign(agg: dict) -> None:
    print(f"\n## {agg['name']} (seeds {sorted(agg['seeds'])})")
    made = sorted(set(agg["commits"].values()))
    print("made at " + ", ".join(f"{c} (seeds {sorted(s for s, v in agg['commits'].items() if v == c)})" for c in made)
          + (" -- more than one commit: say so where the figures are compared" if len(made) > 1 else ""))
    paired = any(row["vs_tolerant"] for row in agg["table"])
    print("| round | seeds | test Dice | s per case | effort / same cases from scratch | proposals cleared | "
          "cumulative effort / full | training steps | test cases' effort / from scratch |"
          + (" effort / tolerant on the same proposals |" if paired else ""))
    print("|---:|---:|---|---|---|---|---|---|---|" + ("---|" if paired else ""))
    for row in agg["table"]:
        print(f"| {row['round']} | {row['n']} | {_ms(row['dice'])} | {_ms(row['effort_per_case_s'])} | "
              f"{_ms(row['vs_scratch'], 2)} | {_ms(row['cleared'])} | {_ms(row['effort_fraction'])} | "
              f"{_ms(row['steps'], 0)} | {_ms(row['test_effort'], 2)} |" + (f" {_ms(row['vs_tolerant'], 2)} |" if paired else ""))
    if agg["ceiling_test_effort"]:
        print("full-supervision ceiling, the test cases' effort / from scratch: "
              + ", ".join(f"seed {s} {v:.2f}" for s, v in sorted(agg["ceiling_test_effort"].items())))
    late = [r for r in agg["table"] if r["round"] >= 3]
    if late:
        cleared = [c for r in late for c in r["cleared"]]
        print(f"proposals cleared from round 3 on: {statistics.mean(cleared):.2f} (mean over rounds and seeds)")
    ratios = [statistics.mean(e["effort_per_case_s"] for e in d["rounds"][6:9]) / d["rounds"][1]["effort_per_case_s"]
              for d in agg["seeds"].values() if len(d["rounds"]) > 6 and d["rounds"][1]["effort_per_case_s"]]
    if ratios:
        print(f"effort per case in rounds 6-8 / round 1: {_ms(ratios, 2)} (per seed {[round(r, 2) for r in ratios]})")
    rel = [statistics.mean(r["vs_scratch"][k] for r in agg["table"][6:9] if len(r["vs_scratch"]) > k)
           / agg["table"][1]["vs_scratch"][k] for k in range(len(agg["table"][1]["vs_scratch"]) if len(agg["table"]) > 6 else 0)]
    if rel:
        print(f"effort / from scratch, rounds 6-8 over round 1 (case size factored out): {_ms(rel, 2)}")
    for s, d in sorted(agg["seeds"].items()):
        sm = d["summary"]
        if sm:
            print(f"seed {s}: baseline Dice {sm.get('baseline_dice')}, final {sm.get('final_dice')}, "
                  f"effort_fraction_at_95pct_baseline {sm.get('effort_fraction_at_95pct_baseline')}, "
                  f"plateau round {sm.get('plateau_round')}, wall {sm.get('wall_seconds')} s, "
                  f"synthesis+evaluation fraction {(sm.get('time_split') or {}).get('synthesis_evaluation_fraction')}")
        else:
            print(f"seed {s}: incomplete ({len(d['rounds'])} rounds, no summary.json)")


def _t_interval(xs: List[float]) -> str:
    """Mean and its 95 % t-interval over seeds (paired differences)."""
    from scipy import stats

    if len(xs) < 2:
        return f"{xs[0]:+.3f} (one seed)" if xs else "-"
    m, se = statistics.mean(xs), statistics.stdev(xs) / len(xs) ** 0.5
    h = float(stats.t.ppf(0.975, len(xs) - 1)) * se
    return f"{m:+.3f} [95 % CI {m - h:+.3f}, {m + h:+.3f}]"


def compare_strategies(aggs: List[dict]) -> None:
    """Strategies against random (else the first given), paired by seed (a seed draws the same split, pool and round-0 cases):
    the effort each needed to first reach the Dice every strategy's mean curve reached, and per-seed differences of
    the last round's test Dice, of cumulative effort, and of test Dice at the cumulative effort every strategy of that
    seed spent (its curve interpolated between rounds), with 95 % t-intervals."""
    done = {g["name"]: {s for s, d in g["seeds"].items() if d["summary"]} for g in aggs}  # finished runs only
    aggs = [dict(g, seeds={s: d for s, d in g["seeds"].items() if s in done[g["name"]]}) for g in aggs]
    target = min(max(statistics.mean(r["dice"]) for r in g["table"]) for g in aggs)
    base = next((g for g in aggs if g["name"] == "sel_random"), aggs[0])
    aggs = [base] + [g for g in aggs if g is not base]
    print(f"\n## strategies against {base['name']}, paired by seed; common Dice {target:.3f}")
    made = sorted({c for g in aggs for c in g["commits"].values()})
    if len(made) > 1:
        print(f"made at {len(made)} commits ({', '.join(made)}): say so with the comparison")
    print("| strategy | effort to the common Dice per seed (never: -) | saving vs random per seed where both reached | "
          "mean saving | final Dice − random's | cumulative effort − random's | Dice at equal effort − random's |")
    print("|---|---|---|---|---|---|---|")

    def at_equal_effort(g: dict, s: int) -> float:
        """Test Dice at the cumulative effort every strategy of this seed spent (linear between rounds)."""
        e_star = min(h["seeds"][s]["rounds"][-1]["effort_fraction"] for h in aggs if s in h["seeds"])
        rr = g["seeds"][s]["rounds"]
        return float(np.interp(e_star, [r["effort_fraction"] for r in rr], [r["mean_dice"] for r in rr]))

    for g in aggs:
        seeds = sorted(set(g["seeds"]) & set(base["seeds"]))
        reach = dict(zip(sorted(g["seeds"]), effort_to_reach(g, target)))
        breach = dict(zip(sorted(base["seeds"]), effort_to_reach(base, target)))
        saving = [1.0 - reach[s] / breach[s] for s in seeds if reach.get(s) and breach.get(s)]  # both reached it
        dd = [g["seeds"][s]["rounds"][-1]["mean_dice"] - base["seeds"][s]["rounds"][-1]["mean_dice"] for s in seeds]
        de = [g["seeds"][s]["rounds"][-1]["effort_fraction"] - base["seeds"][s]["rounds"][-1]["effort_fraction"]
              for s in seeds]
        dq = [at_equal_effort(g, s) - at_equal_effort(base, s) for s in seeds]
        cells = " / ".join("-" if reach.get(s) is None else f"{reach[s]:.3f}" for s in seeds)
        print(f"| {g['name']} | {cells} | {' / '.join(f'{v:+.2f}' for v in saving) or '-'} ({len(saving)} of "
              f"{len(seeds)} seeds) | "
              f"{_t_interval(saving) if g is not base else '-'} | {_t_interval(dd) if g is not base else '-'} | "
              f"{_t_interval(de) if g is not base else '-'} | {_t_interval(dq) if g is not base else '-'} |")


def effort_to_reach(agg: dict, target: float) -> List[Optional[float]]:
    """Per seed: the cumulative effort fraction at the first round whose test Dice reaches ``target``."""
    return [next((r["effort_fraction"] for r in d["rounds"] if r["mean_dice"] >= target), None)
            for _, d in sorted(agg["seeds"].items())]


def figure(aggs: List[dict], path: Path) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    for agg in aggs:
        if not agg["table"]:
            continue
        x = [r["round"] for r in agg["table"]]
        key2 = "vs_scratch" if all(r.get("vs_scratch") for r in agg["table"]) else "effort_per_case_s"
        for ax, key in ((ax1, "dice"), (ax2, key2)):
            rows = [(xr, [v for v in r[key] if v is not None]) for xr, r in zip(x, agg["table"])]
            rows = [(xr, v) for xr, v in rows if v]  # a round without cases has no effort
            ax.errorbar([xr for xr, _ in rows], [statistics.mean(v) for _, v in rows],
                        yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in rows], capsize=3, marker="o",
                        label=agg["name"])
        for s, d in sorted(agg["seeds"].items()):
            ax3.plot([r["effort_fraction"] for r in d["rounds"]], [r["mean_dice"] for r in d["rounds"]],
                     marker=".", alpha=0.7, label=f"{agg['name']} s{s}")
            b = d["summary"].get("baseline_dice")
            if b is not None:
                ax1.axhline(b, ls="--", lw=0.8, color="grey")
                ax3.axhline(b, ls="--", lw=0.8, color="grey")
    ax1.set(xlabel="round", ylabel="mean test Dice (± sd over seeds)", title="test Dice (dashed: full supervision)")
    vs = all(r.get("vs_scratch") for g in aggs for r in g["table"])
    ax2.set(xlabel="round", ylabel="effort / the same cases from scratch (± sd)" if vs else "radiologist s per case (± sd)",
            title="effort per case")
    ax3.set(xlabel="cumulative effort / full annotation", ylabel="test Dice", title="Dice vs effort, per seed")
    ax1.legend(fontsize=7)
    ax3.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"\nfigure: {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["run", "report"])
    ap.add_argument("--runs", type=Path, required=True, help="folder of run folders (outside the repository)")
    ap.add_argument("--campaign", action="append", choices=sorted(CAMPAIGNS), help="default: all")
    ap.add_argument("--train-minutes", type=float, default=1.5)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (default 1: one after another, as measured)")
    ap.add_argument("--ceiling-minutes", type=float, default=15.0,
                    help="training minutes of the full-supervision ceiling (synth_random, first seed)")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "simulate_campaign.png")
    ap.add_argument("--posthoc", action="store_true",
                    help="report: runs made before the test cases' effort was recorded get it from their own models "
                         "(inference on the test split per model version, cached in the run folder)")
    a = ap.parse_args(argv)
    POSTHOC["on"] = a.posthoc
    names = a.campaign or sorted(CAMPAIGNS, key=list(CAMPAIGNS).index)
    if a.action == "run":
        run_campaign(a.runs, names, a.train_minutes, a.jobs, a.ceiling_minutes)
        return 0
    aggs = [aggregate(a.runs, n) for n in names]
    for agg in aggs:
        print_campaign(agg)
    done = [g for g in aggs if g["table"] and g["name"].startswith("synth_")]
    if len(done) >= 2:  # strategies on the same synthetic cohort: effort to the Dice every one of them reached
        target = min(max(statistics.mean(r["dice"]) for r in g["table"]) for g in done)
        print(f"\neffort (fraction of full annotation) to first reach mean test Dice {target:.3f}, per seed:")
        for g in done:
            per_seed = effort_to_reach(g, target)
            got = [e for e in per_seed if e is not None]
            print(f"  {g['name']}: {per_seed}  mean of seeds that reached it {_ms(got)}")
        base = next((g for g in done if g["name"] == "synth_random"), None)
        if base:  # same seed = same split and pool, so random's baseline is every strategy's full-supervision line
            print("effort to 95 % of the same seed's baseline (synth_random --baseline), per seed:")
            for g in done:
                per_seed = [next((r["effort_fraction"] for r in d["rounds"] if r["mean_dice"] >= 0.95 * b), None)
                            if (b := (base["seeds"].get(s) or {}).get("summary", {}).get("baseline_dice")) else None
                            for s, d in sorted(g["seeds"].items())]
                print(f"  {g['name']}: {per_seed}")
    sel = [g for g in aggs if g["table"] and g["name"].startswith("sel_")]
    if len(sel) >= 2:
        compare_strategies(sel)
    synth = [g for g in aggs if g["name"].startswith("synth_")]
    real = [g for g in aggs if not g["name"].startswith(("synth_", "sel_"))]
    if synth:
        figure(synth, a.figure)
    if sel:
        figure(sel, a.figure.with_name(a.figure.stem + "_selection" + a.figure.suffix))
    if real:  # tiny real cohorts on their own axes (another Dice scale; seeds there are rotations)
        figure(real, a.figure.with_name(a.figure.stem + "_real" + a.figure.suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
