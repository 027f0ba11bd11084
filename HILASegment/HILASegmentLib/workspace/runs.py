"""The workspace's runs: training snapshots (the exact correction versions a run trains on) and the runs.

One training run at a time per workspace: the ``running`` row *is* the lock. ``start_training_run``
looks for one inside its write transaction (``BEGIN IMMEDIATE``: two starts cannot both see none);
a holder whose process is gone (same host, pid no longer alive) is closed as ``failed`` by crash
recovery (:meth:`Runs.recover_dead_runs`, also what ``check --repair`` does), a live one refuses the
new run with one line naming it.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from ..ground.errors import HilaError
from .base import Core, now
from .files import link_escape
from .records import QUALITIES, RUN_STATUSES, SnapshotItem, TrainingRun, dumps


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one that cannot be signalled still exists)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True

_SNAPSHOT_SQL = ("SELECT c.correction_id, c.case_id, c.version, c.file AS label_file, c.quality, k.file AS image_file, "
                 "k.name AS case_name FROM corrections c JOIN cases k ON k.case_id = c.case_id ")


@dataclass(eq=False)
class Runs:
    """Training snapshots and runs (the ``running`` row is the one-run-at-a-time lock)."""

    core: Core

    def _snap_item(self, r: sqlite3.Row) -> SnapshotItem:
        for what, rel in (("image", r["image_file"]), ("correction", r["label_file"])):
            why = link_escape(self.core.root, rel)  # what a snapshot names is read by training: never outside
            if why:
                raise HilaError(f"case {r['case_id']}: its stored {what} {rel} is outside the workspace ({why}); "
                                f"nothing was read; `hila check {self.core.root}` lists what else is")
        return SnapshotItem(r["case_id"], r["version"], self.core.root / r["image_file"], self.core.root / r["label_file"],
                            r["quality"], r["correction_id"], r["case_name"])

    def snapshot(self, qualities: Iterable[str] = QUALITIES) -> List[SnapshotItem]:
        """The latest correction of every case, read in one consistent transaction."""
        qs = list(qualities)
        with self.core.ledger.read() as con:
            rows = con.execute(_SNAPSHOT_SQL + "WHERE c.version = (SELECT MAX(version) FROM corrections c2 "
                               "WHERE c2.case_id = c.case_id) ORDER BY k.seq").fetchall()
        return [self._snap_item(r) for r in rows if r["quality"] in qs]

    def recover_dead_runs(self, con: sqlite3.Connection, why: str) -> List[int]:
        """Close as ``failed`` every ``running`` run whose process on this host is gone (inside ``con``'s transaction)."""
        host = socket.gethostname()
        dead = [r[0] for r in con.execute("SELECT run_id, host, pid FROM training_runs WHERE status = 'running'")
                if r[1] == host and r[2] and not pid_alive(r[2])]
        for run_id in dead:
            con.execute("UPDATE training_runs SET status = 'failed', finished_at = ?, log = log || ? WHERE run_id = ?",
                        (now(), f"\n[{why}] its process is gone (killed or crashed)", run_id))
            self.core.event(con, "train_recovered", f"run {run_id}", {"status": "failed", "by": why})
        return dead

    def start_training_run(self, snapshot: Optional[Sequence[SnapshotItem]] = None, parent_model: Optional[int] = None) -> int:
        """Record a training run and the exact correction versions it trains on; returns its id.

        Refuses (one line) while another run on this workspace is alive; closes a dead holder first.
        """
        snapshot = self.snapshot() if snapshot is None else list(snapshot)
        with self.core.ledger.write() as con:
            self.recover_dead_runs(con, "recovery at the next run's start")
            held = con.execute("SELECT run_id, host, pid, started_at FROM training_runs WHERE status = 'running'").fetchone()
            if held is not None:
                raise HilaError(f"{self.core.root}: training run {held[0]} (process {held[2]} on {held[1]}, started "
                                f"{held[3][:19]}) is still running; one training run at a time per workspace")
            ids = []
            for it in snapshot:
                r = con.execute("SELECT correction_id FROM corrections WHERE case_id = ? AND version = ?",
                                (it.case_id, int(it.correction_version))).fetchone()
                if r is None:
                    raise HilaError(f"snapshot: case {it.case_id} has no correction version {it.correction_version}")
                ids.append(r[0])
            if parent_model is None:
                cur_model = con.execute("SELECT version FROM models WHERE status = 'current'").fetchone()
                parent_model = cur_model[0] if cur_model else None
            cur = con.execute("INSERT INTO training_runs (status, parent_model, host, pid, started_at) VALUES "
                              "('running', ?, ?, ?, ?)", (parent_model, socket.gethostname(), os.getpid(), now()))
            run_id = cur.lastrowid
            for cid in sorted(set(ids)):
                con.execute("INSERT INTO training_snapshot VALUES (?, ?)", (run_id, cid))
            self.core.event(con, "train_start", f"run {run_id}", {"corrections": sorted(set(ids)), "parent_model": parent_model})
        return int(run_id)

    def training_run(self, run_id: int) -> TrainingRun:
        with self.core.ledger.read() as con:
            r = con.execute("SELECT * FROM training_runs WHERE run_id = ?", (int(run_id),)).fetchone()
            if r is None:
                raise HilaError(f"{self.core.root}: unknown training run {run_id}")
            items = con.execute(_SNAPSHOT_SQL + "JOIN training_snapshot s ON s.correction_id = c.correction_id "
                                "WHERE s.run_id = ? ORDER BY k.seq, c.version", (int(run_id),)).fetchall()
        return TrainingRun(r["run_id"], r["status"], [self._snap_item(i) for i in items], r["parent_model"],
                           r["model_version"], json.loads(r["metrics"]) if r["metrics"] else None, r["log"],
                           r["started_at"], r["finished_at"], r["host"], r["pid"])

    def training_runs(self) -> List[TrainingRun]:
        with self.core.ledger.read() as con:
            ids = [r[0] for r in con.execute("SELECT run_id FROM training_runs ORDER BY run_id")]
        return [self.training_run(i) for i in ids]

    def finish_training_run(self, run_id: int, status: str, metrics: Optional[dict] = None,
                            model_version: Optional[int] = None, log: str = "") -> None:
        """Close a running training run as done, cancelled or failed, with its metrics and log."""
        if status not in RUN_STATUSES or status == "running":
            raise HilaError(f"training run status {status!r}: use done, cancelled or failed")
        with self.core.ledger.write() as con:
            r = con.execute("SELECT status FROM training_runs WHERE run_id = ?", (int(run_id),)).fetchone()
            if r is None:
                raise HilaError(f"{self.core.root}: unknown training run {run_id}")
            if r[0] != "running":
                raise HilaError(f"training run {run_id} is already {r[0]}")
            if model_version is not None and not con.execute("SELECT 1 FROM models WHERE version = ?",
                                                             (int(model_version),)).fetchone():
                raise HilaError(f"{self.core.root}: unknown model version {model_version}")
            con.execute("UPDATE training_runs SET status = ?, metrics = ?, model_version = ?, log = ?, finished_at = ? "
                        "WHERE run_id = ?", (status, dumps(metrics or {}), model_version, log or "", now(), int(run_id)))
            self.core.event(con, "train_end", f"run {run_id}", {"status": status, "model_version": model_version})
