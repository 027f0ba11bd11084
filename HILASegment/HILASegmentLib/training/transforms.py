"""MONAI transforms for training patches drawn from cases already on the model's grid.

Resampling and intensity normalisation happen once per case in :mod:`.dataset` (with the very same
functions inference uses); what is left here is per-step work: pad, positive/negative-balanced patch
crops, a left-right flip (never anterior-posterior: bladder and rectum differ by exactly that), a small
affine, a small intensity jitter, and a label-wise intensity randomisation (below).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
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
