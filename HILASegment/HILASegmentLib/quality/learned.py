"""The learned quality model (source b): predicted Dice fitted on the workspace's own corrections.

Every accepted correction of a prediction is a free training example: the prediction's features
(computed right after inference by ``add_quality_features``, stored in its summary) and the Dice the radiologist's correction showed
against it. After each training run a small regressor is fitted on those pairs and recorded for the
model version that is current then (the one whose predictions it will score). It is *used* only
when it beats the unsupervised estimate (source a, the expected soft Dice of ``inference.errormap``) on the
same pairs by leave-one-out: a higher Spearman ρ **and** a lower mean absolute error. Otherwise
source (a) stays in use and the record says why.

The regressor is ridge regression on standardised features (numpy only: a few dozen pairs and a
dozen features need nothing more, and the inference tier must not grow a dependency). The ridge
strength is chosen by the closed-form leave-one-out error on the training pairs; the comparison
with (a) is a *nested* leave-one-out (each held-out pair is predicted by a model whose features
scaling and ridge strength never saw it), so the figure that decides is honest.

A quality model scores only predictions of the model version it was fitted for: anything else is
refused (:meth:`QualityModel.score`), never silently scored.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from ..ground.metrics import spearman
from ..inference.errormap import review_region
from ..inference.segmenter import InferenceResult
from ..inference.summary import PredictionSummary
from .plausibility import RAW_KEYS, extra_pieces, label_shape, surface_voxels, zscore

#: The features of one prediction, in the order the regressor reads them (see :func:`prediction_features`).
FEATURES = ("soft_dice_mean", "soft_dice_min", "err_mean_fg", "err_mean_review", "err_mass_ratio",
            "uncertain_fraction", "log_volume_ml", "empty_label_fraction", "boundary_ratio", "components",
            "intensity_contrast", "intensity_sd_fg", "volume_z_max")
#: Features not stored with the prediction but computed against the workspace's accepted corrections when a pair is
#: fitted or a prediction scored (``with_plausibility``), and their value where there is nothing to compare with.
WORKSPACE_FEATURES = {"volume_z_max": 0.0}
#: Fewer accepted pairs than this: no learned model is fitted (leave-one-out on less says nothing).
MIN_PAIRS = 8
#: Ridge strengths tried (on standardised features).
LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SOURCE_LEARNED, SOURCE_UNSUPERVISED = "learned", "expected_soft_dice"


# --------------------------------------------------------------------------- features

def prediction_features(err: np.ndarray, label: np.ndarray, image: np.ndarray, spacing: Sequence[float],
                        label_values: Sequence[int], soft_dice: Sequence[Optional[float]]) -> Dict[str, float]:
    """The named features of one prediction (arrays on one grid, z-y-x; ``spacing`` x-y-z in mm).

    Error map: mean over the predicted foreground and over the review region (top 20 %), expected
    wrong voxels per predicted voxel, share of voxels more likely wrong than right. Volume and shape:
    log volume, labels left empty, surface voxels per voxel (ragged or thin shapes are harder),
    extra connected pieces per label. Intensity: contrast between the foreground and the voxels
    around it, and the foreground's spread, both scale-free (MR has no fixed units).
    """
    fg = label > 0
    n_fg = int(np.count_nonzero(fg))
    vox_ml = float(np.prod(spacing)) / 1000.0
    sd = [float(d) for d in soft_dice if d is not None]
    out = {"soft_dice_mean": float(np.mean(sd)) if sd else 0.0, "soft_dice_min": float(min(sd)) if sd else 0.0}
    region = review_region(err, label)
    out["err_mean_fg"] = float(err[fg].mean()) if n_fg else 1.0
    out["err_mean_review"] = float(err[region].mean()) if region.any() else 0.0
    out["err_mass_ratio"] = min(float(err.sum(dtype=np.float64)) / max(n_fg, 1), 10.0)
    out["uncertain_fraction"] = min(float(np.count_nonzero(err > 0.5)) / max(n_fg, 1), 10.0)
    out["log_volume_ml"] = math.log1p(n_fg * vox_ml)
    present = [v for v in label_values if np.any(label == v)]
    out["empty_label_fraction"] = 1.0 - len(present) / max(len(label_values), 1)
    if not n_fg:
        out.update(boundary_ratio=1.0, components=0.0, intensity_contrast=0.0, intensity_sd_fg=0.0)
        return {k: round(v, 6) for k, v in out.items()}
    idx = np.nonzero(fg)
    box = tuple(slice(max(int(i.min()) - 3, 0), int(i.max()) + 4) for i in idx)
    lab, img = label[box], image[box].astype(np.float64)
    surface, pieces = 0, []
    for v in present:
        m = lab == v
        surface += surface_voxels(m)
        pieces.append(extra_pieces(m))
    out["boundary_ratio"] = surface / n_fg
    out["components"] = float(np.mean(pieces)) if pieces else 0.0
    inside, around = img[lab > 0], img[lab == 0]
    spread = float(np.subtract(*np.percentile(img, [75, 25]))) or float(img.std()) or 1.0
    pooled = float(inside.std() + (around.std() if around.size else 0.0)) or 1.0
    out["intensity_contrast"] = abs(float(inside.mean()) - float(around.mean() if around.size else 0.0)) / pooled
    out["intensity_sd_fg"] = min(float(inside.std()) / spread, 10.0)
    return {k: round(float(v), 6) for k, v in out.items()}


def add_quality_features(result: InferenceResult, image: sitk.Image, assistant: Optional[Any] = None,
                         progress: Optional[Any] = None) -> InferenceResult:
    """Add a fresh prediction's features (``summary["quality_features"]``) and return it: computed here, after
    inference, from what the Segmenter returned (review map, label map, expected Dice per label) and the image, so
    the inference layer never needs the quality layer. Every prediction that is stored or ranked goes through it.
    With the box ``assistant`` (``hila infer --second-opinion``) the features also hold ``assistant_agreement``
    (mean over the predicted labels, ``secondopinion``) and each label's ``assistant_agreement:<name>``; they are
    read by the per-label quality model (``labelmodel``). Each label's raw shape figures are stored as
    ``<figure>:<name>`` (``plausibility.RAW_KEYS``)."""
    if result.review_map is None or result.box is None:
        raise ValueError("quality features need the prediction's review map and box (a fresh Segmenter result)")
    low, high = result.box
    sl = tuple(slice(int(a), int(b)) for a, b in zip(reversed(low), reversed(high)))  # the review map is 0 outside
    pdice = {lab.get("name"): lab.get("predicted_dice") for lab in result.summary.get("labels") or []}
    labels = result.card.labels
    result.summary["quality_features"] = prediction_features(
        sitk.GetArrayViewFromImage(result.review_map)[sl], sitk.GetArrayViewFromImage(result.label)[sl],
        sitk.GetArrayViewFromImage(image)[sl], image.GetSpacing(), [lab.value for lab in labels],
        [pdice.get(lab.name) for lab in labels])
    feats = result.summary["quality_features"]
    lab_arr, img_arr = sitk.GetArrayViewFromImage(result.label)[sl], sitk.GetArrayViewFromImage(image)[sl]
    for lab in labels:  # each label's raw shape figures (``plausibility``), for the per-label quality model
        raw = label_shape(lab_arr == lab.value, img_arr, image.GetSpacing())
        feats.update({f"{k}:{lab.name}": raw[k] for k in RAW_KEYS})
    if assistant is not None:
        from .secondopinion import assistant_agreement
        per = assistant_agreement(sitk.GetArrayViewFromImage(result.label), image,
                                  [(lab.value, lab.name) for lab in labels], assistant, progress)
        feats = result.summary["quality_features"]
        feats["assistant_agreement"] = round(float(np.mean(list(per.values()))), 4) if per else 0.0
        feats.update({f"assistant_agreement:{n}": d for n, d in per.items()})
    return result


def volume_z_max(summary: PredictionSummary, references: Mapping[str, Mapping[str, Mapping[str, float]]],
                 exclude: Sequence[str] = ()) -> float:
    """The largest |z-score| of a prediction's label volumes against the same labels in the accepted corrections of
    the references' cases other than ``exclude`` (``plausibility.zscore``; 0 where no label has enough)."""
    zs = []
    for lab in summary.labels:
        refs = [r[lab.name]["ml"] for c, r in references.items() if c not in exclude and lab.name in r]
        z = zscore(float(lab.ml or 0.0), refs)
        if z is not None:
            zs.append(abs(z))
    return max(zs) if zs else 0.0


