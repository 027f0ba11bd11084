"""One training run at a time per workspace (a lock in the ledger, freed when its holder dies), the version
in a candidate's card is the one the registry assigned, and rollback keeps the promotion history.

The lock is tested with real processes: a live ``hila train`` holds it, a second one gets one line, and
after the first is SIGKILLed the next run recovers the dead run's row (marked failed) and goes ahead.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"), OMP_NUM_THREADS="1")
TINY_ARGS = ["--patch", "32,32,16", "--spacing", "3,3,3", "--channels", "8,16,32,64", "--threads", "1"]


def _fake_model(tmp_path: Path, name: str) -> Path:
    p = tmp_path / f"{name}.onnx"
    p.write_bytes(b"onnx" + name.encode())
    return p


def _history(ws) -> list:
    con = sqlite3.connect(ws.root / "hila.sqlite")
    try:
        return [tuple(r) for r in con.execute("SELECT promotion_id, version, action FROM model_promotions ORDER BY 1")]
    finally:
        con.close()


def test_rollback_is_a_new_event_and_history_is_append_only(tmp_path):
    ws = Workspace.create(tmp_path / "ws", "CT", ["bladder"])
    for i in (1, 2, 3):
        ws.add_model(_fake_model(tmp_path, f"m{i}"), card_json(f"m{i}"), status="current" if i == 1 else "candidate")
    ws.promote(2)
    ws.promote(3)
    before = _history(ws)
    assert ws.rollback().version == 2
    after = _history(ws)
    assert after[:len(before)] == before and [r[1:] for r in after[len(before):]] == [(2, "rollback")]
    assert ws.rollback().version == 1                      # a second rollback goes one further step back
    assert [r[1:] for r in _history(ws)] == [(1, "promote"), (2, "promote"), (3, "promote"),
                                             (2, "rollback"), (1, "rollback")]
    with pytest.raises(HilaError, match="nothing to roll back"):
        ws.rollback()
    ws.promote(3)
    assert ws.rollback().version == 1
    # the ledger itself refuses to rewrite or delete history
    for sql in ("DELETE FROM model_promotions", "UPDATE model_promotions SET version = 1"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            ws.ledger.con.execute(sql)
    assert len(_history(ws)) == 7 and ws.check().ok


def test_current_stack_replays_history():
    from HILASegmentLib.workspace.registry import current_stack

    assert current_stack([(1, "init"), (2, "promote"), (3, "promote"), (2, "rollback")]) == [1, 2]
    assert current_stack([(1, "promote"), (2, "promote"), (1, "rollback"), (4, "promote")]) == [1, 4]
    assert current_stack([(1, "promote"), (1, "promote")]) == [1]


# ------------------------------------------------------------------------------------------------ trainer

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from tiny_models import card_json, synthetic_workspace  # noqa: E402


@pytest.fixture
def tiny_ws(tmp_path):
    return synthetic_workspace(tmp_path, (30, 31), corrected=2)[0]


def _train(ws, *extra, **kw):
    return subprocess.Popen([PY, "-m", "HILASegmentLib", "train", str(ws.root), "--json", *TINY_ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def test_one_training_run_at_a_time_and_a_killed_holder_is_recovered(tiny_ws):
    ws = tiny_ws
    first = _train(ws, "--max-minutes", "10", "--steps", "100000")
    try:
        for line in first.stdout:
            if json.loads(line).get("phase") == "train":
                break
        else:
            pytest.fail(f"no training progress: {first.stderr.read()[-500:]}")
        runs_before = [(r.run_id, r.status) for r in ws.training_runs()]
        assert runs_before == [(1, "running")]
        second = _train(ws, "--max-minutes", "2", "--steps", "2")
        _, err = second.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert second.returncode != 0 and len(lines) == 1, err[-800:]
        assert lines[0].startswith("hila: error:") and "still running" in lines[0] and f"{first.pid}" in lines[0]
        assert [(r.run_id, r.status) for r in ws.training_runs()] == runs_before and ws.models() == []
        first.send_signal(signal.SIGKILL)                     # dies holding the lock: no handler runs
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert ws.training_runs()[0].status == "running"         # the row outlives its process ...
    third = _train(ws, "--max-minutes", "3", "--steps", "2")
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-800:]
    runs = ws.training_runs()
    assert [(r.run_id, r.status) for r in runs] == [(1, "failed"), (2, "done")]   # ... until the next run recovers it
    assert "process is gone" in runs[0].log and runs[1].model_version == 1
    assert ws.check().ok


def test_card_names_the_version_the_registry_assigned(tiny_ws, tmp_path):
    """A model added while the candidate is being validated takes the version the trainer expected."""
    from HILASegmentLib.models.modelcard import read_card
    from HILASegmentLib.training.run import TrainOptions, train_workspace

    ws = tiny_ws
    tiny = dict(patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64], threads=1, max_minutes=5)
    train_workspace(ws, TrainOptions(steps=2, **tiny))
    intruder = ws.model(1).path

    def progress(fraction, message, **rec):
        if rec.get("phase") == "validate" and len(ws.models()) == 1:
            ws.add_model(intruder, ws.model(1).card)       # e.g. a model imported meanwhile: it becomes v2

    res = train_workspace(ws, TrainOptions(steps=2, promote="never", **tiny), progress=progress)
    assert [m.version for m in ws.models()] == [1, 2, 3] and res["model_version"] == 3
    assert read_card(ws.model(3).path).version == 3 and ws.model(3).card.version == 3
    assert ws.training_runs()[-1].model_version == 3
