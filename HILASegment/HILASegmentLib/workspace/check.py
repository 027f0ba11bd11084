"""``hila check``: every ledger row against its file, and every file against the ledger.

Damage (exit non-zero) is what must never happen: a row whose file is gone or whose bytes differ,
a broken ledger, a gap in a case's correction versions. What a killed writer can leave behind is
reported but is not damage: a staging folder under ``tmp/`` or a placed file whose row was never
committed (its submission never returned success). ``--repair`` moves those, and any foreign file
in a managed folder, into ``lost+found/``; it never deletes anything and never touches a row.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import sqlite3
from pathlib import Path
from typing import List, Protocol, Set

from ..ground.errors import HilaError
from .files import PLACED_NAME, FileStore, stored_file_problem
from .ledger import Ledger
from .records import CheckReport, dumps
from .runs import pid_alive


class CheckedWorkspace(Protocol):
    """What ``check`` needs of a workspace (the :class:`~.api.Workspace` has it; api imports this module, not back)."""

    root: Path
    ledger: Ledger
    files: FileStore

    def recover_dead_runs(self, con: sqlite3.Connection, why: str) -> List[int]: ...

_FILE_COLUMNS = (("cases", "case_id", "file", "sha256"), ("predictions", "prediction_id", "file", "sha256"),
                 ("corrections", "correction_id", "file", "sha256"), ("models", "version", "file", "sha256"),
                 ("models", "version", "checkpoint_file", "checkpoint_sha256"))


def _known_files(con: sqlite3.Connection) -> Set[str]:
    known: Set[str] = set()
    for table, _key, col, _sha in _FILE_COLUMNS:
        known.update(r[0] for r in con.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL"))
    return known


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # pragma: no cover
        return "?"


def check_workspace(ws: CheckedWorkspace, repair: bool = False) -> CheckReport:
    rep = CheckReport(ok=True)
    root = ws.root
    # 1. the ledger itself
    with ws.ledger.read() as con:
        integrity = [r[0] for r in con.execute("PRAGMA quick_check")]
        if integrity != ["ok"]:
            rep.problems.append(f"ledger integrity: {integrity[0]}")
        for r in con.execute("PRAGMA foreign_key_check"):
            rep.problems.append(f"ledger: row {r[1]} of table {r[0]} points to a missing {r[2]}")
        rows = []
        for table, key, col, sha in _FILE_COLUMNS:
            rows += [(table, r[0], r[1], r[2]) for r in con.execute(
                f"SELECT {key}, {col}, {sha} FROM {table} WHERE {col} IS NOT NULL")]
        gaps = con.execute("SELECT case_id, COUNT(*), MAX(version) FROM corrections GROUP BY case_id "
                           "HAVING COUNT(*) != MAX(version)").fetchall()
        for g in gaps:
            rep.problems.append(f"case {g[0]}: correction versions have gaps ({g[1]} rows, highest v{g[2]})")
        running = con.execute("SELECT run_id, host, pid FROM training_runs WHERE status = 'running'").fetchall()
    # 2. every row against its file (files are immutable, so this needs no lock); a row that leads outside the
    #    workspace is reported, never followed (its target is not opened, hashed or moved)
    rep.rows_checked = len(rows)
    for table, key, rel, sha in rows:
        problem = stored_file_problem(root, rel, sha)
        if problem:
            rep.problems.append(f"{table} {key}: file {rel} {problem}")
        else:
            rep.files_checked += 1
    # 3. every file against the ledger, holding the write lock so no writer is between placing a file and
    #    committing its row (writers place files only inside their write transaction)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    try:
        ctx = ws.ledger.write()
        con = ctx.__enter__()
    except Exception:  # a read-only workspace: check what can be checked
        ctx, con, repair_possible = None, None, False
    else:
        repair_possible = True
    try:
        if con is None:
            with ws.ledger.read() as rcon:
                known = _known_files(rcon)
        else:
            known = _known_files(con)
        found = ws.files.walk()
        for rel in found.files:
            if rel in known:
                continue
            (rep.orphans if PLACED_NAME.match(Path(rel).name) else rep.foreign).append(rel)
        for rel in found.links:  # a link no row names is moved like any foreign file (the link, not its target)
            if rel in known:
                continue  # reported with its row: outside the workspace
            if not (root / rel).is_dir() and not any(k.startswith(rel + "/") for k in known):
                rep.foreign.append(rel)
                continue
            rep.problems.append(f"{rel} is a symbolic link (to {_readlink(root / rel)}) in the store: files read or "
                                "written through it are outside the workspace; replace it with the files themselves")
        for rel in found.nested:
            rep.problems.append(f"{rel} is another workspace nested inside this one's store; it is left alone "
                                "(--repair never moves it); move it out of this workspace")
        for rel, why in found.unreadable:
            rep.problems.append(f"{rel}: cannot be read by this user ({why})")
        for path, stale in ws.files.temporaries():
            rel = path.relative_to(root).as_posix()
            (rep.stale_temporaries if stale else rep.busy_temporaries).append(rel)
        for run_id, host, pid in running:
            if host == socket.gethostname() and pid and not pid_alive(int(pid)):
                rep.warnings.append(f"training run {run_id} is marked running but its process {pid} is gone")
        if repair and con is not None:
            rep.repaired += [f"training run {r} marked failed" for r in ws.recover_dead_runs(con, "check --repair")]
        if repair and not repair_possible:
            rep.warnings.append("--repair: nothing moved, the workspace cannot be written here (read-only)")
        if repair and repair_possible:
            unmoved = []
            for rel in rep.orphans + rep.foreign + rep.stale_temporaries:
                try:  # report a move only once it has happened: the file gone from its place, present in the new one
                    target = ws.files.move_to_lost_found(root / rel, stamp)
                    moved = target.exists() and not (root / rel).exists()
                except (OSError, HilaError) as exc:  # HilaError: lost+found/ is a link, never written through
                    moved, target = False, None
                    rep.warnings.append(f"--repair: could not move {rel} ({getattr(exc, 'strerror', None) or exc})")
                if moved:
                    rep.repaired.append(f"{rel} -> {target.relative_to(root).as_posix()}")
                else:
                    unmoved.append(rel)
            if rep.repaired:
                con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES (?,?,?,?,?)",
                            (_dt.datetime.now(_dt.timezone.utc).isoformat(), "repair", None, None,
                             dumps({"moved": rep.repaired})))
            rep.foreign = [r for r in rep.foreign if r in unmoved]
    except BaseException as exc:
        if ctx is not None:
            ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    if rep.foreign:
        rep.problems.append(f"{len(rep.foreign)} file(s) in workspace folders that the ledger does not know and that "
                            f"HILASegment did not write, e.g. {rep.foreign[0]} (--repair moves them to lost+found/)")
    rep.ok = not rep.problems
    return rep
