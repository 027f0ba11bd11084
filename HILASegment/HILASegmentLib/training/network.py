"""The trainable networks: built from the card's ``architecture`` dict, so a checkpoint can always be reloaded.

The own models are MONAI U-Nets; an imported ONNX model (the TAPS preset) becomes a trainable torch
module through onnx2torch (``onnximport``). Which dict builds which module is the registry's
(``architectures``). A checkpoint is a plain ``state_dict`` saved next to the ONNX file together
with the architecture dict that rebuilds the module it belongs to.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..ground.errors import HilaError
from . import architectures
from .onnximport import check_conversion, convert_onnx  # noqa: F401  (callers reach them as network.*)

# Default recipes per modality. CT: coarse 2x2x3 mm grid, whole-pelvis patches, a small U-Net that a
# 2-core CPU trains to a useful model in a few minutes. MR: the same family at the in-plane resolution
# prostate T2 needs (the own fast model the loop trains on corrections of the TAPS preset).
DEFAULT_ARCH = {
    "CT": {"name": "UNet", "spatial_dims": 3, "in_channels": 1, "channels": [16, 32, 64, 128],
           "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance", "dropout": 0.0},
    "MR": {"name": "UNet", "spatial_dims": 3, "in_channels": 1, "channels": [16, 32, 64, 128],
           "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance", "dropout": 0.0},
}


def default_architecture(modality: str, n_labels: int) -> dict:
    """The architecture dict of a fresh own model: softmax over background + the workspace's labels."""
    arch = dict(DEFAULT_ARCH.get(modality, DEFAULT_ARCH["CT"]))
    arch["out_channels"] = int(n_labels) + 1
    return arch


def build_network(arch: dict, onnx_path: Optional[Path] = None) -> nn.Module:
    """Rebuild the module an architecture dict describes (``onnx_path`` for an onnx2torch conversion): the
    registry's builder for its ``name`` (``architectures``)."""
    return architectures.get(arch.get("name"), where="in the model card").build(arch, onnx_path)


def count_parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def save_checkpoint(net: nn.Module, arch: dict, path: Path, optimizer: Optional[dict] = None) -> Path:
    """Save weights + architecture (+ the optimiser's state, so the next round continues it) atomically."""

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    ck = {"architecture": arch, "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if optimizer is not None:
        ck["optimizer"] = optimizer
    with open(tmp, "wb") as fh:
        torch.save(ck, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, onnx_path: Optional[Path] = None, with_optimizer: bool = False) -> tuple:
    """(module, architecture) from a checkpoint written by :func:`save_checkpoint`; with ``with_optimizer``
    (module, architecture, optimiser state or None)."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise HilaError(f"{path}: not a readable training checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ck, dict) or "state_dict" not in ck or "architecture" not in ck:
        raise HilaError(f"{path}: not a HILASegment training checkpoint (no architecture/state_dict)")
    arch = ck["architecture"]
    net = build_network(arch, onnx_path=onnx_path)
    net.load_state_dict(ck["state_dict"])
    return (net, arch, ck.get("optimizer")) if with_optimizer else (net, arch)
