"""The workspace's quality models: its (prediction, accepted correction) pairs, the learned quality
model fitted on them for a model version, and which source of predicted Dice is in use for each version.

A fit is recorded as an event of the ledger (kind ``quality_model``, entity ``model vN``, the model as
its details): append-only like every event, so each fit stays in the history and the latest one for a
version is the one in use. No schema change was needed for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..ground.errors import HilaError
from ..inference.summary import PredictionSummary
from ..quality.learned import SOURCE_UNSUPERVISED, QualityModel, fit_quality_model
from .base import Core
from .registry import Registry

EVENT_KIND = "quality_model"


@dataclass(eq=False)
class QualityModels:
    """The learned quality model per model version (the current one from ``registry``)."""

    core: Core
    registry: Registry

    def quality_pairs(self) -> List[dict]:
        """Every prediction with an accepted (reviewed) correction: its features, its expected soft Dice
        (source a) and the Dice the first such correction showed against it (the truth a quality model learns)."""
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
            dice = [v for v in (json.loads(r["effort"]).get("dice") or {}).values() if v is not None]
            out.append({"prediction_id": int(r["prediction_id"]), "model_version": r["model_version"],
                        "case_id": r["case_id"],
                        "features": summary.quality_features if summary else None,
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
        qm = fit_quality_model(self.quality_pairs(), int(model_version))
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
        return {"source": qm.source, "model_version": qm.model_version, "reason": qm.reason, "n_pairs": qm.n_pairs,
                "loo": qm.loo}
