"""One colour table for segments and workspace labels (0..1 RGB), so a structure looks the same in a
``.seg.nrrd``, in the workspace and in Slicer.

Where Slicer's terminology gives a recommended display colour for a structure, that colour is
used (e.g. prostate 230 158 140); other names take the PALETTE (Slicer's GenericAnatomyColors
order) in turn.
"""
from __future__ import annotations

from typing import Dict, Tuple

Color = Tuple[float, float, float]

#: colour 230 158 140 of Slicer's pelvic-organ terminology); other names take the PALETTE in turn.
KNOWN_COLORS: Dict[str, Color] = {
    "prostate": (0.901961, 0.619608, 0.54902),
    "bladder": (0.847059, 0.588235, 0.188235),
    "urinary bladder": (0.847059, 0.588235, 0.188235),
    "rectum": (0.784314, 0.576471, 0.447059),
    "femoral head left": (0.945098, 0.839216, 0.568627),
    "femoral head right": (0.945098, 0.839216, 0.568627),
    "peripheral zone": (0.501961, 0.682353, 0.501961),
    "transition zone": (0.945098, 0.839216, 0.568627),
    "central gland": (0.945098, 0.839216, 0.568627),
    "seminal vesicles": (0.901961, 0.862745, 0.27451),
    "lesion": (0.878431, 0.156863, 0.156863),
}
PALETTE: Tuple[Color, ...] = (
    (0.501961, 0.682353, 0.501961), (0.945098, 0.839216, 0.568627), (0.694118, 0.478431, 0.396078),
    (0.435294, 0.721569, 0.823529), (0.847059, 0.396078, 0.309804), (0.866667, 0.509804, 0.396078),
    (0.564706, 0.933333, 0.564706), (0.752941, 0.407843, 0.345098), (0.862745, 0.960784, 0.0784314),
    (0.305882, 0.247059, 0.0), (1.0, 0.980392, 0.862745), (0.901961, 0.862745, 0.27451),
)



def known_color(name: str):
    """The table's colour for a structure name (case, spaces and underscores ignored), else None."""
    return KNOWN_COLORS.get(" ".join(str(name).replace("_", " ").lower().split()))


def default_color(name: str, index: int) -> Color:
    """The colour a new segment or workspace label gets: its known colour, else the ``index``-th palette entry."""
    return known_color(name) or PALETTE[index % len(PALETTE)]
