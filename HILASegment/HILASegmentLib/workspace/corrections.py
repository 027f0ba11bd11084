"""The workspace's corrections: a radiologist's label for a case as its next version (earlier versions
stay), with the effort it took measured against what it corrected."""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats import weak
from ..ground.errors import HilaError
from ..inference import boxassist as _assist
from ..quality import effort as _quality
from .base import Core, image_writer, now, user
from .casestore import Cases
from .files import Staged, read_stored
from .labels import Labels
from .records import QUALITIES, Case, Correction, dumps


@dataclass(eq=False)
class Corrections:
    """The corrections of the cases of ``cases``: labels checked by ``labels``, stored as each case's next version."""

    core: Core
    cases: Cases
    labels: Labels

    def _corr_from_row(self, r: sqlite3.Row) -> Correction:
        return Correction(r["correction_id"], r["case_id"], r["version"], self.core.root / r["file"], r["sha256"], r["quality"],
                          r["annotator"], r["seconds"], r["based_on"], json.loads(r["effort"]), r["created_at"])

    def submit(self, case_id: str, label: Any, quality: str = "reviewed", annotator: Optional[str] = None,
               seconds: Optional[float] = None, based_on: Optional[int] = None, strict: bool = False,
               source: Optional[str] = None, marks: Optional[dict] = None,
               also: Optional[Callable[[sqlite3.Connection, int], None]] = None,
               modality_override: bool = False, image: Optional[sitk.Image] = None) -> Correction:
        """Record a corrected label for a case as its next version (earlier versions stay).

        ``marks`` (weak labels): the box/lines the pseudo-mask was made from, kept in the effort JSON.
        ``also(con, correction_id)``: more rows written in the same transaction (e.g. the DICOM object the
        label came from), so that both are recorded or neither.

        ``label`` is a SimpleITK label map on the case's grid or a segfile ``Segmentation``. The
        effort (Dice per label, voxels changed) is measured against the prediction it corrects
        (``based_on``, else the case's latest), else against the previous version. ``image``: the case's stored
        image when the caller has read it already (read once here otherwise, for every check).
        """
        if quality not in QUALITIES:
            raise HilaError(f"quality {quality!r}: use one of {', '.join(QUALITIES)}")
        if seconds is not None:
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise HilaError(f"seconds {seconds!r}: not a number") from None
            if not np.isfinite(seconds) or seconds < 0:
                raise HilaError(f"seconds {seconds!r}: must be a non-negative number")
        case = self.cases.case(case_id)
        # a label of an image of another modality must not become a training correction unnoticed
        image = image if image is not None else self.cases.case_image(case.case_id)
        self.cases.check_modality(image, f"case {case.case_id}", modality_override)
        if isinstance(label, (str, os.PathLike)):
            arr, img, notes = self.labels.read_label_file(case.case_id, label, strict=strict, reference=image)
            source = source or str(label)
        else:
            arr, img, notes = self.labels.validate_label(case.case_id, label, strict=strict, reference=image)
        effort = self._effort(case, arr, based_on)
        based_on = effort.get("prediction_id")
        effort.update(notes)
        if source:
            effort["source"] = str(source)
        if marks:
            effort["marks"] = marks
        annotator = annotator if annotator else user()

        def record(con: sqlite3.Connection, staged: Sequence[Staged]) -> int:
            version = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM corrections WHERE case_id = ?",
                                  (case.case_id,)).fetchone()[0]
            rel = f"corrections/{case.case_id}/{staged[0].name(f'v{version:04d}')}"
            staged[0].place(rel)
            cur = con.execute("INSERT INTO corrections (case_id, version, file, sha256, quality, annotator, seconds, "
                              "based_on, effort, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                              (case.case_id, version, rel, staged[0].sha256, quality, annotator, seconds, based_on,
                               dumps(effort), now()))
            self.core.event(con, "submit", case.case_id, {"correction_id": cur.lastrowid, "version": version,
                                                     "quality": quality, "voxels_changed": effort.get("voxels_changed")})
            if also is not None:
                also(con, int(cur.lastrowid))
            return int(cur.lastrowid)

        return self.correction(self.core.store([(image_writer(img), ".nrrd")], record))

    def submit_marks(self, case_id: str, marks: dict, annotator: Optional[str] = None, seconds: Optional[float] = None,
                     based_on: Optional[int] = None, modality_override: bool = False, builder: str = "ellipsoid") -> Correction:
        """A weak label from clinical marks (a box or RECIST lines per label; format in ``weak``): the pseudo-mask
        built by ``weak.pseudo_label`` on the case's stored image, submitted with quality ``weak`` and the marks.

        The one path of ``hila submit --box/--lines``, Slicer's *Accept as weak* and ``hila simulate
        --corrector weak``, so a pseudo-mask never depends on where the marks were made. Bad marks
        (outside the image, zero size, lines that do not cross, an unknown label) change nothing.

        When the case's latest correction is a weak label made from marks, the marks of labels not marked now
        are carried over (a label marked now replaces its old marks): marking the bladder after the prostate
        keeps the prostate. A correction of the case submitted meanwhile by someone else refuses the submit
        (its marks would otherwise be lost from the latest version).
        """
        case = self.cases.case(case_id)
        seen, earlier = self._latest_marks(case.case_id)
        marks = weak.carry_marks(marks, earlier)
        image = self.cases.case_image(case.case_id)
        # ``builder``: the ellipsoid by default (measured as good or better than the box assistant from a tight box on
        # the real CT, scripts/bench_assist.py), the assistant on request (``auto``: when installed); recorded.
        _, build = _assist.box_builder(builder)
        label, recorded = weak.pseudo_label(image, marks, self.core.settings.label_pairs(), builder=build,
                                            builder_name=_assist.CATALOG_NAME if build else "ellipsoid")

        def unchanged(con: sqlite3.Connection, correction_id: int) -> None:
            latest = con.execute("SELECT MAX(version) FROM corrections WHERE case_id = ? AND correction_id != ?",
                                 (case.case_id, correction_id)).fetchone()[0]
            if latest != seen:
                raise HilaError(f"case {case.case_id}: correction v{latest} was submitted meanwhile; nothing was "
                                "submitted, mark again")

        return self.submit(case.case_id, label, quality="weak", annotator=annotator, seconds=seconds, based_on=based_on,
                           source="marks", marks=recorded, also=unchanged, modality_override=modality_override,
                           image=image)

    def _latest_marks(self, case_id: str) -> Tuple[Optional[int], Optional[dict]]:
        """(the case's latest correction version or None, its recorded marks when it is weak, else None)."""
        latest = self.corrections(case_id)
        if not latest:
            return None, None
        return latest[-1].version, (latest[-1].effort or {}).get("marks") if latest[-1].quality == "weak" else None

    def _effort(self, case: Case, arr: np.ndarray, based_on: Optional[int]) -> dict:
        """Dice per label and voxels changed against the prediction corrected, else the previous version."""
        pairs = self.core.settings.label_pairs()
        with self.core.ledger.read() as con:
            if based_on is not None:
                p = con.execute("SELECT * FROM predictions WHERE prediction_id = ? AND case_id = ?",
                                (int(based_on), case.case_id)).fetchone()
                if p is None:
                    raise HilaError(f"based-on prediction {based_on}: not a prediction of case {case.case_id}")
            else:
                p = con.execute("SELECT * FROM predictions WHERE case_id = ? ORDER BY prediction_id DESC LIMIT 1",
                                (case.case_id,)).fetchone()
            prev = None if p is not None else con.execute(
                "SELECT * FROM corrections WHERE case_id = ? ORDER BY version DESC LIMIT 1", (case.case_id,)).fetchone()
        again = f"`hila infer {self.core.root} {case.case_id}` makes a new prediction to measure against"
        if p is not None:
            ref = sitk.GetArrayFromImage(read_stored(self.core.root, self.core.root / p["file"], f"case {case.case_id} "
                                                     f"prediction {p['prediction_id']}", hint=again))
            out = _quality.label_change(arr, ref, pairs)
            out.update(against=f"prediction {p['prediction_id']}", prediction_id=p["prediction_id"],
                       model_version=p["model_version"])
        elif prev is not None:
            ref = sitk.GetArrayFromImage(read_stored(self.core.root, self.core.root / prev["file"],
                                                     f"case {case.case_id} correction v{prev['version']}"))
            out = _quality.label_change(arr, ref, pairs)
            out.update(against=f"correction v{prev['version']}", prediction_id=None, model_version=None)
        else:
            out = _quality.drawn_from_scratch(arr, pairs)
            out.update(against="nothing", prediction_id=None, model_version=None)
        out["labelled_voxels"] = {name: int((arr == v).sum()) for v, name in pairs}
        return out

    def correction(self, correction_id: int) -> Correction:
        return self._corr_from_row(self.core.row_by_id("corrections", "correction_id", correction_id, "correction"))

    def corrections(self, case_id: Optional[str] = None) -> List[Correction]:
        return [self._corr_from_row(r) for r in self.cases.rows_of_case("corrections", "correction_id", "version", case_id)]

    def correction_label(self, case_id: str, version: Optional[int] = None) -> sitk.Image:
        """A correction's label map (the latest version unless one is named)."""
        corrs = self.corrections(case_id)
        if version is not None:
            corrs = [c for c in corrs if c.version == int(version)]
        if not corrs:
            raise HilaError(f"{self.core.root}: case {case_id} has no correction" + (f" version {version}" if version else ""))
        return read_stored(self.core.root, corrs[-1].path, f"case {corrs[-1].case_id} correction v{corrs[-1].version}")
