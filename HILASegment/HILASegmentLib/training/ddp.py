"""Data-parallel training over several processes: ``hila train WS --nproc N``.

torchrun starts N copies of the same ``hila train``; each draws its own random patches, and
DistributedDataParallel averages the gradients (NCCL on GPUs, one card per process; gloo on CPU), so
one step of N processes sees N times the patches of one. The run stays one run with one candidate
and the same gate: rank 0 alone writes to the workspace (the run row, the ONNX export, the gate, the
registry); the other ranks prepare the same cases (from rank 0's cache), train, and leave. Every
reason to stop (step count, time budget, a cancel) is agreed across ranks at each step, so all stop
at the same step and no rank waits forever in a gradient all-reduce.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Optional

import torch
import torch.distributed as tdist
from torch import nn


def under_torchrun() -> bool:
    """True in a process torchrun started for a run of more than one process."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


class Group:
    """This process's place in a data-parallel run (made once per run, closed at its end)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
        tdist.init_process_group("nccl" if self.cuda else "gloo")
        self.rank, self.world = tdist.get_rank(), tdist.get_world_size()
        self.device = f"cuda:{self.local_rank}" if self.cuda else "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        """The network as DDP sees it (the original stays the one exported); unused heads (deep
        supervision outputs the loss ignores) are allowed."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[self.local_rank] if self.cuda else None,
                                       find_unused_parameters=True)

    def _tensor(self, values: List[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def agree(self, flag: bool) -> bool:
        """True when any rank says so (every rank must call this at the same point)."""
        t = self._tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float) -> float:
        t = self._tensor([float(value)])
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def barrier(self) -> None:
        tdist.barrier()

    def close(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def launch(argv: List[str], nproc: int, threads: Optional[int] = None) -> int:
    """Run ``hila`` with ``argv`` (no ``--nproc``) as ``nproc`` processes under torchrun; its exit code.

    Each process gets an equal share of the CPU threads unless ``threads`` says otherwise.
    """
    per = threads or max(1, (os.cpu_count() or 1) // nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "HILASegmentLib", *argv, "--threads", str(per)]
    return subprocess.call(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(per)))
