"""argparse types for every numeric option of ``hila``: finite numbers in a stated range.

``float("nan")`` and ``float("inf")`` parse happily, and ``--max-minutes nan`` then compares false
with every bound, so a run without a budget slips through. Each numeric option therefore goes
through one of these types: the value is checked when the command line is parsed, before anything
is opened or written (a training run row, an output file), and a bad one is one line naming the
option and the rule.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Dict, List, Optional

#: the largest whole number any option takes (a C int: torch, onnxruntime and SQLite all hold it); a 360-digit
#: --steps overflowed float() with a traceback
INT_MAX = 2 ** 31 - 1


def _bounds(lo: Optional[float], hi: Optional[float], lo_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}" if isinstance(lo, float) else f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi:g}" if isinstance(hi, float) else f"<= {hi}")
    return " and ".join(parts)


def _check(v: float, text: str, lo: Optional[float], hi: Optional[float], lo_open: bool) -> None:
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise argparse.ArgumentTypeError(f"{text!r}: must be {_bounds(lo, hi, lo_open)}")


def real(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False) -> Callable[[str], float]:
    """A finite float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        _check(v, text, lo, hi, lo_open)
        return v
    parse.__name__ = "number"
    return parse


def positive(text: str) -> float:
    """A finite float > 0."""
    return real(0.0, lo_open=True)(text)


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """A whole number in [lo, hi] (``hi`` at most :data:`INT_MAX`), compared as an integer: never through float."""
    top = INT_MAX if hi is None else min(int(hi), INT_MAX)
    bottom = -INT_MAX if lo is None else int(lo)

    def parse(text: str) -> int:
        t = str(text).strip()
        shown = t if len(t) <= 24 else f"{t[:12]}... ({len(t)} characters)"
        try:
            v = int(t) if len(t) <= 40 else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown!r} is not a whole number") from None
        if v is None or not bottom <= v <= top:
            raise argparse.ArgumentTypeError(f"{shown!r}: must be {_bounds(lo, top, False)}")
        return v
    parse.__name__ = "integer"
    return parse


def machine_threads() -> int:
    """The CPU cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def processes(text: str) -> int:
    """A process count from 1 to the cores this machine has (``--nproc 100000`` started 100000 processes)."""
    return threads(text)


def threads(text: str) -> int:
    """A thread count from 1 to the cores this machine has: 100000 threads made torch crash (a segmentation
    fault) and onnxruntime hang, so a count the machine cannot run is refused when the command line is read."""
    n = machine_threads()
    try:
        return integer(1, n)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (this machine has {n} CPU core{'s' if n != 1 else ''})") from None


def _items(text: str) -> List[str]:
    return [t.strip() for t in str(text).replace("x", ",").split(",")]


def _list(one: Callable[[str], float], n: Optional[int], what: str, least: int = 1) -> Callable[[str], list]:
    def parse(text: str) -> list:
        vals = [one(t) for t in _items(text) if t] if str(text).strip() else []
        if (n is not None and len(vals) != n) or len(vals) < least:
            need = n or ("one or more" if least <= 1 else f"{least} or more")
            raise argparse.ArgumentTypeError(f"{str(text)[:40]!r}: need {need} comma-separated {what}")
        return vals
    parse.__name__ = "list"
    return parse


def int_list(n: Optional[int] = None, lo: Optional[int] = 1, least: int = 1) -> Callable[[str], List[int]]:
    """Comma (or x) separated whole numbers, each >= lo; exactly ``n`` of them when given, else at least ``least``."""
    return _list(integer(lo), n, "whole numbers", least)


def real_list(n: Optional[int] = None, lo: Optional[float] = 0.0, lo_open: bool = True) -> Callable[[str], List[float]]:
    """Comma (or x) separated finite numbers, each > lo (>= with ``lo_open=False``); exactly ``n`` when given."""
    return _list(real(lo, lo_open=lo_open), n, "numbers")


def weights(keys: List[str]) -> Callable[[str], Dict[str, float]]:
    """``key=number,...`` with keys from ``keys`` and finite numbers >= 0 (e.g. quality sampling weights)."""
    one = real(0.0)

    def parse(text: str) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for part in str(text).split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            k = k.strip()
            if not sep or k not in keys:
                raise argparse.ArgumentTypeError(f"{part.strip()!r}: need NAME=WEIGHT with NAME one of {', '.join(keys)}")
            out[k] = one(v.strip())
        if not out:
            raise argparse.ArgumentTypeError(f"{text!r}: need NAME=WEIGHT[,NAME=WEIGHT...]")
        return out
    parse.__name__ = "weights"
    return parse


#: the weak-label builders ``hila submit --builder`` and ``hila simulate --weak-builder`` accept (the engine's
#: ``boxassist.box_builder`` checks the same names for callers that skip the command line)
WEAK_BUILDERS = ("ellipsoid", "assistant", "auto")
