"""A fresh model's recipe planned from the corrections themselves (nnU-Net's "dataset fingerprint" idea).

nnU-Net (Isensee et al., Nat Methods 2021) derives spacing and patch size from a fingerprint of the
data instead of fixed numbers. Here the fingerprint is the corrections' median voxel spacing and the
extent of their labelled structures, and the plan is:

* **spacing**: per axis the coarser of the median spacing (never resample finer than the data) and
  the modality's floor (CT 3 mm: loses < 3 % Dice on the pelvic organs and keeps a 2-core CPU at
  ~500 steps in 5 minutes; MR 1x1x3 mm: the prostate needs in-plane detail);
* **patch**: the structures' extent (the largest case's, per axis) plus :data:`CONTEXT_MM` of
  surroundings on each side, on that spacing, rounded up to what the network's strides divide, no
  larger than the median image, and scaled down to the modality's voxel budget when bigger.

Explicit ``--spacing``/``--patch`` override the plan (tests, benchmarks); the card records the
fingerprint, the plan and what overrode it.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..labelio import read_label

#: surroundings (mm) a patch shows on each side of the labelled structures
CONTEXT_MM = 24.0
#: the finest spacing (mm) a fresh model of each modality uses, and the voxel budget of one patch
FLOOR_SPACING = {"CT": [3.0, 3.0, 3.0], "MR": [1.0, 1.0, 3.0]}
PATCH_BUDGET = {"CT": 64 * 64 * 48, "MR": 96 * 96 * 24}


def ct_window() -> dict:
    """Soft-tissue window for pelvic CT: -200..300 HU -> 0..1 (air, fat and bone saturate)."""
    return {"kind": "ct_window", "level": 50.0, "width": 500.0, "out_range": [0.0, 1.0]}


def normalization(modality: str) -> dict:
    return ct_window() if modality == "CT" else {"kind": "zscore", "nonzero": True}


def fingerprint(items: Sequence, n_labels: int = 255) -> dict:
    """Median spacing, median image extent and per-case label extent (mm) of snapshot items.

    ``items``: objects with ``image_path`` and ``label_path`` (a workspace snapshot). Only image
    headers are read; label maps are read to measure the bounding box of every voxel labelled
    1..``n_labels`` (the structures the workspace segments; others become background in training).
    """
    spacings, sizes_mm, extents = [], [], []
    for it in items:
        r = sitk.ImageFileReader()
        r.SetFileName(str(it.image_path))
        r.ReadImageInformation()
        sp = np.array(r.GetSpacing(), float)
        spacings.append(sp)
        sizes_mm.append(np.array(r.GetSize(), float) * sp)
        lab = read_label(it.label_path)
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.Cast((lab > 0) & (lab <= n_labels), sitk.sitkUInt8))
        if stats.HasLabel(1):
            box = stats.GetBoundingBox(1)
            extents.append((np.array(box[3:6], float) * np.array(lab.GetSpacing(), float)).round(1).tolist())
    return {"cases": len(spacings),
            "median_spacing": np.median(spacings, 0).round(3).tolist() if spacings else None,
            "median_image_mm": np.median(sizes_mm, 0).round(1).tolist() if sizes_mm else None,
            "label_extent_mm": extents}


def plan(modality: str, fp: dict, divisor: int, spacing: Optional[Sequence[float]] = None,
         patch: Optional[Sequence[int]] = None) -> dict:
    """``{"spacing", "patch_size", "normalization", "fingerprint", "rule"}`` for a fresh model.

    ``spacing``/``patch``: explicit overrides (kept as given; ``rule`` says which were overridden).
    """
    floor = np.array(FLOOR_SPACING.get(modality, FLOOR_SPACING["MR"]), float)
    med = np.array(fp.get("median_spacing") or floor, float)
    sp = np.array(spacing, float) if spacing else np.maximum(floor, med)
    if patch:
        ps: List[int] = [int(p) for p in patch]
    else:
        ext = np.max(np.array(fp["label_extent_mm"], float), 0) if fp.get("label_extent_mm") else None
        want = (ext + 2 * CONTEXT_MM) / sp if ext is not None else np.full(3, 48.0)
        if fp.get("median_image_mm"):
            want = np.minimum(want, np.array(fp["median_image_mm"], float) / sp)
        budget = PATCH_BUDGET.get(modality, PATCH_BUDGET["MR"])
        shrink = min(1.0, (budget / float(np.prod(np.maximum(want, divisor)))) ** (1 / 3))
        ps = [max(divisor, int(math.ceil(w * shrink / divisor)) * divisor) for w in want]
        while int(np.prod(ps)) > budget and max(ps) > divisor:  # rounding up may overshoot: trim the largest axis
            i = int(np.argmax(ps))
            ps[i] -= divisor
    rule = ("spacing: coarser of median spacing and the modality floor " + str(floor.tolist())
            + "; patch: label extent + %g mm context each side, within the median image and %d voxels"
            % (CONTEXT_MM, PATCH_BUDGET.get(modality, PATCH_BUDGET["MR"])))
    overridden = [k for k, v in (("spacing", spacing), ("patch_size", patch)) if v]
    if overridden:
        rule += "; overridden: " + ", ".join(overridden)
    return {"spacing": [round(float(s), 4) for s in sp], "patch_size": ps, "normalization": normalization(modality),
            "fingerprint": fp, "rule": rule}
