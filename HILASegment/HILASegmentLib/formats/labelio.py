"""Read a label map from any file the project accepts: the one module above ``imageio`` and ``segfile``.

``imageio`` reads volumes and depends on nothing else in the package; ``segfile`` reads and writes
Slicer .seg.nrrd files on top of it; ``read_label`` here sends each path to the right one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import SimpleITK as sitk

from .imageio import PathLike, check_label_grid, read_label_volume
from .segfile import is_seg_nrrd, read_segmentation


def read_label(path: PathLike, reference: Optional[sitk.Image] = None) -> sitk.Image:
    """Read an integer label map (volume file, DICOM folder or Slicer .seg.nrrd); with ``reference``
    also require that it lies on exactly the reference's grid (the error shows both grids)."""
    p = Path(path)
    if p.is_file() and p.name.lower().endswith((".nrrd", ".nhdr")) and is_seg_nrrd(p):
        seg = read_segmentation(p)
        label = seg.to_label_image(reference=reference) if reference is not None else seg.to_label_image()
        return check_label_grid(label, reference, p) if reference is not None else label
    return read_label_volume(p, reference)
