"""Slicer markups -> the marks of a weak label: an ROI -> a box, two line markups -> RECIST diameters.

Slicer gives world RAS; a case's image is the volume's own (local) geometry in LPS, so points go
world RAS -> the volume's local RAS (the inverse of its parent transform's to-world matrix; a volume
without one: identity) -> LPS (x and y negated). What is read from Slicer, checked in Slicer's source
(vtkMRMLMarkupsROINode.h: main @ 583e9b37 in Libs/MRML/Core, v5.8.1 in Modules/Loadable/Markups/MRML) and on
slicer-core 5.12.4: the ROI's own box, not its world bounds
(``GetRASBounds`` is the axis-aligned box around the ROI in world RAS, which under a rotating parent transform
is bigger than the box drawn): ``GetSize()`` (side lengths in the ROI's object axes; (0, 0, 0) for a
never-placed ROI and one with only a centre) and ``GetObjectToNodeMatrix()`` (its centre and axes in the
node's coordinates), taken to world by the ROI's own parent transform.
``slicer.util.arrayFromMarkupsControlPoints(node, world=True)`` reads each control point's
``GetNthControlPointPositionWorld``. A line markup has its two ends as control points; one still being placed
has fewer and is refused.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from HILASegmentLib.ground.errors import HilaError

__all__ = ["box_from_roi", "roi_box", "lines_from_ras_points", "marks_from_markups"]

#: How much (mm, any axis) the axis-aligned box around an ROI turned against the volume may exceed the drawn box.
ROI_TURN_TOLERANCE_MM = 0.5

_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def _to_local_lps(points_ras: np.ndarray, to_world: Optional[np.ndarray]) -> np.ndarray:
    p = np.asarray(points_ras, float).reshape(-1, 3)
    if to_world is not None:
        m = np.linalg.inv(np.asarray(to_world, float).reshape(4, 4))
        p = (np.c_[p, np.ones(len(p))] @ m.T)[:, :3]
    return p * _RAS_TO_LPS


def box_from_roi(name: str, size: Sequence[float], object_to_node: np.ndarray,
                 node_to_volume: Optional[np.ndarray] = None) -> List[float]:
    """Two opposite LPS corners (X0,Y0,Z0,X1,Y1,Z1, mm, the volume's own space) of an ROI's own box: ``size`` along
    its object axes, ``object_to_node`` (4x4) its centre and axes, ``node_to_volume`` (4x4) the ROI's node
    coordinates -> the volume's local RAS (None: the same).

    A box that is axis-aligned with the volume's own LPS axes comes out at exactly the drawn size. An ROI turned
    against those axes is refused (HilaError) when the axis-aligned box around it, which the engine's weak box must
    be, would be more than ``ROI_TURN_TOLERANCE_MM`` bigger on an axis: a weak label silently bigger than what the
    user drew would teach the model wrong edges, and turning the ROI back is one click for the user.
    """
    s = np.asarray(size, float).reshape(-1)
    if s.size != 3 or not np.all(np.isfinite(s)) or np.all(s == 0):
        raise HilaError(f"the ROI {name!r} is not placed (its box has no size): draw it around the structure first")
    if np.any(s <= 0):
        raise HilaError(f"the ROI {name!r} has size {np.round(s, 2).tolist()} mm (a side <= 0, inverted or flat): "
                        "redraw it around the structure")
    m = np.asarray(object_to_node, float).reshape(4, 4)
    if node_to_volume is not None:
        m = np.asarray(node_to_volume, float).reshape(4, 4) @ m
    lin = np.diag(_RAS_TO_LPS) @ m[:3, :3]  # object axes (scaled) in the volume's LPS
    reach = np.abs(lin)
    along = reach.argmax(1)  # the ROI axis nearest each LPS axis
    half = reach @ s / 2  # half extents of the axis-aligned box around the ROI
    grow = 2 * half - reach[np.arange(3), along] * s[along]
    if np.max(grow) > ROI_TURN_TOLERANCE_MM:
        raise HilaError(f"the ROI {name!r} is turned against the volume's axes: the box read from it (axis-aligned) "
                        f"would be {np.max(grow):.1f} mm bigger than drawn; turn it back in line with the volume or "
                        "redraw it")
    centre = m[:3, 3] * _RAS_TO_LPS
    return [float(v) for v in np.concatenate([centre - half, centre + half])]


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


def _node_to_volume(util: Any, roi: Any, volume_to_world: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The 4x4 from ``roi``'s own (node) coordinates to the volume's local RAS: its parent's to-world, then the
    volume's inverse (None where neither has a parent transform); a non-linear parent of the ROI is refused."""
    parent = roi.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise HilaError(f"the ROI {roi.GetName()!r} is under the non-linear transform {parent.GetName()!r}: "
                        "harden the transform on it (Transforms module) or remove it")
    node_to_world = util.arrayFromTransformMatrix(parent, toWorld=True) if parent is not None else None
    if node_to_world is None and volume_to_world is None:
        return None
    out = np.eye(4) if node_to_world is None else np.asarray(node_to_world, float)
    return out if volume_to_world is None else np.linalg.inv(np.asarray(volume_to_world, float)) @ out


def _volume_to_world(util: Any, volume: Any) -> Optional[np.ndarray]:
    """The 4x4 of ``volume``'s parent transform to world (None without one); a non-linear one is refused."""
    parent = volume.GetParentTransformNode() if volume is not None else None
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise HilaError(f"the volume is under the non-linear transform {parent.GetName()!r}: marks cannot be mapped back "
                        "to its voxels exactly; harden the transform on the volume (Transforms module) or remove it")
    return util.arrayFromTransformMatrix(parent, toWorld=True) if parent is not None else None


def roi_box(util: Any, roi: Any, volume: Any = None) -> List[float]:
    """THE box of an ROI node (two opposite LPS corners in ``volume``'s own space, :func:`box_from_roi`), for a weak
    label and for *Fix with box* alike; an unplaced, inverted or turned ROI is refused (HilaError, one line)."""
    return box_from_roi(roi.GetName(), roi.GetSize(), util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix()),
                        _node_to_volume(util, roi, _volume_to_world(util, volume)))


def marks_from_markups(util: Any, label: str, roi: Any = None, long_line: Any = None, short_line: Any = None,
                       volume: Any = None) -> dict:
    """The marks (``weak`` format, LPS, ``volume``'s own space) of an ROI node, or of a long and a short line
    node, for ``label``.

    ``util`` is slicer.util. Under a parent transform of ``volume`` the marks are mapped back through it
    (``util.arrayFromTransformMatrix(parent, toWorld=True)``, which raises for a non-linear transform).
    Exactly one of an ROI or a pair of lines; anything else is refused (HilaError): nothing is submitted.
    """
    to_world = _volume_to_world(util, volume)
    if not label:
        raise HilaError("pick the label the marks are for")
    lines = long_line is not None or short_line is not None
    if roi is not None and lines:
        raise HilaError("an ROI and lines are both picked; pick one of them")
    if roi is not None:
        return {"space": "LPS", "items": [{"label": label, "box": roi_box(util, roi, volume)}]}
    if long_line is None or short_line is None:
        raise HilaError("pick an ROI, or a long and a short diameter line")
    if long_line is short_line:
        raise HilaError("the long and the short diameter are the same line; pick two")
    pts = [util.arrayFromMarkupsControlPoints(n, world=True) for n in (long_line, short_line)]
    return {"space": "LPS", "items": [{"label": label, "lines": lines_from_ras_points(pts[0], pts[1], to_world)}]}
