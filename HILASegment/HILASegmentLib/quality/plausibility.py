"""Shape and volume plausibility of one predicted label, against the workspace's accepted corrections of it.

Why: a prostate of 150 ml or a bladder cut to half its usual height is likely wrong whatever the model's own
confidence says; the workspace's reviewed corrections show what the structure usually looks like. Each label of a
prediction gets raw shape figures (:func:`label_shape`: volume, extent along each array axis, surface voxels per
voxel, extra pieces, intensity contrast with its surroundings and spread inside); against the same figures of the
accepted corrections of that label in *other* cases (never the case's own, which would leak its truth) they become
z-scores (:func:`zscore`; none with fewer than :data:`MIN_REFERENCES` references). The per-label quality model
(``quality.labelmodel``) reads them, and so do the synthetic degradations it trains on (``quality.degrade``).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

#: Fewer accepted corrections of a label than this (in other cases): no z-score (too few to say what is usual).
MIN_REFERENCES = 3
#: The raw figures of a label (:func:`label_shape`); ``ml`` and ``extent_mm`` are also what the z-scores compare.
RAW_KEYS = ("ml", "extent_mm", "boundary_ratio", "components", "intensity_contrast", "intensity_sd")


def surface_voxels(mask: np.ndarray) -> int:
    """Voxels of ``mask`` with a 6-neighbour outside it (the array's edge counts as outside)."""
    inner = mask.copy()
    for ax in range(3):
        a = tuple(slice(1, None) if i == ax else slice(None) for i in range(3))
        b = tuple(slice(None, -1) if i == ax else slice(None) for i in range(3))
        inner[a] &= mask[b]
        inner[b] &= mask[a]
        edge = [slice(None)] * 3
        for end in (0, -1):
            edge[ax] = end
            inner[tuple(edge)] = False
    return int(np.count_nonzero(mask & ~inner))


def extra_pieces(mask: np.ndarray) -> int:
    """Connected pieces of ``mask`` beyond the first (0 for one piece or none)."""
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return max(int(sitk.GetArrayViewFromImage(cc).max()) - 1, 0)


def label_shape(mask: np.ndarray, image: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """The raw figures of one label's mask (arrays z-y-x on one grid; ``spacing`` x-y-z in mm): volume in ml, the
    largest extent along an array axis in mm, surface voxels per voxel, extra pieces, and two scale-free intensity
    figures (contrast with the 3-voxel shell around it, spread inside over the image's interquartile range)."""
    mask = np.asarray(mask, bool)
    n = int(np.count_nonzero(mask))
    if not n:
        return {"ml": 0.0, "extent_mm": 0.0, "boundary_ratio": 1.0, "components": 0.0,
                "intensity_contrast": 0.0, "intensity_sd": 0.0}
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - 3, 0), int(i.max()) + 4) for i in idx)
    m, img = mask[box], np.asarray(image[box], np.float64)
    sp_zyx = np.asarray(spacing, float)[::-1]
    extent = max((int(i.max()) - int(i.min()) + 1) * s for i, s in zip(idx, sp_zyx))
    shell = sitk.GetArrayViewFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(m.astype(np.uint8)), [3, 3, 1])) > 0
    inside, around = img[m], img[shell & ~m]
    spread = float(np.subtract(*np.percentile(img, [75, 25]))) or float(img.std()) or 1.0
    pooled = float(inside.std() + (around.std() if around.size else 0.0)) or 1.0
    contrast = abs(float(inside.mean()) - (float(around.mean()) if around.size else 0.0)) / pooled
    out = {"ml": n * float(np.prod(spacing)) / 1000.0, "extent_mm": float(extent),
           "boundary_ratio": surface_voxels(m) / n, "components": float(extra_pieces(m)),
           "intensity_contrast": contrast, "intensity_sd": min(float(inside.std()) / spread, 10.0)}
    return {k: round(float(v), 5) for k, v in out.items()}


def zscore(value: float, references: Sequence[float]) -> Optional[float]:
    """How many spreads ``value`` lies from the references' mean; None with fewer than :data:`MIN_REFERENCES`.
    The spread is floored at a tenth of the mean, so three near-equal references do not make every value extreme."""
    refs = [float(r) for r in references if r is not None and math.isfinite(float(r))]
    if len(refs) < MIN_REFERENCES:
        return None
    mu = float(np.mean(refs))
    sd = max(float(np.std(refs, ddof=1)), 0.1 * abs(mu), 1e-6)
    return round(float(np.clip((float(value) - mu) / sd, -10.0, 10.0)), 4)


def plausibility(raw: Mapping[str, float], references: Sequence[Mapping[str, float]]) -> Dict[str, Optional[float]]:
    """``volume_z`` and ``extent_z`` of one label's raw figures against the same label's references (other cases'
    accepted corrections); None where there are too few."""
    return {"volume_z": zscore(raw["ml"], [r["ml"] for r in references]),
            "extent_z": zscore(raw["extent_mm"], [r["extent_mm"] for r in references])}
