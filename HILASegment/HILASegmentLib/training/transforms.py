"""MONAI transforms for training patches drawn from cases already on the model's grid.

Resampling and intensity normalisation happen once per case in :mod:`.dataset` (with the very same
functions inference uses); what is left here is per-step work: pad, positive/negative-balanced patch
crops, a left-right flip (never anterior-posterior: bladder and rectum differ by exactly that), a small
affine and a small intensity jitter.
"""
from __future__ import annotations

from typing import Sequence

from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

KEYS = ("image", "label")


def train_transforms(patch_size: Sequence[int], samples_per_case: int = 2, pos: float = 2.0, neg: float = 1.0,
                     augment: bool = True) -> Compose:
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
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),  # left-right only
            RandAffined(keys=KEYS, prob=0.5, rotate_range=(0.05, 0.05, 0.2), scale_range=(0.15, 0.15, 0.15),
                        mode=("bilinear", "nearest"), padding_mode="border"),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.15, std=0.03),
        ]
    ts.append(EnsureTyped(keys=KEYS, track_meta=False))
    return Compose(ts)
