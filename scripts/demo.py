"""`make demo`: the whole human-in-the-loop round trip on bundled real pelvic CT, through the `hila` CLI.

A simulated radiologist (the manual contours stand in for their corrections) works through three cases:
case 1 is drawn from scratch, a model is trained on it; case 2 is segmented by that model and corrected,
the model is fine-tuned; case 3 is segmented by both versions. The table shows what the loop is for:
the radiologist changes fewer voxels each round. Every step is a real `hila` command, printed as it runs,
so it doubles as a tutorial. Results land in demo-out/ (workspace, .seg.nrrd files, learning_curve.png).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HILA = [sys.executable, "-m", "HILASegmentLib"]
CASES = ["Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"]
LABELS = ["prostate", "bladder", "rectum"]


def hila(*args: str, show: bool = True) -> dict:
    """Run one `hila ... --json` command as a user would; return its result line (exit on error)."""
    cmd = [*HILA, *map(str, args), "--json"]
    if show:
        print("  $ hila " + " ".join(map(str, args)), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    result, last_shown = {}, -1.0
    for line in proc.stdout:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "progress" and rec.get("fraction") is not None:
            if rec["fraction"] - last_shown >= 0.2 or rec["fraction"] >= 1.0:
                last_shown = rec["fraction"]
                print(f"      {100 * rec['fraction']:5.1f}%  {rec.get('message', '')}"[:100], flush=True)
        elif rec.get("event") in ("result", "error"):
            result = rec
    err = proc.stderr.read()
    if proc.wait() != 0:
        sys.exit(f"demo: `hila {' '.join(map(str, args))}` failed: {result.get('error') or err.strip()[-300:]}")
    return result


def find(obj, key):
    """First value of `key` anywhere in a nested JSON result (the demo does not depend on its exact layout)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            r = find(v, key)
            if r is not None:
                return r
    return None


def effort_of(submit: dict) -> tuple:
    """(voxels changed, mean Dice of the prediction vs the correction) from a submit's effort record."""
    eff = find(submit, "effort") or {}
    changed = find(eff, "voxels_changed")
    per = find(eff, "dice") or {}
    vals = [v for k, v in per.items() if k in LABELS and v is not None] if isinstance(per, dict) else []
    return changed, (sum(vals) / len(vals) if vals else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "Resources" / "DemoData" / "pelvic_ct",
                    help="folder with <case>/ct.nii.gz and labels_manual.nii.gz (default: the bundled copy)")
    ap.add_argument("--out", type=Path, default=ROOT / "demo-out")
    ap.add_argument("--minutes", type=float, default=2.5, help="training budget per round (CPU)")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    ws = a.out / "workspace"

    print("1. A workspace for pelvic CT (a folder: SQLite ledger + immutable files)")
    hila("init", ws, "--modality", "CT", "--labels", ",".join(LABELS))
    print("2. Import three real CT volumes")
    ids = []
    for c in CASES:
        r = hila("import", ws, a.data / c / "ct.nii.gz")
        ids.append(find(r, "case_id"))

    rows = []
    print("3. Round 0: no model yet; the radiologist contours case 1 from scratch and accepts it")
    r = hila("submit", ws, ids[0], a.data / CASES[0] / "labels_manual.nii.gz", "--quality", "reviewed",
             "--annotator", "demo", "--seconds", "900")
    rows.append(("0", "none", CASES[0], *effort_of(r)))

    for rnd, case_index in ((1, 1), (2, 2)):
        print(f"{3 + 2 * rnd - 1}. Train round {rnd} on the accepted corrections (background process in Slicer; "
              f"{a.minutes:g} min budget on CPU)")
        t = hila("train", ws, "--max-minutes", a.minutes, "--device", "cpu", "--promote", "always")
        version = find(t, "model_version")
        print(f"      -> model v{version}: mean Dice {find(t, 'mean_dice')} on "
              f"{'gate' if find(t, 'held_out') else 'its training'} corrections")
        print(f"{3 + 2 * rnd}. Segment case {case_index + 1} with model v{version}, correct it, accept it")
        hila("infer", ws, ids[case_index])
        models = hila("models", ws, "list", show=False)
        path = next(m["path"] for m in models["models"] if m["version"] == version)
        hila("infer", "--image", a.data / CASES[case_index] / "ct.nii.gz", "--model", path,
             "--out", a.out / f"{CASES[case_index]}_v{version}.seg.nrrd")
        s = hila("submit", ws, ids[case_index], a.data / CASES[case_index] / "labels_manual.nii.gz",
                 "--quality", "reviewed", "--annotator", "demo")
        rows.append((str(rnd), f"v{version}", CASES[case_index], *effort_of(s)))

    print("8. Where things stand")
    st = hila("status", ws)
    hila("check", ws)
    print()
    print("Effort per round (the radiologist's correction compared with what the model proposed):")
    print(f"  {'round':<6}{'model':<7}{'case':<15}{'voxels changed':>16}{'Dice(prediction, correction)':>31}")
    for rnd, model, case, changed, dice in rows:
        d = "drawn from scratch" if model == "none" else (f"{dice:.3f}" if dice is not None else "-")
        print(f"  {rnd:<6}{model:<7}{case:<15}{(changed if changed is not None else '-'):>16}{d:>31}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [(int(r[0]), r[3], r[4]) for r in rows if r[1] != "none"]
        fig, ax1 = plt.subplots(figsize=(5, 3.2))
        ax1.plot([p[0] for p in pts], [p[2] or 0 for p in pts], "o-", color="tab:blue", label="Dice of the proposal")
        ax1.set_xticks([p[0] for p in pts])
        ax1.set_xlabel("round")
        ax1.set_ylabel("Dice (prediction vs accepted)", color="tab:blue")
        ax1.set_ylim(0, 1)
        ax2 = ax1.twinx()
        ax2.plot([p[0] for p in pts], [p[1] or 0 for p in pts], "s--", color="tab:red")
        ax2.set_ylabel("voxels the radiologist changed", color="tab:red")
        ax1.set_title("HILASegment demo: effort per round")
        fig.tight_layout()
        fig.savefig(a.out / "learning_curve.png", dpi=120)
        print(f"  plot: {a.out / 'learning_curve.png'}")
    except ImportError:
        pass
    states = find(st, "by_state") or {}
    print(f"\nDone in {time.time() - t0:.0f} s. Cases by state: "
          + ", ".join(f"{k} {v}" for k, v in states.items() if v) + f". Workspace: {ws}")
    print(f"Next: `.venv/bin/hila status {ws}`, `.venv/bin/hila models {ws} list`; open the .seg.nrrd files in "
          f"{a.out} in 3D Slicer on the CTs in {a.data}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
