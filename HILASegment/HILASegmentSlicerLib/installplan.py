"""What the Slicer module installs on first use, so it never breaks the Slicer it runs in.

The tiers and their packages are the engine's (``HILASegmentLib.ground.dependencies``); what to do about the missing ones
inside Slicer is decided here, tested without Slicer:

- install only what does not import (or is older than asked for), after the user agreed;
- never pip-install what Slicer ships (numpy, SimpleITK, VTK, ...): a missing one means a broken
  Slicer, and reinstalling it is how installs break Slicer — say so instead;
- PyTorch through the PyTorch extension (``PyTorchUtils``) when it is installed (it picks the
  CUDA/CPU build that matches the machine), else plain pip; MONAI and onnx2torch with
  ``--no-deps`` so pip never drags a second multi-GB torch build in behind them;
- a clear one-line message when pip fails because the machine is offline.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from HILASegmentLib.ground.dependencies import (
    MODEL_REQUIREMENTS,
    TIERS,
    installed_version,
    missing,
)

__all__ = ["SLICER_SHIPS", "InstallPlan", "plan_install", "pip_argument_string", "pip_commands", "manual_command",
           "offline_message"]

#: Import names of packages Slicer itself ships; never pip-installed by this module.
SLICER_SHIPS = frozenset({"numpy", "SimpleITK", "vtk", "qt", "ctk", "slicer", "scipy", "pydicom", "requests",
                          "packaging", "pip", "setuptools", "dicomweb_client", "PIL", "lxml"})


@dataclass
class InstallPlan:
    """What the module will install for a tier, and the sentence the user is asked to agree to."""

    tier: str
    pip_specs: List[str] = field(default_factory=list)        # installed together, with dependencies
    no_deps_specs: List[str] = field(default_factory=list)    # installed with --no-deps
    torch_via_pytorchutils: bool = False                     # PyTorchUtils.installTorch(...)
    torch_pip_spec: Optional[str] = None                     # plain pip fallback for torch
    broken_slicer: List[str] = field(default_factory=list)   # shipped packages that do not import
    old_slicer: List[str] = field(default_factory=list)      # shipped packages older than needed ("pydicom 3.0")

    @property
    def needed(self) -> bool:
        return bool(self.pip_specs or self.no_deps_specs or self.torch_via_pytorchutils or self.torch_pip_spec)

    def message(self) -> str:
        """The confirmation text (empty when nothing is needed)."""
        if self.broken_slicer:
            return ("These packages ship with 3D Slicer but do not import: " + ", ".join(self.broken_slicer)
                    + ". Reinstall 3D Slicer; HILASegment will not reinstall them.")
        if self.old_slicer:  # upgrading what Slicer ships is how installs break Slicer: say which Slicer has it
            return ("This 3D Slicer ships packages older than HILASegment needs for this: " + ", ".join(self.old_slicer)
                    + " or newer. Use 3D Slicer 5.12 or later; HILASegment will not upgrade them.")
        if not self.needed:
            return ""
        items = self.pip_specs + self.no_deps_specs
        if self.torch_via_pytorchutils:
            items = ["PyTorch (through the PyTorch extension)"] + items
        elif self.torch_pip_spec:
            items = [self.torch_pip_spec] + items
        what = {"inference": "segmenting", "dicom": "DICOM and PACS"}.get(self.tier, "training")
        return (f"HILASegment needs these Python packages for {what}, installed into Slicer's Python once: "
                + ", ".join(items) + ". This downloads from the internet and may take a few minutes. Install now?")


def plan_install(tier: str, find_spec: Callable[[str], object] = importlib.util.find_spec,
                 get_version: Callable[[str], Optional[str]] = installed_version,
                 pytorchutils_available: Optional[bool] = None, model: Optional[str] = None) -> InstallPlan:
    """The install plan for ``tier`` ("inference", "training" or "dicom") on this Python.

    ``model``: the catalog model about to run; packages only that model needs (``for_model``, e.g.
    lavlab-taps for ``taps``) join the plan, so they are asked for in the same one consent dialog.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown dependency tier {tier!r} (use one of {', '.join(TIERS)})")
    plan = InstallPlan(tier)
    wanted = list(TIERS[tier]) + [r for r in MODEL_REQUIREMENTS if model is not None and r.for_model == model]
    for req in missing(wanted, find_spec, get_version):
        if req.import_name in SLICER_SHIPS:
            try:
                present = find_spec(req.import_name) is not None
            except (ImportError, ValueError):
                present = False
            if present:  # it imports: only too old
                plan.old_slicer.append(f"{req.dist_name} {req.min_version}")
            else:
                plan.broken_slicer.append(req.import_name)
        elif req.is_torch:
            if pytorchutils_available is None:
                try:
                    pytorchutils_available = find_spec("PyTorchUtils") is not None
                except (ImportError, ValueError):
                    pytorchutils_available = False
            if pytorchutils_available:
                plan.torch_via_pytorchutils = True
            else:
                plan.torch_pip_spec = req.pip_spec
        elif req.no_deps:
            plan.no_deps_specs.append(req.pip_spec)
        else:
            plan.pip_specs.append(req.pip_spec)
    return plan


def pip_argument_string(specs: Sequence[str], no_deps: bool = False) -> str:
    """One string for ``slicer.util.pip_install`` (which splits it like a shell would)."""
    args = (["--no-deps"] if no_deps else []) + [shlex.quote(s) for s in specs]
    return " ".join(args)


def pip_commands(plan: InstallPlan, python: str) -> List[List[str]]:
    """The plan as argv lists (``python -m pip install ...``), for a background install with progress and Cancel.

    Slicer 5.8/5.10 have no non-blocking installer; running these in a child process keeps the GUI
    live. PyTorch through PyTorchUtils is not in here (that extension installs it itself).
    """
    base = [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    cmds = []
    if plan.torch_pip_spec:
        cmds.append(base + [plan.torch_pip_spec])
    if plan.pip_specs:
        cmds.append(base + list(plan.pip_specs))
    if plan.no_deps_specs:
        cmds.append(base + ["--no-deps"] + list(plan.no_deps_specs))
    return cmds


def manual_command(plan: InstallPlan, python: str = "PythonSlicer") -> List[str]:
    """The commands a user can run by hand (offline machines, proxies): shown in the error message."""
    cmds = []
    if plan.torch_pip_spec:
        cmds.append(f"{python} -m pip install {shlex.quote(plan.torch_pip_spec)}")
    if plan.pip_specs:
        cmds.append(f"{python} -m pip install {pip_argument_string(plan.pip_specs)}")
    if plan.no_deps_specs:
        cmds.append(f"{python} -m pip install {pip_argument_string(plan.no_deps_specs, no_deps=True)}")
    return cmds


_OFFLINE = re.compile(r"(Temporary failure in name resolution|Failed to establish a new connection|"
                      r"Network is unreachable|No matching distribution found|Could not find a version|"
                      r"ConnectionError|ReadTimeoutError|Name or service not known|getaddrinfo failed)", re.I)


def offline_message(error_text: str, plan: Optional[InstallPlan] = None) -> Optional[str]:
    """A one-line explanation when pip's failure looks like no network; None when it does not."""
    if not _OFFLINE.search(error_text or ""):
        return None
    msg = "Could not download the Python packages HILASegment needs: this computer seems to be offline (or behind a proxy)."
    if plan is not None:
        cmds = manual_command(plan)
        if cmds:
            msg += " Install them on a connected machine or with a local wheel: " + " ; ".join(cmds)
    return msg
