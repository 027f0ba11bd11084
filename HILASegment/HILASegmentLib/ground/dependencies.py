"""Which of the engine's optional packages are missing, or older than asked for.

The package lists by tier and pip extra and the CLI's one line for a missing one live in :mod:`.packages`; the
Slicer module plans its first-use installs from both (``HILASegmentSlicerLib.installplan``: what to install into
Slicer's Python, never what Slicer ships).
"""
from __future__ import annotations

import importlib.util
import re
from typing import Callable, Iterable, List, Optional

from .packages import (
    DICOM,
    EXTRAS,
    INFERENCE,
    MODEL_REQUIREMENTS,
    TIERS,
    TRAINING,
    Requirement,
    missing_package_message,
)

__all__ = ["Requirement", "INFERENCE", "TRAINING", "MODEL_REQUIREMENTS", "TIERS", "missing", "DICOM", "EXTRAS",
           "missing_package_message", "version_tuple", "installed_version"]


def version_tuple(v: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+-]", v):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def installed_version(dist_name: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(dist_name)
    except PackageNotFoundError:
        return None


def missing(requirements: Iterable[Requirement],
            find_spec: Callable[[str], object] = importlib.util.find_spec,
            get_version: Callable[[str], Optional[str]] = installed_version) -> List[Requirement]:
    """The requirements that do not import, or whose installed version is older than asked."""
    out = []
    for req in requirements:
        try:
            found = find_spec(req.import_name) is not None
        except (ImportError, ValueError):
            found = False
        if found and req.min_version:
            have = get_version(req.dist_name)
            if have and version_tuple(have) < version_tuple(req.min_version):
                found = False
        if not found:
            out.append(req)
    return out
