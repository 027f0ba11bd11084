"""A training run's signals: SIGTERM/SIGINT stop a run between steps, and are held back while a model registers.

Why apart: ``hila train``, ``--watch`` and the Slicer panel's trainer child all need the same two rules, and the
run itself reads better as its steps.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Optional


class StopFlag:
    """Set by SIGTERM/SIGINT; polled by the loop so a run stops between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __call__(self) -> bool:
        return self.signal is not None

    def handler(self, signum, _frame) -> None:
        self.signal = signum


@contextmanager
def stop_on_signals(flag: StopFlag):
    installed = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            installed[s] = signal.signal(s, flag.handler)
        except ValueError:  # not the main thread (e.g. called from a worker thread): no signal handling
            pass
    try:
        yield flag
    finally:
        for s, old in installed.items():
            signal.signal(s, old)


@contextmanager
def signals_held():
    """Hold SIGTERM/SIGINT back while the model is registered, so no half-registered model can exist."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):  # pragma: no cover - Windows
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
