"""Torch -> ONNX with dynamic spatial axes, and the parity check between onnxruntime and torch.

The exported graph outputs logits (``(B, C, X, Y, Z)``); the card's ``activation`` tells the inference
engine what to apply. Parity is measured on a real validation patch, and its figure (max absolute
difference of the logits, with the tolerance it had to meet) goes into the card.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..ground.errors import HilaError
from ..models.modelcard import ModelCard, write_card

#: max |onnxruntime - torch| on the logits that an export must meet (float32, same weights)
PARITY_TOLERANCE = 1e-3
OPSET = 17


class _FirstOutput(nn.Module):
    """Exports only the main head of nets that return several outputs (deep supervision, conversions)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return y[0] if isinstance(y, (list, tuple)) else y


def export_onnx(net: nn.Module, path: Path, patch_size: Sequence[int], in_channels: int = 1) -> Path:
    """Write ``net`` (on CPU, eval mode) as ONNX with batch and all three spatial axes dynamic.

    Uses the TorchScript exporter (``dynamo=False``): the torch.export-based one needs ``onnxscript``,
    which the training tier does not install, and gives no benefit for a plain convolutional net.
    """
    path = Path(path)
    net = net.to("cpu").eval()
    x = torch.zeros((1, in_channels, *[int(p) for p in patch_size]), dtype=torch.float32)
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    tmp = path.with_name(path.name + ".part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_FirstOutput(net), (x,), str(tmp), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                          opset_version=OPSET, do_constant_folding=True)
    os.replace(tmp, path)
    return path


def parity(net: nn.Module, onnx_path: Path, sample: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Run the same (1,C,X,Y,Z) patch through torch and onnxruntime; HilaError when they differ more than allowed."""
    import onnxruntime as ort  # the inference tier's runtime; loaded here only when parity is checked

    x = np.ascontiguousarray(sample, dtype=np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    net = net.to("cpu").eval()
    with torch.no_grad():
        ref = _FirstOutput(net)(torch.from_numpy(x)).numpy()
    if got.shape != ref.shape:
        raise HilaError(f"{onnx_path}: exported model gives shape {got.shape}, torch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean()) if ref.shape[1] > 1 else float(((got > 0) == (ref > 0)).mean())
    res = {"max_abs_diff": diff, "tolerance": float(tolerance), "patch": list(x.shape[2:]),
           "label_agreement": round(agree, 6), "onnxruntime": ort.__version__, "torch": torch.__version__}
    if not diff <= tolerance:
        raise HilaError(f"{onnx_path}: ONNX export differs from torch by {diff:.3g} (tolerance {tolerance})")
    return res


def embed_card(onnx_in: Path, card: ModelCard, onnx_out: Path) -> Path:
    """Put the card into the ONNX metadata (through modelcard.write_card, the one writer of that format)."""
    write_card(Path(onnx_in), card, Path(onnx_out))
    return Path(onnx_out)
