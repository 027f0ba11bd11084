"""Per-step training patches drawn from cases already on the model's grid: two data paths, one recipe.

Resampling and intensity normalisation happen once per case in :mod:`.dataset` (with the very same
functions inference uses); what is left here is per-step work: positive/negative-balanced patch crops,
a left-right flip (never anterior-posterior: bladder and rectum differ by exactly that), a small affine,
a small intensity jitter, and a label-wise intensity randomisation (below).

* ``arrays`` (the default, :class:`ArrayPatchSampler` + :func:`batch_affine`): numpy crops and jitter on
  the cached arrays, and one batched ``affine_grid``/``grid_sample`` for the whole batch. Measured by
  ``scripts/bench_recipe.py`` (2 CPU cores): about half the seconds per step of the MONAI path at the same
  Dice, which on a CPU is twice the optimisation per round.
* ``monai`` (:func:`train_transforms`): MONAI's dictionary transforms, per sample (kept for comparison).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

KEYS = ("image", "label")


class RandLabelIntensityd(Randomizable, MapTransform):
    """Give each labelled structure, with probability ``prob``, a random uniform intensity plus noise.

    Why: a round trains on a handful of corrections, and an organ's content varies between patients
    more than its shape and surroundings do (a rectum full of gas in one CT, of stool in the next).
    Randomising the intensity inside a label (the idea of SynthSeg, Billot et al. 2023, applied to
    real images) makes the network rely on shape and context. Measured on the real pelvic CT
    (train on two cases, segment the third): see scripts/bench_train.py and the README.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", prob: float = 0.3,
                 low: float = 0.0, high: float = 1.0, noise: float = 0.05):
        MapTransform.__init__(self, [image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.prob, self.low, self.high, self.noise = prob, low, high, noise

    def randomize(self, data=None) -> None:  # draws happen per label in __call__
        pass

    def __call__(self, data):
        d = dict(data)
        img, lab = d[self.image_key], d[self.label_key]
        is_torch = hasattr(img, "clone")
        out = img.clone() if is_torch else np.array(img, copy=True)
        lab_np = np.asarray(lab.cpu() if hasattr(lab, "cpu") else lab)
        for value in np.unique(lab_np):
            if value == 0 or value == 255 or self.R.rand() >= self.prob:  # 255: dataset.IGNORE (the loss's band)
                continue
            mask = lab_np == value
            n = int(mask.sum())
            fill = self.R.uniform(self.low, self.high) + self.R.normal(0.0, self.noise, n)
            if is_torch:
                out[torch.as_tensor(mask)] = torch.as_tensor(fill, dtype=out.dtype)
            else:
                out[mask] = fill.astype(out.dtype)
        d[self.image_key] = out
        return d


def train_transforms(patch_size: Sequence[int], samples_per_case: int = 2, pos: float = 2.0, neg: float = 1.0,
                     augment: bool = True, label_intensity_prob: float = 0.15) -> Compose:
    """Per-step transforms for dicts of channel-first arrays ``{"image": (1,X,Y,Z) float32, "label": (1,X,Y,Z)}``."""
    patch = [int(p) for p in patch_size]
    ts = [
        # cases arrive padded to at least the patch (dataset.pad_to), so precomputed indices stay valid
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=patch, pos=pos, neg=neg,
                               num_samples=samples_per_case, fg_indices_key="fg_indices",
                               bg_indices_key="bg_indices", allow_smaller=False),
    ]
    if augment:
        ts += [
            RandLabelIntensityd(prob=label_intensity_prob),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),  # left-right only
            RandAffined(keys=KEYS, prob=0.5, rotate_range=(0.05, 0.05, 0.2), scale_range=(0.15, 0.15, 0.15),
                        mode=("bilinear", "nearest"), padding_mode="border"),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.15, std=0.03),
        ]
    ts.append(EnsureTyped(keys=KEYS, track_meta=False))
    return Compose(ts)


