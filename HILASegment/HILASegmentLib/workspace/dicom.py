"""The workspace's DICOM side: cases that came from a DICOM series, and SEG/RTSTRUCT objects in and out.

A case imported from a DICOM folder keeps its series in the ledger (``case_series``: study,
series and slice UIDs and one slice's header as a template), so SEG and RTSTRUCT can be read onto
it and written for it later without the original files. Every SEG/RTSTRUCT instance that became a
correction, or was written from one, is a ``dicom_objects`` row keyed by its SOP instance UID (and,
for an RTSTRUCT, the contour set): importing the same object twice adds nothing, and the row is
written in the same transaction as the correction, so a crash never leaves one without the other.

An RTSTRUCT's contour sets (see :func:`labelmatch.contour_set`) become separate corrections: the
auto-contour sets (``DL``, ``MBS``) as ``rough`` when asked, the manual set as ``reviewed`` and last,
so that a case's latest version, the one training uses, is the reviewed one. Structure and segment
names reach workspace labels through :func:`labelmatch.match_label` (Prostata -> prostate, ...).
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..dicom import dicomref, dicomseg, exportformats, rtstruct
from ..formats.segmentation import first_overlap, overlap_error
from ..ground.errors import HilaError
from ..ground.labelmatch import MANUAL_SET, contour_set, match_label
from ..ground.progress import ProgressFn, null_progress
from .base import Core, PathLike, now
from .casestore import Cases
from .corrections import Corrections
from .export import file_stems
from .files import read_stored
from .predictions import Predictions
from .records import Case, dumps


class _AlreadyImported(Exception):
    """Raised inside the write transaction when another process recorded the object first."""

    def __init__(self, correction_id: Optional[int]):
        self.correction_id = correction_id


def referenced_series_uid(ds) -> Optional[str]:
    """The image series a SEG or RTSTRUCT dataset refers to."""
    for item in ds.get("ReferencedSeriesSequence", []):
        return str(item.SeriesInstanceUID)
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                return str(se.SeriesInstanceUID)
    return None


@dataclass(eq=False)
class Dicom:
    """DICOM series of the cases of ``cases``; SEG/RTSTRUCT in as ``corrections``, out from them or from ``predictions``."""

    core: Core
    cases: Cases
    predictions: Predictions
    corrections: Corrections

    # -- series ----------------------------------------------------------------------------------
    def import_series(self, folder: PathLike, name: Optional[str] = None,
                      progress: Optional[ProgressFn] = None, modality_override: bool = False) -> Case:
        """Import a DICOM series folder as a case (see ``import_volume``) and keep its series in the ledger."""
        series = dicomref.read_series(folder)
        case = self.cases.import_volume(folder, name=name, progress=progress, modality_override=modality_override)
        with self.core.ledger.write() as con:
            con.execute("INSERT OR IGNORE INTO case_series VALUES (?,?,?,?)",
                        (case.case_id, series.study_uid, series.series_uid, dumps(dicomref.series_record(series))))
        return case

    def case_of_series(self, series_uid: str) -> Optional[str]:
        with self.core.ledger.read() as con:
            r = con.execute("SELECT case_id FROM case_series WHERE series_uid = ?", (str(series_uid),)).fetchone()
        return None if r is None else r["case_id"]

    def case_series(self, case_id: str) -> Optional[dict]:
        """The recorded series of a case (UIDs and the slice record), or None for a case not from DICOM."""
        case = self.cases.case(case_id)
        with self.core.ledger.read() as con:
            r = con.execute("SELECT * FROM case_series WHERE case_id = ?", (case.case_id,)).fetchone()
        return None if r is None else json.loads(r["record"])

    def series(self, case_id: str) -> dicomref.Series:
        """The case's DICOM series (headers rebuilt from the ledger) on the case's grid."""
        record = self.case_series(case_id)
        if record is None:
            raise HilaError(f"{self.core.root}: case {case_id} was not imported from a DICOM series; SEG and RTSTRUCT "
                            "need its series (import the DICOM folder)")
        return dicomref.series_from_record(self.cases.case_image(case_id), record, f"{self.core.root} case {case_id}")

    def dicom_objects(self, case_id: Optional[str] = None) -> List[dict]:
        """Every SEG/RTSTRUCT instance imported or exported (of one case when given)."""
        with self.core.ledger.read() as con:
            if case_id is None:
                rows = con.execute("SELECT * FROM dicom_objects ORDER BY created_at").fetchall()
            else:
                rows = con.execute("SELECT * FROM dicom_objects WHERE case_id = ? ORDER BY created_at",
                                   (self.cases.case(case_id).case_id,)).fetchall()
        return [dict(r) for r in rows]

    def known_sop_uids(self) -> set:
        with self.core.ledger.read() as con:
            return {r[0] for r in con.execute("SELECT sop_uid FROM dicom_objects")}

    # -- import ----------------------------------------------------------------------------------
    def _to_workspace_label(self, masks: Sequence[dicomref.SegmentMask], series: dicomref.Series, where: str,
                            strict: bool, quality: str = "reviewed") -> tuple:
        """A label image in workspace values from named masks; (image, matched names, ignored names, note).

        Structures of different labels that overlap are refused for a reviewed correction (a voxel holds one
        label, and letting the later structure win would erase part of an organ without a word, as an
        overlapping .seg.nrrd is refused); for a rough set (a planning system's auto-contours) the later
        structure wins and ``note`` says where."""
        pairs = [(n, v) for v, n in self.core.settings.label_pairs()]
        arr = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, np.uint8)
        matched, ignored, by_value = [], [], {}
        for name, mask, _ in masks:
            value = match_label(contour_set(name)[0], {}, pairs)
            if value is None:
                ignored.append(name)
                continue
            by_value.setdefault(value, []).append((name, mask))
            matched.append(name)
        if strict and ignored:
            raise HilaError(f"{where}: structure(s) {', '.join(ignored)} match no workspace label "
                            f"({', '.join(self.core.settings.names())})")
        if not matched:
            raise HilaError(f"{where}: no structure matches a workspace label ({', '.join(self.core.settings.names())}); "
                            f"structures: {', '.join(n for n, _, _ in masks) or 'none'}")
        unions = [(" + ".join(n for n, _ in items), lambda items=items: np.logical_or.reduce([m for _, m in items]))
                  for items in by_value.values()]
        found = first_overlap(unions)
        if found and quality == "reviewed":
            raise overlap_error(unions, series.image, where, "remove the overlap where the structures were drawn and "
                                "submit again (a reviewed correction keeps every organ whole)")
        note = f"segments '{found[0]}' and '{found[1]}' overlap in {found[2]} voxel(s), the later one kept there" \
            if found else ""
        for value, items in by_value.items():
            for _, mask in items:
                arr[mask] = value
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(series.image)
        return img, matched, ignored, note

    def _submit_object(self, case_id: str, label: sitk.Image, sop_uid: str, part: str, modality: str,
                       obj_series_uid: str, quality: str, annotator: Optional[str], source: str, role: str) -> dict:
        def also(con: sqlite3.Connection, correction_id: int) -> None:
            r = con.execute("SELECT correction_id FROM dicom_objects WHERE sop_uid = ? AND part = ? AND role IN "
                            "('imported', 'pulled')", (sop_uid, part)).fetchone()
            if r is not None:
                raise _AlreadyImported(r["correction_id"])
            con.execute("INSERT INTO dicom_objects VALUES (?,?,?,?,?,?,?,?)",
                        (sop_uid, part, role, modality, case_id, correction_id, obj_series_uid, now()))

        try:
            c = self.corrections.submit(case_id, label, quality=quality, annotator=annotator, source=source, also=also)
        except _AlreadyImported as exc:
            return {"case_id": case_id, "part": part, "existing": True, "correction_id": exc.correction_id}
        return {"case_id": case_id, "part": part, "existing": False, "correction_id": c.correction_id,
                "version": c.version, "quality": c.quality}

    def import_dicom_object(self, path: PathLike, case_id: Optional[str] = None, sets: Optional[str] = None,
                            quality: Optional[str] = None, annotator: Optional[str] = None, strict: bool = False,
                            pulled: bool = False, progress: Optional[ProgressFn] = None) -> List[dict]:
        """A DICOM SEG or RTSTRUCT as corrections of the case whose series it references.

        ``sets`` (RTSTRUCT): ``manual`` (default), ``all``, or a comma list (``manual,DL,MBS``); the
        manual set is ``quality`` (default reviewed), the others rough. A SEG is one correction
        (quality and annotator from its HILA provenance when present). Objects already imported are
        reported as ``existing`` and add nothing. ``case_id``: the case the object must belong to;
        ``pulled``: it came from a PACS (such corrections are not pushed back).
        """
        progress = progress or null_progress
        p = Path(path)
        modality = dicomref.object_modality(p) if p.is_file() else None
        if modality not in ("SEG", "RTSTRUCT"):
            raise HilaError(f"{p}: not a DICOM SEG or RTSTRUCT file")
        pydicom = dicomref.require()
        head = pydicom.dcmread(p, stop_before_pixels=True)
        sop_uid, obj_series = str(head.SOPInstanceUID), str(head.get("SeriesInstanceUID", ""))
        ref_uid = referenced_series_uid(head)
        target = self.case_of_series(ref_uid) if ref_uid else None
        if case_id is not None:
            want = self.cases.case(case_id).case_id
            if target != want:
                rec = self.case_series(want)
                raise HilaError(f"{p}: the {modality} references series {ref_uid}, not case {want}'s "
                                f"({rec['series_uid'] if rec else 'not from DICOM'})")
        if target is None:
            raise HilaError(f"{p}: the {modality} references series {ref_uid}, which no case of {self.core.root} came "
                            "from; import that DICOM series first")
        series = self.series(target)
        progress(0.1, f"reading {p.name}")
        role = "pulled" if pulled else "imported"
        results = []
        if modality == "SEG":
            segments, prov = dicomseg.read_segments(p, series)  # convert's reader: both decide alike
            masks = [(name, mask, None) for _, name, mask in segments]
            q = quality or (prov.quality if prov and prov.quality else "reviewed")
            img, matched, ignored, note = self._to_workspace_label(masks, series, str(p), strict, q)
            who = annotator or (prov.annotator if prov else None)
            res = self._submit_object(target, img, sop_uid, "", "SEG", obj_series, q, who, str(p), role)
            res.update(matched=matched, ignored=ignored, **({"note": note} if note else {}))
            results.append(res)
        else:
            ds, structures = rtstruct.read_rtstruct(p)
            rtstruct.check_reference(ds, series, p)
            present = {s.contour_set for s in structures}
            wanted = _parse_sets(sets, present, p)
            order = sorted(wanted, key=lambda s: s == MANUAL_SET)  # the reviewed set last: it is the latest
            who = annotator or next((str(o.ROIInterpreter) for o in ds.get("RTROIObservationsSequence", [])
                                     if str(o.get("ROIInterpreter", "")).strip()), None)
            labels = []  # every set rasterised and matched before anything is recorded: bad input changes nothing
            for i, part in enumerate(order):
                progress(0.1 + 0.6 * i / len(order), f"contour set {part}")
                chosen = [s for s in structures if s.contour_set == part and s.roi_type.upper() != "EXTERNAL"]
                masks = [(s.name, rtstruct.rasterise(s, series.image, p), None) for s in chosen]
                q = (quality or "reviewed") if part == MANUAL_SET else "rough"
                labels.append((part, q, *self._to_workspace_label(masks, series, f"{p} [{part}]", strict, q)))
            for part, q, img, matched, ignored, note in labels:
                res = self._submit_object(target, img, sop_uid, part, "RTSTRUCT", obj_series, q, who, f"{p} [{part}]",
                                          role)
                res.update(matched=matched, ignored=ignored, **({"note": note} if note else {}))
                results.append(res)
        progress(1.0, "imported")
        return results

    # -- export ----------------------------------------------------------------------------------
    def uid(self, *parts: str) -> str:
        """A UID that is the same every time for the same workspace and parts (idempotent exports)."""
        from pydicom.uid import generate_uid  # optional `dicom` extra

        with self.core.ledger.read() as con:
            r = con.execute("SELECT value FROM settings WHERE key = 'workspace_id'").fetchone()
        return str(generate_uid(entropy_srcs=[json.loads(r["value"]) if r else str(self.core.root), *parts]))

    def export_dicom(self, out: PathLike, fmt: str, cases: Optional[Sequence[str]] = None,
                     skip_pulled: bool = False, record: bool = True, skip: Sequence[int] = (),
                     prediction: bool = False, progress: Optional[ProgressFn] = None) -> List[dict]:
        """Write each chosen case's latest correction (``prediction``: latest prediction) as a SEG or
        RTSTRUCT file into folder ``out``.

        UIDs are derived from the workspace, the correction and the format, so exporting again gives
        the same instance (a PACS stores it once). ``skip_pulled``: leave out corrections that came
        from a PACS (they are there already); ``skip``: correction ids to leave out; ``record``:
        record the files as exported (a push records only once stored).
        """
        form = exportformats.get(fmt)
        dicomref.require()
        progress = progress or null_progress
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise HilaError(f"{folder}: exists and is not a folder")
        what = "prediction" if prediction else "correction"
        pulled = {r["correction_id"] for r in self.dicom_objects() if r["role"] == "pulled"} if skip_pulled else set()
        todo = []
        for case in [self.cases.case(c) for c in cases] if cases else self.cases.cases():
            items = self.predictions.predictions(case.case_id) if prediction else self.corrections.corrections(case.case_id)
            if not items or self.case_series(case.case_id) is None:
                if cases:
                    why = f"has no {what}" if not items else "was not imported from a DICOM series"
                    raise HilaError(f"{self.core.root}: case {case.case_id} {why}; nothing to export as DICOM")
                continue
            item = items[-1]
            if prediction:
                prov = dicomref.Provenance(kind="prediction", model_version=_model_version(
                    {"model_version": item.model_version}), case=case.name)
                key, meta = f"p{item.prediction_id}", {"prediction_id": item.prediction_id, "correction_id": None}
            else:
                if item.correction_id in pulled or item.correction_id in set(skip):
                    continue
                prov = dicomref.Provenance(kind="correction", annotator=item.annotator, quality=item.quality,
                                           correction_version=item.version, model_version=_model_version(item.effort),
                                           case=case.name)
                key = str(item.correction_id)  # (the UIDs of correction exports predate prediction exports)
                meta = {"correction_id": item.correction_id, "correction_version": item.version, "quality": item.quality}
            todo.append((case, item.path, prov, key, meta))
        folder.mkdir(parents=True, exist_ok=True)
        labels = self.core.settings.labels
        results = []
        stems = file_stems([t[0] for t in todo])
        for i, (case, label_path, prov, key, meta) in enumerate(todo):
            progress(i / max(1, len(todo)), f"writing {case.name}")
            series = self.series(case.case_id)
            masks = dicomref.masks_from_label(read_stored(self.core.root, label_path, f"case {case.case_id}"), {l.value: l.name for l in labels},
                                              {l.value: l.color for l in labels})
            sop = self.uid(case.case_id, key, fmt, "instance")
            ser = self.uid(case.case_id, key, fmt, "series")
            tag = f"v{meta['correction_version']}" if not prediction else f"prediction{meta['prediction_id']}"
            path = folder / f"{stems[case.case_id]}_{tag}.{fmt}.dcm"
            form.write(masks, series, path, prov, uids=(ser, sop))
            if record:
                with self.core.ledger.write() as con:
                    con.execute("INSERT OR IGNORE INTO dicom_objects VALUES (?,?,?,?,?,?,?,?)",
                                (sop, "", "exported", form.modality, case.case_id,
                                 meta["correction_id"], ser, now()))
            results.append(dict(meta, case_id=case.case_id, name=case.name, file=str(path), sop_uid=sop,
                                series_uid=ser))
        progress(1.0, "exported")
        return results


def _model_version(effort: Dict) -> Optional[str]:
    v = (effort or {}).get("model_version")
    return None if v is None else str(v)


def _parse_sets(sets: Optional[str], present: set, where: Path) -> List[str]:
    """Contour sets to import: ``manual`` (default), ``all``, or a comma list of set names present."""
    text = (sets or MANUAL_SET).strip()
    if text.lower() == "all":
        return sorted(present)
    by_lower = {s.lower(): s for s in present}
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        if name.lower() not in by_lower:
            raise HilaError(f"{where}: no contour set {name!r} (sets: {', '.join(sorted(present))})")
        out.append(by_lower[name.lower()])
    return out
