"""The workspace's one face, :class:`Workspace`, and how a workspace comes to be: creating one
(recovering from an interrupted ``hila init``) and opening one.

The work is done in parts, one job each, that :class:`Workspace` builds once, in dependency order, each
handed what it needs in its constructor (:class:`Parts`): ``base.Core`` (the folder, ledger, file store,
settings, event log and the one write pattern every stored file follows: stage, place, insert the row, undo on
error, :meth:`base.Core.store`), ``casestore`` (import; case images read through ``readcache``), ``labels``
(validating what is handed in), ``predictions``, ``corrections`` (and effort), ``runs`` (training snapshots and
runs), ``registry`` (model versions), ``qualitymodels`` (the learned quality model per model version),
``suspectflags``, ``reports`` (status, rank) and ``dicom`` (DICOM series of cases, SEG/RTSTRUCT in and out).
``check`` and ``export`` are functions of a workspace. Every public method of :class:`Workspace` is a thin
delegate to the one definition in its part.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union, cast

from ..ground.colors import default_color, label_color
from ..ground.durable import fsync_dir, fsync_file
from ..ground.errors import HilaError
from ..ground.paths import check_readable
from ..ground.progress import ProgressFn
from ..models.modelcard import ModelCard, resolve_model
from .base import Core, PathLike, now, user
from .casestore import Cases
from .check import check_workspace
from .corrections import Corrections
from .dicom import Dicom
from .export import export_workspace
from .files import MANAGED_DIRS, TMP_DIR, FileStore, Staged
from .labels import Labels
from .ledger import LEDGER_NAME, Ledger
from .predictions import Predictions
from .qualitymodels import QualityModels
from .readcache import ImageCache
from .records import MODALITIES, CheckReport, Settings, dumps
from .registry import Registry
from .reports import Reports
from .runs import Runs
from .suspectflags import Suspects

_LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _\-.()/+]*$")


def parse_labels(labels: Union[str, Sequence[str]]) -> List[str]:
    """Workspace label names from ``"a,b,c"`` or a list; HilaError for empty, duplicate or odd names."""
    if isinstance(labels, str):
        labels = labels.split(",")
    names = [str(n).strip() for n in labels]
    if not names or any(not n for n in names):
        raise HilaError(f"labels {','.join(names)!r}: give one or more non-empty names, e.g. --labels prostate,bladder,rectum")
    for n in names:
        if not _LABEL_NAME.match(n):
            bad = sorted({ch for ch in n if not _LABEL_NAME.match("a" + ch)})
            raise HilaError(f"label name {n!r}: {' '.join(bad) or 'its first character'} not allowed; use ASCII "
                            "letters A-Z a-z, digits 0-9, space, _ - . ( ) / + (starting with a letter or digit)")
    lowered = [n.lower() for n in names]
    dups = sorted({n for n in lowered if lowered.count(n) > 1})
    if dups:
        raise HilaError(f"labels: duplicate name(s) {', '.join(dups)}")
    if len(names) > 255:
        raise HilaError(f"labels: {len(names)} names; at most 255")
    return names


def parse_modality(modality: str) -> str:
    m = str(modality or "").strip().upper()
    m = {"MRI": "MR"}.get(m, m)
    if m not in MODALITIES:
        raise HilaError(f"modality {modality!r}: use MR or CT")
    return m


F = TypeVar("F", bound=Callable[..., Any])


def _delegate(part: str, method: F) -> F:
    """``Workspace.<name>``: the part's ``method``, called on the workspace's instance of that part (one
    definition, in the part; the workspace keeps its name so callers need not know the parts)."""
    name = method.__name__

    @wraps(method)
    def call(self: "Workspace", *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self.parts, part), name)(*args, **kwargs)

    return cast(F, call)


@dataclass(frozen=True)
class Parts:
    """The parts of one open workspace, each built with the parts it uses (the order below is the order
    they are built in: a part needs only parts above it)."""

    core: Core
    images: ImageCache
    cases: Cases
    labels: Labels
    predictions: Predictions
    corrections: Corrections
    runs: Runs
    registry: Registry
    quality: QualityModels
    suspects: Suspects
    reports: Reports
    dicom: Dicom

    @classmethod
    def build(cls, root: Path, ledger: Ledger) -> "Parts":
        core = Core(root, ledger)
        images = ImageCache()
        cases = Cases(core, images)
        labels = Labels(core, cases)
        predictions = Predictions(core, cases, labels)
        corrections = Corrections(core, cases, labels)
        registry = Registry(core)
        quality = QualityModels(core, registry, cases)
        suspects = Suspects(core)
        return cls(core, images, cases, labels, predictions, corrections, Runs(core), registry, quality, suspects,
                   Reports(core, registry, quality, suspects), Dicom(core, cases, predictions, corrections))


class Workspace:
    """A HILASegment workspace folder: ``hila.sqlite`` (the ledger) and immutable files beside it."""

    def __init__(self, root: Path, ledger: Ledger):
        self.parts = Parts.build(root, ledger)
        self.core = self.parts.core
        self.root = self.core.root
        self.ledger = self.core.ledger
        self.files = self.core.files

    def close(self) -> None:
        self.core.close()
        self.parts.images.clear()  # the cached images go with the workspace, not with the object

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def settings(self) -> Settings:
        """Modality and labels (read once; they never change after ``create``)."""
        return self.core.settings

    abspath = _delegate("core", Core.abspath)
    events = _delegate("core", Core.events)
    # cases
    cases = _delegate("cases", Cases.cases)
    case = _delegate("cases", Cases.case)
    case_image = _delegate("cases", Cases.case_image)
    check_modality = _delegate("cases", Cases.check_modality)
    import_volume = _delegate("cases", Cases.import_volume)
    # labels handed in
    validate_label = _delegate("labels", Labels.validate_label)
    read_label_file = _delegate("labels", Labels.read_label_file)
    # predictions
    add_prediction = _delegate("predictions", Predictions.add_prediction)
    record_prediction = _delegate("predictions", Predictions.record_prediction)
    workspace_label = _delegate("predictions", Predictions.workspace_label)
    prediction_segmentation = _delegate("predictions", Predictions.prediction_segmentation)
    prediction = _delegate("predictions", Predictions.prediction)
    predictions = _delegate("predictions", Predictions.predictions)
    # corrections
    submit = _delegate("corrections", Corrections.submit)
    submit_marks = _delegate("corrections", Corrections.submit_marks)
    correction = _delegate("corrections", Corrections.correction)
    corrections = _delegate("corrections", Corrections.corrections)
    correction_label = _delegate("corrections", Corrections.correction_label)
    # training snapshots and runs
    snapshot = _delegate("runs", Runs.snapshot)
    recover_dead_runs = _delegate("runs", Runs.recover_dead_runs)
    start_training_run = _delegate("runs", Runs.start_training_run)
    training_run = _delegate("runs", Runs.training_run)
    training_runs = _delegate("runs", Runs.training_runs)
    finish_training_run = _delegate("runs", Runs.finish_training_run)
    # model versions
    models = _delegate("registry", Registry.models)
    model = _delegate("registry", Registry.model)
    current_model = _delegate("registry", Registry.current_model)
    next_model_version = _delegate("registry", Registry.next_model_version)
    add_model = _delegate("registry", Registry.add_model)
    promote = _delegate("registry", Registry.promote)
    rollback = _delegate("registry", Registry.rollback)
    # quality models and suspects
    quality_pairs = _delegate("quality", QualityModels.quality_pairs)
    fit_quality_model = _delegate("quality", QualityModels.fit_quality_model)
    quality_model = _delegate("quality", QualityModels.quality_model)
    quality_source = _delegate("quality", QualityModels.quality_source)
    flag_suspects = _delegate("suspects", Suspects.flag_suspects)
    suspects = _delegate("suspects", Suspects.suspects)
    suspect_keys = _delegate("suspects", Suspects.suspect_keys)
    # reports
    case_states = _delegate("reports", Reports.case_states)
    status = _delegate("reports", Reports.status)
    rank = _delegate("reports", Reports.rank)
    # DICOM
    import_series = _delegate("dicom", Dicom.import_series)
    case_of_series = _delegate("dicom", Dicom.case_of_series)
    case_series = _delegate("dicom", Dicom.case_series)
    series = _delegate("dicom", Dicom.series)
    dicom_objects = _delegate("dicom", Dicom.dicom_objects)
    known_sop_uids = _delegate("dicom", Dicom.known_sop_uids)
    import_dicom_object = _delegate("dicom", Dicom.import_dicom_object)
    export_dicom = _delegate("dicom", Dicom.export_dicom)

    # the two whole-workspace jobs: functions of a workspace (they import nothing of this module)
    def check(self, repair: bool = False) -> CheckReport:
        return check_workspace(self, repair=repair)

    def export(self, directory: PathLike, include_unlabelled: bool = False, progress: Optional[ProgressFn] = None) -> dict:
        return export_workspace(self, Path(directory), include_unlabelled=include_unlabelled, progress=progress)

    @classmethod
    def create(cls, path: PathLike, modality: str, labels: Union[str, Sequence[str], None],
               model: Optional[str] = None, shared_disk: bool = False) -> "Workspace":
        """Make a new workspace in an empty or new folder; ``model`` (a name or .onnx path) becomes version 1.

        The ledger appears under its final name last, so a folder is a workspace only once complete.
        ``shared_disk``: the folder is on a network disk used from several machines at once, where
        SQLite's WAL (shared memory) cannot work; the ledger then uses a rollback journal and file locks.
        """
        root = Path(path)
        modality = parse_modality(modality)
        names = parse_labels(labels) if labels else None
        if root.exists() and not root.is_dir():
            raise HilaError(f"{root}: exists and is not a folder")
        if (root / LEDGER_NAME).exists():
            raise HilaError(f"{root}: is already a HILASegment workspace")
        outer = enclosing_workspace(root)
        if outer is not None:
            raise HilaError(f"{root}: is inside the workspace {outer}, whose `check --repair` would take its files for "
                            f"strays; make the new workspace outside {outer}")
        if root.is_dir() and any(root.iterdir()):
            if not _interrupted_init(root):
                raise HilaError(f"{root}: folder is not empty and not a workspace; give a new or empty folder")
            for entry in root.iterdir():  # only what an interrupted `hila init` writes: start over
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        resolved = resolve_workspace_model(model, modality, names) if model else None
        if names is None:
            if resolved is None:
                raise HilaError("labels: give --labels NAME[,NAME...] (or --model with a model card)")
            names = resolved[1].label_names()
        specs = [(i + 1, n, default_color(n, i)) for i, n in enumerate(names)]
        if resolved is not None:  # the model's own label values; colours of known structures from the one table
            specs = [(int(l.value), l.name, tuple(label_color(l.name, l.stored_color(), i)))
                     for i, l in enumerate(resolved[1].labels)]
        created_root = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            for d in MANAGED_DIRS + (TMP_DIR,):
                (root / d).mkdir(exist_ok=True)
            fsync_dir(root)
            # no ledger exists yet, so this is not Core.store: the undo is removing the whole folder
            store = FileStore(root)
            staged_model: List[Staged] = []
            model_rows = []
            if resolved is not None:
                onnx_path, card = resolved
                s = store.stage_copy(onnx_path, ".onnx")
                staged_model.append(s)
                rel = f"models/{s.name('v0001')}"
                s.place(rel)
                ck_rel = ck_sha = None
                ck = Path(onnx_path).with_suffix(".pt")
                if ck.is_file():
                    c = store.stage_copy(ck, ".pt")
                    staged_model.append(c)
                    ck_rel = f"models/{c.name('v0001')}"
                    c.place(ck_rel)
                    ck_sha = c.sha256
                model_rows.append((1, rel, s.sha256, dumps(card.to_dict()), None, "current", ck_rel, ck_sha, None, now()))
            tmp_ledger = root / f".{LEDGER_NAME}.init-{uuid.uuid4().hex[:8]}"
            led = Ledger(tmp_ledger, create=True, journal_mode="DELETE" if shared_disk else "WAL")
            try:
                with led.write() as con:
                    t = now()
                    con.execute("INSERT INTO settings VALUES ('modality', ?)", (json.dumps(modality),))
                    con.execute("INSERT INTO settings VALUES ('created_at', ?)", (json.dumps(t),))
                    con.execute("INSERT INTO settings VALUES ('workspace_id', ?)", (json.dumps(uuid.uuid4().hex),))
                    con.execute("INSERT INTO settings VALUES ('shared_disk', ?)", (json.dumps(bool(shared_disk)),))
                    for value, n, col in specs:
                        con.execute("INSERT INTO labels VALUES (?, ?, ?)", (value, n, json.dumps([round(float(c), 4) for c in col])))
                    for row in model_rows:
                        con.execute("INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                        con.execute("INSERT INTO model_promotions (version, action, time) VALUES (1, 'init', ?)", (t,))
                    con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES (?,?,?,?,?)",
                                (t, "init", None, user(), dumps({"modality": modality, "labels": names,
                                                                 "model": None if not resolved else str(model)})))
                led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                led.close()
            for suffix in ("-wal", "-shm"):
                Path(str(tmp_ledger) + suffix).unlink(missing_ok=True)
            fsync_file(tmp_ledger)
            os.rename(tmp_ledger, root / LEDGER_NAME)
            fsync_dir(root)
            for s in staged_model:
                s.cleanup()
        except BaseException:
            # undo: the folder was new or empty, so everything in it is ours
            if created_root:
                shutil.rmtree(root, ignore_errors=True)
            elif root.is_dir():
                for entry in root.iterdir():
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            raise
        return cls.open(root)

    @classmethod
    def open(cls, path: PathLike, readonly: bool = False) -> "Workspace":
        """Open an existing workspace; HilaError if it is not one or its ledger is newer than this code.
        ``readonly``: for reading commands, which then work on a workspace they cannot write."""
        root = Path(path)
        try:
            check_readable(root, "folder")
        except HilaError as exc:
            raise HilaError(f"not a HILASegment workspace: {exc}") from None
        ledger_path = root / LEDGER_NAME
        if ledger_path.is_symlink():  # another workspace's ledger: its rows would name files this folder lacks
            raise HilaError(f"{ledger_path}: a symbolic link (to {os.readlink(ledger_path)}); a workspace's ledger is "
                            "its own file, never a link; copy the workspace instead")
        if not ledger_path.is_file():
            raise HilaError(f"{root}: not a HILASegment workspace (no {LEDGER_NAME}); create one with `hila init`")
        return cls(root, Ledger(ledger_path, readonly=readonly))


def enclosing_workspace(folder: PathLike) -> Optional[Path]:
    """The workspace that ``folder`` would lie inside (at any depth: its store, lost+found, anywhere), or None;
    symbolic links are seen through."""
    try:
        resolved = Path(folder).resolve()
    except (OSError, RuntimeError):
        resolved = Path(os.path.abspath(folder))
    for parent in resolved.parents:
        if (parent / LEDGER_NAME).is_file():
            return parent
    return None


def _interrupted_init(root: Path) -> bool:
    """True when ``root`` holds exactly what a killed ``create`` leaves: its folders, no case or
    correction, a model copy at most, and a ledger still under its temporary name."""
    allowed = set(MANAGED_DIRS) | {TMP_DIR}
    for entry in root.iterdir():
        if entry.name.startswith(f".{LEDGER_NAME}.init-"):
            continue
        if entry.name not in allowed or not entry.is_dir():
            return False
        if entry.name in ("cases", "predictions", "corrections") and any(entry.iterdir()):
            return False
    return True


def resolve_workspace_model(model: str, modality: str, names: Optional[List[str]]) -> Tuple[Path, ModelCard]:
    """The model file and its card, refused when its modality or labels differ from the workspace's."""
    onnx_path, card = resolve_model(model)
    card_mod = card.modality.upper()
    if card_mod != modality:
        raise HilaError(f"--model {model}: a {card_mod} model, but the workspace is {modality}")
    card_names = card.label_names()
    if names is not None and [n.lower() for n in card_names] != [n.lower() for n in names]:
        raise HilaError(f"--model {model}: its labels ({', '.join(card_names)}) differ from --labels "
                        f"({', '.join(names)}); leave out --labels to use the model's")
    return Path(onnx_path), card
