"""What every part of the workspace stands on: the folder, its ledger, its file store, its settings,
the event log, and the one write pattern all stored files follow.

The write pattern (:meth:`Core.store`): stage each file completely (fsync'ed, hashed) with nothing
in the ledger touched; then, inside one ``BEGIN IMMEDIATE`` transaction, allocate the version, place
the files under never-reused names and insert the row; if anything fails before the commit, the
placed files go back to staging; the staging folders are always removed. The commit is the moment
a file exists for the workspace. A file placed but never committed (a killed process) is an orphan
that ``check`` reports and ``check --repair`` moves to ``lost+found/``.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import SimpleITK as sitk

from ..formats.itkcalls import quiet_itk
from ..ground.errors import HilaError
from .files import FileStore, Staged
from .ledger import Ledger
from .records import Settings, WorkspaceLabel, dumps

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")
#: Writes one file's complete bytes to the path it is given (see ``FileStore.stage``).
Writer = Callable[[Path], None]


def now() -> str:
    """The ledger's timestamps: UTC, ISO 8601, microseconds (ordering within a second matters)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def user() -> str:
    """Who is acting, for the event log and as the default annotator."""
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database
        return "unknown"


def as_int(v: Any, what: str) -> int:
    """A version number from ``3``, ``"3"`` or ``"v3"``; HilaError naming ``what`` otherwise (a number too large
    for the ledger's INTEGER, 2**63, is one line too, not an OverflowError from SQLite)."""
    text = str(v).strip().lstrip("vV")
    try:
        n = int(text) if len(text) <= 20 else None
    except (TypeError, ValueError):
        n = None
    if n is None or not -(2 ** 63) < n < 2 ** 63:
        shown = text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"
        raise HilaError(f"{what} {shown!r}: not a {what} number") from None
    return n


def image_writer(img: sitk.Image) -> Writer:
    """A staging writer for an image (gzip-compressed NRRD keeps voxels and geometry exactly)."""
    def write(path: Path) -> None:
        with quiet_itk():  # ITK's own stderr lines: the error becomes one line in FileStore.stage
            sitk.WriteImage(img, str(path), True)
    return write


def copier(src: Path) -> Writer:
    """A staging writer that copies ``src`` byte for byte (models are stored exactly as given)."""
    return lambda path: shutil.copyfile(src, path)


class Core:
    """What every part of the workspace is handed: the folder, its ledger, its file store, its settings, the
    event log and the one write pattern (:meth:`store`). :class:`~.api.Workspace` makes one and gives it to
    each part it builds."""

    def __init__(self, root: Path, ledger: Ledger):
        self.root = Path(root)
        self.ledger = ledger
        self.files = FileStore(self.root)
        self._settings: Optional[Settings] = None

    def close(self) -> None:
        self.ledger.close()

    @property
    def settings(self) -> Settings:
        """Modality and labels (read once; they never change after ``create``)."""
        if self._settings is None:
            with self.ledger.read() as con:
                kv = {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM settings")}
                labels = [WorkspaceLabel(int(r["value"]), r["name"], tuple(json.loads(r["color"])))
                          for r in con.execute("SELECT * FROM labels ORDER BY value")]
            self._settings = Settings(kv.get("modality", ""), labels, kv.get("created_at", ""))
        return self._settings

    def abspath(self, rel: Optional[str]) -> Optional[Path]:
        return None if rel is None else self.root / rel

    # -- the event log -------------------------------------------------------------------------
    def event(self, con: sqlite3.Connection, kind: str, entity: Optional[str], details: dict) -> None:
        """Log who did what (inside the caller's write transaction ``con``)."""
        con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES (?,?,?,?,?)",
                    (now(), kind, entity, user(), dumps(details)))

    def events(self, limit: int = 100) -> List[dict]:
        """The latest events, newest first (who did what, when)."""
        with self.ledger.read() as con:
            rows = con.execute("SELECT * FROM events ORDER BY event_id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r, details=json.loads(r["details"] or "null")) for r in rows]

    # -- the one write pattern -----------------------------------------------------------------
    def store(self, files: Sequence[Tuple[Writer, str]],
              record: Callable[[sqlite3.Connection, Sequence[Staged]], T]) -> T:
        """Stage ``files`` (``(writer, suffix)`` pairs), then run ``record(con, staged)`` in one write
        transaction: it allocates names, calls ``staged[i].place(rel)`` and inserts the rows.

        An error before the commit puts placed files back (never a row without its file, never a
        file replaced); the staging folders are removed whatever happens. An error in the commit
        itself leaves at most an orphan file, never an unplaced file that a committed row names.
        """
        staged: List[Staged] = []
        try:
            for write, suffix in files:
                staged.append(self.files.stage(write, suffix))
            with self.ledger.write() as con:
                try:
                    return record(con, staged)
                except BaseException:
                    for s in staged:
                        s.unplace()
                    raise
        finally:
            for s in staged:
                s.cleanup()

    # -- reading rows --------------------------------------------------------------------------
    def row_by_id(self, table: str, key: str, value: int, what: str) -> sqlite3.Row:
        """One ledger row by its id (table and key are this package's constants, never user input)."""
        with self.ledger.read() as con:
            r = con.execute(f"SELECT * FROM {table} WHERE {key} = ?", (int(value),)).fetchone()
        if r is None:
            raise HilaError(f"{self.root}: unknown {what} {value}")
        return r
