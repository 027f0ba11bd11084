"""Tiny ONNX segmentation models and synthetic phantoms for the inference tests (built in the test).

The 'threshold network' is one 1x1x1 convolution: logit = gain * (normalised intensity - level),
so it marks exactly the bright voxels. Geometry errors (a flipped or permuted axis, a lost oblique
rotation) therefore show as a segmentation that misses the bright sphere of the phantom.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from HILASegmentLib.models.modelcard import LabelInfo, ModelCard, write_card


def threshold_onnx(path: Path, activation: str = "sigmoid", level: float = 1.5, gain: float = 4.0,
                   fixed: Optional[Sequence[int]] = None, in_channels: int = 1, out_channels: Optional[int] = None,
                   opset: int = 17) -> Path:
    """Write a one-Conv ONNX network. sigmoid: one channel; softmax: (background, object)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if out_channels is None:
        out_channels = 1 if activation == "sigmoid" else 2
    w = np.zeros((out_channels, in_channels, 1, 1, 1), np.float32)
    b = np.zeros((out_channels,), np.float32)
    if activation == "sigmoid":
        w[:, 0] = gain
        b[:] = -gain * level
    else:
        w[0, 0], b[0] = -gain, gain * level  # background falls where the object rises
        w[1:, 0], b[1:] = gain, -gain * level
    spatial = list(fixed) if fixed else ["x", "y", "z"]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_channels] + spatial)
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_channels] + spatial)
    node = helper.make_node("Conv", ["input", "W", "B"], ["output"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph([node], "threshold", [inp], [out],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hila-tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_card(activation: str = "sigmoid", patch: Tuple[int, int, int] = (32, 32, 16),
              spacing: Tuple[float, float, float] = (1.0, 1.0, 2.0), modality: str = "MR", **kw) -> ModelCard:
    norm = {"kind": "zscore", "nonzero": True} if modality == "MR" else {"kind": "ct_window", "level": 40, "width": 400}
    fields = dict(name="tiny-threshold", version=1, modality=modality,
                  labels=[LabelInfo(1, "sphere", (0.2, 0.8, 0.3))], spacing=spacing, patch_size=patch,
                  normalization=norm, activation=activation, licence="Apache-2.0",
                  inference={"overlap": 0.25, "margin_vox": 3}, description="test model: marks bright voxels")
    fields.update(kw)
    return ModelCard(**fields)


def card_json(name: str, **fields) -> dict:
    """A valid card's JSON form named ``name`` with ``fields`` replaced (e.g. ``metrics``): what the registry stores."""
    return dict(tiny_card(name=name).to_dict(), **fields)


def tiny_model(folder: Path, activation: str = "sigmoid", name: str = "tiny.onnx", embed: bool = True,
               fixed: Optional[Sequence[int]] = None, **card_kw) -> Path:
    """A threshold network with its card embedded (or, with ``embed=False``, in a sidecar JSON)."""
    path = threshold_onnx(Path(folder) / name, activation, fixed=fixed)
    card = tiny_card(activation, patch=tuple(fixed) if fixed else card_kw.pop("patch", (32, 32, 16)), **card_kw)
    if embed:
        write_card(path, card)
    else:
        import dataclasses

        from HILASegmentLib.models.modelcard import onnx_checksum

        card = dataclasses.replace(card, checksum=onnx_checksum(path))
        (Path(folder) / (name[:-5] + ".card.json")).write_text(card.to_json(indent=1), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# phantoms: an analytic body with a bright sphere, sampled on any grid
# ----------------------------------------------------------------------------------------------

CENTRE = np.array([12.0, -8.0, 20.0])  # the sphere's centre, mm (LPS)
RADIUS = 11.0
BODY_HALF = np.array([45.0, 35.0, 30.0])  # the body: a box around the centre


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float)
    a /= np.linalg.norm(a)
    t = np.radians(degrees)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def phantom(size: Sequence[int], spacing: Sequence[float], direction: np.ndarray,
            centre_index: Optional[Sequence[float]] = None, seed: int = 0) -> Tuple[sitk.Image, np.ndarray]:
    """An image on the given grid (placed so the phantom's centre is at ``centre_index``, default the
    middle) and the true sphere mask on the same grid (array z, y, x)."""
    size = np.asarray(size, int)
    spacing = np.asarray(spacing, float)
    D = np.asarray(direction, float).reshape(3, 3)
    ci = np.asarray(centre_index if centre_index is not None else (size - 1) / 2.0, float)
    origin = CENTRE - D @ (ci * spacing)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float) * spacing
    pts = origin + idx @ D.T
    rel = pts - CENTRE
    sphere = np.linalg.norm(rel, axis=-1) < RADIUS
    body = np.all(np.abs(rel) < BODY_HALF, axis=-1)
    rng = np.random.default_rng(seed)
    arr = np.where(body, 100.0 + rng.normal(0, 5, body.shape), 0.0)
    arr = np.where(sphere, 400.0 + rng.normal(0, 5, body.shape), arr).astype(np.float32)
    img = sitk.GetImageFromArray(np.clip(arr, 0, None).astype(np.int16))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in D.ravel()])
    img.SetOrigin([float(v) for v in origin])
    return img, sphere


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


# ----------------------------------------------------------------------------------------------
# a synthetic pelvis CT for training runs (test_training.py, scripts/bench_gate.py)
# ----------------------------------------------------------------------------------------------

def synthetic_ct(seed: int, size=(48, 48, 20)):
    """(CT image, label image): body ellipse, bladder (1) anterior, rectum (2) posterior with gas; 2x2x3 mm."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij")
    cx, cy = size[0] / 2 + rng.uniform(-2, 2), size[1] / 2 + rng.uniform(-2, 2)
    body = ((x - cx) / 20.0) ** 2 + ((y - cy) / 17.0) ** 2 < 1
    ct = np.full(z.shape, -1000.0)
    ct[body] = -90.0                                              # fat
    bl = ((x - cx) / 7.0) ** 2 + ((y - cy + 7) / 6.0) ** 2 + ((z - 11) / 5.0) ** 2 < 1
    re = ((x - cx) / 4.0) ** 2 + ((y - cy - 7) / 4.0) ** 2 < 1
    ct[bl] = 10.0
    ct[re] = 40.0
    ct[re & ((x - cx) ** 2 + (y - cy - 7) ** 2 < 2)] = -800.0    # gas in the rectum
    ct += rng.normal(0, 15, ct.shape) * body
    lab = np.zeros(z.shape, np.uint8)
    lab[bl] = 1
    lab[re] = 2
    img = sitk.GetImageFromArray(ct.astype(np.int16))
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-48.0, -48.0, 0.0))
    li = sitk.GetImageFromArray(lab)
    li.CopyInformation(img)
    return img, li


def synthetic_workspace(folder: Path, seeds: Sequence[int], corrected: int, labels=("bladder", "rectum")):
    """(workspace, case ids, {case id: label image}): a CT workspace with one synthetic case per seed,
    the first ``corrected`` of them submitted as reviewed corrections."""
    from HILASegmentLib.workspace import Workspace

    folder = Path(folder)
    ws = Workspace.create(folder / "ws", "CT", list(labels))
    ids, labs = [], {}
    for s in seeds:
        img, lab = synthetic_ct(int(s))
        sitk.WriteImage(img, str(folder / f"ct{s}.nii.gz"))
        ids.append(ws.import_volume(folder / f"ct{s}.nii.gz").case_id)
        labs[ids[-1]] = lab
    for cid in ids[:corrected]:
        ws.submit(cid, labs[cid], quality="reviewed")
    return ws, ids, labs
