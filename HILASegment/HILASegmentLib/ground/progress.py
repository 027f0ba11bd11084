"""Progress reporting shared by the engine, the CLI and the Slicer glue.

Engine functions take an optional ``progress`` callable ``progress(fraction, message)`` with
``fraction`` in [0, 1] (or None when unknown). They never print. The CLI turns that callable
into a tqdm bar or JSON lines; the Slicer module into a progress bar fed from a child process.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from typing import Any, Callable, Optional, TextIO

_NUMBER = re.compile(r"\d+(\.\d+)?")
ProgressFn = Callable[[Optional[float], str], None]


def strict_json(obj: Any) -> Any:
    """``obj`` with every value JSON (RFC 8259) can hold: NaN and infinities become null (a model's loss or
    Dice can be NaN, and ``NaN`` is no JSON), numpy scalars and arrays plain numbers and lists, and other
    objects their text."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [strict_json(v) for v in obj]
    item = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(item):
        return strict_json(item())
    return str(obj)


def json_line(obj: Any) -> str:
    """One strict JSON line (no NaN/Infinity, whatever the values): every ``--json`` line goes through here."""
    return json.dumps(strict_json(obj), allow_nan=False)


def null_progress(fraction: Optional[float], message: str = "") -> None:
    """The default: report nothing."""


def scaled(progress: Optional[ProgressFn], start: float, stop: float) -> ProgressFn:
    """A progress callable for a sub-step that maps its own [0, 1] onto [start, stop] of the parent."""
    if progress is None:
        return null_progress

    def inner(fraction: Optional[float], message: str = "") -> None:
        progress(None if fraction is None else start + (stop - start) * max(0.0, min(1.0, fraction)), message)

    return inner


class JsonLinesProgress:
    """Writes ``{"event": "progress", "fraction": f, "message": m, ...}`` lines (for machines and the Slicer runner)."""

    def __init__(self, stream: Optional[TextIO] = None, min_interval: float = 0.2):
        # Resolved at call time, not import time: pytest and the Slicer runner swap sys.stdout.
        self.stream = stream if stream is not None else sys.stdout
        self.min_interval = min_interval
        self._last = 0.0
        self._kind = None

    def __call__(self, fraction: Optional[float], message: str = "", **extra) -> None:
        now = time.monotonic()
        final = fraction is not None and fraction >= 1.0
        # Only a run of lines of one kind ("step 7 loss 0.41", "step 8 ...") is thinned; a new phase is always
        # written, so a reader (the Slicer runner, a test killing at a phase) never misses one.
        kind = _NUMBER.sub("#", message)
        if not final and kind == self._kind and now - self._last < self.min_interval:
            return
        self._last, self._kind = now, kind
        rec = {"event": "progress", "fraction": None if fraction is None else round(float(fraction), 4), "message": message}
        rec.update(extra)
        self.stream.write(json_line(rec) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to finish (a line is complete when written); here so every progress closes alike."""


class BarProgress:
    """A tqdm bar on stderr for people; silent when stderr is not a terminal unless forced."""

    def __init__(self, desc: str = "", stream: Optional[TextIO] = None, force: bool = False):
        from tqdm import tqdm  # optional in Slicer's Python (not shipped there): only terminal bars need it

        stream = stream if stream is not None else sys.stderr
        disable = not (force or getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(total=1000, desc=desc, file=stream, disable=disable, leave=False,
                        bar_format="{desc}{percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: Optional[float], message: str = "", **extra) -> None:
        if fraction is not None:
            self.bar.n = int(1000 * max(0.0, min(1.0, fraction)))
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
