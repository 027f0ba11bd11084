"""Sliding-window geometry and the small numpy filters the inference engine needs.

Window placement follows MONAI's ``sliding_window_inference`` (pad symmetrically to at least one
window, scan interval ``int(window * (1 - overlap))``, last window flush with the end) so an imported
MONAI-trained model sees the inputs it was validated on; the Gaussian importance map and the
Gaussian smoothing match MONAI's and scipy's, written in numpy because inference must not need
torch or scipy.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Sequence, Tuple

import numpy as np


def symmetric_padding(size: Sequence[int], window: Sequence[int]) -> List[Tuple[int, int]]:
    """Padding (before, after) per axis that makes ``size`` at least ``window`` (MONAI's split)."""
    pads = []
    for s, w in zip(size, window):
        diff = max(int(w) - int(s), 0)
        pads.append((diff // 2, diff - diff // 2))
    return pads


def window_starts(size: int, window: int, overlap: float) -> List[int]:
    """Start indices of the windows along one axis of length ``size`` (>= ``window``)."""
    if size <= window:
        return [0]
    interval = max(int(window * (1.0 - overlap)), 1)
    n = int(math.ceil((size - window) / interval)) + 1
    return sorted({min(i * interval, size - window) for i in range(n)})


def window_slices(size: Sequence[int], window: Sequence[int], overlap: float) -> List[Tuple[slice, ...]]:
    """All windows (as slices) covering an array of ``size`` (already padded to >= ``window``)."""
    per_axis = [window_starts(s, w, overlap) for s, w in zip(size, window)]
    return [tuple(slice(st, st + w) for st, w in zip(starts, window)) for starts in itertools.product(*per_axis)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's Gaussian importance map: weight 1 in the window centre, falling towards its edges."""
    axes = []
    for w in window:
        sigma = max(sigma_scale * w, 1e-3)
        x = np.arange(w, dtype=np.float64) - (w // 2)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    m = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    m = (m / m.max()).astype(np.float32)
    positive = m[m > 0]
    floor = float(positive.min()) if positive.size else 1e-6
    return np.maximum(m, max(floor, 1e-6)).astype(np.float32)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel (radius ``int(truncate * sigma + 0.5)``), normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_smooth(arr: np.ndarray, sigma: float, axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Separable Gaussian smoothing with 'nearest' borders (== scipy.ndimage.gaussian_filter mode='nearest').

    Used for the logit smoothing some models' post-processing asks for (TAPS: sigma 2.5 voxels).
    """
    if sigma <= 0:
        return arr
    out = np.asarray(arr, dtype=np.float32)
    k = gaussian_kernel1d(sigma).astype(np.float32)
    r = (len(k) - 1) // 2
    for ax in axes:
        n = out.shape[ax]
        pad = [(0, 0)] * out.ndim
        pad[ax] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, wgt in enumerate(k):
            sl = [slice(None)] * out.ndim
            sl[ax] = slice(i, i + n)
            acc += wgt * padded[tuple(sl)]
        out = acc
    return out
