"""The image series a DICOM SEG or RTSTRUCT belongs to, and what both writers share.

A SEG or RTSTRUCT is only meaningful against its source series: the voxel grid (read with SimpleITK,
as every image in the engine), the SOP instance UID of each slice (what the objects reference),
and the study/series/frame-of-reference UIDs. :func:`read_series` gathers these once;
:func:`onto_series` puts a label map that lies on the series' grid or on a sub-grid (a crop, same
lattice) onto the full series grid, refusing anything that would need resampling.

pydicom (and highdicom for SEG) are the optional ``dicom`` extra: imported by :func:`require`, so
the inference tier keeps working without them.
"""
from __future__ import annotations

import copy
import datetime
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..formats.imageio import (
    PathLike,
    as_label_image,
    describe_grid,
    grid_difference,
    read_dicom_series_files,
)
from ..formats.segmentation import onto_lattice
from ..ground.errors import HilaError
from ..ground.packages import missing_package_message
from ..ground.paths import dicom_value

MANUFACTURER = "HILASegment"
# Patient/study attributes that SEG and RTSTRUCT must carry (Type 2: present, possibly empty).
TYPE2_STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def require(what: str = "DICOM SEG and RTSTRUCT", module: str = "pydicom"):
    """Import ``module`` (pydicom or highdicom: the ``dicom`` extra), or raise a one-line HilaError naming the
    missing package and how to install it."""
    try:
        return importlib.import_module(module)  # optional: only DICOM objects need it
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise HilaError(missing_package_message(missing, what) or f"{what}: {exc}") from None


@dataclass
class Provenance:
    """Who or what made a segmentation, carried into SEG and RTSTRUCT fields.

    ``kind`` is ``correction`` (a radiologist's: MANUAL / SEMIAUTOMATIC) or ``prediction`` (a model's:
    AUTOMATIC, with the model version as algorithm identification).
    """

    kind: str = "correction"
    annotator: Optional[str] = None
    quality: Optional[str] = None
    correction_version: Optional[int] = None
    model_version: Optional[str] = None
    case: Optional[str] = None

    def description(self) -> str:
        """A short human line (series description, structure set description)."""
        parts = ["HILA " + ("AI prediction" if self.kind == "prediction" else "correction")]
        if self.case:
            parts.append(f"case {self.case}")
        if self.correction_version is not None:
            parts.append(f"v{self.correction_version}")
        if self.quality:
            parts.append(self.quality)
        if self.model_version:
            parts.append(f"model {self.model_version}")
        return dicom_value(" ".join(parts), "LO")

    # Short keys: the machine form must fit DICOM's 64-character LO fields (ContentDescription);
    # the most important come first, as a truncated tail loses the rest only.
    _KEYS = (("k", "kind"), ("v", "correction_version"), ("q", "quality"), ("m", "model_version"),
             ("a", "annotator"), ("c", "case"))

    def text(self) -> str:
        """``hila k=correction v=3 q=reviewed m=2 a=dr_rossi c=case1``: what :meth:`parse` reads back."""
        parts = [f"{short}={dicom_value(getattr(self, key), 'LT').replace(' ', '_')}" for short, key in self._KEYS
                 if getattr(self, key) not in (None, "")]
        return "hila " + " ".join(parts)

    @classmethod
    def parse(cls, text: Optional[str]) -> Optional["Provenance"]:
        """Provenance from :meth:`text` (None when the text is not ours)."""
        if not text or not str(text).startswith("hila "):
            return None
        kv = dict(p.split("=", 1) for p in str(text)[5:].split() if "=" in p)
        values = {key: kv[short] for short, key in cls._KEYS if short in kv}
        version = values.get("correction_version")
        values["correction_version"] = int(version) if version and version.isdigit() else None
        return cls(**values)


@dataclass
class Series:
    """A DICOM image series on disk: its grid, UIDs and the header of each slice (no pixel data)."""

    folder: Path
    image: sitk.Image
    files: List[str]
    headers: list = field(repr=False)  # pydicom Datasets, slice k of the image = headers[k]
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""

    @property
    def sop_uids(self) -> List[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]

    def slice_of(self) -> Dict[str, int]:
        """SOP instance UID -> slice index k."""
        return {uid: k for k, uid in enumerate(self.sop_uids)}


def read_series(folder: PathLike) -> Series:
    """Read the single image series in ``folder`` (other DICOM objects there, e.g. the RTSTRUCT, are ignored)."""
    pydicom = require()
    folder = Path(folder)
    if not folder.is_dir():
        raise HilaError(f"{folder}: --reference must be the DICOM folder of the image series")
    image, files = read_dicom_series_files(folder)  # every slice's geometry checked, in slice order
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if len(headers) != image.GetSize()[2]:
        raise HilaError(f"{folder}: {len(headers)} files for {image.GetSize()[2]} slices; one file per slice is needed")
    for h in headers:  # anonymised series often drop Type 2 (present, may be empty) attributes writers need
        for key in TYPE2_STUDY_ATTRIBUTES:
            if key not in h:
                setattr(h, key, "")
    h = headers[0]
    return Series(folder=folder, image=image, files=files, headers=headers, series_uid=str(h.SeriesInstanceUID),
                  study_uid=str(h.StudyInstanceUID), frame_of_reference_uid=str(h.get("FrameOfReferenceUID", "")))


