"""The workspace: cases, predictions, corrections, models and training runs, in one folder.

Every write follows one order: validate everything (nothing touched yet), stage the file (complete,
fsync'ed), then in one ``BEGIN IMMEDIATE`` transaction allocate the version, place the file under
a never-reused name and insert the row; the commit is the moment a submission exists. Readers work
on consistent snapshots, and a training run keeps the exact correction versions it started with.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import quality as _quality
from ..errors import HilaError
from ..progress import ProgressFn, null_progress
from .files import MANAGED_DIRS, TMP_DIR, FileStore, Staged, fsync_dir
from .ledger import LEDGER_NAME, SCHEMA_VERSION, Ledger
from .records import (
    MODALITIES,
    MODEL_STATUSES,
    QUALITIES,
    RUN_STATUSES,
    Case,
    CheckReport,
    Correction,
    ModelRecord,
    Prediction,
    Settings,
    SnapshotItem,
    TrainingRun,
    WorkspaceLabel,
    default_colour,
    dumps,
)

PathLike = Union[str, "os.PathLike[str]"]
_GENERIC_NAMES = {"ct", "mr", "mri", "t2", "t2w", "image", "img", "volume", "vol", "data", "scan", "series", "dicom"}
_LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _\-.()/+]*$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database
        return "unknown"


def content_hash(img: sitk.Image) -> str:
    """A hash of what a volume *is*: voxel values, pixel type and geometry (not its file format)."""
    h = hashlib.sha256()
    h.update(img.GetPixelIDTypeAsString().encode())
    geom = (img.GetSize(), [round(v, 4) for v in img.GetSpacing()], [round(v, 3) for v in img.GetOrigin()],
            [round(v, 5) for v in img.GetDirection()])
    h.update(json.dumps(geom).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(img)).tobytes())
    return h.hexdigest()


def grid_of(img: sitk.Image) -> dict:
    return {"size": list(img.GetSize()), "spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin()),
            "direction": list(img.GetDirection()), "pixel_type": img.GetPixelIDTypeAsString()}


def parse_labels(labels: Union[str, Sequence[str]]) -> List[str]:
    """Workspace label names from ``"a,b,c"`` or a list; HilaError for empty, duplicate or odd names."""
    if isinstance(labels, str):
        labels = labels.split(",")
    names = [str(n).strip() for n in labels]
    if not names or any(not n for n in names):
        raise HilaError(f"labels {','.join(names)!r}: give one or more non-empty names, e.g. --labels prostate,bladder,rectum")
    for n in names:
        if not _LABEL_NAME.match(n):
            raise HilaError(f"label name {n!r}: use letters, digits, space, _ - . ( ) / +")
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


def _writer(img: sitk.Image):
    """A staging writer for an image (gzip-compressed NRRD keeps voxels and geometry exactly)."""
    def write(path: Path) -> None:
        sitk.WriteImage(img, str(path), True)
    return write


class Workspace:
    """A HILASegment workspace folder: ``hila.sqlite`` (the ledger) and immutable files beside it."""

    def __init__(self, root: Path, ledger: Ledger):
        self.root = Path(root)
        self.ledger = ledger
        self.files = FileStore(self.root)
        self._settings: Optional[Settings] = None

    # ==========================================================================================
    # creating and opening
    # ==========================================================================================
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
        if root.is_dir() and any(root.iterdir()):
            if not cls._interrupted_init(root):
                raise HilaError(f"{root}: folder is not empty and not a workspace; give a new or empty folder")
            for entry in root.iterdir():  # only what an interrupted `hila init` writes: start over
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        resolved = cls._resolve_model(model, modality, names) if model else None
        if names is None:
            if resolved is None:
                raise HilaError("labels: give --labels NAME[,NAME...] (or --model with a model card)")
            names = [l["name"] for l in resolved[1]["labels"]]
        specs = [(i + 1, n, default_colour(n, i)) for i, n in enumerate(names)]
        if resolved is not None:  # the model's own label values and colours
            specs = [(int(l["value"]), str(l["name"]), tuple(l.get("color") or default_colour(str(l["name"]), i)))
                     for i, l in enumerate(resolved[1].get("labels", []))]
        created_root = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            for d in MANAGED_DIRS + (TMP_DIR,):
                (root / d).mkdir(exist_ok=True)
            fsync_dir(root)
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
                model_rows.append((1, rel, s.sha256, dumps(card), None, "current", ck_rel, ck_sha, None, _now()))
            tmp_ledger = root / f".{LEDGER_NAME}.init-{uuid.uuid4().hex[:8]}"
            led = Ledger(tmp_ledger, create=True, journal_mode="DELETE" if shared_disk else "WAL")
            try:
                with led.write() as con:
                    now = _now()
                    con.execute("INSERT INTO settings VALUES ('modality', ?)", (json.dumps(modality),))
                    con.execute("INSERT INTO settings VALUES ('created_at', ?)", (json.dumps(now),))
                    con.execute("INSERT INTO settings VALUES ('workspace_id', ?)", (json.dumps(uuid.uuid4().hex),))
                    con.execute("INSERT INTO settings VALUES ('shared_disk', ?)", (json.dumps(bool(shared_disk)),))
                    for value, n, col in specs:
                        con.execute("INSERT INTO labels VALUES (?, ?, ?)", (value, n, json.dumps([round(float(c), 4) for c in col])))
                    for row in model_rows:
                        con.execute("INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                        con.execute("INSERT INTO model_promotions (version, action, time) VALUES (1, 'init', ?)", (now,))
                    con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES (?,?,?,?,?)",
                                (now, "init", None, _user(), dumps({"modality": modality, "labels": names,
                                                                    "model": None if not resolved else str(model)})))
                led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                led.close()
            for suffix in ("-wal", "-shm"):
                Path(str(tmp_ledger) + suffix).unlink(missing_ok=True)
            fsync_file_path = tmp_ledger
            with open(fsync_file_path, "rb+") as fh:
                os.fsync(fh.fileno())
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

    @staticmethod
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

    @staticmethod
    def _resolve_model(model: str, modality: str, names: Optional[List[str]]) -> Tuple[Path, dict]:
        try:
            from ..modelcard import resolve_model
        except ImportError:
            raise HilaError(f"--model {model}: model support (modelcard) is not installed in this build") from None
        onnx_path, card = resolve_model(model)
        card_d = json.loads(card.to_json()) if hasattr(card, "to_json") else dict(card)
        card_mod = str(card_d.get("modality", modality)).upper()
        if card_mod != modality:
            raise HilaError(f"--model {model}: a {card_mod} model, but the workspace is {modality}")
        card_names = [str(l.get("name")) for l in card_d.get("labels", [])]
        if names is not None and [n.lower() for n in card_names] != [n.lower() for n in names]:
            raise HilaError(f"--model {model}: its labels ({', '.join(card_names)}) differ from --labels "
                            f"({', '.join(names)}); leave out --labels to use the model's")
        return Path(onnx_path), card_d

    @classmethod
    def open(cls, path: PathLike) -> "Workspace":
        """Open an existing workspace; HilaError if it is not one or its ledger is newer than this code."""
        root = Path(path)
        if not root.is_dir():
            why = "not a folder" if root.exists() else "no such folder"
            raise HilaError(f"{root}: not a HILASegment workspace ({why})")
        ledger_path = root / LEDGER_NAME
        if not ledger_path.is_file():
            raise HilaError(f"{root}: not a HILASegment workspace (no {LEDGER_NAME}); create one with `hila init`")
        return cls(root, Ledger(ledger_path))

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ==========================================================================================
    # settings
    # ==========================================================================================
    @property
    def settings(self) -> Settings:
        if self._settings is None:
            with self.ledger.read() as con:
                kv = {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM settings")}
                labels = [WorkspaceLabel(int(r["value"]), r["name"], tuple(json.loads(r["color"])))
                          for r in con.execute("SELECT * FROM labels ORDER BY value")]
            self._settings = Settings(kv.get("modality", ""), labels, kv.get("created_at", ""))
        return self._settings

    def _event(self, con: sqlite3.Connection, kind: str, entity: Optional[str], details: dict) -> None:
        con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES (?,?,?,?,?)",
                    (_now(), kind, entity, _user(), dumps(details)))

    def events(self, limit: int = 100) -> List[dict]:
        with self.ledger.read() as con:
            rows = con.execute("SELECT * FROM events ORDER BY event_id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r, details=json.loads(r["details"] or "null")) for r in rows]

    def abspath(self, rel: Optional[str]) -> Optional[Path]:
        return None if rel is None else self.root / rel

    # ==========================================================================================
    # cases
    # ==========================================================================================
    def _case_from_row(self, r: sqlite3.Row, existing: bool = False) -> Case:
        return Case(r["case_id"], r["name"], r["content_hash"], self.root / r["file"], r["sha256"], r["source_path"],
                    json.loads(r["grid"]), r["imported_at"], existing)

    def cases(self) -> List[Case]:
        with self.ledger.read() as con:
            return [self._case_from_row(r) for r in con.execute("SELECT * FROM cases ORDER BY seq")]

    def case(self, case_id: str) -> Case:
        """A case by id (or by its unique name); HilaError naming the workspace when unknown."""
        key = str(case_id)
        with self.ledger.read() as con:
            r = con.execute("SELECT * FROM cases WHERE case_id = ?", (key,)).fetchone()
            if r is None:
                rows = con.execute("SELECT * FROM cases WHERE name = ?", (key,)).fetchall()
                r = rows[0] if len(rows) == 1 else None
            if r is None:
                n = con.execute("SELECT count(*) FROM cases").fetchone()[0]
        if r is None:
            raise HilaError(f"{self.root}: unknown case {key!r} ({n} case(s); `hila status {self.root}` lists them)")
        return self._case_from_row(r)

    def case_image(self, case_id: str) -> sitk.Image:
        c = self.case(case_id)
        return sitk.ReadImage(str(c.path))

    def _default_name(self, source: Path) -> str:
        name = source.name
        for suf in (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd"):
            if name.lower().endswith(suf):
                name = name[: -len(suf)]
                break
        if name.lower() in _GENERIC_NAMES and source.parent.name:
            name = source.parent.name if source.is_file() else f"{source.parent.name}_{name}"
        return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_") or "case"

    def import_volume(self, path: PathLike, name: Optional[str] = None, progress: Optional[ProgressFn] = None) -> Case:
        """Import a volume file or DICOM series folder as a case; the same voxels+geometry again returns the
        existing case (``case.existing`` is True) and writes nothing."""
        from ..imageio import read_image

        progress = progress or null_progress
        src = Path(path)
        progress(0.0, f"reading {src.name}")
        img = read_image(src)
        chash = content_hash(img)
        with self.ledger.read() as con:
            r = con.execute("SELECT * FROM cases WHERE content_hash = ?", (chash,)).fetchone()
        if r is not None:
            progress(1.0, "already imported")
            return self._case_from_row(r, existing=True)
        progress(0.4, "storing")
        staged = self.files.stage(_writer(img), ".nrrd")
        try:
            progress(0.9, "recording")
            with self.ledger.write() as con:
                r = con.execute("SELECT * FROM cases WHERE content_hash = ?", (chash,)).fetchone()
                if r is not None:  # another process imported it meanwhile
                    return self._case_from_row(r, existing=True)
                seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM cases").fetchone()[0]
                case_id = f"c{seq:04d}"
                base = name or self._default_name(src)
                cname, k = base, 2
                while con.execute("SELECT 1 FROM cases WHERE name = ?", (cname,)).fetchone():
                    cname, k = f"{base}-{k}", k + 1
                rel = f"cases/{staged.name(case_id)}"
                staged.place(rel)
                try:
                    now = _now()
                    con.execute("INSERT INTO cases VALUES (?,?,?,?,?,?,?,?,?)",
                                (case_id, seq, cname, chash, rel, staged.sha256, str(src.resolve()), dumps(grid_of(img)), now))
                    self._event(con, "import", case_id, {"name": cname, "source": str(src)})
                except BaseException:
                    staged.unplace()
                    raise
            progress(1.0, f"imported {case_id}")
            return self.case(case_id)
        finally:
            staged.cleanup()

    # ==========================================================================================
    # labels: validation
    # ==========================================================================================
    def _label_from_segmentation(self, seg: Any, reference: sitk.Image, where: str) -> sitk.Image:
        """A label map in workspace values from a Segmentation, matching segments to labels by name
        (segments with other names are left out; a segmentation on a cropped extent is placed on the case grid)."""
        by_name = {l.name.lower(): l.value for l in self.settings.labels}
        values = {s.id: by_name[str(s.name).strip().lower()] for s in seg.segments
                  if str(s.name).strip().lower() in by_name}
        if not values:
            raise HilaError(f"{where}: no segment named like a workspace label ({', '.join(self.settings.names())}); "
                            f"segments: {', '.join(str(s.name) for s in seg.segments) or 'none'}")
        return seg.to_label_image(reference=reference, values=values)

    def validate_label(self, case_id: str, label: Any, where: Optional[str] = None,
                       strict: bool = False) -> Tuple[np.ndarray, sitk.Image, dict]:
        """Check a label against a case: same grid, known values, not empty.

        Returns ``(array uint8, image, notes)``. Values above the workspace's labels (e.g. femoral
        heads in a radiotherapy structure set) are dropped and listed in ``notes["ignored_values"]``,
        or refused with ``strict``; a label with no workspace value at all is refused.
        """
        from ..imageio import as_label_image, describe_grid, grid_difference

        case = self.case(case_id)
        where = where or f"label for case {case.case_id}"
        reference = sitk.ReadImage(str(case.path))
        if hasattr(label, "segments") and hasattr(label, "mask"):
            label = self._label_from_segmentation(label, reference, where)
        if not isinstance(label, sitk.Image):
            raise HilaError(f"{where}: not a label image (got {type(label).__name__})")
        if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
            raise HilaError(f"{where}: not a scalar 3-D label map")
        diff = grid_difference(label, reference)
        if diff:
            raise HilaError(f"{where}: label map is not on case {case.case_id}'s grid ({diff}): label "
                            f"[{describe_grid(label)}] vs case [{describe_grid(reference)}]")
        label = as_label_image(label, where)
        arr = sitk.GetArrayFromImage(label)
        values = [int(v) for v in np.unique(arr) if v != 0]
        known = {l.value for l in self.settings.labels}
        unknown = [v for v in values if v not in known]
        legend = ", ".join(f"{l.value} {l.name}" for l in self.settings.labels)
        notes: Dict[str, Any] = {}
        if not values:
            raise HilaError(f"{where}: empty label map (no labelled voxel); nothing to submit")
        if unknown:
            if strict or len(unknown) == len(values):
                raise HilaError(f"{where}: unknown label value(s) {', '.join(map(str, unknown))}; the workspace's labels "
                                f"are {legend}")
            notes["ignored_values"] = {str(v): int((arr == v).sum()) for v in unknown}
            arr = np.where(np.isin(arr, unknown), 0, arr)
        arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(reference)
        return arr, img, notes

    def read_label_file(self, case_id: str, path: PathLike, strict: bool = False) -> Tuple[np.ndarray, sitk.Image, dict]:
        """Read a label map or a Slicer .seg.nrrd (segments matched to workspace labels by name) for a case."""
        from ..imageio import read_image, volume_suffix

        p = Path(path)
        case = self.case(case_id)
        if not p.exists():
            raise HilaError(f"{p}: no such file")
        is_seg = False
        if p.is_file() and p.name.lower().endswith((".nrrd", ".nhdr")):
            try:
                from ..segfile import is_seg_nrrd
                is_seg = bool(is_seg_nrrd(p))
            except ImportError:
                is_seg = p.name.lower().endswith(".seg.nrrd")
        if is_seg:
            from ..segfile import read_segmentation
            label: Any = read_segmentation(p)
        else:
            if p.is_file() and volume_suffix(p) is None:
                raise HilaError(f"{p}: unsupported label file type; use .nii.gz, .nrrd, .seg.nrrd, .mha")
            label = read_image(p)
        return self.validate_label(case.case_id, label, where=str(p), strict=strict)

    # ==========================================================================================
    # predictions
    # ==========================================================================================
    def _pred_from_row(self, r: sqlite3.Row) -> Prediction:
        return Prediction(r["prediction_id"], r["case_id"], r["model_version"], self.root / r["file"], r["sha256"],
                          json.loads(r["uncertainty"]) if r["uncertainty"] else None, r["created_at"])

    def add_prediction(self, case_id: str, label: Any, model_version: Optional[int],
                       uncertainty: Optional[dict] = None) -> Prediction:
        """Record a model's label map for a case (validated like a submission, stored immutably)."""
        case = self.case(case_id)
        arr, img, notes = self.validate_label(case.case_id, label, where=f"prediction for case {case.case_id}",
                                              strict=True) if _nonempty(label) else self._empty_prediction(case)
        staged = self.files.stage(_writer(img), ".nrrd")
        try:
            with self.ledger.write() as con:
                rel = f"predictions/{case.case_id}/{staged.name('pred')}"
                staged.place(rel)
                try:
                    cur = con.execute("INSERT INTO predictions (case_id, model_version, file, sha256, uncertainty, created_at) "
                                      "VALUES (?,?,?,?,?,?)", (case.case_id, model_version, rel, staged.sha256,
                                                                dumps(uncertainty) if uncertainty is not None else None, _now()))
                    pid = cur.lastrowid
                    self._event(con, "predict", case.case_id, {"prediction_id": pid, "model_version": model_version})
                except BaseException:
                    staged.unplace()
                    raise
            return self.prediction(pid)
        finally:
            staged.cleanup()

    def _empty_prediction(self, case: Case) -> Tuple[np.ndarray, sitk.Image, dict]:
        """A model may find nothing: an empty prediction is recorded (it is a real, informative outcome)."""
        ref = sitk.ReadImage(str(case.path))
        arr = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        return arr, img, {}

    def _row_by_id(self, table: str, key: str, value: int, what: str) -> sqlite3.Row:
        """One ledger row by its id (table and key are this module's constants, never user input)."""
        with self.ledger.read() as con:
            r = con.execute(f"SELECT * FROM {table} WHERE {key} = ?", (int(value),)).fetchone()
        if r is None:
            raise HilaError(f"{self.root}: unknown {what} {value}")
        return r

    def _rows_of_case(self, table: str, order_all: str, order_case: str, case_id: Optional[str]) -> List[sqlite3.Row]:
        """All rows of a table, or one case's (the case resolved by id or name), in ledger order."""
        with self.ledger.read() as con:
            if case_id is None:
                return con.execute(f"SELECT * FROM {table} ORDER BY {order_all}").fetchall()
            return con.execute(f"SELECT * FROM {table} WHERE case_id = ? ORDER BY {order_case}",
                               (self.case(case_id).case_id,)).fetchall()

    def prediction(self, prediction_id: int) -> Prediction:
        return self._pred_from_row(self._row_by_id("predictions", "prediction_id", prediction_id, "prediction"))

    def predictions(self, case_id: Optional[str] = None) -> List[Prediction]:
        rows = self._rows_of_case("predictions", "prediction_id", "prediction_id", case_id)
        return [self._pred_from_row(r) for r in rows]

    def latest_prediction(self, case_id: str) -> Optional[Prediction]:
        preds = self.predictions(case_id)
        return preds[-1] if preds else None

    # ==========================================================================================
    # corrections
    # ==========================================================================================
    def _corr_from_row(self, r: sqlite3.Row) -> Correction:
        return Correction(r["correction_id"], r["case_id"], r["version"], self.root / r["file"], r["sha256"], r["quality"],
                          r["annotator"], r["seconds"], r["based_on"], json.loads(r["effort"]), r["created_at"])

    def submit(self, case_id: str, label: Any, quality: str = "reviewed", annotator: Optional[str] = None,
               seconds: Optional[float] = None, based_on: Optional[int] = None, strict: bool = False,
               source: Optional[str] = None, marks: Optional[dict] = None) -> Correction:
        """Record a corrected label for a case as its next version (earlier versions stay).

        ``marks`` (weak labels): the box/lines the pseudo-mask was made from, kept in the effort JSON.

        ``label`` is a SimpleITK label map on the case's grid or a segfile ``Segmentation``. The
        effort (Dice per label, voxels changed) is measured against the prediction it corrects
        (``based_on``, else the case's latest), else against the previous version.
        """
        if quality not in QUALITIES:
            raise HilaError(f"quality {quality!r}: use one of {', '.join(QUALITIES)}")
        if seconds is not None:
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise HilaError(f"seconds {seconds!r}: not a number") from None
            if not np.isfinite(seconds) or seconds < 0:
                raise HilaError(f"seconds {seconds!r}: must be a non-negative number")
        case = self.case(case_id)
        if isinstance(label, (str, os.PathLike)):
            arr, img, notes = self.read_label_file(case.case_id, label, strict=strict)
            source = source or str(label)
        else:
            arr, img, notes = self.validate_label(case.case_id, label, strict=strict)
        effort = self._effort(case, arr, based_on)
        based_on = effort.get("prediction_id")
        effort.update(notes)
        if source:
            effort["source"] = str(source)
        if marks:
            effort["marks"] = marks
        annotator = annotator if annotator else _user()
        staged = self.files.stage(_writer(img), ".nrrd")
        try:
            with self.ledger.write() as con:
                version = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM corrections WHERE case_id = ?",
                                      (case.case_id,)).fetchone()[0]
                rel = f"corrections/{case.case_id}/{staged.name(f'v{version:04d}')}"
                staged.place(rel)
                try:
                    cur = con.execute("INSERT INTO corrections (case_id, version, file, sha256, quality, annotator, seconds, "
                                      "based_on, effort, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                      (case.case_id, version, rel, staged.sha256, quality, annotator, seconds, based_on,
                                       dumps(effort), _now()))
                    cid = cur.lastrowid
                    self._event(con, "submit", case.case_id, {"correction_id": cid, "version": version, "quality": quality,
                                                             "voxels_changed": effort.get("voxels_changed")})
                except BaseException:
                    staged.unplace()
                    raise
            return self.correction(cid)
        finally:
            staged.cleanup()

    def _effort(self, case: Case, arr: np.ndarray, based_on: Optional[int]) -> dict:
        pairs = self.settings.label_pairs()
        with self.ledger.read() as con:
            if based_on is not None:
                p = con.execute("SELECT * FROM predictions WHERE prediction_id = ? AND case_id = ?",
                                (int(based_on), case.case_id)).fetchone()
                if p is None:
                    raise HilaError(f"based-on prediction {based_on}: not a prediction of case {case.case_id}")
            else:
                p = con.execute("SELECT * FROM predictions WHERE case_id = ? ORDER BY prediction_id DESC LIMIT 1",
                                (case.case_id,)).fetchone()
            prev = None if p is not None else con.execute(
                "SELECT * FROM corrections WHERE case_id = ? ORDER BY version DESC LIMIT 1", (case.case_id,)).fetchone()
        if p is not None:
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(self.root / p["file"])))
            out = _quality.label_change(arr, ref, pairs)
            out.update(against=f"prediction {p['prediction_id']}", prediction_id=p["prediction_id"],
                       model_version=p["model_version"])
        elif prev is not None:
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(self.root / prev["file"])))
            out = _quality.label_change(arr, ref, pairs)
            out.update(against=f"correction v{prev['version']}", prediction_id=None, model_version=None)
        else:
            out = _quality.drawn_from_scratch(arr, pairs)
            out.update(against="nothing", prediction_id=None, model_version=None)
        out["labelled_voxels"] = {name: int((arr == v).sum()) for v, name in pairs}
        return out

    def correction(self, correction_id: int) -> Correction:
        return self._corr_from_row(self._row_by_id("corrections", "correction_id", correction_id, "correction"))

    def corrections(self, case_id: Optional[str] = None) -> List[Correction]:
        return [self._corr_from_row(r) for r in self._rows_of_case("corrections", "correction_id", "version", case_id)]

    def correction_label(self, case_id: str, version: Optional[int] = None) -> sitk.Image:
        """A correction's label map (the latest version unless one is named)."""
        corrs = self.corrections(case_id)
        if version is not None:
            corrs = [c for c in corrs if c.version == int(version)]
        if not corrs:
            raise HilaError(f"{self.root}: case {case_id} has no correction" + (f" version {version}" if version else ""))
        return sitk.ReadImage(str(corrs[-1].path))

    # ==========================================================================================
    # training snapshots and runs
    # ==========================================================================================
    _SNAPSHOT_SQL = ("SELECT c.correction_id, c.case_id, c.version, c.file AS label_file, c.quality, k.file AS image_file, "
                     "k.name AS case_name FROM corrections c JOIN cases k ON k.case_id = c.case_id ")

    def _snap_item(self, r: sqlite3.Row) -> SnapshotItem:
        return SnapshotItem(r["case_id"], r["version"], self.root / r["image_file"], self.root / r["label_file"],
                            r["quality"], r["correction_id"], r["case_name"])

    def snapshot(self, qualities: Iterable[str] = QUALITIES) -> List[SnapshotItem]:
        """The latest correction of every case, read in one consistent transaction."""
        qs = list(qualities)
        with self.ledger.read() as con:
            rows = con.execute(self._SNAPSHOT_SQL + "WHERE c.version = (SELECT MAX(version) FROM corrections c2 "
                               "WHERE c2.case_id = c.case_id) ORDER BY k.seq").fetchall()
        return [self._snap_item(r) for r in rows if r["quality"] in qs]

    def start_training_run(self, snapshot: Optional[Sequence[SnapshotItem]] = None, parent_model: Optional[int] = None) -> int:
        """Record a training run and the exact correction versions it trains on; returns its id."""
        snapshot = self.snapshot() if snapshot is None else list(snapshot)
        with self.ledger.write() as con:
            ids = []
            for it in snapshot:
                r = con.execute("SELECT correction_id FROM corrections WHERE case_id = ? AND version = ?",
                                (it.case_id, int(it.correction_version))).fetchone()
                if r is None:
                    raise HilaError(f"snapshot: case {it.case_id} has no correction version {it.correction_version}")
                ids.append(r[0])
            if parent_model is None:
                cur_model = con.execute("SELECT version FROM models WHERE status = 'current'").fetchone()
                parent_model = cur_model[0] if cur_model else None
            cur = con.execute("INSERT INTO training_runs (status, parent_model, host, pid, started_at) VALUES "
                              "('running', ?, ?, ?, ?)", (parent_model, socket.gethostname(), os.getpid(), _now()))
            run_id = cur.lastrowid
            for cid in sorted(set(ids)):
                con.execute("INSERT INTO training_snapshot VALUES (?, ?)", (run_id, cid))
            self._event(con, "train_start", f"run {run_id}", {"corrections": sorted(set(ids)), "parent_model": parent_model})
        return int(run_id)

    def training_run(self, run_id: int) -> TrainingRun:
        with self.ledger.read() as con:
            r = con.execute("SELECT * FROM training_runs WHERE run_id = ?", (int(run_id),)).fetchone()
            if r is None:
                raise HilaError(f"{self.root}: unknown training run {run_id}")
            items = con.execute(self._SNAPSHOT_SQL + "JOIN training_snapshot s ON s.correction_id = c.correction_id "
                                "WHERE s.run_id = ? ORDER BY k.seq, c.version", (int(run_id),)).fetchall()
        return TrainingRun(r["run_id"], r["status"], [self._snap_item(i) for i in items], r["parent_model"],
                           r["model_version"], json.loads(r["metrics"]) if r["metrics"] else None, r["log"],
                           r["started_at"], r["finished_at"], r["host"], r["pid"])

    def training_runs(self) -> List[TrainingRun]:
        with self.ledger.read() as con:
            ids = [r[0] for r in con.execute("SELECT run_id FROM training_runs ORDER BY run_id")]
        return [self.training_run(i) for i in ids]

    def finish_training_run(self, run_id: int, status: str, metrics: Optional[dict] = None,
                            model_version: Optional[int] = None, log: str = "") -> None:
        """Close a running training run as done, cancelled or failed, with its metrics and log."""
        if status not in RUN_STATUSES or status == "running":
            raise HilaError(f"training run status {status!r}: use done, cancelled or failed")
        with self.ledger.write() as con:
            r = con.execute("SELECT status FROM training_runs WHERE run_id = ?", (int(run_id),)).fetchone()
            if r is None:
                raise HilaError(f"{self.root}: unknown training run {run_id}")
            if r[0] != "running":
                raise HilaError(f"training run {run_id} is already {r[0]}")
            if model_version is not None and not con.execute("SELECT 1 FROM models WHERE version = ?",
                                                             (int(model_version),)).fetchone():
                raise HilaError(f"{self.root}: unknown model version {model_version}")
            con.execute("UPDATE training_runs SET status = ?, metrics = ?, model_version = ?, log = ?, finished_at = ? "
                        "WHERE run_id = ?", (status, dumps(metrics or {}), model_version, log or "", _now(), int(run_id)))
            self._event(con, "train_end", f"run {run_id}", {"status": status, "model_version": model_version})

    # ==========================================================================================
    # models
    # ==========================================================================================
    def _model_from_row(self, r: sqlite3.Row) -> ModelRecord:
        return ModelRecord(r["version"], self.root / r["file"], r["sha256"], json.loads(r["card"]), r["parent"], r["status"],
                           self.abspath(r["checkpoint_file"]), r["training_run"], r["created_at"])

    def models(self) -> List[ModelRecord]:
        with self.ledger.read() as con:
            return [self._model_from_row(r) for r in con.execute("SELECT * FROM models ORDER BY version")]

    def model(self, version: int) -> ModelRecord:
        with self.ledger.read() as con:
            r = con.execute("SELECT * FROM models WHERE version = ?", (_int(version, "model version"),)).fetchone()
        if r is None:
            raise HilaError(f"{self.root}: no model version {version} (`hila models {self.root} list`)")
        return self._model_from_row(r)

    def current_model(self) -> Optional[ModelRecord]:
        with self.ledger.read() as con:
            r = con.execute("SELECT * FROM models WHERE status = 'current'").fetchone()
        return None if r is None else self._model_from_row(r)

    def next_model_version(self) -> int:
        """The version the next ``add_model`` will most likely get (a hint; allocation happens at commit)."""
        with self.ledger.read() as con:
            return int(con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models").fetchone()[0])

    def add_model(self, onnx_path: PathLike, card: Any, parent: Optional[int] = None, status: str = "candidate",
                  checkpoint_path: Optional[PathLike] = None, training_run: Optional[int] = None) -> ModelRecord:
        """Copy a model (ONNX, and its torch checkpoint) in as the next version; files are never replaced."""
        if status not in MODEL_STATUSES:
            raise HilaError(f"model status {status!r}: use one of {', '.join(MODEL_STATUSES)}")
        src = Path(onnx_path)
        if not src.is_file():
            raise HilaError(f"{src}: no such model file")
        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise HilaError(f"{checkpoint_path}: no such checkpoint file")
        card_d = json.loads(card.to_json()) if hasattr(card, "to_json") else dict(card or {})
        staged = [self.files.stage_copy(src, ".onnx")]
        try:
            if checkpoint_path is not None:
                ck = Path(checkpoint_path)
                staged.append(self.files.stage_copy(ck, "".join(ck.suffixes[-1:]) or ".pt"))
            with self.ledger.write() as con:
                version = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models").fetchone()[0]
                if parent is not None and not con.execute("SELECT 1 FROM models WHERE version = ?", (int(parent),)).fetchone():
                    raise HilaError(f"{self.root}: parent model version {parent} does not exist")
                rels = [f"models/{s.name(f'v{version:04d}')}" for s in staged]
                try:
                    for s, rel in zip(staged, rels):
                        s.place(rel)
                    if status == "current":
                        con.execute("UPDATE models SET status = 'retired' WHERE status = 'current'")
                    con.execute("INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
                                (version, rels[0], staged[0].sha256, dumps(card_d), parent, status,
                                 rels[1] if len(rels) > 1 else None, staged[1].sha256 if len(staged) > 1 else None,
                                 training_run, _now()))
                    if status == "current":
                        con.execute("INSERT INTO model_promotions (version, action, time) VALUES (?, 'promote', ?)",
                                    (version, _now()))
                    self._event(con, "model_add", f"v{version}", {"status": status, "parent": parent,
                                                                  "name": card_d.get("name")})
                except BaseException:
                    for s in staged:
                        s.unplace()
                    raise
            return self.model(version)
        finally:
            for s in staged:
                s.cleanup()

    def promote(self, version: int) -> ModelRecord:
        """Make a model version current (the previous current one is retired, and can come back by rollback)."""
        version = _int(version, "model version")
        with self.ledger.write() as con:
            r = con.execute("SELECT status FROM models WHERE version = ?", (version,)).fetchone()
            if r is None:
                raise HilaError(f"{self.root}: no model version {version} (`hila models {self.root} list`)")
            if r[0] != "current":
                old = con.execute("SELECT version FROM models WHERE status = 'current'").fetchone()
                con.execute("UPDATE models SET status = 'retired' WHERE status = 'current'")
                con.execute("UPDATE models SET status = 'current' WHERE version = ?", (version,))
                con.execute("INSERT INTO model_promotions (version, action, time) VALUES (?, 'promote', ?)", (version, _now()))
                self._event(con, "promote", f"v{version}", {"previous": old[0] if old else None})
        return self.model(version)

    def rollback(self) -> ModelRecord:
        """One step back: the model that was current before the present one becomes current again."""
        with self.ledger.write() as con:
            cur = con.execute("SELECT version FROM models WHERE status = 'current'").fetchone()
            if cur is None:
                raise HilaError(f"{self.root}: no current model to roll back from")
            hist = [r[0] for r in con.execute("SELECT version FROM model_promotions ORDER BY promotion_id")]
            # walk the history of 'current' backwards, skipping the present one and anything rolled back from
            target = None
            for v in reversed(hist):
                if v != cur[0]:
                    target = v
                    break
            if target is None:
                raise HilaError(f"{self.root}: model v{cur[0]} is the first current model; nothing to roll back to")
            con.execute("UPDATE models SET status = 'retired' WHERE version = ?", (cur[0],))
            con.execute("UPDATE models SET status = 'current' WHERE version = ?", (target,))
            con.execute("INSERT INTO model_promotions (version, action, time) VALUES (?, 'rollback', ?)", (target, _now()))
            # forget the rolled-back version in the history so a second rollback goes one further step back
            con.execute("DELETE FROM model_promotions WHERE version = ? AND action != 'init'", (cur[0],))
            self._event(con, "rollback", f"v{target}", {"from": cur[0]})
        return self.model(target)

    # ==========================================================================================
    # reports
    # ==========================================================================================
    def case_states(self) -> List[dict]:
        """Each case with its state: new, predicted, or the quality of its latest correction."""
        with self.ledger.read() as con:
            rows = con.execute(
                "SELECT k.case_id, k.name, k.seq, "
                " (SELECT COUNT(*) FROM predictions p WHERE p.case_id = k.case_id) AS n_pred, "
                " (SELECT p.uncertainty FROM predictions p WHERE p.case_id = k.case_id ORDER BY p.prediction_id DESC LIMIT 1) AS unc, "
                " (SELECT p.model_version FROM predictions p WHERE p.case_id = k.case_id ORDER BY p.prediction_id DESC LIMIT 1) AS pmv, "
                " (SELECT COUNT(*) FROM corrections c WHERE c.case_id = k.case_id) AS n_corr, "
                " (SELECT c.quality FROM corrections c WHERE c.case_id = k.case_id ORDER BY c.version DESC LIMIT 1) AS q, "
                " (SELECT COUNT(*) FROM corrections c WHERE c.case_id = k.case_id AND c.quality = 'reviewed') AS n_rev "
                "FROM cases k ORDER BY k.seq").fetchall()
        out = []
        for r in rows:
            state = r["q"] if r["n_corr"] else ("predicted" if r["n_pred"] else "new")
            out.append({"case_id": r["case_id"], "name": r["name"], "state": state, "predictions": r["n_pred"],
                        "corrections": r["n_corr"], "reviewed": bool(r["n_rev"]), "predicted": bool(r["n_pred"]),
                        "latest_model_version": r["pmv"], "uncertainty": json.loads(r["unc"]) if r["unc"] else None})
        return out

    def status(self) -> dict:
        """Cases by state, corrections per quality, models, training runs and the effort so far."""
        s = self.settings
        with self.ledger.read() as con:
            states = self.case_states()
            corr = con.execute("SELECT quality, COUNT(*) AS n, SUM(seconds) AS s FROM corrections GROUP BY quality").fetchall()
            latest_q = con.execute("SELECT c.quality, COUNT(*) FROM corrections c WHERE c.version = (SELECT MAX(version) "
                                   "FROM corrections c2 WHERE c2.case_id = c.case_id) GROUP BY c.quality").fetchall()
            effort_rows = con.execute("SELECT c.effort, c.seconds, p.model_version FROM corrections c "
                                      "LEFT JOIN predictions p ON p.prediction_id = c.based_on ORDER BY c.correction_id").fetchall()
            n_pred = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            runs = con.execute("SELECT status, COUNT(*) FROM training_runs GROUP BY status").fetchall()
            models = self.models()
            n_events = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        by_state: Dict[str, int] = {k: 0 for k in ("new", "predicted", "weak", "rough", "reviewed")}
        for c in states:
            by_state[c["state"]] = by_state.get(c["state"], 0) + 1
        per_q = {q: 0 for q in QUALITIES}
        per_q.update({r["quality"]: r["n"] for r in corr})
        effort = _effort_summary(effort_rows, s.names())
        return {
            "workspace": str(self.root), "schema_version": SCHEMA_VERSION, "modality": s.modality,
            "journal_mode": self.ledger.journal_mode(),
            "labels": [{"value": l.value, "name": l.name, "color": list(l.color)} for l in s.labels],
            "cases": {"total": len(states), "by_state": by_state, "list": states},
            "predictions": n_pred,
            "corrections": {"total": sum(per_q.values()), "by_quality": per_q,
                            "latest_by_quality": {q: dict((r[0], r[1]) for r in latest_q).get(q, 0) for q in QUALITIES}},
            "models": [{"version": m.version, "status": m.status, "parent": m.parent, "name": m.card.get("name"),
                        "metrics": m.card.get("metrics")} for m in models],
            "current_model": next((m.version for m in models if m.status == "current"), None),
            "training_runs": {r[0]: r[1] for r in runs},
            "effort": effort, "events": n_events,
        }

    def rank(self) -> List[dict]:
        """Cases without a reviewed correction, most in need of review first (see ``quality.rank_cases``)."""
        todo = [c for c in self.case_states() if not c["reviewed"]]
        return _quality.rank_cases(todo)

    def check(self, repair: bool = False) -> CheckReport:
        from .check import check_workspace
        return check_workspace(self, repair=repair)

    def export(self, directory: PathLike, include_unlabelled: bool = False, progress: Optional[ProgressFn] = None) -> dict:
        from .export import export_workspace
        return export_workspace(self, Path(directory), include_unlabelled=include_unlabelled, progress=progress)


def _nonempty(label: Any) -> bool:
    if isinstance(label, sitk.Image):
        return bool(np.any(sitk.GetArrayViewFromImage(label)))
    return True


def _int(v: Any, what: str) -> int:
    try:
        return int(str(v).lstrip("vV"))
    except (TypeError, ValueError):
        raise HilaError(f"{what} {v!r}: not a number") from None


def _effort_summary(rows: Sequence[sqlite3.Row], names: List[str]) -> dict:
    """Effort so far, overall and per model version of the corrected prediction (the loop's learning curve)."""
    groups: Dict[str, List[Tuple[dict, Optional[float]]]] = {}
    for r in rows:
        e = json.loads(r["effort"])
        key = "unpredicted" if r["model_version"] is None else f"v{r['model_version']}"
        groups.setdefault(key, []).append((e, r["seconds"]))
        groups.setdefault("all", []).append((e, r["seconds"]))

    def summarise(items):
        secs = [s for _, s in items if s is not None]
        out = {"corrections": len(items), "from_scratch": sum(1 for e, _ in items if e.get("against") == "nothing"),
               "seconds_total": round(sum(secs), 3) if secs else 0.0,
               "seconds_mean": round(sum(secs) / len(secs), 3) if secs else None,
               "voxels_changed_mean": round(float(np.mean([e.get("voxels_changed", 0) for e, _ in items])), 3) if items else None}
        dice = {}
        for n in names:
            vals = [e["dice"][n] for e, _ in items if e.get("dice", {}).get(n) is not None]
            dice[n] = round(float(np.mean(vals)), 4) if vals else None
        out["dice_vs_prediction_mean"] = dice
        return out

    return {k: summarise(v) for k, v in sorted(groups.items())} if groups else {"all": summarise([])}
