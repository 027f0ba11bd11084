"""The model's grid and the array helpers the Segmenter runs on it (no onnxruntime here).

``model_grid`` is the grid the network sees and ``model_input`` the network's input on it: THE one
definition, used by the Segmenter and by the trainer (``training.dataset``), so a model is trained on
exactly the arrays it will be given (train/inference skew is the costliest silent bug in segmentation);
``extract`` cuts a region that may leave the array, ``touches`` tells whether a prediction reaches a
region's border, ``largest_components`` is TAPS's clean-up, ``convex_slices`` the per-slice convex hull a card may
ask for where the gate measured that it helps (``training.gate.choose_postprocess``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.voxelgrid import index_to_lps
from ..ground.errors import HilaError
from .normalize import bounding_box, foreground_mask, normalize

#: Axis directions (in ITK's LPS world) that array axes 0, 1, 2 of the network input point to.
#: The most voxels a model grid may have (a float32 copy of 512 M voxels is 2 GB, before the network runs).
MAX_GRID_VOXELS = 512 * 10**6

ORIENTATION_AXES = {"RAS": np.diag([-1.0, -1.0, 1.0]), "LPS": np.eye(3)}


@dataclass
class Grid:
    """A voxel grid: the model grid, or a box on it."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray  # 3x3, columns are the axis directions
    size: Tuple[int, int, int]

    def physical(self, index: np.ndarray) -> np.ndarray:
        return self.origin + self.direction @ (np.asarray(index, float) * self.spacing)

    def image(self, arr_xyz: np.ndarray, lo: Sequence[int] = (0, 0, 0)) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(arr_xyz, np.float32).transpose(2, 1, 0)))
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetDirection([float(v) for v in self.direction.ravel()])
        img.SetOrigin([float(v) for v in self.physical(np.asarray(lo, float))])
        return img


def model_grid(image: sitk.Image, spacing: Sequence[float], orientation: str = "RAS") -> Grid:
    """The grid the network sees: the image's own axes, permuted and flipped to point as ``orientation``
    says (nearest axis, like nibabel/MONAI ``Orientation``; an oblique rotation is kept, as MONAI's
    ``Spacing`` keeps it), resampled to ``spacing``, covering the image from its first to its last voxel centre."""
    D = np.asarray(image.GetDirection(), float).reshape(3, 3)
    n = np.asarray(image.GetSize(), int)
    s = np.asarray(image.GetSpacing(), float)
    target = ORIENTATION_AXES[orientation]
    score = np.abs(target.T @ D)  # [target axis k, image axis j]
    perm = [-1, -1, -1]
    free_k, free_j = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        k, j = max(((k, j) for k in free_k for j in free_j), key=lambda kj: score[kj])
        perm[k] = j
        free_k.discard(k)
        free_j.discard(j)
    new_dir = np.zeros((3, 3))
    corner = np.zeros(3)
    new_size = []
    for k, j in enumerate(perm):
        sign = 1.0 if float(target[:, k] @ D[:, j]) >= 0 else -1.0
        new_dir[:, k] = sign * D[:, j]
        corner[j] = 0 if sign > 0 else n[j] - 1
        new_size.append(max(1, int(round((n[j] - 1) * s[j] / float(spacing[k]) + 1.0))))
    origin = index_to_lps(image, corner)  # the first voxel centre of the new grid
    if float(np.prod(new_size, dtype=float)) > MAX_GRID_VOXELS:  # before anything is allocated for it
        shape = "x".join(map(str, new_size))
        mm = ",".join(f"{float(v):g}" for v in spacing)
        raise HilaError(f"a model grid of {shape} voxels at spacing {mm} mm for this image: far beyond what fits "
                        f"in memory (limit {MAX_GRID_VOXELS // 10**6} M voxels); the spacing is too fine for its extent")
    return Grid(origin, np.asarray(spacing, float), new_dir, tuple(new_size))


def extract(arr: np.ndarray, region) -> np.ndarray:
    """``arr[region]`` where ``region`` may leave the array (zero padding there)."""
    src, pads = [], []
    for (lo, hi), n in zip(region, arr.shape):
        a, b = max(lo, 0), min(hi, n)
        src.append(slice(a, b))
        pads.append((a - lo, hi - b))
    out = arr[tuple(src)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads)
    return np.ascontiguousarray(out, dtype=np.float32)


def touches(mask: np.ndarray, faces, border: int) -> bool:
    """Does any foreground voxel lie within ``border`` voxels of one of ``faces`` ((axis, 0|1))?"""
    for ax, side in faces:
        sl = [slice(None)] * 3
        sl[ax] = slice(0, border) if side == 0 else slice(mask.shape[ax] - border, None)
        if mask[tuple(sl)].any():
            return True
    return False


