"""The workspace's one face, :class:`Workspace`, and how a workspace comes to be: creating one
(recovering from an interrupted ``hila init``) and opening one.

The work is done in parts, one job each, that :class:`Workspace` combines: ``casestore`` (import),
``labels`` (validating what is handed in), ``predictions``, ``corrections`` (and effort),
``runs`` (training snapshots and runs), ``registry`` (model versions), ``reports`` (status, rank,
check, export), ``qualitymodels`` (the learned quality model per model version), ``dicom`` (DICOM series of cases, SEG/RTSTRUCT in and out). ``base`` holds what they share, including the one write pattern every stored file
follows (stage, place, insert the row, undo on error; see :meth:`base.WorkspaceBase._store`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from ..ground.colors import default_color, label_color
from ..ground.durable import fsync_dir, fsync_file
from ..ground.errors import HilaError
from ..ground.paths import check_readable
from ..models.modelcard import ModelCard, resolve_model
from .base import PathLike, now, user
from .casestore import Cases
from .corrections import Corrections
from .dicom import Dicom
from .files import MANAGED_DIRS, TMP_DIR, FileStore, Staged
from .labels import Labels
from .ledger import LEDGER_NAME, Ledger
from .predictions import Predictions
from .qualitymodels import QualityModels
from .records import MODALITIES, dumps
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


class Workspace(Cases, Labels, Predictions, Corrections, Runs, Registry, Reports, Dicom, QualityModels, Suspects):
    """A HILASegment workspace folder: ``hila.sqlite`` (the ledger) and immutable files beside it."""

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
        resolved = _resolve_model(model, modality, names) if model else None
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
            # no ledger exists yet, so this is not WorkspaceBase._store: the undo is removing the whole folder
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

    def __enter__(self) -> "Workspace":
        return self


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


def _resolve_model(model: str, modality: str, names: Optional[List[str]]) -> Tuple[Path, ModelCard]:
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