def with_plausibility(summary: Optional[PredictionSummary], references: Mapping[str, Mapping[str, Mapping[str, float]]],
                      exclude: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """A prediction's stored features plus :data:`WORKSPACE_FEATURES` against ``references`` (its own case excluded
    when it has a correction: its truth must not make its own feature)."""
    if summary is None or not isinstance(summary.quality_features, Mapping):
        return None
    return {**summary.quality_features, "volume_z_max": round(volume_z_max(summary, references, exclude), 4)}


def feature_vector(features: Optional[Mapping[str, Any]]) -> Optional[np.ndarray]:
    """The features in :data:`FEATURES` order (a missing workspace feature reads as having nothing to compare with);
    None when any other is missing or not finite."""
    if not isinstance(features, Mapping):
        return None
    try:
        x = np.array([float(features.get(k, WORKSPACE_FEATURES.get(k)) if k in WORKSPACE_FEATURES else features[k])
                      for k in FEATURES], float)
    except (KeyError, TypeError, ValueError):
        return None
    return x if np.all(np.isfinite(x)) else None


# --------------------------------------------------------------------------- ridge regression

def _ridge(X: np.ndarray, y: np.ndarray, lam: float, w: Optional[np.ndarray] = None):
    """Weights on standardised features: (mean, scale, w, intercept); ``w`` weighs the pairs (default: equally)."""
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    mu = np.average(X, axis=0, weights=w)
    sc = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=w))
    sc = np.where(sc > 1e-9, sc, 1.0)
    Z = (X - mu) / sc
    yb = float(np.average(y, weights=w))
    coef = np.linalg.solve(Z.T @ (Z * w[:, None]) + lam * np.eye(Z.shape[1]), Z.T @ (w * (y - yb)))
    return mu, sc, coef, yb


