"""The prediction summary: what a Segmenter reports about one prediction, as named fields.

Inference builds it, the workspace stores it (as JSON, in the prediction's ``uncertainty`` column),
and ``quality.review_need`` and ``rank`` read it back: one definition of the keys, so no reader has
to guess which of several names a writer used. Stored summaries may hold a subset of the fields
(the CLI stores no timings) or keys of their own (kept in ``extra`` for the round trip).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional


@dataclass
class LabelSummary:
    """One label of a prediction: its size and how sure the model was about it."""

    value: int
    name: str
    voxels: int = 0
    ml: float = 0.0
    mean_uncertainty: Optional[float] = None
    #: Expected soft Dice of this label against the unknown truth (``quality.error_probability``).
    predicted_dice: Optional[float] = None


@dataclass
class PredictionSummary:
    """One prediction: the model that made it, how it ran, and how likely it is to need review."""

    model: Optional[str] = None
    model_version: Any = None
    model_checksum: Optional[str] = None
    labels: List[LabelSummary] = field(default_factory=list)
    windows: Optional[int] = None
    roi: Optional[str] = None
    roi_fallback: Optional[bool] = None
    tta: Optional[bool] = None
    seconds: Optional[float] = None
    seconds_onnx: Optional[float] = None
    seconds_other: Optional[float] = None
    #: How ``mean_uncertainty`` was measured: ``entropy`` or ``tta_disagreement``.
    uncertainty: Optional[str] = None
    mean_uncertainty: Optional[float] = None
    #: With TTA: the flipped model-grid axes, one list per extra pass, and the rule that chose them
    #: (``patient_lr``: the patient's left-right axis, from the direction cosines; ``card``: the card's override).
    tta_flips: Optional[List[List[int]]] = None
    tta_flip_rule: Optional[str] = None
    uncertain_voxels: Optional[int] = None
    #: Expected Dice of the whole prediction (mean over labels); higher means less need of review.
    predicted_dice: Optional[float] = None
    predicted_dice_source: Optional[str] = None
    #: The prediction's features for the learned quality model (``quality.learned.prediction_features``).
    quality_features: Optional[Dict[str, float]] = None
    providers: Optional[List[str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (every named field, then ``extra``'s keys) kept in results and the ledger."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("labels", "extra")}
        d["labels"] = [dataclasses.asdict(lab) for lab in self.labels]
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> Optional["PredictionSummary"]:
        """The summary of a stored JSON object (None for none); keys it does not name go to ``extra``."""
        if d is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)} - {"labels", "extra"}
        label_names = {f.name for f in dataclasses.fields(LabelSummary)}
        labels = [LabelSummary(**{k: v for k, v in lab.items() if k in label_names})
                  for lab in d.get("labels") or [] if isinstance(lab, Mapping) and "value" in lab and "name" in lab]
        return cls(labels=labels, extra={k: v for k, v in d.items() if k not in names and k != "labels"},
                   **{k: v for k, v in d.items() if k in names})
