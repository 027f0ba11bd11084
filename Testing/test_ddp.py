"""`hila train --nproc 2` on CPU: two processes under torchrun (DistributedDataParallel over gloo) make one
run with one valid, gated candidate whose card has the same fields as a one-process run's, the same
number of steps, and a loss within tolerance of it; only rank 0 writes to the workspace or speaks."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

from conftest import ROOT
from tiny_models import synthetic_workspace

from HILASegmentLib.workspace import Workspace

ARGS = ["--steps", "8", "--patch", "32,32,16", "--channels", "8,16,32,64", "--max-minutes", "5", "--json"]


def train(root, *extra) -> tuple:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    p = subprocess.run([sys.executable, "-m", "HILASegmentLib", "train", str(root), *ARGS, *extra],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    results = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{") and '"result"' in ln]
    return p, results


def test_two_cpu_processes_one_candidate_same_card_fields(tmp_path):
    ws, _, _ = synthetic_workspace(tmp_path, range(3), corrected=3)
    ws.close()
    shutil.copytree(tmp_path / "ws", tmp_path / "ws1")
    _, two = train(tmp_path / "ws", "--nproc", "2")
    _, one = train(tmp_path / "ws1")
    assert len(two) == 1 and len(one) == 1, "exactly one process reports the run"
    r2, r1 = two[0], one[0]
    assert r2["steps"] == r1["steps"] == 8 and r2["stopped"] == r1["stopped"] == "max_steps"
    assert r2["status"] == r1["status"] and r2["parity"]["max_abs_diff"] <= r2["parity"]["tolerance"]
    # the loss of 2 x the patches per step stays near the one-process loss (different random patches)
    assert abs(r2["final_loss"] - r1["final_loss"]) <= 0.15 * r1["final_loss"], (r2["final_loss"], r1["final_loss"])
    with Workspace.open(tmp_path / "ws") as a, Workspace.open(tmp_path / "ws1") as b:
        ca, cb = a.current_model().card.to_dict(), b.current_model().card.to_dict()
        assert sorted(ca) == sorted(cb)
        assert sorted(ca["training"]) == sorted(cb["training"]) and sorted(ca["metrics"]) == sorted(cb["metrics"])
        assert ca["training"]["loop"]["processes"] == 2 and cb["training"]["loop"]["processes"] == 1
        assert ca["training_set"] == cb["training_set"]
        assert len(a.models()) == 1
    con = sqlite3.connect(tmp_path / "ws" / "hila.sqlite")
    assert [r[0] for r in con.execute("SELECT status FROM training_runs")] == ["done"]
    con.close()
