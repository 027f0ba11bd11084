"""``hila train WS --watch``: train whenever new corrections land, until SIGTERM/SIGINT.

The radiologist keeps working while the model learns: each time the workspace holds a correction that
no finished run trained on, one gated training round runs (continuing from the current model, as every
round does) and the next Segment uses whatever the gate made current. Corrections that land during a
round are taken by the next round rather than by cancelling this one: a round's optimisation is never
thrown away, and the next one continues from its result. One trainer at a time: another process holding
the workspace's training lock is refused in one line at the start. A signal ends the watch cleanly: a
round in progress is cancelled (its run row closed as ``cancelled``, nothing registered) unless it is
already registering, which finishes first.
"""
from __future__ import annotations

import socket
import time
from typing import Callable, Optional, Set, Tuple

from ..ground.errors import CancelledError, HilaError
from ..workspace import Workspace
from ..workspace.runs import pid_alive
from .run import TrainOptions, train_workspace
from .signals import StopFlag, stop_on_signals

Key = Tuple[str, int]


def trained_keys(ws) -> Set[Key]:
    """(case id, correction version) of every correction a finished (``done``) run trained on or gated with."""
    keys: Set[Key] = set()
    for run in ws.training_runs():
        if run.status == "done":
            keys |= {(str(s.case_id), int(s.correction_version)) for s in run.snapshot}
    return keys


def pending(ws) -> Set[Key]:
    """The latest corrections no finished run has seen: what the next round would learn from."""
    latest = {(str(s.case_id), int(s.correction_version)) for s in ws.snapshot()}
    return latest - trained_keys(ws)


def _lock_holder(ws) -> Optional[str]:
    for run in ws.training_runs():
        if run.status == "running":
            if run.host == socket.gethostname() and run.pid and not pid_alive(int(run.pid)):
                continue  # a dead holder on this host: start_training_run recovers it (as recover_dead_runs does)
            return f"training run {run.run_id} (pid {run.pid} on {run.host}, since {str(run.started_at)[:19]})"
    return None


def watch_workspace(workspace, opts: TrainOptions, progress: Optional[Callable] = None, poll_s: float = 2.0,
                    on_round: Optional[Callable[[dict], None]] = None, max_rounds: Optional[int] = None) -> dict:
    """Train a round whenever corrections are pending; returns ``{"rounds", "promoted", "stopped"}`` when stopped.

    ``on_round(result)`` is called after each round (the CLI prints it). ``max_rounds`` ends the watch after
    that many rounds (tests, scripts)."""
    opts.check()
    ws = workspace if hasattr(workspace, "snapshot") else Workspace.open(workspace)
    holder = _lock_holder(ws)
    if holder:
        raise HilaError(f"{ws.root}: another trainer holds this workspace ({holder}); one trainer at a time")
    flag = StopFlag()
    rounds, promoted, failed = [], 0, set()
    stopped = "max_rounds"
    with stop_on_signals(flag):
        while max_rounds is None or len(rounds) < max_rounds:
            if flag():
                stopped = "signal"
                break
            todo = frozenset(pending(ws))
            if not todo or todo in failed:
                time.sleep(poll_s)
                continue
            if progress:
                progress(0.0, f"{len(todo)} new correction(s): training", phase="watch")
            opts.started = time.monotonic()  # each round's budget counts from its own start
            try:
                res = train_workspace(ws, opts, progress, stop=flag)
            except CancelledError:
                stopped = "signal"
                break
            except HilaError as exc:  # this snapshot cannot be trained on: wait for new corrections
                failed.add(todo)
                res = {"error": str(exc), "new_corrections": len(todo)}
            rounds.append(res)
            promoted += bool(res.get("promoted"))
            if on_round:
                on_round(res)
            if flag():
                stopped = "signal"
                break
    return {"rounds": len(rounds), "promoted": promoted, "stopped": stopped,
            "models": [r.get("model_version") for r in rounds if r.get("model_version") is not None],
            "current": (ws.current_model().version if ws.current_model() else None)}
