"""Run outputs: rounds.csv/json after every round; summary.json and curves.png at the end."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import List, Optional

from ..ground.durable import atomic_write_text

PLATEAU_GAIN = 0.01   # a round is the plateau when no later round's Dice is more than this above it


def write_rounds(run: Path, rounds: List[dict]) -> None:
    atomic_write_text(run / "rounds.json", json.dumps(rounds, indent=1))
    names = list(rounds[0]["test_dice"]) if rounds else []
    cols = (["round", "model_version", "cases", "effort_per_case_s", "effort_s", "cumulative_effort_s",
             "effort_fraction"] + [f"dice_{n}" for n in names] + [f"hd95_{n}" for n in names]
            + ["mean_dice", "mean_hd95", "test_effort_vs_scratch", "train_s", "promoted"])
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(cols)
    for r in rounds:
        tr = r["train"] or {}
        w.writerow([r["round"], r["model_version"], " ".join(r["cases"]), r["effort_per_case_s"], r["effort_s"],
                    r["cumulative_effort_s"], r["effort_fraction"]]
                   + [r["test_dice"][n] for n in names] + [r["test_hd95"][n] for n in names]
                   + [r["mean_dice"], r["mean_hd95"], (r.get("test_effort") or {}).get("vs_scratch"),
                      round(tr.get("seconds", 0.0), 1), tr.get("promoted")])
    atomic_write_text(run / "rounds.csv", f.getvalue())


def plateau_round(dice: List[float]) -> Optional[int]:
    for i, d in enumerate(dice):
        if all(x <= d + PLATEAU_GAIN for x in dice[i + 1:]):
            return i
    return None


def time_split(rounds: List[dict], base: Optional[dict], synth_s: float, wall: float) -> dict:
    """Seconds and fractions of the wall time per part (the baseline's training and evaluation included)."""
    part = {k: sum(r["timing"].get(k, 0.0) for r in rounds) for k in ("evaluation_s", "training_s", "inference_s",
                                                                       "correction_s")}
    part["synthesis_s"] = synth_s
    if base:
        part["evaluation_s"] += base.get("eval_s") or 0.0
        part["training_s"] += (base.get("train") or {}).get("seconds") or 0.0
    part["other_s"] = max(0.0, wall - sum(part.values()))
    out = {k: round(v, 1) for k, v in part.items()}
    out["fractions"] = {k[:-2]: round(v / wall, 3) if wall else None for k, v in part.items()}
    out["synthesis_evaluation_fraction"] = round((part["synthesis_s"] + part["evaluation_s"]) / wall, 3) if wall else None
    return out


def summarise(run: Path, plan: dict, rounds: List[dict], base: Optional[dict], full_s: float, synth_s: float,
              session_s: float = 0.0) -> dict:
    dice = [r["mean_dice"] for r in rounds]
    bdice = base["mean_dice"] if base else None
    frac95 = None
    if bdice is not None:
        frac95 = next((r["effort_fraction"] for r in rounds if r["mean_dice"] >= 0.95 * bdice), None)
    wall = synth_s + sum(r["wall_s"] for r in rounds) + ((base or {}).get("wall_s") or 0.0)
    s = {"baseline_dice": bdice, "final_dice": dice[-1] if dice else None, "dice_per_round": dice,
         "hd95_per_round": [r["mean_hd95"] for r in rounds],
         "effort_fraction_at_95pct_baseline": frac95, "plateau_round": plateau_round(dice),
         "effort_per_case_per_round": [r["effort_per_case_s"] for r in rounds],
         "effort_vs_scratch_per_round": [r.get("effort_vs_scratch") for r in rounds],
         **({"effort_vs_tolerant_per_round": [r.get("effort_vs_tolerant") for r in rounds]}
            if any("effort_vs_tolerant" in r for r in rounds) else {}),
         "effort_fraction_per_round": [r["effort_fraction"] for r in rounds],
         # paired: the same unseen test cases every round; the ceiling's is the floor a converged model leaves
         "test_effort_vs_scratch_per_round": [(r.get("test_effort") or {}).get("vs_scratch") for r in rounds],
         "test_slices_touched_per_round": [(r.get("test_effort") or {}).get("touched") for r in rounds],
         "baseline_test_effort_vs_scratch": ((base or {}).get("test_effort") or {}).get("vs_scratch"),
         "full_annotation_effort_s": round(full_s, 1), "rounds": len(rounds),
         "test_cases": [c.case for c in plan["test"]], "pool_size": len(plan["pool"]),
         "wall_seconds": round(wall, 1), "time_split": time_split(rounds, base, synth_s, wall),
         "train_budget": plan["key"].get("train_budget", "fixed"),
         "train_minutes_per_round": [((r.get("train") or {}).get("budget_minutes")) for r in rounds],
         "baseline": base}
    atomic_write_text(run / "summary.json", json.dumps(s, indent=1))
    curves(run, rounds, bdice)
    return s


def curves(run: Path, rounds: List[dict], bdice: Optional[float]) -> None:
    import matplotlib  # training tier; only when a run writes its figure
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    d = [r["mean_dice"] for r in rounds]
    e = [r["effort_fraction"] or 0.0 for r in rounds]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(x, d, "o-", label="loop")
    ax[1].plot(e, d, "o-", label="loop")
    for a in ax:
        if bdice is not None:
            a.axhline(bdice, color="k", ls="--", lw=1, label="full supervision")
        a.set_ylabel("test Dice (mean)")
        a.set_ylim(0, 1)
        a.grid(alpha=0.3)
        a.legend(loc="lower right")
    ax[0].set_xlabel("round")
    ax[0].set_xticks(x)
    ax[1].set_xlabel("cumulative effort / full annotation")
    fig.tight_layout()
    tmp = run / "curves.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, run / "curves.png")
