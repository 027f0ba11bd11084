"""Slicer markups -> the marks of a weak label: an ROI -> a box, two line markups -> RECIST diameters.

Slicer gives world RAS; a case's image is the volume's own (local) geometry in LPS, so points go
world RAS -> the volume's local RAS (the inverse of its parent transform's to-world matrix; a volume
without one: identity) -> LPS (x and y negated). What is read from Slicer, checked in Slicer's source
(main @ 583e9b37 and v5.8.1): ``vtkMRMLMarkupsROINode::GetRASBounds`` fills (xmin, xmax, ymin, ymax,
zmin, zmax), the axis-aligned world bounds of the ROI box from its world centre, size and axes (a
rotated ROI gives the box around it); a never-placed ROI gives all-zero bounds and one with only a centre
zero-size bounds (measured with slicer-core 5.12.4), both refused; ``slicer.util.arrayFromMarkupsControlPoints(node, world=True)``
reads each control point's ``GetNthControlPointPositionWorld``. A line markup has its two ends as
control points; one still being placed has fewer and is refused.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from HILASegmentLib.ground.errors import HilaError

__all__ = ["box_from_ras_bounds", "lines_from_ras_points", "marks_from_markups"]

_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def _to_local_lps(points_ras: np.ndarray, to_world: Optional[np.ndarray]) -> np.ndarray:
    p = np.asarray(points_ras, float).reshape(-1, 3)
    if to_world is not None:
        m = np.linalg.inv(np.asarray(to_world, float).reshape(4, 4))
        p = (np.c_[p, np.ones(len(p))] @ m.T)[:, :3]
    return p * _RAS_TO_LPS


def box_from_ras_bounds(bounds: Sequence[float], to_world: Optional[np.ndarray] = None) -> List[float]:
    """Two opposite LPS corners (X0,Y0,Z0,X1,Y1,Z1, mm, the volume's own space) of world RAS bounds
    (xmin, xmax, ymin, ymax, zmin, zmax); under a rotating parent transform, the box around the mapped corners."""
    b = np.asarray(bounds, float)
    if b.size != 6 or not np.all(np.isfinite(b)) or np.any(b[1::2] < b[0::2]):
        raise HilaError(f"ROI bounds {np.round(b, 2).tolist()}: not a placed box")
    corners = np.array([(x, y, z) for x in b[0:2] for y in b[2:4] for z in b[4:6]])
    lps = _to_local_lps(corners, to_world)
    return [float(v) for v in np.concatenate([lps.min(0), lps.max(0)])]


def lines_from_ras_points(long_ras: np.ndarray, short_ras: np.ndarray,
                          to_world: Optional[np.ndarray] = None) -> List[List[float]]:
    """The long and the short diameter as two LPS segments (each X0,Y0,Z0,X1,Y1,Z1) from world RAS end points."""
    out = []
    for name, pts in (("long", long_ras), ("short", short_ras)):
        p = np.asarray(pts, float).reshape(-1, 3)
        if len(p) != 2:
            raise HilaError(f"the {name} diameter line has {len(p)} control point(s); place both ends")
        out.append([float(v) for v in _to_local_lps(p, to_world).ravel()])
    return out


def marks_from_markups(util: Any, label: str, roi: Any = None, long_line: Any = None, short_line: Any = None,
                       volume: Any = None) -> dict:
    """The marks (``weak`` format, LPS, ``volume``'s own space) of an ROI node, or of a long and a short line
    node, for ``label``.

    ``util`` is slicer.util. Under a parent transform of ``volume`` the marks are mapped back through it
    (``util.arrayFromTransformMatrix(parent, toWorld=True)``, which raises for a non-linear transform).
    Exactly one of an ROI or a pair of lines; anything else is refused (HilaError): nothing is submitted.
    """
    parent = volume.GetParentTransformNode() if volume is not None else None
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise HilaError(f"the volume is under the non-linear transform {parent.GetName()!r}: marks cannot be mapped back "
                        "to its voxels exactly; harden the transform on the volume (Transforms module) or remove it")
    to_world = util.arrayFromTransformMatrix(parent, toWorld=True) if parent is not None else None
    if not label:
        raise HilaError("pick the label the marks are for")
    lines = long_line is not None or short_line is not None
    if roi is not None and lines:
        raise HilaError("an ROI and lines are both picked; pick one of them")
    if roi is not None:
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        if np.any(np.diff(np.asarray(bounds, float).reshape(3, 2), axis=1) == 0):
            # Slicer's never-placed ROI: all-zero bounds; one with only a centre: zero size
            raise HilaError(f"the ROI {roi.GetName()!r} is not placed (its box has no size): "
                            "draw it around the structure first")
        return {"space": "LPS", "items": [{"label": label, "box": box_from_ras_bounds(bounds, to_world)}]}
    if long_line is None or short_line is None:
        raise HilaError("pick an ROI, or a long and a short diameter line")
    if long_line is short_line:
        raise HilaError("the long and the short diameter are the same line; pick two")
    pts = [util.arrayFromMarkupsControlPoints(n, world=True) for n in (long_line, short_line)]
    return {"space": "LPS", "items": [{"label": label, "lines": lines_from_ras_points(pts[0], pts[1], to_world)}]}
