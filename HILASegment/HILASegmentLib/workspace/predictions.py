"""The workspace's predictions: a model's label map for a case, stored immutably with its summary."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .base import WorkspaceBase, image_writer, now
from .files import Staged
from .records import Prediction, dumps


class Predictions(WorkspaceBase):
    def _pred_from_row(self, r: sqlite3.Row) -> Prediction:
        return Prediction(r["prediction_id"], r["case_id"], r["model_version"], self.root / r["file"], r["sha256"],
                          json.loads(r["uncertainty"]) if r["uncertainty"] else None, r["created_at"])

    def add_prediction(self, case_id: str, label: Any, model_version: Optional[int],
                       uncertainty: Optional[dict] = None) -> Prediction:
        """Record a model's label map for a case (validated like a submission, stored immutably)."""
        case = self.case(case_id)
        if _nonempty(label):
            _arr, img, _notes = self.validate_label(case.case_id, label, where=f"prediction for case {case.case_id}",
                                                    strict=True)
        else:
            img = _empty_label(self.case_image(case.case_id))

        def record(con: sqlite3.Connection, staged: Sequence[Staged]) -> int:
            rel = f"predictions/{case.case_id}/{staged[0].name('pred')}"
            staged[0].place(rel)
            cur = con.execute("INSERT INTO predictions (case_id, model_version, file, sha256, uncertainty, created_at) "
                              "VALUES (?,?,?,?,?,?)", (case.case_id, model_version, rel, staged[0].sha256,
                                                        dumps(uncertainty) if uncertainty is not None else None, now()))
            self._event(con, "predict", case.case_id, {"prediction_id": cur.lastrowid, "model_version": model_version})
            return int(cur.lastrowid)

        return self.prediction(self._store([(image_writer(img), ".nrrd")], record))

    def prediction(self, prediction_id: int) -> Prediction:
        return self._pred_from_row(self._row_by_id("predictions", "prediction_id", prediction_id, "prediction"))

    def predictions(self, case_id: Optional[str] = None) -> List[Prediction]:
        rows = self._rows_of_case("predictions", "prediction_id", "prediction_id", case_id)
        return [self._pred_from_row(r) for r in rows]


def _nonempty(label: Any) -> bool:
    if isinstance(label, sitk.Image):
        return bool(np.any(sitk.GetArrayViewFromImage(label)))
    return True


def _empty_label(ref: sitk.Image) -> sitk.Image:
    """A model may find nothing: an empty prediction is recorded (it is a real, informative outcome)."""
    img = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8))
    img.CopyInformation(ref)
    return img
