"""Network architectures by name: the one registry behind ``hila train --arch``, rebuilding a checkpoint
(``network.build_network``), the candidate's card (own model or converted, window size divisor) and the plan
(a 2-D per-slice network or a 3-D one).

To add one: a ``build(arch, onnx_path)`` function that returns the torch module an architecture dict describes
(import torch/MONAI inside it), a ``fresh`` function that makes that dict from the modality's 3-D U-Net dict (for
``--arch``), and one ``register(Architecture(...))`` line here, plus its test. Light on purpose (no torch at import):
the command line reads the names when it builds its parser.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..ground.errors import HilaError
from ..ground.namedregistry import NamedRegistry


@dataclass(frozen=True)
class Architecture:
    """One network family (see the module docstring)."""

    name: str
    help: str
    #: ``build(arch, onnx_path)`` -> the torch module the card's architecture dict describes
    build: Callable[[dict, Optional[Path]], Any]
    #: ``fresh(base, configuration)`` -> the dict of a new model from the modality's 3-D U-Net dict and the
    #: planned configuration (``plan.CONFIGURATIONS``); None: not for a new model (``--arch``)
    fresh: Optional[Callable[[dict, dict], dict]] = None
    own: bool = True          # built and planned by this trainer (False: converted from an imported ONNX model)
    per_slice: bool = False   # a 2-D network applied per axial slice (the patch's in-plane sizes must divide)
    #: ``divisor(arch)``: what each windowed patch size must be a multiple of (the network's total stride)
    divisor: Callable[[dict], int] = lambda arch: 2 ** len(arch.get("strides", [2, 2, 2]))


ARCHITECTURES: NamedRegistry[Architecture] = NamedRegistry()
register = ARCHITECTURES.register  # one line per architecture, below


def get(name: Optional[str], where: str = "") -> Architecture:
    """The architecture called ``name``; a HilaError naming the known ones otherwise."""
    return ARCHITECTURES.lookup(name, lambda known: f"unknown network architecture {name!r}"
                                f"{' ' + where if where else ''}; known: {', '.join(known)}")


def choices() -> list:
    """The names ``hila train --arch`` takes: the architectures a fresh model can be."""
    return [a.name for a in ARCHITECTURES.values() if a.fresh is not None]


# --------------------------------------------------------------------------- the architectures

def _unet(arch: dict, onnx_path: Optional[Path] = None):
    from monai.networks.nets import UNet  # MONAI's network zoo: only the architecture asked for

    return UNet(spatial_dims=int(arch.get("spatial_dims", 3)), in_channels=int(arch.get("in_channels", 1)),
                out_channels=int(arch["out_channels"]), channels=tuple(arch["channels"]),
                strides=tuple(arch["strides"]), num_res_units=int(arch.get("num_res_units", 0)),
                norm=arch.get("norm", "instance"), dropout=float(arch.get("dropout", 0.0)))


def _dynunet(arch: dict, onnx_path: Optional[Path] = None):
    from monai.networks.nets import DynUNet  # MONAI's network zoo: only the architecture asked for

    return DynUNet(spatial_dims=int(arch.get("spatial_dims", 3)), in_channels=int(arch.get("in_channels", 1)),
                   out_channels=int(arch["out_channels"]), kernel_size=arch["kernel_size"],
                   strides=arch["strides"], upsample_kernel_size=arch["strides"][1:],
                   filters=arch.get("filters"), norm_name=arch.get("norm", "instance"),
                   res_block=bool(arch.get("res_block", True)))


def _fresh_dynunet(base: dict, configuration: dict) -> dict:
    """nnU-Net's network (MONAI DynUNet) with the U-Net's levels: 3x3x3 kernels, stride 1 then 2 per level."""
    n = len(base["channels"])
    return {"name": "DynUNet", "spatial_dims": 3, "in_channels": int(base.get("in_channels", 1)),
            "out_channels": int(base["out_channels"]), "kernel_size": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1), "filters": [int(c) for c in base["channels"]],
            "norm": base.get("norm", "instance"), "res_block": True}


def _fresh_slice_unet(base: dict, configuration: dict) -> dict:
    """The U-Net's levels in 2-D, with ``context`` neighbouring slices each side as channels (2.5d)."""
    return dict(base, name="SliceUNet", spatial_dims=2, context=int(configuration.get("context", 0)))


def _slice_unet(arch: dict, onnx_path: Optional[Path] = None):
    from .slicenet import SliceUNet  # torch: only when a network is built

    return SliceUNet(arch)


def _onnx2torch(arch: dict, onnx_path: Optional[Path] = None):
    if onnx_path is None:
        raise HilaError("architecture 'onnx2torch' needs the ONNX file it was converted from")
    from .onnximport import convert_onnx  # onnx, onnx2torch: only for an imported model

    return convert_onnx(onnx_path)


register(Architecture("UNet", "MONAI's 3-D U-Net with residual units (the default)", _unet,
                      fresh=lambda base, configuration: dict(base)))
register(Architecture("DynUNet", "MONAI's DynUNet (nnU-Net's network), the U-Net's levels", _dynunet,
                      fresh=_fresh_dynunet, divisor=lambda arch: 16))
register(Architecture("SliceUNet", "a 2-D U-Net per axial slice (the 2d and 2.5d configurations)", _slice_unet,
                      fresh=_fresh_slice_unet, per_slice=True))
register(Architecture("onnx2torch", "an imported ONNX model converted to torch (--init imported)", _onnx2torch,
                      own=False, divisor=lambda arch: 16))
