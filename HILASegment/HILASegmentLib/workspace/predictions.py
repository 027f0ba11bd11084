"""The workspace's predictions: a model's label map for a case, stored immutably with its summary."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from ..ground.labelmatch import TAG_KEY, match_label
from .base import Core, image_writer, now
from .casestore import Cases
from .files import Staged
from .labels import Labels
from .records import Prediction, dumps


@dataclass(eq=False)
class Predictions:
    """A model's label maps for the cases of ``cases``, checked by ``labels`` like a submission."""

    core: Core
    cases: Cases
    labels: Labels

    def _pred_from_row(self, r: sqlite3.Row) -> Prediction:
        return Prediction(r["prediction_id"], r["case_id"], r["model_version"], self.core.root / r["file"], r["sha256"],
                          json.loads(r["uncertainty"]) if r["uncertainty"] else None, r["created_at"])

    def add_prediction(self, case_id: str, label: Any, model_version: Optional[int],
                       uncertainty: Optional[dict] = None) -> Prediction:
        """Record a model's label map for a case (validated like a submission, stored immutably)."""
        case = self.cases.case(case_id)
        if _nonempty(label):
            _arr, img, _notes = self.labels.validate_label(case.case_id, label, where=f"prediction for case {case.case_id}",
                                                    strict=True)
        else:
            img = _empty_label(self.cases.case_image(case.case_id))

        def record(con: sqlite3.Connection, staged: Sequence[Staged]) -> int:
            rel = f"predictions/{case.case_id}/{staged[0].name('pred')}"
            staged[0].place(rel)
            cur = con.execute("INSERT INTO predictions (case_id, model_version, file, sha256, uncertainty, created_at) "
                              "VALUES (?,?,?,?,?,?)", (case.case_id, model_version, rel, staged[0].sha256,
                                                        dumps(uncertainty) if uncertainty is not None else None, now()))
            self.core.event(con, "predict", case.case_id, {"prediction_id": cur.lastrowid, "model_version": model_version})
            return int(cur.lastrowid)

        return self.prediction(self.core.store([(image_writer(img), ".nrrd")], record))

    def record_prediction(self, case_id: str, result: Any, model_version: Optional[int],
                          outputs: Optional[Callable[[sitk.Image, dict], Sequence[Any]]] = None
                          ) -> Tuple[Prediction, sitk.Image, dict]:
        """Store a model's result (``inference.InferenceResult``) for a case in this workspace's label values: the one
        place where a prediction is recorded and model labels become workspace labels (THE rule, ``labelmatch``; the
        model's labels the workspace lacks are dropped and named in the summary). ``hila infer WS CASE`` and the
        Slicer panel (through it) come here. ``outputs(label, summary)`` writes files before the ledger changes and
        returns their paths, removed again if recording fails: a retry never adds a prediction per try.
        Returns (the prediction, its label image, its summary)."""
        label, dropped = self.workspace_label(result.label, result.card.labels)
        summary = dict(result.summary, model_version=model_version, model=result.card.name)
        if dropped:
            summary["labels_not_in_workspace"] = dropped
        written = list(outputs(label, summary) if outputs is not None else [])
        try:
            return self.add_prediction(case_id, label, model_version, uncertainty=summary), label, summary
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def workspace_label(self, label: sitk.Image, model_labels: Sequence[Any]) -> Tuple[sitk.Image, List[str]]:
        """(``label`` in this workspace's values, the model label names it has no label for) by ``labelmatch``."""
        pairs = [(lab.name, lab.value) for lab in self.core.settings.labels]
        arr = sitk.GetArrayViewFromImage(label)
        out = np.zeros(arr.shape, np.uint8)
        dropped = []
        for lab in model_labels:
            value = match_label(lab.name, None, pairs)
            if value is None:
                dropped.append(lab.name)
                continue
            out[arr == lab.value] = value
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(label)
        return img, dropped

    def prediction_segmentation(self, label: sitk.Image, tags: Optional[dict] = None, review_map: Any = None) -> Any:
        """A workspace-label prediction as the segments Slicer shows: one per workspace label (its name, the one colour
        table's colour, its terminology, tagged ``hila_label`` with its value), plus the likely-error segment when a
        review map is given; cut to the voxels it holds (``Segmentation.cropped``), so reading it costs the result."""
        from ..formats.segmentation import Segmentation
        from ..inference.errormap import add_review_segment

        if label.GetNumberOfComponentsPerPixel() != 1 or label.GetDimension() != 3:
            raise HilaError("a prediction is a scalar 3-D label image")
        seg = Segmentation.from_label_image(label, [(lab.value, lab.name, tuple(lab.color)) for lab in self.core.settings.labels],
                                            tags=tags)
        for s in seg.segments:
            s.tags[TAG_KEY] = str(s.label_value)
        if review_map is not None:
            add_review_segment(seg, review_map, label, tags)
        return seg.cropped()

    def prediction(self, prediction_id: int) -> Prediction:
        return self._pred_from_row(self.core.row_by_id("predictions", "prediction_id", prediction_id, "prediction"))

    def predictions(self, case_id: Optional[str] = None) -> List[Prediction]:
        rows = self.cases.rows_of_case("predictions", "prediction_id", "prediction_id", case_id)
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
