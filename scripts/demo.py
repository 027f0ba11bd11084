"""`make demo`: the human-in-the-loop loop, measured, through the real `hila` commands (printed as they run).

`hila simulate` plays a radiologist on a bundled cohort: 16 real expert prostate label maps (MSD Task05)
get synthetic T2-like images; 4 cases are the fixed test set, the rest the pool. Round 0: two cases are
drawn from scratch and a first model is trained. Each later round: the current model segments two new
pool cases, the simulated radiologist redraws only the slices that are off by more than 2 mm and
submits them, the trainer fine-tunes (gated: a clearly worse candidate is not promoted), and the current model
is scored on the test set. All of it happens in a real workspace (`hila status`, `hila models` work on
it). The table shows what the loop is for: test Dice up, radiologist seconds per case down.

Everything lands in demo-out/ (rounds.csv, curves.png, the workspace, a .seg.nrrd to open in 3D Slicer).
Interrupted? Run it again: the simulation continues after its last completed round (a run made by an older
version with other settings is refused with a hint: remove demo-out/ first).
`--ct`: the same on the three bundled real pelvic CTs (a manifest cohort; a tiny one, 2 rounds).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "Resources" / "DemoData"
HILA = [sys.executable, "-m", "HILASegmentLib"]


def hila(*args, on_event=None) -> dict:
    """Run `hila ... --json` as a user would: print the command, pass its JSON lines to ``on_event``,
    return its result line; exit with its one-line error if it fails."""
    args = [str(a) for a in args]
    print("  $ hila " + " ".join(args), flush=True)
    proc = subprocess.Popen([*HILA, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    result = {}
    for line in proc.stdout:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") in ("result", "error"):
            result = rec
        elif on_event:
            on_event(rec)
    err = proc.stderr.read()
    if proc.wait() != 0:
        why = result.get('error') or err.strip()[-300:]
        hint = ("\n      (a run made by an older version of hila: remove that folder, e.g. `rm -rf demo-out`, and run "
                "`make demo` again)" if "another config" in why else "")
        sys.exit(f"demo: `hila {' '.join(args)}` failed: {why}{hint}")
    return result


def show_round(rec: dict) -> None:
    if rec.get("event") == "round":
        print(f"      round {rec['round']}: model v{rec['model_version']}, test Dice {rec['mean_dice']:.3f}, "
              f"{rec['effort_per_case_s']} s of radiologist time per case", flush=True)
    elif rec.get("event") == "progress" and "training" in str(rec.get("message", "")) \
            and ": step " not in str(rec.get("message")):  # the phases of a round, not each optimisation step
        print(f"      {rec['message']} ...", flush=True)


def table(run: Path) -> None:
    """The per-round table, read back from the run's rounds.csv (what a spreadsheet would open). The test-case effort
    is what correcting the unseen test cases' proposals would cost over drawing them from scratch (the same cases
    every round)."""
    with open(run / "rounds.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    print(f"  {'round':>5} {'model':>6} {'cases':>5} {'s/case':>7} {'effort vs full':>15} {'test Dice':>10} "
          f"{'HD95 mm':>8} {'test-case effort':>17} {'promoted':>9}")
    for r in rows:
        frac = f"{100 * float(r['effort_fraction']):.0f} %" if r["effort_fraction"] else "-"
        print(f"  {r['round']:>5} {'v' + r['model_version']:>6} {len(r['cases'].split()):>5} {r['effort_per_case_s']:>7} "
              f"{frac:>15} {float(r['mean_dice']):>10.3f} {r['mean_hd95']:>8} "
              f"{r.get('test_effort_vs_scratch') or '-':>17} {r['promoted']:>9}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "demo-out")
    ap.add_argument("--minutes", type=float, default=1.0, help="training minutes per round (CPU)")
    ap.add_argument("--ct", action="store_true", help="the three bundled real pelvic CTs instead (a manifest cohort)")
    a = ap.parse_args(argv)
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.ct:
        run = a.out / "run_ct"
        manifest = a.out / "pelvic_ct.csv"  # case,image,reference with paths relative to the manifest
        cases = sorted(p for p in (DATA / "pelvic_ct").iterdir() if p.is_dir())
        rel = Path(os.path.relpath(DATA / "pelvic_ct", manifest.parent))
        manifest.write_text("case,image,reference\n" + "".join(
            f"{c.name},{rel / c.name / 'ct.nii.gz'},{rel / c.name / 'labels_manual.nii.gz'}\n" for c in cases))
        print(f"1. A cohort manifest of the three real pelvic CTs: {manifest}")
        source = ["--cohort", manifest, "--labels", "prostate=1,bladder=2,rectum=3", "--test", "1",
                  "--initial", "1", "--per-round", "1", "--rounds", "1"]
    else:
        run = a.out / "run"
        print("1. The cohort: 16 real prostate label maps; images synthesised from them (T2-like, seeded)")
        source = ["--synthetic", DATA / "prostate_shapes", "--appearance", "t2w", "--labels", "prostate=1+2",
                  "--test", "4", "--initial", "2", "--per-round", "3", "--rounds", "3"]
    print("2. The loop with a simulated radiologist: predict -> correct -> submit -> train (gated) -> test")
    res = hila("simulate", "--out", run, *source, "--train-minutes", a.minutes, "--strategy", "random",
               "--seed", "0", on_event=show_round)
    print("\n3. Per round (rounds.csv):")
    table(run)
    split = res.get("time_split") or {}
    print(f"   wall {res['wall_seconds']:.0f} s: training {split.get('training_s')} s, evaluation "
          f"{split.get('evaluation_s')} s, synthesis {split.get('synthesis_s')} s, inference {split.get('inference_s')} s")
    print(f"   figure: {run / 'curves.png'} (test Dice against round and against effort)")

    ws = run / "workspace"
    print("\n4. The run's workspace is a real one")
    st = hila("status", ws)
    print("      cases by state: " + ", ".join(f"{k} {v}" for k, v in st["cases"]["by_state"].items() if v))
    models = hila("models", ws, "list")
    for m in models["models"]:
        gate = (m["card"].get("metrics") or {}).get("gate") or {}
        print(f"      v{m['version']} {m['status']:<9} {gate.get('reason', '')}"[:150])
    cur = next(m for m in models["models"] if m["version"] == models["current"])
    test_case = res["test_cases"][0]
    seg = a.out / f"{test_case}_v{cur['version']}.seg.nrrd"
    print(f"\n5. Segment a test case with the current model (v{cur['version']}), as a file for 3D Slicer")
    hila("infer", "--image", run / "cases" / f"{test_case}_image.nii.gz", "--model", cur["path"], "--out", seg)
    print(f"\nDone in {time.time() - t0:.0f} s. Open {seg} over {run / 'cases' / (test_case + '_image.nii.gz')} "
          f"in 3D Slicer; `.venv/bin/hila status {ws}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
