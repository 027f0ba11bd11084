"""The plain records a workspace hands out (dataclasses, no behaviour); label colours come from ``colors``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from ..models.modelcard import ModelCard

QUALITIES = ("reviewed", "rough", "weak")
MODALITIES = ("MR", "CT")
MODEL_STATUSES = ("candidate", "current", "retired")
RUN_STATUSES = ("running", "done", "cancelled", "failed")


def _plain(value):
    """Paths to strings, recursively, so every record's dict is JSON-able as it stands."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


class _Record:
    def to_dict(self) -> dict:
        return _plain(asdict(self))


@dataclass(frozen=True)
class WorkspaceLabel:
    value: int
    name: str
    color: Tuple[float, float, float]


@dataclass(frozen=True)
class Settings:
    modality: str
    labels: List[WorkspaceLabel]
    created_at: str = ""

    def label_pairs(self) -> List[Tuple[int, str]]:
        return [(l.value, l.name) for l in self.labels]

    def names(self) -> List[str]:
        return [l.name for l in self.labels]


@dataclass
class Case(_Record):
    case_id: str
    name: str
    content_hash: str
    path: Path
    sha256: str
    source_path: Optional[str]
    grid: dict
    imported_at: str
    existing: bool = False  # set by import_volume when the volume was already there


@dataclass
class Prediction(_Record):
    prediction_id: int
    case_id: str
    model_version: Optional[int]
    path: Path
    sha256: str
    uncertainty: Optional[dict]
    created_at: str


@dataclass
class Correction(_Record):
    correction_id: int
    case_id: str
    version: int
    path: Path
    sha256: str
    quality: str
    annotator: Optional[str]
    seconds: Optional[float]
    based_on: Optional[int]
    effort: dict
    created_at: str


@dataclass
class ModelRecord(_Record):
    """A registered model version; ``card`` is read and checked once, when the registry reads its row."""

    version: int
    path: Path
    sha256: str
    card: "ModelCard"
    parent: Optional[int]
    status: str
    checkpoint_path: Optional[Path]
    training_run: Optional[int]
    created_at: str

    def to_dict(self) -> dict:
        """The record as JSON (``hila models --json``), its card in the card's own JSON form."""
        return {k: (self.card.to_dict() if k == "card" else _plain(getattr(self, k)))
                for k in self.__dataclass_fields__}

    def segmenter(self, threads: Optional[int] = None, device: str = "auto"):
        """The Segmenter of this version with the registry's card (an imported model such as TAPS carries none
        inside its ONNX file, so a workspace model is always run with the card the registry keeps)."""
        from ..inference.segmenter import Segmenter  # onnxruntime: only when a model is run

        return Segmenter(self.path, threads=threads, device=device, card=self.card)


@dataclass(frozen=True)
class SnapshotItem(_Record):
    """One training example: a case's image and one exact, immutable correction version of it."""

    case_id: str
    correction_version: int
    image_path: Path
    label_path: Path
    quality: str
    correction_id: int = 0
    case_name: str = ""


@dataclass
class TrainingRun(_Record):
    run_id: int
    status: str
    snapshot: List[SnapshotItem]
    parent_model: Optional[int]
    model_version: Optional[int]
    metrics: Optional[dict]
    log: str
    started_at: str
    finished_at: Optional[str]
    host: Optional[str] = None
    pid: Optional[int] = None


@dataclass
class CheckReport:
    """What ``check`` found. ``ok`` is False only for real damage (a row whose file is gone or differs)."""

    ok: bool
    rows_checked: int = 0
    files_checked: int = 0
    problems: List[str] = field(default_factory=list)
    orphans: List[str] = field(default_factory=list)      # placed files no row names (interrupted writes)
    foreign: List[str] = field(default_factory=list)      # files that are not ours in managed folders
    stale_temporaries: List[str] = field(default_factory=list)
    busy_temporaries: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    repaired: List[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.ok:
            first = self.problems[0] if self.problems else "damaged"
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"check FAILED: {len(self.problems)} problem(s): {first}{more}"
        bits = [f"check ok: {self.rows_checked} ledger rows, {self.files_checked} files verified"]
        if self.orphans:
            bits.append(f"{len(self.orphans)} uncommitted file(s) from interrupted writes"
                        + ("" if self.repaired else " (hila check --repair moves them to lost+found/)"))
        if self.stale_temporaries:
            bits.append(f"{len(self.stale_temporaries)} stale temporaries")
        if self.busy_temporaries:
            bits.append(f"{len(self.busy_temporaries)} writes in progress")
        if self.warnings:
            bits.append(f"{len(self.warnings)} warning(s): {self.warnings[0]}")
        moved = [r for r in self.repaired if " -> " in r]
        if moved:
            bits.append(f"repaired: {len(moved)} item(s) moved to lost+found/")
        if len(moved) < len(self.repaired):
            bits.append("; ".join(r for r in self.repaired if " -> " not in r))
        return "; ".join(bits)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        return d


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
