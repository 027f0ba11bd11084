"""Slicer segmentation files (``.seg.nrrd``) and label maps as :class:`Segmentation` objects.

The face the rest of the engine uses: the model lives in ``segmentation``, the file format in
``segnrrd`` (which says why it is not ``slicerio``), the colours in ``colors``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from ..ground.errors import HilaError
from ..ground.paths import check_readable
from .imageio import PathLike, read_label_volume
from .segmentation import Segment, Segmentation
from .segnrrd import is_seg_nrrd, read_seg_nrrd, write_segmentation

__all__ = ["Segment", "Segmentation", "is_seg_nrrd", "read_segmentation", "write_segmentation"]


def read_segmentation(path: PathLike, names: Optional[Mapping[int, str]] = None) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (recognised by its segment keys) or a plain label map (any volume
    format or DICOM folder). ``names`` maps label value -> segment name: a label map's values get
    those names (else ``Segment_<value>``), and so do a ``.seg.nrrd``'s first-layer segments."""
    p = Path(path)
    table = {int(v): str(n) for v, n in (names or {}).items()}
    check_readable(p)
    if p.is_file() and p.name.lower().endswith((".nrrd", ".nhdr")):
        with open(p, "rb") as fh:
            magic = fh.read(8)
        if not magic.startswith(b"NRRD000"):
            raise HilaError(f"{p}: not a NRRD file (no NRRD magic line)")
        if is_seg_nrrd(p):
            seg = read_seg_nrrd(p)
            for s in seg.segments:
                if s.label_value in table and s.layer == 0:
                    s.name = table[s.label_value]
            return seg
    seg = Segmentation.from_label_image(read_label_volume(p), [(v, n, None) for v, n in sorted(table.items())])
    seg.source = str(p)
    return seg
