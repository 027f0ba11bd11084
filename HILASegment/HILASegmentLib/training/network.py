"""The trainable networks: built from the card's ``architecture`` dict, so a checkpoint can always be reloaded.

The own models are MONAI U-Nets; an imported ONNX model (the TAPS preset) becomes a trainable torch
module through onnx2torch. A checkpoint is a plain ``state_dict`` saved next to the ONNX file together
with the architecture dict that rebuilds the module it belongs to.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..ground.errors import HilaError

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
    """Rebuild the module an architecture dict describes (``onnx_path`` for an onnx2torch conversion)."""
    name = arch.get("name")
    if name == "UNet":
        from monai.networks.nets import UNet  # MONAI's network zoo: only the architecture asked for

        return UNet(spatial_dims=int(arch.get("spatial_dims", 3)), in_channels=int(arch.get("in_channels", 1)),
                    out_channels=int(arch["out_channels"]), channels=tuple(arch["channels"]),
                    strides=tuple(arch["strides"]), num_res_units=int(arch.get("num_res_units", 0)),
                    norm=arch.get("norm", "instance"), dropout=float(arch.get("dropout", 0.0)))
    if name == "DynUNet":
        from monai.networks.nets import DynUNet  # MONAI's network zoo: only the architecture asked for

        return DynUNet(spatial_dims=int(arch.get("spatial_dims", 3)), in_channels=int(arch.get("in_channels", 1)),
                       out_channels=int(arch["out_channels"]), kernel_size=arch["kernel_size"],
                       strides=arch["strides"], upsample_kernel_size=arch["strides"][1:],
                       filters=arch.get("filters"), norm_name=arch.get("norm", "instance"), res_block=bool(arch.get("res_block", True)))
    if name == "SliceUNet":
        return SliceUNet(arch)
    if name == "onnx2torch":
        if onnx_path is None:
            raise HilaError("architecture 'onnx2torch' needs the ONNX file it was converted from")
        return convert_onnx(onnx_path)
    raise HilaError(f"unknown network architecture {name!r} in the model card")


class SliceUNet(nn.Module):
    """A 2-D U-Net applied to every axial slice of a (B, C, X, Y, Z) volume: the ``2d`` configuration, and
    ``2.5d`` with ``context`` neighbouring slices on each side as extra input channels.

    It takes and returns 5-D tensors like the 3-D nets, so the sliding-window inference engine, the training
    loop and the ONNX export treat it as any other network (a window of Z slices is Z 2-D images)."""

    def __init__(self, arch: dict):
        super().__init__()
        from monai.networks.nets import UNet  # MONAI's network zoo: only the architecture asked for

        self.context = int(arch.get("context", 0))
        self.net = UNet(spatial_dims=2, in_channels=int(arch.get("in_channels", 1)) * (2 * self.context + 1),
                        out_channels=int(arch["out_channels"]), channels=tuple(arch["channels"]),
                        strides=tuple(arch["strides"]), num_res_units=int(arch.get("num_res_units", 0)),
                        norm=arch.get("norm", "instance"), dropout=float(arch.get("dropout", 0.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, nx, ny, nz = x.shape
        if self.context:
            k = self.context
            xp = torch.cat([x[..., :1]] * k + [x] + [x[..., -1:]] * k, dim=-1)  # replicate the end slices
            x = torch.cat([xp[..., i:i + nz] for i in range(2 * k + 1)], dim=1)
            c = x.shape[1]
        s = x.permute(0, 4, 1, 2, 3).reshape(b * nz, c, nx, ny)
        y = self.net(s)
        return y.reshape(b, nz, y.shape[1], nx, ny).permute(0, 2, 3, 4, 1)


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


# --------------------------------------------------------------------------- onnx2torch import

def _stub_torchvision() -> None:
    """Make ``import onnx2torch`` work without torchvision.

    onnx2torch imports torchvision at import time only for its detection converters (NMS, RoIAlign),
    which segmentation models never use; installing torchvision would pull a second multi-GB torch
    build. So when torchvision is absent we register an empty stand-in whose ops raise if ever called.
    """
    try:
        import torchvision  # noqa: F401  (optional; see above)
        return
    except ImportError:
        pass

    def _missing(*_a, **_k):
        raise HilaError("this ONNX model uses a detection operator that needs torchvision, which is not installed")

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.batched_nms = ops.roi_align = _missing

    class _RoIAlign(nn.Module):  # only referenced, never instantiated for segmentation nets
        def __init__(self, *a, **k):
            _missing()

    ops.RoIAlign = _RoIAlign
    ops.boxes = types.SimpleNamespace(batched_nms=_missing, nms=_missing)
    tv.ops = ops
    tv.__version__ = "0.0-stub"
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops


def convert_onnx(onnx_path: Path) -> nn.Module:
    """A trainable torch module from an ONNX file (onnx2torch)."""
    _stub_torchvision()
    import onnx  # heavy, and only for --init imported
    from onnx2torch import convert  # optional: only for --init imported

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # noqa: BLE001
        raise HilaError(f"{onnx_path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    try:
        return convert(model)
    except Exception as exc:  # noqa: BLE001
        raise HilaError(f"{onnx_path}: cannot convert this ONNX model to torch: {str(exc).splitlines()[0][:120]}") from None


def check_conversion(net: nn.Module, onnx_path: Path, shape=(1, 1, 64, 64, 16), tol: float = 1e-3, seed: int = 0) -> float:
    """Max abs difference between the converted module and onnxruntime on one random input; HilaError above ``tol``."""
    import onnxruntime as ort  # only when a conversion is checked

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    if isinstance(out, (list, tuple)):
        out = out[0]
    diff = float(np.abs(out.numpy() - ref).max())
    if not diff <= tol:
        raise HilaError(f"{onnx_path}: the torch conversion differs from the ONNX model by {diff:.3g} (> {tol})")
    return diff
