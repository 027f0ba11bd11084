"""Every ``HILA_*`` environment variable that holds a number, parsed in one place, when it is used.

A module that read ``float(os.environ[...])`` at import time made every workspace command die with a
traceback when the variable held ``abc``; a timeout of ``0`` reached requests and failed there. Here a
value is read when it is needed, and a bad one is a one-line ``HilaError`` naming the variable, the
value and the rule, before any work is done.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from .errors import HilaError

#: name -> (default, lowest allowed (exclusive), highest allowed, what it sets)
SECONDS = {
    "HILA_DICOMWEB_TIMEOUT": (120.0, 0.0, 3600.0, "the overall deadline of each DICOMweb request, in seconds"),
    "HILA_LEDGER_TIMEOUT": (300.0, 0.0, 86400.0, "how long a writer waits for the workspace ledger, in seconds"),
}


def seconds(name: str, environ: Optional[dict] = None) -> float:
    """The value of the seconds variable ``name`` (its default when unset or empty); one line when it is not a
    finite number in its range."""
    default, lo, hi, what = SECONDS[name]
    text = (os.environ if environ is None else environ).get(name, "")
    if not text.strip():
        return default
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and lo < v <= hi):
        raise HilaError(f"{name}={text!r}: must be a number of seconds > {lo:g} and <= {hi:g} ({what}); "
                        f"unset it for the default {default:g}")
    return v


def check_all(environ: Optional[dict] = None) -> None:
    """Every numeric ``HILA_*`` variable checked at once (the CLI does this before any command runs)."""
    for name in SECONDS:
        seconds(name, environ)
