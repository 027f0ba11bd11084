"""Installing the packages an agreed plan names, without freezing Slicer and without breaking it.

Slicer 5.12+ has ``slicer.packaging.pip_install`` (a progress dialog that keeps the GUI responsive,
``no_deps_requirements`` for packages whose dependencies must not come along: read in Slicer's
source, Base/Python/slicer/packaging.py). Slicer 5.8/5.10 have only the blocking
``slicer.util.pip_install``, so there pip runs as a child process (PythonSlicer -m pip) that the
panel polls, with a progress bar and Cancel. PyTorch goes through the PyTorch extension when present.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Optional

from . import installplan
from .processrunner import SequenceRunner, python_executable

__all__ = ["run_plan"]


def run_plan(slicer: Any, plan: installplan.InstallPlan, env: Optional[Dict[str, str]] = None) -> Optional[SequenceRunner]:
    """Install ``plan``: returns None when it is done (5.12), else an unstarted background runner (5.8/5.10)."""
    if plan.torch_via_pytorchutils:
        import PyTorchUtils  # the PyTorch extension: picks the CUDA/CPU build that fits the machine

        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torchLogic.installTorch(askConfirmation=False)
    try:
        importlib.import_module("slicer.packaging")  # Slicer 5.12+; absent before
    except ImportError:
        pass
    if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_install") and plan.pip_specs and not plan.torch_pip_spec:
        slicer.packaging.pip_install(plan.pip_specs, no_deps_requirements=plan.no_deps_specs or None, requester="HILASegment")
        return None
    commands = installplan.pip_commands(plan, python_executable())
    return SequenceRunner(commands, env=env) if commands else None