def largest_components(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Keep only the largest 26-connected component of each label (TAPS's clean-up)."""
    out = label.copy()
    for v in values:
        m = label == v
        if not m.any():
            continue
        cc = sitk.ConnectedComponent(sitk.GetImageFromArray(m.astype(np.uint8)), True)
        # a copy, not a view: a view of the temporary RelabelComponent image outlives it (use after free; this
        # crashed `hila infer` with a segfault on the real 512x512x163 CT)
        cc = sitk.GetArrayFromImage(sitk.RelabelComponent(cc, 0, True))
        out[m & (cc != 1)] = 0
    return out


def si_axis(image: sitk.Image) -> int:
    """The array axis (z, y, x order) that points most nearly along the patient's superior-inferior: the axis a
    radiologist scrolls through axial slices along (also for an oblique or a sagittal acquisition)."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2, :])))  # column i = index axis i (x, y, z); numpy reverses them


def _hull_2d(mask: np.ndarray) -> np.ndarray:
    """The pixels whose centres lie in the convex hull of ``mask``'s pixel centres (Andrew's monotone chain): the
    hull of the result is the same hull, so applying it twice changes nothing."""
    rows, cols = np.nonzero(mask)
    r0, c0 = rows.min(), cols.min()
    first = np.r_[True, rows[1:] != rows[:-1]]  # nonzero() is row-major: each row's leftmost and rightmost pixel
    last = np.r_[rows[1:] != rows[:-1], True]   # are the only ones that can be hull vertices
    points = np.unique(np.concatenate([np.stack([rows[first], cols[first]], 1),
                                       np.stack([rows[last], cols[last]], 1)]), axis=0)  # by row, then column

    def chain(points):
        out: list = []
        for p in points:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(points), chain(points[::-1])
    hull = np.array(lower[:-1] + upper[:-1])  # counter-clockwise in (row, column)
    rr, cc = np.mgrid[r0:rows.max() + 1, c0:cols.max() + 1]
    inside = np.ones(rr.shape, bool)
    for (ar, ac), (br, bc) in zip(hull, np.roll(hull, -1, axis=0)):
        inside &= (br - ar) * (cc - ac) - (bc - ac) * (rr - ar) >= 0  # integer centres: exact
    out = mask.copy()
    out[r0:rows.max() + 1, c0:cols.max() + 1] |= inside
    return out


def convex_slices(label: np.ndarray, values: Sequence[int], axis: int) -> np.ndarray:
    """Each of ``values`` replaced, slice by slice along ``axis``, by its convex hull where that covers background:
    an under-trained model's gland with a bite out of it made whole, never another label's voxels taken. Labels
    are filled in the order given."""
    out = label.copy()
    for v in values:
        for k in range(out.shape[axis]):
            sl = np.take(out, k, axis=axis)  # a copy
            m = sl == v
            if m.sum() < 3:
                continue
            grow = _hull_2d(m) & (sl == 0)
            if grow.any():
                sl[grow] = v
                idx = [slice(None)] * out.ndim
                idx[axis] = k
                out[tuple(idx)] = sl
    return out


@dataclass
class ModelInput:
    """An image as the network sees it: the model grid, raw and normalised intensities on it (x, y, z) and
    the body box ([lo, hi) per axis, widened by the margin; it may leave the array, which is zero-padded)."""

    grid: Grid
    raw: np.ndarray
    norm: np.ndarray
    body: Tuple[Tuple[int, int], ...]


def model_input(image: sitk.Image, spacing: Sequence[float], orientation: str, normalization: Mapping[str, Any],
                modality: str, foreground: Optional[Any] = None, margin: Any = 5,
                where: str = "image", label: Optional[sitk.Image] = None,
                require_body: bool = True) -> Tuple[ModelInput, Optional[np.ndarray]]:
    """(the network's input for ``image``, ``label`` on the same grid (nearest neighbour) or None).

    Linear resampling onto :func:`model_grid`, the card's normalisation, the card's body rule; an image with
    no body is refused (it has nothing to segment and nothing to learn from; ``require_body=False``, for an
    uncropped training input only, gives the whole grid as its box instead)."""
    grid = model_grid(image, spacing, orientation)
    size, origin = [int(v) for v in grid.size], [float(v) for v in grid.origin]
    sp, direction = [float(v) for v in grid.spacing], [float(v) for v in grid.direction.ravel()]
    src = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    res = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, origin, sp, direction, 0.0, sitk.sitkFloat32, True)
    raw = sitk.GetArrayViewFromImage(res).transpose(2, 1, 0)  # (x, y, z)
    norm = normalize(raw, normalization, where)
    body = bounding_box(foreground_mask(raw, norm, modality, foreground), margin)
    if body is None:
        if require_body:
            raise HilaError(f"{where}: no body in the image (nothing above the foreground threshold)")
        body = tuple((0, int(n)) for n in norm.shape)
    lab = None
    if label is not None:
        lres = sitk.Resample(label, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, sp, direction, 0,
                             sitk.sitkUInt8, True)
        lab = sitk.GetArrayFromImage(lres).transpose(2, 1, 0)
    return ModelInput(grid, raw, norm, body), lab
