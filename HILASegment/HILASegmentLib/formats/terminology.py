"""What a segment *is*, in standard codes: the ``TerminologyEntry`` tag every segment hila writes carries.

Slicer gives every segment without this tag the terminology "Tissue" (``vtkSegment``'s constructor), so a
prostate written without it is coded as "Tissue" in Slicer and in any DICOM SEG exported from it. One
table here says which structure a name stands for; the ``.seg.nrrd`` writer, the Slicer glue and the
DICOM SEG writer all take their codes from it.

The tag's format is Slicer's own (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``, the
same in v5.8.1 and main @ 583e9b37)::

    context~catScheme^catValue^catMeaning~typeScheme^typeValue^typeMeaning~modScheme^modValue^modMeaning
           ~regionContext~regionScheme^regionValue^regionMeaning~regionModScheme^regionModValue^regionModMeaning

seven ``~``-separated fields, each code a ``scheme^value^meaning`` triplet, an absent one ``^^``.

The codes are SNOMED CT (scheme ``SCT``) as Slicer's own lists have them: prostate, bladder and seminal
vesicle from ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json`` (Slicer's default list),
rectum from ``SegmentationCategoryTypeModifier-DICOM-Master.json``; the femoral heads (SCT 2812003 with the
laterality modifier), the prostate zones and the body outline are the DICOM PS3.16 codes that Slicer's
lists lack (Slicer shows them from the tag as they are). Fallback for a name the table does not know: the
category Tissue and a local code (scheme ``99HILA``, DICOM's prefix for private schemes) whose meaning is
the segment's name, so the name survives into DICOM SEG instead of becoming "Tissue".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from ..ground.labelmatch import canonical_name

__all__ = ["TAG", "Code", "Term", "TERMS", "term_for", "resolve", "entry_for", "with_entry", "parse_entry",
           "GENERAL_ANATOMY", "DICOM_MASTER", "ANATOMIC_CONTEXT", "LOCAL_SCHEME"]

TAG = "TerminologyEntry"  # vtkSegment::GetTerminologyEntryTagName()
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"  # the region context Slicer's default entry names
LOCAL_SCHEME = "99HILA"

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)
_NONE: Code = ("", "", "")
ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
TISSUE: Code = ("SCT", "85756007", "Tissue")
ALTERED: Code = ("SCT", "49755003", "Morphologically Altered Structure")
LEFT: Code = ("SCT", "7771000", "Left")
RIGHT: Code = ("SCT", "24028007", "Right")


@dataclass(frozen=True)
class Term:
    """One structure's codes: the list (context) it comes from, its category, type and type modifier."""

    context: str
    category: Code
    type: Code
    modifier: Code = _NONE

    def entry(self) -> str:
        """The serialised ``TerminologyEntry`` tag value, exactly as Slicer writes it."""
        codes = [self.category, self.type, self.modifier]
        return "~".join([self.context] + ["^".join(c) for c in codes] + [ANATOMIC_CONTEXT, "^^", "^^"])


_FEMORAL_HEAD: Code = ("SCT", "2812003", "Femoral head")
#: Canonical structure names (``labelmatch.canonical_name``) -> their codes.
TERMS: Dict[str, Term] = {
    "prostate": Term(GENERAL_ANATOMY, ANATOMICAL_STRUCTURE, ("SCT", "41216001", "Prostate")),
    "bladder": Term(GENERAL_ANATOMY, ANATOMICAL_STRUCTURE, ("SCT", "89837001", "Bladder")),
    "seminal vesicles": Term(GENERAL_ANATOMY, ANATOMICAL_STRUCTURE, ("SCT", "64739004", "Seminal Vesicle")),
    "seminal vesicle": Term(GENERAL_ANATOMY, ANATOMICAL_STRUCTURE, ("SCT", "64739004", "Seminal Vesicle")),
    "rectum": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "34402009", "Rectum")),
    "femoral head left": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, _FEMORAL_HEAD, LEFT),
    "femoral head right": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, _FEMORAL_HEAD, RIGHT),
    "femoral head": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, _FEMORAL_HEAD),
    "peripheral zone": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "279706003", "Peripheral zone of the prostate")),
    "transition zone": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "399384005", "Transition zone of the prostate")),
    "lesion": Term(GENERAL_ANATOMY, ALTERED, ("SCT", "4147007", "Mass")),
    "mass": Term(GENERAL_ANATOMY, ALTERED, ("SCT", "4147007", "Mass")),
    "external": Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "38266002", "Entire body")),
}


def term_for(name: str) -> Optional[Term]:
    """The table's codes for a structure name (spelling, aliases and contour-set suffixes ignored), else None."""
    return TERMS.get(canonical_name(name))


def resolve(name: str) -> Term:
    """The codes a segment named ``name`` gets: its structure's, else the local fallback (category Tissue,
    type ``99HILA^<slug>^<name>``)."""
    known = term_for(name)
    if known is not None:
        return known
    text = re.sub(r"[~^|\r\n]+", " ", str(name)).strip() or "Segment"
    value = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:16] or "segment"
    return Term(GENERAL_ANATOMY, TISSUE, (LOCAL_SCHEME, value, text))


def entry_for(name: str) -> str:
    """The ``TerminologyEntry`` tag value for a segment named ``name``: its structure's, else the local fallback."""
    return resolve(name).entry()


def with_entry(name: str, tags: Optional[Mapping[str, str]]) -> Dict[str, str]:
    """``tags`` plus this name's ``TerminologyEntry`` unless they carry one already (a user's choice stands)."""
    out = dict(tags or {})
    if not str(out.get(TAG, "")).strip():
        out[TAG] = entry_for(name)
    return out


def parse_entry(entry: str) -> Optional[Dict[str, object]]:
    """A tag value split as Slicer's ``DeserializeTerminologyEntry`` does (None where Slicer refuses it):
    context, category, type, modifier (``(scheme, value, meaning)`` each, modifier None when absent)."""
    parts = str(entry).split("~")
    if len(parts) != 7 or parts[1] == "^^":
        return None
    triplets = [tuple(p.split("^")) for p in parts[1:4]]
    if len(triplets[0]) != 3 or len(triplets[1]) != 3:
        return None
    modifier = triplets[2] if len(triplets[2]) == 3 and any(triplets[2]) else None
    return {"context": parts[0], "category": triplets[0], "type": triplets[1], "modifier": modifier}