class ArrayPatchSampler:
    """The ``arrays`` data path: what :func:`train_transforms` does per sample, with numpy on cached arrays.

    Crops centre on a labelled voxel with probability ``pos / (pos + neg)`` (else a background one), clipped
    so the patch lies inside the (padded) case, as MONAI's ``RandCropByPosNegLabeld`` does; then the left-right
    flip, the label-wise intensity randomisation and the intensity jitter. The affine is :func:`batch_affine`,
    once per batch.
    """

    def __init__(self, patch_size: Sequence[int], samples_per_case: int = 2, pos: float = 2.0, neg: float = 1.0,
                 augment: bool = True, label_intensity_prob: float = 0.15):
        self.patch = np.array([int(p) for p in patch_size])
        self.samples, self.p_pos, self.augment = int(samples_per_case), pos / (pos + neg), augment
        self.label_intensity_prob = label_intensity_prob

    def __call__(self, case: dict, rng: np.random.Generator) -> List[Tuple[np.ndarray, np.ndarray]]:
        img, lab = case["image"], case["label"]
        shape = np.array(img.shape[1:])
        fg, bg = case.get("fg_indices"), case.get("bg_indices")
        out = []
        for _ in range(self.samples):
            pool = fg if (fg is not None and fg.size and (rng.random() < self.p_pos or bg is None or not bg.size)) else bg
            if pool is not None and pool.size:
                centre = np.array(np.unravel_index(int(pool[rng.integers(pool.size)]), tuple(shape)))
            else:
                centre = (rng.random(3) * shape).astype(int)
            lo = np.clip(centre - self.patch // 2, 0, np.maximum(0, shape - self.patch))
            sl = (slice(None),) + tuple(slice(int(a), int(a + p)) for a, p in zip(lo, self.patch))
            x = np.array(img[sl], dtype=np.float32)
            y = np.array(lab[sl])
            if self.augment:
                x, y = self._augment(x, y, rng)
            out.append((x, y))
        return out

    def _augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        for value in np.unique(y):
            if value == 0 or value == 255 or rng.random() >= self.label_intensity_prob:  # 255: dataset.IGNORE
                continue
            mask = y == value
            x[mask] = rng.uniform(0.0, 1.0) + rng.normal(0.0, 0.05, int(mask.sum()))
        if rng.random() < 0.5:  # left-right only
            x, y = x[:, ::-1].copy(), y[:, ::-1].copy()
        if rng.random() < 0.5:
            x *= 1.0 + rng.uniform(-0.1, 0.1)
        if rng.random() < 0.5:
            x += rng.uniform(-0.1, 0.1)
        if rng.random() < 0.15:
            x += rng.normal(0.0, 0.03, x.shape).astype(np.float32)
        return x, y


def batch_affine(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, prob: float = 0.5,
                 rotate: Sequence[float] = (0.05, 0.05, 0.2), scale: float = 0.15) -> Tuple[torch.Tensor, torch.Tensor]:
    """A small random rotation and scaling per sample (probability ``prob``), for the whole batch in one
    ``grid_sample``: image bilinear with border padding, label nearest (the MONAI path's ``RandAffined``)."""
    b = x.shape[0]
    mats = []
    apply = False
    for _ in range(b):
        if rng.random() >= prob:
            mats.append(np.eye(3))
            continue
        apply = True
        ax, ay, az = (rng.uniform(-r, r) for r in rotate)
        cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        mats.append(rz @ ry @ rx @ np.diag(1.0 + rng.uniform(-scale, scale, 3)))
    if not apply:
        return x, y
    # affine_grid's coordinates run (z, y, x) over the tensor's last three axes (X, Y, Z) reversed
    rev = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    theta = np.zeros((b, 3, 4))
    theta[:, :, :3] = np.stack([rev @ m @ rev for m in mats])
    grid = F.affine_grid(torch.as_tensor(theta, dtype=x.dtype, device=x.device), list(x.shape), align_corners=False)
    xo = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    yo = F.grid_sample(y.to(x.dtype), grid, mode="nearest", padding_mode="border", align_corners=False)
    return xo, yo.to(y.dtype)
