"""The workspace's labels: turning what a user or a model hands in (a label map, a ``.seg.nrrd``, a
``Segmentation``) into a label map on the case's grid in workspace values, or a clear refusal."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import as_label_image, describe_grid, grid_difference, read_image, volume_suffix
from ..formats.segfile import Segmentation, is_seg_nrrd, read_segmentation
from ..ground.errors import HilaError
from ..ground.labelmatch import match_label
from ..ground.paths import check_readable
from .base import Core, PathLike
from .casestore import Cases


@dataclass(eq=False)
class Labels:
    """Checks what is handed in against a case of ``cases`` (its grid, the workspace's label values)."""

    core: Core
    cases: Cases

    def _label_from_segmentation(self, seg: Segmentation, reference: sitk.Image, where: str) -> sitk.Image:
        """A label map in workspace values from a Segmentation, matching segments to labels by the one
        rule (:func:`labelmatch.match_label`: tag, name, terminology, alias); segments matching no label are
        left out; a segmentation on a cropped extent is placed on the case grid."""
        pairs = [(l.name, l.value) for l in self.core.settings.labels]
        values = {s.id: v for s in seg.segments if (v := match_label(s.name, s.tags, pairs)) is not None}
        if not values:
            raise HilaError(f"{where}: no segment named like a workspace label ({', '.join(self.core.settings.names())}); "
                            f"segments: {', '.join(str(s.name) for s in seg.segments) or 'none'}")
        _refuse_overlaps(seg, values, where)
        return seg.to_label_image(reference=reference, values=values)

    def validate_label(self, case_id: str, label: Any, where: Optional[str] = None,
                       strict: bool = False, reference: Optional[sitk.Image] = None) -> Tuple[np.ndarray, sitk.Image, dict]:
        """Check a label against a case: same grid, known values, not empty.

        Returns ``(array uint8, image, notes)``. Values above the workspace's labels (e.g. femoral
        heads in a radiotherapy structure set) are dropped and listed in ``notes["ignored_values"]``,
        or refused with ``strict``; a label with no workspace value at all is refused. ``reference``: the
        case's image when the caller has read it already (it is read here otherwise).
        """
        case = self.cases.case(case_id)
        where = where or f"label for case {case.case_id}"
        reference = reference if reference is not None else self.cases.case_image(case.case_id)
        if isinstance(label, Segmentation):
            label = self._label_from_segmentation(label, reference, where)
        if not isinstance(label, sitk.Image):
            raise HilaError(f"{where}: not a label image (got {type(label).__name__})")
        if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
            raise HilaError(f"{where}: not a scalar 3-D label map")
        diff = grid_difference(label, reference)
        if diff:
            raise HilaError(f"{where}: label map is not on case {case.case_id}'s grid ({diff}): label "
                            f"[{describe_grid(label)}] vs case [{describe_grid(reference)}]")
        label = as_label_image(label, where)
        arr = sitk.GetArrayFromImage(label)
        values = [int(v) for v in np.unique(arr) if v != 0]
        known = {l.value for l in self.core.settings.labels}
        unknown = [v for v in values if v not in known]
        legend = ", ".join(f"{l.value} {l.name}" for l in self.core.settings.labels)
        notes: Dict[str, Any] = {}
        if not values:
            raise HilaError(f"{where}: empty label map (no labelled voxel); nothing to submit")
        if unknown:
            if strict or len(unknown) == len(values):
                raise HilaError(f"{where}: unknown label value(s) {', '.join(map(str, unknown))}; the workspace's labels "
                                f"are {legend}")
            notes["ignored_values"] = {str(v): int((arr == v).sum()) for v in unknown}
            arr = np.where(np.isin(arr, unknown), 0, arr)
        arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(reference)
        return arr, img, notes

    def read_label_file(self, case_id: str, path: PathLike, strict: bool = False,
                        reference: Optional[sitk.Image] = None) -> Tuple[np.ndarray, sitk.Image, dict]:
        """Read a label map or a Slicer .seg.nrrd (segments matched to workspace labels by name) for a case
        (``reference``: its image, when read already)."""
        p = Path(path)
        case = self.cases.case(case_id)
        check_readable(p)
        if p.is_file() and p.name.lower().endswith((".nrrd", ".nhdr")) and is_seg_nrrd(p):
            label: Any = read_segmentation(p)
        else:
            if p.is_file() and volume_suffix(p) is None:
                raise HilaError(f"{p}: unsupported label file type; use .nii.gz, .nrrd, .seg.nrrd, .mha")
            label = read_image(p)
        return self.validate_label(case.case_id, label, where=str(p), strict=strict, reference=reference)


def _refuse_overlaps(seg: Segmentation, values: Dict[str, int], where: str) -> None:
    """Segments in different layers may overlap; a label map cannot. Rather than let the later segment win
    silently, refuse and say which segments overlap, in how many voxels, and where the first one is."""
    err = seg.overlap_error(where, values=values)
    if err:
        raise err
