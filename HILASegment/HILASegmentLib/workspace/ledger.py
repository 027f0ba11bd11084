"""The workspace ledger: one SQLite file, its schema, its migrations and its transactions.

SQLite in WAL mode gives readers consistent snapshots while one writer commits, and a crash at
any moment leaves the last committed state. Writers take ``BEGIN IMMEDIATE`` (the write lock up
front, so two writers never deadlock on a lock upgrade) and retry while another process holds it.
``PRAGMA user_version`` is the schema version; a ledger written by a newer HILASegment is refused
before anything is touched.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

from ..ground import envvars
from ..ground.errors import HilaError

LEDGER_NAME = "hila.sqlite"

#: The schema version this code writes; ``MIGRATIONS[n]`` brings a ledger from version n-1 to n.
SCHEMA_VERSION = 4


_SCHEMA_V1 = """
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL                        -- JSON
);
CREATE TABLE labels (
    value INTEGER PRIMARY KEY CHECK (value BETWEEN 1 AND 255),
    name  TEXT NOT NULL UNIQUE COLLATE NOCASE,
    color TEXT NOT NULL                        -- JSON [r, g, b] in 0..1
);
CREATE TABLE cases (
    case_id      TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,         -- sha256 of voxels + pixel type + geometry
    file         TEXT NOT NULL UNIQUE,         -- relative to the workspace folder
    sha256       TEXT NOT NULL,                -- of the stored file
    source_path  TEXT,
    grid         TEXT NOT NULL,                -- JSON: size, spacing, origin, direction, pixel type
    imported_at  TEXT NOT NULL
);
CREATE TABLE models (
    version           INTEGER PRIMARY KEY CHECK (version >= 1),
    file              TEXT NOT NULL UNIQUE,
    sha256            TEXT NOT NULL,
    card              TEXT NOT NULL,           -- JSON
    parent            INTEGER REFERENCES models(version),
    status            TEXT NOT NULL CHECK (status IN ('candidate', 'current', 'retired')),
    checkpoint_file   TEXT UNIQUE,
    checkpoint_sha256 TEXT,
    training_run      INTEGER REFERENCES training_runs(run_id),
    created_at        TEXT NOT NULL
);
CREATE UNIQUE INDEX models_one_current ON models(status) WHERE status = 'current';
CREATE TABLE model_promotions (              -- history of 'current', for one-step rollback
    promotion_id INTEGER PRIMARY KEY AUTOINCREMENT,
    version      INTEGER NOT NULL REFERENCES models(version),
    action       TEXT NOT NULL CHECK (action IN ('init', 'promote', 'rollback')),
    time         TEXT NOT NULL
);
CREATE TABLE predictions (
    prediction_id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id       TEXT NOT NULL REFERENCES cases(case_id),
    model_version INTEGER,                     -- a workspace model version (or an outside model's)
    file          TEXT NOT NULL UNIQUE,
    sha256        TEXT NOT NULL,
    uncertainty   TEXT,                        -- JSON summary from inference
    created_at    TEXT NOT NULL
);
CREATE INDEX predictions_case ON predictions(case_id, prediction_id);
CREATE TABLE corrections (
    correction_id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id       TEXT NOT NULL REFERENCES cases(case_id),
    version       INTEGER NOT NULL CHECK (version >= 1),
    file          TEXT NOT NULL UNIQUE,
    sha256        TEXT NOT NULL,
    quality       TEXT NOT NULL CHECK (quality IN ('reviewed', 'rough', 'weak')),
    annotator     TEXT,
    seconds       REAL CHECK (seconds IS NULL OR seconds >= 0),
    based_on      INTEGER REFERENCES predictions(prediction_id),
    effort        TEXT NOT NULL,               -- JSON: Dice per label, voxels changed, against what
    created_at    TEXT NOT NULL,
    UNIQUE (case_id, version)
);
CREATE TABLE training_runs (
    run_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    status        TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
    parent_model  INTEGER REFERENCES models(version),
    model_version INTEGER REFERENCES models(version),
    metrics       TEXT,                        -- JSON
    log           TEXT NOT NULL DEFAULT '',
    host          TEXT,
    pid           INTEGER,
    started_at    TEXT NOT NULL,
    finished_at   TEXT
);
CREATE TABLE training_snapshot (              -- the exact correction versions a run trains on
    run_id        INTEGER NOT NULL REFERENCES training_runs(run_id),
    correction_id INTEGER NOT NULL REFERENCES corrections(correction_id),
    PRIMARY KEY (run_id, correction_id)
);
CREATE TABLE events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    time     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    entity   TEXT,
    actor    TEXT,
    details  TEXT                              -- JSON
);
-- What a radiologist submitted is never rewritten or removed; nor is an imported case or a model file.
CREATE TRIGGER corrections_no_update BEFORE UPDATE ON corrections
BEGIN SELECT RAISE(ABORT, 'corrections are immutable'); END;
CREATE TRIGGER corrections_no_delete BEFORE DELETE ON corrections
BEGIN SELECT RAISE(ABORT, 'corrections are never deleted'); END;
CREATE TRIGGER cases_no_update BEFORE UPDATE ON cases
BEGIN SELECT RAISE(ABORT, 'cases are immutable'); END;
CREATE TRIGGER predictions_no_update BEFORE UPDATE ON predictions
BEGIN SELECT RAISE(ABORT, 'predictions are immutable'); END;
CREATE TRIGGER models_files_fixed BEFORE UPDATE OF version, file, sha256, checkpoint_file, checkpoint_sha256 ON models
BEGIN SELECT RAISE(ABORT, 'model files are immutable'); END;
CREATE TRIGGER training_snapshot_no_update BEFORE UPDATE ON training_snapshot
BEGIN SELECT RAISE(ABORT, 'training snapshots are immutable'); END;
"""


# Version 2: DICOM. The image series a case came from (its UIDs and what SEG/RTSTRUCT writers need),
# and every DICOM SEG/RTSTRUCT instance that became a correction or was written from one, so that
# importing, exporting and syncing are idempotent by SOP instance UID.
_SCHEMA_V2 = """
CREATE TABLE case_series (
    case_id     TEXT PRIMARY KEY REFERENCES cases(case_id),
    study_uid   TEXT NOT NULL,
    series_uid  TEXT NOT NULL,
    record      TEXT NOT NULL                  -- JSON: dicomref.series_record (slice UIDs, header template)
);
CREATE INDEX case_series_series ON case_series(series_uid);
CREATE TABLE dicom_objects (
    sop_uid       TEXT NOT NULL,
    part          TEXT NOT NULL DEFAULT '',    -- the contour set of an RTSTRUCT ('' for a SEG)
    role          TEXT NOT NULL CHECK (role IN ('imported', 'pulled', 'exported')),  -- pulled: from a PACS
    modality      TEXT NOT NULL,
    case_id       TEXT NOT NULL REFERENCES cases(case_id),
    correction_id INTEGER REFERENCES corrections(correction_id),
    series_uid    TEXT NOT NULL,                -- of the SEG/RTSTRUCT itself
    created_at    TEXT NOT NULL,
    PRIMARY KEY (sop_uid, part, role)
);
CREATE TRIGGER case_series_no_update BEFORE UPDATE ON case_series
BEGIN SELECT RAISE(ABORT, 'case series are immutable'); END;
CREATE TRIGGER dicom_objects_no_update BEFORE UPDATE ON dicom_objects
BEGIN SELECT RAISE(ABORT, 'dicom objects are immutable'); END;
"""


# Version 3: the history of current models is append-only (a rollback is a new row, never a deletion).
_SCHEMA_V3 = """
CREATE TRIGGER model_promotions_no_update BEFORE UPDATE ON model_promotions
BEGIN SELECT RAISE(ABORT, 'model promotion history is append-only'); END;
CREATE TRIGGER model_promotions_no_delete BEFORE DELETE ON model_promotions
BEGIN SELECT RAISE(ABORT, 'model promotion history is append-only'); END;
"""


# Version 4: suspect flags (issue 13). A correction that the first model not trained on it disagrees with far
# more than its peers is flagged; the correction itself is never changed, the flag is never edited or deleted
# (a newer correction of the case supersedes it: flags are read for the latest version only).
_SCHEMA_V4 = """
CREATE TABLE suspects (
  suspect_id INTEGER PRIMARY KEY,
  correction_id INTEGER NOT NULL REFERENCES corrections(correction_id),
  case_id TEXT NOT NULL,
  correction_version INTEGER NOT NULL,
  run_id INTEGER,
  model_version INTEGER,
  scores TEXT NOT NULL,
  reason TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX suspects_case ON suspects(case_id, correction_version);
CREATE TRIGGER suspects_no_update BEFORE UPDATE ON suspects
BEGIN SELECT RAISE(ABORT, 'suspect flags are append-only'); END;
CREATE TRIGGER suspects_no_delete BEFORE DELETE ON suspects
BEGIN SELECT RAISE(ABORT, 'suspect flags are append-only'); END;
"""


def _if_not_exists(stmt: str) -> str:
    """``CREATE TABLE/INDEX/TRIGGER x`` as ``... IF NOT EXISTS x``: a migration that meets its own objects (a
    ledger whose version number was set back, or a migration interrupted between versions) completes them."""
    return re.sub(r"^CREATE (UNIQUE INDEX|TABLE|INDEX|TRIGGER) (?!IF NOT EXISTS)", r"CREATE \1 IF NOT EXISTS ", stmt)


def _apply(script: str, con: sqlite3.Connection) -> None:
    for stmt in _split_sql(script):
        con.execute(_if_not_exists(stmt))


def _migrate_to_1(con: sqlite3.Connection) -> None:
    _apply(_SCHEMA_V1, con)


def _migrate_to_2(con: sqlite3.Connection) -> None:
    _apply(_SCHEMA_V2, con)


def _migrate_to_3(con: sqlite3.Connection) -> None:
    _apply(_SCHEMA_V3, con)


def _migrate_to_4(con: sqlite3.Connection) -> None:
    _apply(_SCHEMA_V4, con)


#: version -> function that upgrades a ledger at version-1 to version (run inside one transaction).
MIGRATIONS: Dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3,
                                                              4: _migrate_to_4}


def _split_sql(script: str) -> list:
    """Split a schema script into statements (``executescript`` would commit mid-migration)."""
    stmts, buf = [], ""
    for line in script.splitlines():
        line = line.split("--", 1)[0].rstrip()
        if not line:
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            stmts.append(buf.strip())
            buf = ""
    if buf.strip():
        stmts.append(buf.strip())
    return stmts


def read_header_version(path: Path) -> int:
    """The schema version in a ledger file's header, read without opening it with SQLite.

    Lets a newer ledger be refused before SQLite creates WAL/shared-memory files beside it.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        raise HilaError(f"{path}: cannot read the ledger ({exc.strerror})") from None
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise HilaError(f"{path}: not a HILASegment ledger (not an SQLite database); the workspace is damaged")
    return struct.unpack(">I", head[60:64])[0]


def _busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class Ledger:
    """One connection to a workspace's ledger, shared by the threads of one process."""

    def __init__(self, path: Path, create: bool = False, journal_mode: str = "WAL", readonly: bool = False):
        """Open (or with ``create``, make) a ledger. The journal mode is chosen once, at creation, and kept
        in the file: WAL (readers never wait; processes on one machine) or DELETE (a rollback journal and
        file locks only, for a workspace on a network disk shared by several machines).

        ``readonly``: for commands that only read (status, check, rank, models list, export), so they work on a
        workspace they may not write (a read-only disk or share): SQLite's read-only mode, and where even the
        WAL index cannot be made there (the folder is not writable, so no hila process can be writing either)
        its immutable mode. Nothing is ever written through such a ledger."""
        self.path = Path(path)
        self.readonly = readonly
        if not create:
            version = read_header_version(self.path)
            if version > SCHEMA_VERSION:
                raise HilaError(f"{self.path}: ledger schema version {version} is newer than this HILASegment "
                                f"understands ({SCHEMA_VERSION}); update HILASegment")
        self._lock = threading.RLock()
        self._private: "Path | None" = None  # a private copy of a read-only ledger whose last commits are in its WAL
        try:
            self.con = self._connect(readonly)
            self.con.row_factory = sqlite3.Row
            self.con.execute("PRAGMA busy_timeout = 10000")
            if self.schema_version() > SCHEMA_VERSION:  # (the header may lag behind a WAL): before any pragma writes
                raise HilaError(f"{self.path}: ledger schema version {self.schema_version()} is newer than this "
                                f"HILASegment understands ({SCHEMA_VERSION}); update HILASegment")
            if not create:
                self._check_pages()
            self.con.execute("PRAGMA foreign_keys = ON")
            if create:
                journal = journal_mode.upper()
                if journal not in ("WAL", "DELETE"):
                    raise HilaError(f"journal mode {journal_mode!r}: use WAL or DELETE")
                self._retry(lambda: self.con.execute(f"PRAGMA journal_mode = {journal}").fetchone())
            if not readonly:
                self.con.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            self.close()
            if not readonly and not os.access(self.path.parent, os.W_OK):
                raise HilaError(f"{self.path.parent}: the workspace folder is read-only here and this command "
                                "writes to it (status, check, rank, models and export only read)") from None
            raise HilaError(f"{self.path}: the ledger is corrupt or unreadable ({exc}); nothing was changed; "
                            "restore hila.sqlite from a backup") from None
        except HilaError:
            self.close()
            raise
        version = self.schema_version()
        if version < SCHEMA_VERSION and (self._private is not None or not self._can_write()):
            self.close()  # (the version was read first: a closed connection cannot say it)
            raise HilaError(f"{self.path}: the ledger is of an older HILASegment (schema {version}; this one needs "
                            f"{SCHEMA_VERSION}) and cannot be upgraded here, the folder is read-only; run `hila status "
                            f"{self.path.parent}` once where the workspace can be written, which upgrades it")
        self._migrate()

    def _can_write(self) -> bool:
        return os.access(self.path.parent, os.W_OK) and os.access(self.path, os.W_OK)

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        writable = self._can_write()
        if not readonly or writable:  # (a read-only connection would leave its WAL files behind where it can)
            return sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
        uri = self.path.resolve().as_uri()
        con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError:
            con.close()
            if os.access(self.path.parent, os.W_OK):
                raise
        wal = Path(f"{self.path}-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            return self._connect_private_copy(wal)  # immutable mode would ignore the commits in the WAL
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=10.0, isolation_level=None,
                               check_same_thread=False)

    def _connect_private_copy(self, wal: Path) -> sqlite3.Connection:
        """A read-only folder whose ledger has commits in ``-wal`` but no ``-shm`` (a copy that skipped the transient
        file): SQLite can neither make the WAL index there nor read the WAL without it, so the ledger and its WAL are
        copied to a private temporary folder and read there (SQLite replays the WAL into the copy); nothing is written
        beside the workspace, and ``write`` refuses. The copy goes when the ledger is closed."""
        tmp = Path(tempfile.mkdtemp(prefix="hila-ledger-"))
        self._private = tmp
        atexit.register(shutil.rmtree, tmp, True)
        try:
            shutil.copyfile(self.path, tmp / LEDGER_NAME)
            shutil.copyfile(wal, tmp / f"{LEDGER_NAME}-wal")
        except OSError as exc:
            raise HilaError(f"{self.path}: the folder is read-only and the ledger's last commits are in {wal.name} "
                            f"without {LEDGER_NAME}-shm; copying them to read them failed ({exc.strerror}); "
                            "open the workspace where it can be written") from None
        con = sqlite3.connect(str(tmp / LEDGER_NAME), timeout=10.0, isolation_level=None, check_same_thread=False)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con

    def _check_pages(self) -> None:
        """Refuse a ledger with damaged pages before any command reads half of it (SQLite's quick_check:
        page structure and index consistency, a few milliseconds for a ledger of metadata rows)."""
        rows = [str(r[0]) for r in self.con.execute("PRAGMA quick_check(5)").fetchall()]
        if rows != ["ok"]:
            detail = "; ".join(" ".join(r.replace("*** in database main ***", "").split()) for r in rows)[:200]
            raise HilaError(f"{self.path}: the ledger is corrupt (SQLite quick_check: {detail}); nothing was "
                            "changed; restore hila.sqlite from a backup")

    # -- schema --------------------------------------------------------------------------------
    def journal_mode(self) -> str:
        return str(self.con.execute("PRAGMA journal_mode").fetchone()[0]).upper()

    def schema_version(self) -> int:
        return int(self.con.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Bring an older ledger to this schema in one transaction (all versions or none)."""
        if self.schema_version() >= SCHEMA_VERSION:
            if self.schema_version() > SCHEMA_VERSION:
                raise HilaError(f"{self.path}: ledger schema version {self.schema_version()} is newer than this "
                                f"HILASegment understands ({SCHEMA_VERSION}); update HILASegment")
            return
        current = self.schema_version()
        try:
            with self.write() as con:
                current = int(con.execute("PRAGMA user_version").fetchone()[0])
                for target in range(current + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[target](con)
                    con.execute(f"PRAGMA user_version = {target}")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise HilaError(f"{self.path}: cannot upgrade the ledger from schema {current} to {SCHEMA_VERSION} "
                            f"({exc}); nothing was changed") from None

    # -- transactions --------------------------------------------------------------------------
    def _retry(self, fn: Callable, timeout: Optional[float] = None):
        # How long a writer waits for another writer before giving up (seconds, total, over all retries).
        timeout = envvars.seconds("HILA_LEDGER_TIMEOUT") if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    if _busy(exc):
                        raise HilaError(f"{self.path}: the workspace is busy (another process held the ledger "
                                        f"for over {timeout:.0f} s)") from None
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``, retried while another writer holds the lock)."""
        with self._lock:
            if self._private is not None:
                raise HilaError(f"{self.path.parent}: the workspace folder is read-only here and this command writes "
                                "to it")
            self._retry(lambda: self.con.execute("BEGIN IMMEDIATE"))
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            else:
                try:
                    self._retry(lambda: self.con.execute("COMMIT"))
                except BaseException:
                    if self.con.in_transaction:
                        self.con.execute("ROLLBACK")
                    raise

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one consistent snapshot of the ledger."""
        with self._lock:
            if self.con.in_transaction:  # nested inside a write: same snapshot
                yield self.con
                return
            self._retry(lambda: self.con.execute("BEGIN DEFERRED"))
            try:
                # the snapshot starts at the first read; take it now
                self._retry(lambda: self.con.execute("SELECT count(*) FROM sqlite_master").fetchone())
                yield self.con
            finally:
                if self.con.in_transaction:
                    self.con.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            try:
                if hasattr(self, "con"):
                    self.con.close()
            except sqlite3.Error:  # pragma: no cover
                pass
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)
