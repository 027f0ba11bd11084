"""Model cards: what an ONNX segmentation model needs to be run correctly, and where it came from.

A card is JSON stored inside the ONNX file's metadata (key ``hila_model_card``) or, for third-party
files that have none, in a sidecar ``<model>.card.json`` / ``card.json`` beside the file. It says how
to prepare the input (modality, spacing, axis orientation, patch size, intensity normalisation), how
to read the output (labels, activation, post-processing) and what the model is (version, parent,
training set, metrics, licence, checksum). The inference engine refuses a model whose card is
missing, invalid or does not fit the image or the network, with one line that says why.

The ONNX file is read and written at the protobuf wire level (only the top-level ``metadata_props``
records are touched), so neither reading nor writing a card needs the ``onnx`` package.

Checksum: ``"sha256:<hex>"`` of the ONNX file's bytes with every top-level ``metadata_props`` record
left out. It therefore stays valid when the card (or any other metadata) is embedded or changed and
covers everything else: graph, weights, opsets. For a file without metadata (e.g. TAPS's
``model_v1.onnx``) it is simply the sha256 of the file. It is verified on load whenever a card has one.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from ..ground.durable import atomic_write_bytes
from ..ground.errors import HilaError
from . import catalog
from .cardsections import LEGACY_DICE_KEYS, Evaluation, GateVerdict, Metrics, TrainingRecord, case_ids  # noqa: F401 - re-exported: the card's sections are read here
from .normalize import finite_number, normalization_problem
from .onnxfile import OnnxInfo, inspect_onnx, onnx_checksum, with_metadata  # noqa: F401 - re-exported: callers read cards and checksums here

SCHEMA_VERSION = 1
METADATA_KEY = "hila_model_card"
MODALITIES = ("MR", "CT")
ACTIVATIONS = ("softmax", "sigmoid")
ORIENTATIONS = ("RAS", "LPS")
PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------------------------
# the card
# ----------------------------------------------------------------------------------------------

@dataclass
class LabelInfo:
    """One output label: its value in the label map, its segment name and its colour (RGB in 0..1)."""

    value: int
    name: str
    color: Tuple[float, float, float] = (0.9, 0.6, 0.3)

    def stored_color(self) -> List[float]:
        """The colour as the card stores it (4 decimals)."""
        return [round(float(c), 4) for c in self.color]

    def to_dict(self) -> Dict[str, Any]:
        return {"value": int(self.value), "name": self.name, "color": self.stored_color()}


@dataclass
class ModelCard:
    """Everything needed to run an ONNX segmentation model and to know what it is.

    Output channels: ``softmax`` models have ``len(labels) + 1`` channels, channel 0 background and
    channel i the label ``labels[i-1]``; ``sigmoid`` models have one channel per label, in order.
    Network arrays are (batch, channel, x, y, z) on a grid with the card's ``spacing`` whose axes
    point as ``orientation`` says (``RAS``, MONAI's default, for models trained with MONAI).
    """

    name: str
    labels: List[LabelInfo]
    spacing: Tuple[float, float, float]
    patch_size: Tuple[int, int, int]
    normalization: Dict[str, Any]
    modality: str = "MR"
    activation: str = "softmax"
    in_channels: int = 1
    orientation: str = "RAS"
    version: Union[int, str] = 1
    parent_version: Optional[Union[int, str]] = None
    #: e.g. {"smooth_sigma_vox": 2.5, "threshold": 0.55, "largest_component": true, "convex_slices": ["prostate"]}
    #: (convex_slices: labels made convex per axial slice, chosen by the gate where that raised their Dice)
    postprocess: Dict[str, Any] = field(default_factory=dict)
    #: window placement: {"overlap": 0.25, "mode": "gaussian", "size_divisor": 16 or [x, y, z],
    #: "max_window_voxels": N, "foreground": "above_mean"|"nonzero"|{"above": v}, "margin_vox": 5, "tta_flips": [[0], ...]}.
    #: Networks with dynamic spatial axes run the whole region as one window (sizes rounded up to
    #: size_divisor) when it has at most max_window_voxels voxels; otherwise patch_size windows with overlap.
    inference: Dict[str, Any] = field(default_factory=dict)
    #: region of interest: {"kind": "body"} (default) or {"kind": "center", "size": [x, y, z], "fallback": "body"}
    roi: Dict[str, Any] = field(default_factory=dict)
    architecture: Dict[str, Any] = field(default_factory=dict)
    training_set: List[Any] = field(default_factory=list)
    #: parity, validation, parent_validation, gate (:class:`~.cardsections.Metrics`); read ``mean_dice()``
    metrics: Metrics = field(default_factory=Metrics)
    licence: str = ""
    checksum: Optional[str] = None
    description: str = ""
    source: Dict[str, Any] = field(default_factory=dict)
    #: for presets: {"package": "taps", "resource": "resources/model_v1.onnx", "install": "pip install ..."}
    model_file: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: how the trainer made it (:class:`~.cardsections.TrainingRecord`); None: not made by the trainer (no key)
    training: Optional[TrainingRecord] = None

    # ---- conversions -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "labels":
                v = [lab.to_dict() for lab in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, (Metrics, TrainingRecord)):
                v = v.to_dict()
            if f.name == "extra" or (f.name == "training" and v is None):
                continue
            d[f.name] = v
        d.update(self.extra)
        return d

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "model card") -> "ModelCard":
        if not isinstance(d, dict):
            raise HilaError(f"{where}: a model card must be a JSON object, got {type(d).__name__}")
        sv = d.get("schema_version", SCHEMA_VERSION)
        if not isinstance(sv, int) or sv < 1:
            raise HilaError(f"{where}: schema_version must be a positive integer, got {sv!r}")
        if sv > SCHEMA_VERSION:
            raise HilaError(f"{where}: card schema version {sv} is newer than this HILASegment understands "
                            f"({SCHEMA_VERSION}); update HILASegment")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("name", "labels", "spacing", "patch_size", "normalization") if k not in d]
        if missing:
            raise HilaError(f"{where}: model card lacks {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in names}
        kw["extra"] = {k: v for k, v in d.items() if k not in names}
        # the typed sections, read and checked once (their unknown keys kept verbatim: to_dict gives back d)
        kw["metrics"] = Metrics.from_dict(d.get("metrics") or {}, f"{where}: metrics")
        if d.get("training") is not None:
            kw["training"] = TrainingRecord.from_dict(d["training"], f"{where}: training")
        elif "training" in d:
            kw["extra"]["training"] = kw.pop("training")
        labels = d["labels"]
        if not isinstance(labels, list) or not labels:
            raise HilaError(f"{where}: labels must be a non-empty list of {{value, name, color}}")
        out = []
        for i, lab in enumerate(labels):
            if not isinstance(lab, dict) or "value" not in lab or "name" not in lab:
                raise HilaError(f"{where}: label #{i + 1} must be an object with value and name, got {lab!r}")
            color = lab.get("color", (0.9, 0.6, 0.3))
            try:
                out.append(LabelInfo(int(lab["value"]), str(lab["name"]), tuple(float(c) for c in color)))
            except (TypeError, ValueError):
                raise HilaError(f"{where}: label #{i + 1} has a bad value or colour: {lab!r}") from None
        kw["labels"] = out
        for key in ("spacing", "patch_size"):
            try:
                kw[key] = tuple(kw[key])
            except TypeError:
                raise HilaError(f"{where}: {key} must be a list of three numbers, got {kw[key]!r}") from None
        card = cls(**kw)
        card.validate(where)
        return card

    @classmethod
    def from_json(cls, s: Union[str, bytes], where: str = "model card") -> "ModelCard":
        try:
            d = json.loads(s)
        except (ValueError, TypeError) as exc:
            raise HilaError(f"{where}: model card is not valid JSON ({exc})") from None
        return cls.from_dict(d, where)

    # ---- validation --------------------------------------------------------------------------
    def validate(self, where: str = "model card") -> "ModelCard":
        """Check every field; a problem raises one HilaError line naming the field."""
        def bad(msg: str) -> HilaError:
            return HilaError(f"{where}: {msg}")

        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("name must be a non-empty string")
        if self.modality not in MODALITIES:
            raise bad(f"modality must be one of {'/'.join(MODALITIES)}, got {self.modality!r}")
        if self.activation not in ACTIVATIONS:
            raise bad(f"activation must be softmax or sigmoid, got {self.activation!r}")
        if self.orientation not in ORIENTATIONS:
            raise bad(f"orientation must be RAS or LPS, got {self.orientation!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise bad(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if len(self.spacing) != 3 or not all(finite_number(s) and 0 < float(s) < 100 for s in self.spacing):
            raise bad(f"spacing must be three positive numbers in mm, got {list(self.spacing)!r}")
        if len(self.patch_size) != 3 or not all(isinstance(p, int) and 1 <= p <= 4096 for p in self.patch_size):
            raise bad(f"patch_size must be three positive integers, got {list(self.patch_size)!r}")
        values = [lab.value for lab in self.labels]
        if any(v < 1 or v > 255 for v in values):
            raise bad(f"label values must be 1..255 (0 is background), got {values}")
        if len(set(values)) != len(values):
            raise bad(f"label values must be unique, got {values}")
        names = [lab.name for lab in self.labels]
        if any(not n.strip() or "|" in n or ":" in n for n in names) or len(set(names)) != len(names):
            raise bad(f"label names must be unique, non-empty and free of '|' and ':', got {names}")
        for lab in self.labels:
            if len(lab.color) != 3 or not all(0.0 <= c <= 1.0 for c in lab.color):
                raise bad(f"label {lab.name!r}: color must be three numbers in 0..1, got {list(lab.color)}")
        problem = normalization_problem(self.normalization, self.modality)
        if problem:
            raise bad(problem)
        pp = self.postprocess or {}
        if not isinstance(pp, dict):
            raise bad("postprocess must be an object")
        unknown = set(pp) - {"smooth_sigma_vox", "threshold", "largest_component", "convex_slices"}
        if unknown:
            raise bad(f"postprocess has unknown keys {sorted(unknown)} (known: smooth_sigma_vox, threshold, "
                      f"largest_component, convex_slices)")
        hulls = pp.get("convex_slices", [])
        names = {lab.name for lab in self.labels}
        if not isinstance(hulls, list) or not all(isinstance(n, str) and n in names for n in hulls):
            raise bad(f"postprocess.convex_slices must list some of the card's labels {sorted(names)}, got {hulls!r}")
        if "threshold" in pp and not (finite_number(pp["threshold"]) and 0 < pp["threshold"] < 1):
            raise bad(f"postprocess.threshold must be in (0, 1), got {pp['threshold']!r}")
        if "threshold" in pp and self.activation != "sigmoid":
            raise bad("postprocess.threshold applies to sigmoid models only (softmax uses argmax)")
        if "smooth_sigma_vox" in pp and not (finite_number(pp["smooth_sigma_vox"]) and 0 <= pp["smooth_sigma_vox"] <= 20):
            raise bad(f"postprocess.smooth_sigma_vox must be in [0, 20], got {pp['smooth_sigma_vox']!r}")
        inf = self.inference or {}
        if "overlap" in inf and not (finite_number(inf["overlap"]) and 0 <= inf["overlap"] < 1):
            raise bad(f"inference.overlap must be in [0, 1), got {inf['overlap']!r}")
        if inf.get("mode", "gaussian") not in ("gaussian", "constant"):
            raise bad(f"inference.mode must be gaussian or constant, got {inf.get('mode')!r}")
        mv = inf.get("margin_vox", 5)
        if not ((isinstance(mv, int) and mv >= 0) or (isinstance(mv, list) and len(mv) == 3
                                                        and all(isinstance(m, int) and m >= 0 for m in mv))):
            raise bad(f"inference.margin_vox must be a non-negative integer or three of them, got {mv!r}")
        div = inf.get("size_divisor", 16)
        if not ((isinstance(div, int) and div >= 1) or (isinstance(div, list) and len(div) == 3
                                                          and all(isinstance(d, int) and d >= 1 for d in div))):
            raise bad(f"inference.size_divisor must be a positive integer or three of them, got {div!r}")
        roi = self.roi or {}
        kind = roi.get("kind", "body")
        if kind not in ("body", "center"):
            raise bad(f"roi.kind must be body or center, got {kind!r}")
        if kind == "center":
            size = roi.get("size")
            if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size)):
                raise bad(f"roi.size must be three positive integers (voxels on the model grid), got {size!r}")
            if roi.get("fallback", "body") not in ("body", "none"):
                raise bad(f"roi.fallback must be body or none, got {roi.get('fallback')!r}")
        if not isinstance(self.metrics, Metrics):
            raise bad(f"metrics must be read with Metrics.from_dict, got {type(self.metrics).__name__}")
        if self.training is not None and not isinstance(self.training, TrainingRecord):
            raise bad(f"training must be read with TrainingRecord.from_dict, got {type(self.training).__name__}")
        if not isinstance(self.licence, str):
            raise bad("licence must be a string")
        if self.checksum is not None and not (isinstance(self.checksum, str) and self.checksum.startswith("sha256:")
                                              and len(self.checksum) == 71):
            raise bad(f"checksum must be 'sha256:<64 hex digits>', got {self.checksum!r}")
        return self

    # ---- output layout -----------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return len(self.labels) + (1 if self.activation == "softmax" else 0)

    # ---- what readers ask (named, so no reader probes the card's JSON) -------------------------
    def label_names(self) -> List[str]:
        return [lab.name for lab in self.labels]

    def mean_dice(self) -> Optional[float]:
        """The model's validation Dice (mean over labels), or None when its card states none."""
        return self.metrics.mean_dice()

    def training_loop(self) -> Dict[str, Any]:
        """The trainer's loop settings (``training.loop``); empty for a model the trainer did not make."""
        return dict(self.training.loop or {}) if self.training is not None else {}

    def seen_cases(self) -> Set[str]:
        """Case ids the model trained on or had a checkpoint chosen on (its training set, the checkpoint's cases)."""
        chosen = self.training.chosen_on() if self.training is not None else []
        return case_ids(self.training_set) | {str(c) for c in chosen}

    def gated_cases(self) -> Set[str]:
        """Case ids whose corrections gated the model (``training.gate_set``)."""
        return case_ids(self.training.gate_set) if self.training is not None else set()

    def trained_corrections(self) -> Set[Tuple[str, int]]:
        """(case id, correction version) of each correction in the training set."""
        return {(str(t.get("case_id")), int(t.get("correction_version", 0))) for t in self.training_set
                if isinstance(t, dict)}


def sidecar_paths(onnx_path: PathLike) -> List[Path]:
    p = Path(onnx_path)
    return [p.with_name(p.name[:-5] + ".card.json") if p.name.lower().endswith(".onnx") else p.with_name(p.name + ".card.json"),
            p.with_name("card.json")]


def read_card(onnx_path: PathLike, info: Optional[OnnxInfo] = None) -> ModelCard:
    """The card of an ONNX model: from its metadata (key ``hila_model_card``), else from a sidecar JSON."""
    p = Path(onnx_path)
    info = info or inspect_onnx(p)
    if METADATA_KEY in info.metadata:
        return ModelCard.from_json(info.metadata[METADATA_KEY], f"{p} (embedded model card)")
    for side in sidecar_paths(p):
        if side.is_file():
            return ModelCard.from_json(side.read_text(encoding="utf-8"), str(side))
    raise HilaError(f"{p}: no model card (no '{METADATA_KEY}' in the ONNX metadata and no "
                    f"{sidecar_paths(p)[0].name} or card.json beside it); write one with modelcard.write_card")


def write_card(onnx_in: PathLike, card: ModelCard, onnx_out: Optional[PathLike] = None) -> ModelCard:
    """Embed ``card`` into the ONNX file (``onnx_out``, default in place, written atomically).

    The card's checksum is set to the file's checksum; other metadata entries are kept.
    Returns the card as written.
    """
    src = Path(onnx_in)
    dst = Path(onnx_out) if onnx_out is not None else src
    info = inspect_onnx(src)
    card = dataclasses.replace(card, checksum=info.checksum)
    card.validate(f"{dst} (model card)")
    atomic_write_bytes(dst, with_metadata(src, info, METADATA_KEY, card.to_json()))
    return card


# ----------------------------------------------------------------------------------------------
# finding models by name
# ----------------------------------------------------------------------------------------------

def preset_names() -> List[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def _package_resource(spec: Dict[str, Any], where: str) -> Path:
    pkg = spec.get("package")
    res = spec.get("resource", "")
    install = spec.get("install", f"pip install {pkg}")
    try:
        found = importlib.util.find_spec(pkg) if pkg else None  # does not import (run) the package
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise HilaError(f"model '{where}' needs the Python package '{pkg}', which is not installed; "
                        f"install it with: {install}")
    path = Path(list(found.submodule_search_locations)[0]) / res
    if not path.is_file():
        raise HilaError(f"model '{where}': package '{pkg}' is installed but has no {res}; reinstall it with: {install}")
    return path


@dataclass(frozen=True)
class ResolvedModel:
    """A model found by name or path: its file, its card, and what was read of the file to find them (``info``:
    metadata and checksum, streamed once; None for a preset, whose card is a JSON file), so no caller streams and
    hashes the ONNX file again before onnxruntime reads it."""

    path: Path
    card: ModelCard
    info: Optional[OnnxInfo] = None


def resolve(name_or_path: Union[str, PathLike]) -> ResolvedModel:
    """A model by preset name (``taps``), starter name (``<name>.onnx`` in ``catalog.model_dirs()``) or ONNX path."""
    s = str(name_or_path)
    preset = PRESETS_DIR / f"{s}.json"
    if os.sep not in s and "/" not in s and preset.is_file():
        card = ModelCard.from_json(preset.read_text(encoding="utf-8"), f"preset {preset.name}")
        if not card.model_file:
            raise HilaError(f"preset {preset.name}: no model_file entry")
        return ResolvedModel(_package_resource(card.model_file, s), card)
    p = Path(s).expanduser()
    info = None
    if not p.exists() and not s.lower().endswith(".onnx"):
        cand = catalog.find_model_file(s)
        if cand is not None:
            info = _check_catalog_checksum(s, cand)
            p = cand
        else:
            known = sorted(set(preset_names()) | {e.name for e in catalog.entries(include_tests=True)})
            raise HilaError(f"model '{s}': no such model file, preset or starter model (known: {', '.join(known) or 'none'})")
    if p.is_dir():
        raise HilaError(f"{p}: is a folder; give the .onnx model file")
    info = info or inspect_onnx(p)
    return ResolvedModel(p, read_card(p, info), info)


def resolve_model(name_or_path: Union[str, PathLike]) -> Tuple[Path, ModelCard]:
    """(file, card) of a model by preset name, starter name or ONNX path (:func:`resolve`)."""
    r = resolve(name_or_path)
    return r.path, r.card


def _check_catalog_checksum(name: str, path: Path) -> Optional[OnnxInfo]:
    """A file found by a catalog model's name (``HILA_MODELS_DIR`` first) must be that model: another network saved
    under the name would run, and start workspaces, as if it were the catalog's (its own card cannot tell).
    Returns what it read of the file (None when the catalog states no checksum)."""
    entry = next((e for e in catalog.entries(include_tests=True) if e.name == name and e.kind == "file"), None)
    if entry is None or not entry.checksum:
        return None
    info = inspect_onnx(path)
    actual = info.checksum
    if actual != entry.checksum:
        raise HilaError(f"{path}: found as model '{name}', but it is not the catalog's {name} v{entry.version} (its "
                        f"checksum is {actual[:19]}..., the catalog's {entry.checksum[:19]}...); rename your own "
                        "model or give its path")
    return info


def verify_checksum(card: ModelCard, info: OnnxInfo) -> None:
    """Refuse a model whose bytes are not the ones its card describes."""
    if card.checksum and card.checksum != info.checksum:
        raise HilaError(f"{info.path}: checksum mismatch: the model card says {card.checksum[:19]}... but the "
                        f"file is {info.checksum[:19]}...; the file was changed or the card belongs to another model")
