"""Per-label predicted Dice, from the best evidence the workspace can show works: the model's own expected soft Dice
(source a), the box assistant's agreement with the prediction (``secondopinion``, where recorded), or a learned
model on each label's shape and volume plausibility (``plausibility``) trained on the workspace's real
(prediction, correction) pairs and, while those are few, on synthetic degradations of its accepted corrections
(``degrade``).

Which one is used is decided on the real pairs alone, by nested leave-one-CASE-out: each case's labels are
predicted by a model fitted without any pair of that case — neither its real pairs nor its degraded copies — and
with z-scores against the other cases' corrections only. A candidate replaces the soft Dice only when it has a
higher Spearman rho AND a lower mean absolute error there; of several such, the higher rho wins. Synthetic pairs:
:data:`DEGRADATIONS` copies per accepted label, each weighing 1/len(DEGRADATIONS) (one label's copies together weigh
as one real pair), used only while the workspace has fewer than :data:`SYNTHETIC_UNTIL` real per-label pairs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..ground.errors import HilaError
from .degrade import DEGRADATIONS
from .learned import _agreement, _fit, _fmt, _predict
from .plausibility import plausibility

#: The features of one predicted label, in the order the regressor reads them.
LABEL_FEATURES = ("log_volume_ml", "volume_z", "extent_z", "boundary_ratio", "components", "intensity_contrast",
                  "intensity_sd")
SOURCE_SOFT, SOURCE_ASSISTANT, SOURCE_LEARNED = "expected_soft_dice", "assistant_agreement", "learned"
#: Fewer real per-label pairs, or pairs from fewer cases, than these: the soft Dice stays (nothing to decide on).
MIN_LABEL_PAIRS, MIN_CASES = 6, 3
#: Synthetic degradations are added while the workspace has fewer real per-label pairs than this.
SYNTHETIC_UNTIL = 60
SYNTHETIC_WEIGHT = 1.0 / len(DEGRADATIONS)

References = Mapping[str, Mapping[str, Mapping[str, float]]]  # case id -> label name -> raw figures


def label_vector(raw: Mapping[str, float], label: str, references: References, exclude: Sequence[str]) -> np.ndarray:
    """One label's features: its raw figures and their z-scores against that label in the references' cases
    other than ``exclude`` (a z-score without enough references reads 0, the usual)."""
    refs = [r[label] for c, r in references.items() if c not in exclude and label in r and r[label].get("ml")]
    z = plausibility(raw, refs)
    vals = {"log_volume_ml": math.log1p(float(raw["ml"])), **{k: (v if v is not None else 0.0) for k, v in z.items()},
            **{k: float(raw[k]) for k in ("boundary_ratio", "components", "intensity_contrast", "intensity_sd")}}
    return np.array([vals[k] for k in LABEL_FEATURES], float)


@dataclass
class LabelQualityModel:
    """The per-label source of predicted Dice for one model version, with the figures that chose it."""

    model_version: int
    source: str
    reason: str
    n_real: int = 0
    n_synthetic: int = 0
    synthetic_weight: float = SYNTHETIC_WEIGHT
    features: List[str] = field(default_factory=lambda: list(LABEL_FEATURES))
    params: Optional[List[Any]] = None  # the learned regressor: [lambda, mean, scale, weights, intercept]
    #: per candidate source: {"spearman", "mae", "n"} over the real pairs (learned: nested leave-one-case-out)
    loo: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    #: the accepted corrections' raw figures at fitting time (case id -> label -> figures): what the z-scores of the
    #: predictions it scores are taken against (so ranking reads no image)
    references: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "per-label quality model") -> "LabelQualityModel":
        try:
            m = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as exc:
            raise HilaError(f"{where}: not a per-label quality model record ({exc})") from None
        if m.source == SOURCE_LEARNED and (m.params is None or list(m.features) != list(LABEL_FEATURES)):
            # fitted by an older version on other features: set aside as the whole-prediction record is
            # (learned.QualityModel.from_dict), so ranking and status keep working until the next run refits it
            m.source = SOURCE_SOFT
            m.reason = (f"set aside: fitted on other features ({', '.join(m.features)}) than this version's; "
                        "hila train refits it after its next run")
        return m

    def score(self, summary: Any, references: References, case_id: str,
              evidence: Mapping[str, Tuple[Optional[Mapping[str, float]], Optional[float], Optional[float]]],
              where: str = "prediction") -> Dict[str, Tuple[Optional[float], str]]:
        """Each label's (predicted Dice, source) for a prediction of *this* model version (``evidence``: per label the
        raw figures, soft Dice and assistant agreement); a prediction of another version is refused."""
        if getattr(summary, "model_version", None) is None or int(summary.model_version) != int(self.model_version):
            raise HilaError(f"{where}: made by model v{getattr(summary, 'model_version', None)}, but this per-label "
                            f"quality model scores model v{self.model_version} predictions only")
        return {name: self.predict(name, raw, soft, assistant, references, case_id)
                for name, (raw, soft, assistant) in evidence.items()}

    def predict(self, label: str, raw: Optional[Mapping[str, float]], soft: Optional[float],
                assistant: Optional[float], references: References, case_id: str) -> Tuple[Optional[float], str]:
        """(predicted Dice, its source) for one label of a prediction; the soft Dice where the chosen source has
        nothing to say for it (no assistant agreement recorded, no shape figures)."""
        if self.source == SOURCE_ASSISTANT and _finite(assistant):
            return round(float(assistant), 4), SOURCE_ASSISTANT
        if self.source == SOURCE_LEARNED and raw is not None and self.params is not None:
            lam, mu, sc, w, b = self.params
            x = label_vector(raw, label, references, [case_id])
            params = (lam, np.array(mu), np.array(sc), np.array(w), float(b))
            return round(float(_predict(params, x[None])[0]), 4), SOURCE_LEARNED
        return (round(float(soft), 4) if _finite(soft) else None), SOURCE_SOFT


def fit_label_model(real: Sequence[Mapping[str, Any]], synthetic: Sequence[Mapping[str, Any]],
                    references: References, model_version: int) -> LabelQualityModel:
    """Choose the per-label source (see the module docstring). ``real``: one item per (prediction, label) with
    ``case_id``, ``label``, ``raw`` (``plausibility.label_shape``), ``soft``, ``assistant`` (or None) and ``true``
    (the label's Dice in the accepted correction); ``synthetic``: ``case_id``, ``label``, ``raw``, ``true``."""
    real = [p for p in real if p.get("raw") is not None and _finite(p.get("true")) and _finite(p.get("soft"))]
    cases = sorted({str(p["case_id"]) for p in real})
    use_synth = len(real) < SYNTHETIC_UNTIL
    synthetic = list(synthetic) if use_synth else []
    base = dict(model_version=int(model_version), n_real=len(real), n_synthetic=len(synthetic),
                references={str(c): {str(n): dict(r) for n, r in v.items()} for c, v in references.items()})
    if len(real) < MIN_LABEL_PAIRS or len(cases) < MIN_CASES:
        return LabelQualityModel(source=SOURCE_SOFT, reason=f"{len(real)} real per-label pair(s) from {len(cases)} "
                                 f"case(s); choosing another source needs {MIN_LABEL_PAIRS} from {MIN_CASES}", **base)
    y = np.array([float(p["true"]) for p in real])
    learned = np.empty(len(real))
    for held in cases:
        train = [p for p in list(real) + synthetic if str(p["case_id"]) != held]
        X = np.stack([label_vector(p["raw"], p["label"], references, [str(p["case_id"]), held]) for p in train])
        w = np.array([SYNTHETIC_WEIGHT if p.get("synthetic") else 1.0 for p in train])
        params = _fit(X, np.array([float(p["true"]) for p in train]), w)
        idx = [i for i, p in enumerate(real) if str(p["case_id"]) == held]
        Xh = np.stack([label_vector(real[i]["raw"], real[i]["label"], references, [held]) for i in idx])
        learned[idx] = _predict(params, Xh)
    loo = {SOURCE_SOFT: _agreement(np.array([float(p["soft"]) for p in real]), y),
           SOURCE_LEARNED: _agreement(learned, y)}
    if all(_finite(p.get("assistant")) for p in real):
        loo[SOURCE_ASSISTANT] = _agreement(np.array([float(p["assistant"]) for p in real]), y)
    for v in loo.values():
        v["n"] = len(real)
    soft = loo[SOURCE_SOFT]
    winners = [k for k, v in loo.items() if k != SOURCE_SOFT and v["mae"] < soft["mae"]
               and (v["spearman"] if v["spearman"] is not None else -2) > (soft["spearman"] if soft["spearman"]
                                                                          is not None else -2)]
    source = max(winners, key=lambda k: loo[k]["spearman"]) if winners else SOURCE_SOFT
    why = "; ".join(f"{k} rho {_fmt(v['spearman'])}, abs error {v['mae']:.3f}" for k, v in loo.items())
    reason = (f"leave-one-case-out over {len(real)} real per-label pairs ({len(cases)} cases"
              + (f", plus {len(synthetic)} synthetic at weight {SYNTHETIC_WEIGHT:.3f}" if synthetic else "")
              + f"): {why}; {source} " + ("wins" if source != SOURCE_SOFT else "stays"))
    X = np.stack([label_vector(p["raw"], p["label"], references, [str(p["case_id"])]) for p in list(real) + synthetic])
    yy = np.array([float(p["true"]) for p in list(real) + synthetic])
    ww = np.array([SYNTHETIC_WEIGHT if p.get("synthetic") else 1.0 for p in list(real) + synthetic])
    lam, mu, sc, coef, icpt = _fit(X, yy, ww)
    return LabelQualityModel(source=source, reason=reason, loo=loo,
                             params=[lam, mu.tolist(), sc.tolist(), coef.tolist(), icpt], **base)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