def onto_series(label: sitk.Image, series: Series, where: PathLike) -> sitk.Image:
    """``label`` on the series' exact grid: as it is when it lies on it, padded with 0 when it lies on a
    sub-grid (same lattice); anything else (another spacing, direction, a shifted lattice, voxels
    outside the series) is an error naming both grids."""
    label = as_label_image(label, str(where))
    placed = onto_lattice(label, series.image, str(where))
    if grid_difference(placed, series.image):
        raise HilaError(f"{where}: label map is not on the grid of the series in {series.folder} nor on a crop of it "
                        f"(label [{describe_grid(label)}], series [{describe_grid(series.image)}])")
    placed.CopyInformation(series.image)
    return placed


# What both writers take: (name, boolean (k, j, i) mask on the series grid, display colour or None).
SegmentMask = Tuple[str, np.ndarray, Optional[Tuple[float, float, float]]]


def masks_from_label(label: sitk.Image, names: Mapping[int, str],
                     colors: Optional[Mapping[int, Sequence[float]]] = None) -> List[SegmentMask]:
    """One mask per label value present, named by ``names`` (``Segment_<v>`` when unnamed)."""
    arr = sitk.GetArrayViewFromImage(label)
    return [(str(names.get(int(v), f"Segment_{int(v)}")), arr == v, (colors or {}).get(int(v)))
            for v in np.unique(arr) if v != 0]


def masks_from_segmentation(seg, series: Series, where: PathLike) -> List[SegmentMask]:
    """Each segment of a :class:`segmentation.Segmentation` (overlaps kept) as a mask on the series' grid."""
    return [(s.name, sitk.GetArrayFromImage(onto_series(seg.mask(s.id), series, where)) != 0, s.color)
            for s in seg.segments]


def person_name(text: Optional[str]) -> Optional[str]:
    """A free-text annotator as a DICOM person name (one component, made explicit by a caret), through
    :func:`paths.dicom_value`: an outside name never carries control characters into a DICOM."""
    text = dicom_value(text, "PN") if text else ""
    if not text:
        return None
    return text if "^" in text else dicom_value(f"{text}^", "PN")


def now() -> tuple[str, str]:
    """(DA, TM) strings for content/series dates."""
    t = datetime.datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


def software_version() -> str:
    return f"hila {__version__}"


def object_modality(path: PathLike) -> Optional[str]:
    """The Modality of a DICOM file (``RTSTRUCT``, ``SEG``, ``CT``...), or None for other files. A DICOM file
    with pydicom (the optional ``dicom`` extra) missing is a one-line HilaError naming it: a single DICOM file is
    no image either (images are read from their series' folder), so guessing would only mislead."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pydicom = require(f"{p}: reading a DICOM file")
    try:
        return str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", "")) or None
    except Exception:  # a damaged file: let the image reader report it
        return None


def series_record(series: Series) -> dict:
    """What a workspace keeps of a series so that it can later write SEG/RTSTRUCT for it without the
    original files: the UIDs, each slice's SOP instance UID and position, and one slice's header
    (DICOM JSON, no pixel data) as the template for the others."""
    template = series.headers[0].to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda _: "")
    slices = [[str(h.SOPInstanceUID), [str(v) for v in h.ImagePositionPatient], int(h.get("InstanceNumber") or k + 1)]
              for k, h in enumerate(series.headers)]
    return {"study_uid": series.study_uid, "series_uid": series.series_uid,
            "frame_of_reference_uid": series.frame_of_reference_uid, "sop_class_uid": str(series.headers[0].SOPClassUID),
            "template": template, "slices": slices}


def series_from_record(image: sitk.Image, record: dict, where: PathLike) -> Series:
    """A :class:`Series` (headers rebuilt from the template) on ``image``'s grid from :func:`series_record`."""
    pydicom = require()
    template = pydicom.Dataset.from_json(record["template"])
    headers = []
    for uid, pos, number in record["slices"]:
        h = copy.deepcopy(template)
        h.SOPInstanceUID = uid
        h.ImagePositionPatient = list(pos)  # the original decimal strings
        h.InstanceNumber = number
        headers.append(h)
    if len(headers) != image.GetSize()[2]:
        raise HilaError(f"{where}: {len(headers)} recorded slices for an image of {image.GetSize()[2]}")
    return Series(folder=Path(str(where)), image=image, files=[], headers=headers, series_uid=record["series_uid"],
                  study_uid=record["study_uid"], frame_of_reference_uid=record.get("frame_of_reference_uid") or "")