def _loo_error(X: np.ndarray, y: np.ndarray, lam: float, w: Optional[np.ndarray] = None) -> float:
    """Closed-form leave-one-out mean squared error of (weighted) ridge (hat-matrix shortcut, intercept included)."""
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    mu, sc, coef, b = _ridge(X, y, lam, w)
    Z = (X - mu) / sc
    A = np.linalg.inv(Z.T @ (Z * w[:, None]) + lam * np.eye(Z.shape[1]))
    h = w / w.sum() + w * np.einsum("ij,jk,ik->i", Z, A, Z)
    resid = (y - (Z @ coef + b)) / np.maximum(1.0 - h, 1e-6)
    return float(np.average(resid ** 2, weights=w))


def _fit(X: np.ndarray, y: np.ndarray, w: Optional[np.ndarray] = None):
    lam = min(LAMBDAS, key=lambda lm: _loo_error(X, y, lm, w))
    return (lam,) + _ridge(X, y, lam, w)


def _predict(params, X: np.ndarray) -> np.ndarray:
    _lam, mu, sc, w, b = params
    return np.clip(((X - mu) / sc) @ w + b, 0.0, 1.0)


def nested_loo(X: np.ndarray, y: np.ndarray, groups: Optional[Sequence] = None) -> np.ndarray:
    """Each pair predicted by a model fitted (scaling and ridge strength chosen too) without it; with
    ``groups`` (e.g. the case), without any pair of its group (several model versions' predictions of one case)."""
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    out = np.empty(len(y))
    for k in np.unique(g):
        held = g == k
        out[held] = _predict(_fit(X[~held], y[~held]), X[held])
    return out


# --------------------------------------------------------------------------- the model

