"""One colour table for segments and workspace labels (0..1 RGB), so a structure looks the same in a
``.seg.nrrd``, in the workspace and in Slicer.

Where Slicer's terminology (``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json``, the same
values as ``GenericAnatomyColors.txt``; read from Slicer main) recommends a display colour, that is
the colour: prostate 230 158 140, urinary bladder 222 154 132, seminal vesicle 245 172 147, bone
241 214 145 (femoral heads), mass 144 238 144 (a lesion). The rectum and the prostate zones have no
entry there; their colours are kept from earlier versions. Other names take the PALETTE in turn.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from .labelmatch import canonical_name

Color = Tuple[float, float, float]


def _rgb(r: int, g: int, b: int) -> Color:
    return (round(r / 255, 6), round(g / 255, 6), round(b / 255, 6))


#: Known structures by normalised name (lower case, single spaces; see ``known_color``).
KNOWN_COLORS: Dict[str, Color] = {
    "prostate": _rgb(230, 158, 140),
    "bladder": _rgb(222, 154, 132),
    "urinary bladder": _rgb(222, 154, 132),
    "seminal vesicles": _rgb(245, 172, 147),
    "seminal vesicle": _rgb(245, 172, 147),
    "femoral head left": _rgb(241, 214, 145),
    "femoral head right": _rgb(241, 214, 145),
    "lesion": _rgb(144, 238, 144),
    "mass": _rgb(144, 238, 144),
    # no Slicer terminology entry: kept from earlier versions
    "rectum": _rgb(200, 147, 114),
    "peripheral zone": _rgb(128, 174, 128),
    "transition zone": _rgb(241, 214, 145),
    "central gland": _rgb(241, 214, 145),
}
#: Slicer's GenericAnatomyColors order (tissue, bone, skin, ...), for names the table does not know.
PALETTE: Tuple[Color, ...] = (
    (0.501961, 0.682353, 0.501961), (0.945098, 0.839216, 0.568627), (0.694118, 0.478431, 0.396078),
    (0.435294, 0.721569, 0.823529), (0.847059, 0.396078, 0.309804), (0.866667, 0.509804, 0.396078),
    (0.564706, 0.933333, 0.564706), (0.752941, 0.407843, 0.345098), (0.862745, 0.960784, 0.0784314),
    (0.305882, 0.247059, 0.0), (1.0, 0.980392, 0.862745), (0.901961, 0.862745, 0.27451),
)


def known_color(name: str) -> Optional[Color]:
    """The table's colour for a structure name (case, spaces, underscores, aliases and auto-contour suffixes
    ignored: ``Prostata_DL`` is the prostate), else None."""
    plain = " ".join(str(name).replace("_", " ").lower().split())
    return KNOWN_COLORS.get(canonical_name(name)) or KNOWN_COLORS.get(plain)


def label_color(name: str, given: Optional[Sequence[float]] = None, index: int = 0) -> Color:
    """THE colour of a segment or label: a known structure always has the table's colour (whatever a model card
    or an older workspace stored), any other name the colour it was given, else the ``index``-th palette entry."""
    known = known_color(name)
    if known is not None:
        return known
    if given is not None:
        return tuple(given)  # type: ignore[return-value]  # checked where a segment is made
    return PALETTE[index % len(PALETTE)]


def default_color(name: str, index: int) -> Color:
    """The colour a new segment or workspace label gets: its known colour, else the ``index``-th palette entry."""
    return known_color(name) or PALETTE[index % len(PALETTE)]


#: The likely-error ("Review") segment's colour: magenta, which no anatomy in the table uses.
REVIEW_COLOR: Color = (1.0, 0.0, 0.85)
