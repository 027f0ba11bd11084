"""The workspace's quality models: its (prediction, accepted correction) pairs, the learned quality
model fitted on them for a model version, and which source of predicted Dice is in use for each version.

A fit is recorded as an event of the ledger (kind ``quality_model``, entity ``model vN``, the model as
its details): append-only like every event, so each fit stays in the history and the latest one for a
version is the one in use. No schema change was needed for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from ..inference.summary import PredictionSummary
from ..quality.degrade import degraded_copies
from ..quality.labelmodel import SOURCE_SOFT, SYNTHETIC_UNTIL, LabelQualityModel, fit_label_model
from ..quality.learned import SOURCE_UNSUPERVISED, QualityModel, fit_quality_model, with_plausibility
from ..quality.plausibility import RAW_KEYS, label_shape
from .base import Core
from .casestore import Cases
from .files import read_stored
from .registry import Registry

EVENT_KIND = "quality_model"


@dataclass(eq=False)
class QualityModels:
    """The learned quality model per model version (the current one from ``registry``)."""

    core: Core
    registry: Registry
    cases: Cases

    def _corrected_predictions(self) -> List[Tuple[Any, Optional[PredictionSummary], Dict[str, Any]]]:
        """Each prediction with a reviewed correction, once: (its row, its summary or None, the Dice per label the
        first such correction showed against it)."""
        with self.core.ledger.read() as con:
            rows = con.execute(
                "SELECT p.prediction_id, p.model_version, p.case_id, p.uncertainty, c.effort FROM corrections c "
                "JOIN predictions p ON p.prediction_id = c.based_on WHERE c.quality = 'reviewed' "
                "ORDER BY c.correction_id").fetchall()
        seen, out = set(), []
        for r in rows:
            if r["prediction_id"] in seen:
                continue
            seen.add(r["prediction_id"])
            summary = PredictionSummary.from_dict(json.loads(r["uncertainty"])) if r["uncertainty"] else None
            out.append((r, summary, json.loads(r["effort"]).get("dice") or {}))
        return out

    def quality_pairs(self, references: Optional[Dict[str, Dict[str, dict]]] = None) -> List[dict]:
        """Every prediction with an accepted (reviewed) correction: its features (``volume_z_max`` against the other
        cases' accepted corrections, ``references`` or read here), its expected soft Dice (source a) and the Dice the
        first such correction showed against it (the truth a quality model learns)."""
        refs = self.references()[0] if references is None else references
        out = []
        for r, summary, truth in self._corrected_predictions():
            dice = [v for v in truth.values() if v is not None]
            out.append({"prediction_id": int(r["prediction_id"]), "model_version": r["model_version"],
                        "case_id": r["case_id"],
                        "features": with_plausibility(summary, refs, [r["case_id"]]),
                        "unsupervised": summary.predicted_dice if summary else None,
                        "true": round(float(np.mean(dice)), 6) if dice else None})
        return out

    def fit_quality_model(self, model_version: Optional[int] = None) -> QualityModel:
        """Fit on every pair and record it for ``model_version`` (default: the current model)."""
        if model_version is None:
            cur = self.registry.current_model()
            if cur is None:
                raise HilaError(f"{self.core.root}: no current model to fit a quality model for")
            model_version = cur.version
        pairs = self.label_pairs()
        refs, synthetic = self.references(synthetic=len(pairs) < SYNTHETIC_UNTIL)
        qm = fit_quality_model(self.quality_pairs(refs), int(model_version), refs)
        qm.per_label = fit_label_model(pairs, synthetic, refs, int(model_version)).to_dict()
        with self.core.ledger.write() as con:
            self.core.event(con, EVENT_KIND, f"model v{qm.model_version}", qm.to_dict())
        return qm

    def quality_model(self, model_version: int) -> Optional[QualityModel]:
        """The latest quality model fitted for ``model_version`` (None if none was); a record whose own
        version differs from the one it is filed under is refused, never used for another version."""
        with self.core.ledger.read() as con:
            r = con.execute("SELECT details FROM events WHERE kind = ? AND entity = ? ORDER BY event_id DESC LIMIT 1",
                            (EVENT_KIND, f"model v{int(model_version)}")).fetchone()
        if r is None:
            return None
        where = f"{self.core.root}: quality model of model v{int(model_version)}"
        try:
            d = json.loads(r["details"])
        except (TypeError, ValueError):
            raise HilaError(f"{where}: its record is not JSON") from None
        qm = QualityModel.from_dict(d if isinstance(d, dict) else {}, where)
        if qm.model_version != int(model_version):
            raise HilaError(f"{where}: the record says it scores model v{qm.model_version}; it is not used for "
                            f"v{int(model_version)} (fit it again: hila train refits after each run)")
        return qm

    def quality_source(self, model_version: Optional[int]) -> Dict[str, object]:
        """Which predicted Dice is in use for predictions of ``model_version``, and why."""
        if model_version is None:
            return {"source": SOURCE_UNSUPERVISED, "model_version": None, "reason": "no model"}
        qm = self.quality_model(int(model_version))
        if qm is None:
            return {"source": SOURCE_UNSUPERVISED, "model_version": int(model_version),
                    "reason": f"no learned quality model fitted for model v{int(model_version)} yet (one is fitted "
                              "after each training run)"}
        out = {"source": qm.source, "model_version": qm.model_version, "reason": qm.reason, "n_pairs": qm.n_pairs,
               "loo": qm.loo}
        if qm.per_label:
            lm = LabelQualityModel.from_dict(qm.per_label, f"{self.core.root}: per-label quality model of model "
                                             f"v{qm.model_version}")
            out["per_label"] = {"source": lm.source, "reason": lm.reason, "n_real": lm.n_real,
                                "n_synthetic": lm.n_synthetic, "loo": lm.loo}
        return out

    # ---- per label: shape plausibility, synthetic degradations, the per-label source ------------------------
    def _accepted(self) -> List[Tuple[str, str]]:
        """(case id, file) of each case's latest reviewed correction."""
        with self.core.ledger.read() as con:
            rows = con.execute("SELECT c.case_id, c.file FROM corrections c WHERE c.quality = 'reviewed' AND c.version ="
                               " (SELECT MAX(version) FROM corrections c2 WHERE c2.case_id = c.case_id AND "
                               "c2.quality = 'reviewed') ORDER BY c.case_id").fetchall()
        return [(r["case_id"], r["file"]) for r in rows]

    def references(self, synthetic: bool = False) -> Tuple[Dict[str, Dict[str, dict]], List[dict]]:
        """Each label's raw shape figures in each case's latest reviewed correction (``plausibility.label_shape``)
        and, with ``synthetic``, the degraded copies of those labels with their true Dice (``quality.degrade``)."""
        refs: Dict[str, Dict[str, dict]] = {}
        synth: List[dict] = []
        for i, (case_id, file) in enumerate(self._accepted()):
            img = self.cases.case_image(case_id)
            lab = sitk.GetArrayFromImage(read_stored(self.core.root, self.core.root / file, f"case {case_id} correction"))
            arr = sitk.GetArrayViewFromImage(img)
            refs[case_id] = {}
            for value, name in self.core.settings.label_pairs():
                m = lab == value
                if not m.any():
                    continue
                refs[case_id][name] = label_shape(m, arr, img.GetSpacing())
                if synthetic:
                    for kind, bad, true in degraded_copies(m, seed=i):
                        synth.append({"case_id": case_id, "label": name, "degradation": kind, "true": true,
                                      "raw": label_shape(bad, arr, img.GetSpacing()), "synthetic": True})
        return refs, synth

    def label_pairs(self) -> List[dict]:
        """Every (prediction, label) with an accepted correction: the label's raw shape figures (stored with the
        prediction), its expected soft Dice, the assistant's agreement where recorded, and the correction's Dice."""
        out = []
        for r, summary, truth in self._corrected_predictions():
            if summary is None:
                continue
            for name, (raw, soft, assistant) in label_evidence(summary).items():
                if truth.get(name) is not None:
                    out.append({"case_id": r["case_id"], "prediction_id": int(r["prediction_id"]), "label": name,
                                "raw": raw, "soft": soft, "assistant": assistant, "true": float(truth[name])})
        return out

    def label_scorer(self):
        """``scorer`` for ``quality.rank_cases``' per-label Dice: for a summary (model version set), the per-label
        source of its model version's quality model: ``{label: (predicted Dice, source)}`` (z-scores against the
        references recorded with it: no image is read)."""
        models: Dict[int, Optional[LabelQualityModel]] = {}

        def score(summary: PredictionSummary, case_id: str) -> Dict[str, Tuple[Optional[float], str]]:
            v = summary.model_version
            if v is not None and int(v) not in models:
                qm = self.quality_model(int(v))
                where = f"{self.core.root}: per-label quality model of model v{int(v)}"
                models[int(v)] = LabelQualityModel.from_dict(qm.per_label, where) if qm and qm.per_label else None
            lm = models.get(int(v)) if v is not None else None
            evidence = label_evidence(summary)
            if lm is not None:
                return lm.score(summary, lm.references, case_id, evidence, where=f"case {case_id}")
            return {name: ((round(float(soft), 4) if soft is not None else None), SOURCE_SOFT)
                    for name, (_raw, soft, _a) in evidence.items()}

        return score


def label_evidence(summary: PredictionSummary) -> Dict[str, Tuple[Optional[dict], Optional[float], Optional[float]]]:
    """Per label of a stored summary: (raw shape figures or None, expected soft Dice, assistant agreement or None)."""
    feats = summary.quality_features or {}
    out = {}
    for lab in summary.labels:
        raw = {k: feats.get(f"{k}:{lab.name}") for k in RAW_KEYS}
        out[lab.name] = (raw if all(isinstance(v, (int, float)) for v in raw.values()) else None,
                         lab.predicted_dice, feats.get(f"assistant_agreement:{lab.name}"))
    return out
