"""IJK <-> LPS, defined once: where a voxel index of an image (ITK order i, j, k, continuous) lies in physical
LPS millimetres, and back. ``img``: an image, or anything with its GetDirection/GetSpacing/GetOrigin (an
ImageFileReader that read the header). ``.seg.nrrd`` headers, RTSTRUCT contours, DICOM slice checks, weak marks and the
simulated radiologist's marks all ask here (a second copy of the matrix is how a flipped axis slips in).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def ijk_to_lps(img: sitk.Image) -> np.ndarray:
    """The 4x4 matrix taking homogeneous (i, j, k, 1) to (L, P, S, 1): direction x spacing, then the origin."""
    m = np.eye(4)
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    m[:3, :3] = d * np.asarray(img.GetSpacing(), float)[None, :]
    m[:3, 3] = img.GetOrigin()
    return m


def index_to_lps(img: sitk.Image, ijk) -> np.ndarray:
    """Physical LPS points (..., 3) of continuous voxel indices (..., 3) (i, j, k) on ``img``'s grid."""
    m = ijk_to_lps(img)
    return np.asarray(ijk, float) @ m[:3, :3].T + m[:3, 3]


def lps_to_index(img: sitk.Image, points) -> np.ndarray:
    """Continuous voxel indices (N, 3) (i, j, k) of physical LPS points (N, 3) on ``img``'s grid."""
    m = ijk_to_lps(img)
    return (np.asarray(points, float) - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T


def grid_of(ijk_to_lps_matrix) -> tuple:
    """(origin, spacing, direction) of an image whose IJK -> LPS matrix is ``ijk_to_lps_matrix`` (4x4): the inverse of
    :func:`ijk_to_lps`, for grids that arrive as a matrix (a Slicer volume node's). A zero or non-finite axis is
    refused (ValueError)."""
    m = np.asarray(ijk_to_lps_matrix, dtype=float)
    if m.shape != (4, 4):
        raise ValueError(f"an IJK matrix must be 4x4, got {m.shape}")
    cols = m[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(cols)):
        raise ValueError("the IJK matrix has a zero or non-finite axis")
    return tuple(m[:3, 3].tolist()), tuple(spacing.tolist()), tuple((cols / spacing).flatten().tolist())
