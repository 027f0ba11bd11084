"""DICOM Segmentation objects (SEG) in and out, with highdicom.

Why highdicom: it is the reference implementation of the SEG information object definition (by the
IDC / DICOM WG-23 authors), builds the per-frame functional groups, the references to each source
instance and the segment descriptions correctly, and reads SEGs of other writers back by source
instance. Measured: a label map written as SEG and read back gives the identical voxels (tests).

Label value ``v`` becomes segment ``n`` (1..N in value order, as the standard requires consecutive
numbers); names come from the caller (workspace labels, ``--names``, segment names) and are mapped
to SNOMED CT property types where the one label-matching rule knows the organ. Provenance:
``ContentCreatorName`` (annotator), ``SeriesDescription``, ``ContentDescription`` (the machine form,
:meth:`dicomref.Provenance.text`), segment algorithm type MANUAL / SEMIAUTOMATIC / AUTOMATIC with the
model version as algorithm identification for AI output or corrections of it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from . import terminology
from .dicomref import MANUFACTURER, Provenance, SegmentMask, Series, person_name, require, software_version
from .errors import HilaError
from .imageio import PathLike, atomic_output


def _codes(name: str):
    """(category, type, type modifier or None) codes for a segment name: THE table of ``terminology`` (the same
    codes the ``.seg.nrrd`` TerminologyEntry carries), its local fallback for names it does not know."""
    from pydicom.sr.coding import Code  # optional `dicom` extra

    term = terminology.resolve(name)
    code = lambda c: Code(value=c[1], scheme_designator=c[0], meaning=c[2])
    return code(term.category), code(term.type), (code(term.modifier) if any(term.modifier) else None)


def write_seg(segments: Sequence[SegmentMask], series: Series, path: PathLike,
              provenance: Optional[Provenance] = None, uids: Optional[Tuple[str, str]] = None) -> Path:
    """Write segments (masks on the series' grid, see :func:`dicomref.masks_from_label`) as a binary
    DICOM SEG referencing the series' instances; overlapping segments stay separate. ``uids``: (series,
    SOP instance) UIDs to use (the same object written again), else new ones."""
    require()
    hd = require("DICOM SEG", "highdicom")
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    prov = provenance or Provenance()
    series_uid, sop_uid = uids or (generate_uid(), generate_uid())
    segments = [s for s in segments if np.any(s[1])]
    if not segments:
        raise HilaError(f"{path}: nothing segmented; a DICOM SEG needs at least one non-empty segment")
    count = np.zeros(segments[0][1].shape, np.uint16)
    for _, mask, _ in segments:
        count += mask
    if np.any(count > 1):  # one binary plane per segment: (frames, rows, columns, segments)
        pixels = np.stack([m for _, m, _ in segments], axis=-1).astype(np.uint8)
    else:  # a label array of segment numbers: a fraction of the memory
        pixels = np.zeros(segments[0][1].shape, np.uint16)
        for n, (_, mask, _) in enumerate(segments, start=1):
            pixels[mask] = n
    if prov.kind == "prediction":
        algo_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    elif prov.model_version:
        algo_type = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    else:
        algo_type = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    algorithm = None
    if algo_type != hd.seg.SegmentAlgorithmTypeValues.MANUAL:
        algorithm = hd.AlgorithmIdentificationSequence(
            name="HILASegment", family=codes.DCM.ArtificialIntelligence, version=str(prov.model_version or "unknown"))
    descriptions = []
    for n, (name, _, _) in enumerate(segments, start=1):
        category, kind, modifier = _codes(name)
        description = hd.seg.SegmentDescription(
            segment_number=n, segment_label=str(name)[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=algo_type, algorithm_identification=algorithm)
        if modifier is not None:  # laterality (femoral heads): nested in the type's item, as the standard has it
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)]
        descriptions.append(description)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*")  # anonymised PatientName of the source
        seg = hd.seg.Segmentation(
            source_images=series.headers, pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=series_uid, series_number=900, sop_instance_uid=sop_uid,
            instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="hila",
            software_versions=software_version(), device_serial_number="0", content_description=prov.text()[:64],
            content_creator_name=person_name(prov.annotator), series_description=prov.description(),
            content_label="HILA",
        )
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def read_seg(path: PathLike, series: Series) -> Tuple[sitk.Image, Dict[int, str], Optional[Provenance]]:
    """(label map on the series' grid, {segment number: label}, provenance) of a SEG drawn on ``series``.

    A SEG that references another series, or frames of instances the series does not hold, is refused.
    Overlapping segments: the higher segment number wins (a label map holds one value per voxel).
    """
    require()
    hd = require("DICOM SEG", "highdicom")

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom/pydicom raise many types for files that are not SEGs
        raise HilaError(f"{path}: not a readable DICOM SEG ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    referenced = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    if referenced and series.series_uid not in referenced:
        raise HilaError(f"{path}: the SEG references series {sorted(referenced)[0]}, not the series in "
                        f"{series.folder} ({series.series_uid})")
    slice_of = series.slice_of()
    sources = sorted({uid for _, _, uid in seg.get_source_image_uids()})
    foreign = [u for u in sources if u not in slice_of]
    if foreign or not sources:
        raise HilaError(f"{path}: the SEG refers to {len(foreign) or 'no'} instance(s) not in the series in "
                        f"{series.folder}")
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, combine_segments=True,
                                               skip_overlap_checks=True, dtype=np.uint16)
    size = series.image.GetSize()
    if frames.shape[1:] != (size[1], size[0]):
        raise HilaError(f"{path}: frames of {frames.shape[2]}x{frames.shape[1]} pixels, the series has "
                        f"{size[0]}x{size[1]}")
    out = np.zeros((size[2], size[1], size[0]), frames.dtype)
    for uid, frame in zip(sources, frames):
        out[slice_of[uid]] = frame
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    img = sitk.GetImageFromArray(out if out.max() > 255 else out.astype(np.uint8))
    img.CopyInformation(series.image)
    prov = Provenance.parse(seg.get("ContentDescription"))
    if prov is not None and seg.get("ContentCreatorName"):
        prov.annotator = str(seg.ContentCreatorName).rstrip("^")
    return img, names, prov
