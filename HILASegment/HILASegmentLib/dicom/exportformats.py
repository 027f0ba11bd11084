"""DICOM export formats by name: the one registry behind ``hila export --format`` and ``hila convert --format``
(and what the workspace records for each exported object).

To add one: a ``write(masks, series, path, provenance, uids=None)`` function (import its writer inside it) and one
``register(ExportFormat(...))`` line here, plus its test. Light on purpose (no pydicom at import): the command line
reads the names when it builds its parser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..ground.namedregistry import NamedRegistry


@dataclass(frozen=True)
class ExportFormat:
    """One DICOM object a segmentation can be written as."""

    name: str        # --format NAME; also the file name's part before .dcm (CASE_v1.NAME.dcm)
    title: str       # in messages: "wrote OUT: DICOM SEG of 3 segment(s)"
    modality: str    # the object's DICOM Modality, recorded in the workspace's dicom_objects
    help: str
    #: ``write(masks, series, path, provenance, uids=None)``: the object of ``masks`` referencing ``series``
    write: Callable[..., Any]


EXPORT_FORMATS: NamedRegistry[ExportFormat] = NamedRegistry()
register = EXPORT_FORMATS.register  # one line per format, below


def get(name: str) -> ExportFormat:
    """The export format called ``name``; a HilaError naming the known ones otherwise."""
    return EXPORT_FORMATS.lookup(name, lambda known: f"--format {name}: use {' or '.join(known)}")


def help_text() -> str:
    """``seg (DICOM Segmentation) or rtstruct (RT Structure Set)``: the formats for a --format help."""
    return " or ".join(f"{f.name} ({f.help})" for f in EXPORT_FORMATS.values())


def _write_seg(masks, series, path, provenance=None, uids=None):
    from .dicomseg import write_seg  # pydicom/highdicom: only when one is written

    return write_seg(masks, series, path, provenance, uids=uids)


def _write_rtstruct(masks, series, path, provenance=None, uids=None):
    from .rtstruct import write_rtstruct  # pydicom: only when one is written

    return write_rtstruct(masks, series, path, provenance, uids=uids)


register(ExportFormat("seg", "DICOM SEG", "SEG", "DICOM Segmentation", _write_seg))
register(ExportFormat("rtstruct", "RTSTRUCT", "RTSTRUCT", "RT Structure Set", _write_rtstruct))
