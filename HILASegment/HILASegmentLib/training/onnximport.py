"""An imported ONNX model as a trainable torch module (onnx2torch), and the check that the conversion computes
what the ONNX model does. Registered in ``architectures`` as ``onnx2torch`` (``hila train --init imported``)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..ground.errors import HilaError


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
