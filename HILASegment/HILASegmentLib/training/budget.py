"""What a training round will need, estimated before anything is allocated or recorded.

``--channels 4096,8192``, ``--patch 512,512,512`` or ``--batch 5000`` used to run for minutes, take 9-10 GB
and end in a traceback (or not at all), after a failed run row was written; ``--spacing 1e-6,...`` asked
for a resampled case of 10^20 voxels. Here the network's activations and the cases on the model grid are
estimated from the options and the ledger's grids, and a round that cannot fit is refused in one line
naming the estimate and what is available.
"""
from __future__ import annotations

import math
import os
import resource
from typing import Iterable, Optional, Sequence, Tuple

from ..ground.errors import HilaError

#: bytes of memory per activation value (batch x channels x voxels, summed over the U-Net's levels) at the peak
#: of a step: measured for MONAI's UNet (residual units, instance norm) with AdamW on a CPU in float32 — 17 to
#: 28 bytes for 2 to 4 levels (scripts: forward, backward and step on patches 64x64x32 and 96x96x48)
BYTES_PER_ACTIVATION = 28
#: bytes per parameter: weights, gradients and AdamW's two moments, float32
BYTES_PER_PARAMETER = 16
#: bytes per voxel of a case held on the model grid (float32 image, label, foreground indices, the sample's
#: augmentation copies), and per patch voxel of each sample's augmentation (affine, intensity, crops)
BYTES_PER_CASE_VOXEL = 16
BYTES_PER_PATCH_VOXEL = 40
#: the most voxels one case may have on the model grid (2^31: the index type of torch's and ITK's kernels)
MAX_CASE_VOXELS = 2 ** 31


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def unet_bytes(channels: Sequence[int], patch: Sequence[int], batch: int, in_channels: int = 1,
               out_channels: int = 2) -> float:
    """Peak memory of one training step of a U-Net with these ``channels`` per level (stride 2 each)."""
    v = float(math.prod(int(p) for p in patch))
    activations = float(batch) * sum(int(c) * v / 8.0 ** level for level, c in enumerate(channels))
    chans = [int(in_channels)] + [int(c) for c in channels]
    params = sum(27.0 * 2 * a * b for a, b in zip(chans, chans[1:])) * 2 + 27.0 * chans[1] * out_channels  # encoder + decoder
    return activations * BYTES_PER_ACTIVATION + params * BYTES_PER_PARAMETER + float(batch) * v * BYTES_PER_PATCH_VOXEL


def case_voxels(grid: dict, spacing: Sequence[float]) -> float:
    """Voxels of a case (its ledger ``grid``: size, spacing) resampled onto ``spacing``."""
    size, sp = grid.get("size") or [], grid.get("spacing") or []
    try:
        return float(math.prod(max(1.0, float(n) * float(s) / float(t)) for n, s, t in zip(size, sp, spacing)))
    except (OverflowError, ZeroDivisionError, ValueError):
        return math.inf


def available_bytes(device: str) -> Tuple[Optional[float], str]:
    """(bytes this process can still allocate, where that figure comes from); None when unknown."""
    if device.startswith("cuda"):
        import torch  # the training tier: only when a round is planned

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return float(free), "free on the GPU"
    best: Tuple[Optional[float], str] = (None, "")
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {ln.split(":")[0]: ln.split()[1] for ln in fh if ":" in ln}
        best = (float(info["MemAvailable"]) * 1024.0, "available memory")
    except (OSError, KeyError, ValueError, IndexError):
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:  # `ulimit -v`: what is left of the address space
        try:
            with open(f"/proc/{os.getpid()}/statm", encoding="ascii") as fh:
                used = float(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            used = 0.0
        left = max(0.0, float(soft) - used)
        if best[0] is None or left < best[0]:
            best = (left, "left under the address-space limit (ulimit -v)")
    return best


def check_round(arch: dict, patch: Sequence[int], spacing: Sequence[float], batch: int,
                grids: Iterable[Tuple[str, dict]], device: str, options: str) -> float:
    """Refuse (one line, naming ``options`` and the estimate) a round whose cases or network cannot fit; returns
    the estimated bytes. ``grids``: (case id, ledger grid) of the cases it trains on."""
    total_case = 0.0
    for case_id, grid in grids:
        n = case_voxels(grid, spacing)
        if not n <= MAX_CASE_VOXELS:
            raise HilaError(f"{options}: case {case_id} on the model grid of spacing "
                            f"{','.join(f'{s:g}' for s in spacing)} mm would have {n:.3g} voxels (at most "
                            f"{MAX_CASE_VOXELS:.3g}); choose a coarser --spacing. Nothing was recorded")
        total_case += n * BYTES_PER_CASE_VOXEL
    net = unet_bytes(arch["channels"], patch, batch, int(arch.get("in_channels", 1)),
                     int(arch.get("out_channels", 2))) if arch.get("channels") else 0.0
    need = net + total_case
    have, where = available_bytes(device)
    if have is not None and need > have:
        raise HilaError(f"{options}: this round would need about {_gb(need)} of memory (network {_gb(net)}, cases "
                        f"{_gb(total_case)}), more than the {_gb(have)} {where}; choose a smaller --batch, --patch or "
                        "--channels, or a coarser --spacing. Nothing was recorded")
    return need