@dataclass
class QualityModel:
    """A fitted quality model for one model version, with the leave-one-out figures that decide its use."""

    model_version: int
    n_pairs: int
    in_use: bool
    reason: str
    features: List[str] = field(default_factory=lambda: list(FEATURES))
    mean: Optional[List[float]] = None
    scale: Optional[List[float]] = None
    weights: Optional[List[float]] = None
    intercept: Optional[float] = None
    ridge_lambda: Optional[float] = None
    #: ``{"learned": {"spearman", "mae"}, "unsupervised": {...}}`` over the pairs, by nested leave-one-out.
    loo: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    pairs: List[int] = field(default_factory=list)      # prediction ids it was fitted on
    fitted_on_versions: List[int] = field(default_factory=list)
    #: the per-label source for this version (``labelmodel.LabelQualityModel.to_dict()``); None before it existed
    per_label: Optional[Dict[str, Any]] = None
    #: the accepted corrections' label figures at fitting time (``plausibility``), for ``volume_z_max`` when scoring
    references: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return SOURCE_LEARNED if self.in_use else SOURCE_UNSUPERVISED

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "quality model") -> "QualityModel":
        try:
            qm = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
            qm.model_version = int(qm.model_version)
        except (TypeError, ValueError) as exc:
            raise HilaError(f"{where}: not a quality model record ({exc})") from None
        if qm.in_use and (qm.weights is None or list(qm.features) != list(FEATURES)
                          or len(qm.weights) != len(FEATURES)):
            # fitted by an older version on other features: set aside (the unsupervised estimate stands), not an
            # error, so that ranking and status keep working until the next training run refits it
            qm.in_use = False
            qm.reason = (f"set aside: fitted on other features ({', '.join(qm.features)}) than this version's; "
                         "hila train refits it after its next run")
        return qm

    def predict(self, features: Optional[Mapping[str, Any]]) -> Optional[float]:
        """Predicted Dice for a feature dict (None when not in use or a feature is missing)."""
        x = feature_vector(features)
        if not self.in_use or x is None or self.weights is None:
            return None
        params = (self.ridge_lambda, np.array(self.mean), np.array(self.scale), np.array(self.weights), self.intercept)
        return round(float(_predict(params, x[None])[0]), 4)

    def score(self, summary: Optional[PredictionSummary], where: str = "prediction") -> Optional[float]:
        """Predicted Dice of a prediction of *this* model version; a prediction of another version is refused."""
        if summary is None:
            return None
        if summary.model_version is None or int(summary.model_version) != self.model_version:
            raise HilaError(f"{where}: made by model v{summary.model_version}, but this quality model scores "
                            f"model v{self.model_version} predictions only")
        return self.predict(with_plausibility(summary, self.references))


def fit_quality_model(pairs: Sequence[Mapping[str, Any]], model_version: int,
                      references: Optional[Mapping[str, Any]] = None) -> QualityModel:
    """Fit on ``pairs`` (``prediction_id``, ``model_version``, ``case_id``, ``features``, ``unsupervised`` Dice (source a),
    ``true`` Dice of the accepted correction against the prediction) and decide whether it beats (a). ``references``:
    the accepted corrections' figures the pairs' ``volume_z_max`` was taken against, kept to score with."""
    usable = [p for p in pairs if feature_vector(p.get("features")) is not None
              and _finite(p.get("true")) and _finite(p.get("unsupervised"))]
    base = dict(model_version=int(model_version), n_pairs=len(usable), pairs=[int(p["prediction_id"]) for p in usable],
                references={str(c): {str(n): dict(r) for n, r in v.items()} for c, v in (references or {}).items()},
                fitted_on_versions=sorted({int(p["model_version"]) for p in usable if p.get("model_version") is not None}))
    if len(usable) < MIN_PAIRS:
        return QualityModel(in_use=False, reason=f"only {len(usable)} accepted correction(s) of predictions with "
                            f"features; a learned model needs {MIN_PAIRS}", **base)
    X = np.stack([feature_vector(p["features"]) for p in usable])
    y = np.array([float(p["true"]) for p in usable])
    a = np.array([float(p["unsupervised"]) for p in usable])
    b = nested_loo(X, y, [p.get("case_id", i) for i, p in enumerate(usable)])  # a case's pairs held out together
    loo = {"learned": _agreement(b, y), "unsupervised": _agreement(a, y)}
    lam, mu, sc, w, icpt = _fit(X, y)
    rb, ra = loo["learned"]["spearman"], loo["unsupervised"]["spearman"]
    better_rank = (rb if rb is not None else -2.0) > (ra if ra is not None else -2.0)
    better_err = loo["learned"]["mae"] < loo["unsupervised"]["mae"]
    in_use = better_rank and better_err
    why = (f"leave-one-out over {len(usable)} pairs: learned rho {_fmt(rb)}, abs error {loo['learned']['mae']:.3f}; "
           f"unsupervised rho {_fmt(ra)}, abs error {loo['unsupervised']['mae']:.3f}")
    reason = ("beats the unsupervised estimate: " if in_use else "does not beat the unsupervised estimate: ") + why
    return QualityModel(in_use=in_use, reason=reason, mean=mu.tolist(), scale=sc.tolist(), weights=w.tolist(),
                        intercept=icpt, ridge_lambda=lam, loo=loo, **base)


def _agreement(pred: np.ndarray, true: np.ndarray) -> Dict[str, Optional[float]]:
    rho = spearman(pred, true)
    return {"spearman": None if rho is None else round(rho, 4), "mae": round(float(np.mean(np.abs(pred - true))), 4)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"
