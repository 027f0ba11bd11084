"""The workspace's immutable file store: stage, fsync, then place under a name that is never reused.

A file is first written completely into its own staging folder under ``tmp/`` (flushed and
fsync'ed), then linked into place with a name that carries a random token, so it can never
replace another file. The ledger row that points at it is committed only afterwards. A process
killed at any moment therefore leaves at worst a staging folder (its lock is released when the
process dies, which is how ``check`` tells a dead writer's leftovers from a live writer's work) or
a placed file that no row names (harmless; ``check --repair`` moves it to ``lost+found/``).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..durable import fsync_dir, fsync_file, sha256_file
from ..errors import HilaError

try:  # POSIX advisory locks tell live writers from dead ones
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the age of a staging folder
    fcntl = None  # type: ignore[assignment]

TMP_DIR = "tmp"
LOST_DIR = "lost+found"
#: Folders whose files are managed by the ledger.
MANAGED_DIRS = ("cases", "predictions", "corrections", "models")
#: A placed file's name: ``<prefix>-<12 hex token><suffix>``; an unnamed one is a crash leftover.
PLACED_NAME = re.compile(r"^[A-Za-z0-9_.]+-[0-9a-f]{12}\.[A-Za-z0-9.]+$")
#: Without POSIX locks a staging folder this old is taken to be a dead writer's.
STALE_AGE_S = 3600.0


def _mkdirs(root: Path, rel_dir: Path) -> Path:
    """Create ``root/rel_dir`` step by step, fsync'ing each parent so the new folders survive a crash."""
    d = root
    for part in rel_dir.parts:
        nxt = d / part
        if not nxt.is_dir():
            try:
                nxt.mkdir()
            except FileExistsError:
                pass
            fsync_dir(d)
        d = nxt
    return d


@dataclass
class Staged:
    """A file written completely to the staging area, not yet placed."""

    store: "FileStore"
    folder: Path
    payload: Path
    suffix: str
    sha256: str
    size: int
    token: str
    _lock: Optional[object] = field(default=None, repr=False)
    placed: Optional[Path] = None

    def name(self, prefix: str) -> str:
        return f"{prefix}-{self.token}{self.suffix}"

    def place(self, rel_path: str) -> Path:
        """Move the payload to ``rel_path`` (relative to the workspace); never replaces an existing file."""
        target = self.store.root / rel_path
        _mkdirs(self.store.root, Path(rel_path).parent)
        try:
            os.link(self.payload, target)  # fails if the name exists: nothing is ever overwritten
            os.unlink(self.payload)
        except FileExistsError:
            raise HilaError(f"{target}: already exists; workspace files are never overwritten") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if target.exists():  # a filesystem without hard links: check, then rename
                raise HilaError(f"{target}: already exists; workspace files are never overwritten") from None
            os.rename(self.payload, target)
        fsync_dir(target.parent)
        self.placed = target
        return target

    def unplace(self) -> None:
        """Undo :meth:`place` (the ledger row could not be committed): back into the staging folder."""
        if self.placed is not None and self.placed.exists():
            os.rename(self.placed, self.payload)
            fsync_dir(self.placed.parent)
        self.placed = None

    def cleanup(self) -> None:
        """Remove the staging folder (after the row committed, or when giving up)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            try:
                self._lock.close()  # type: ignore[attr-defined]
            except OSError:  # pragma: no cover
                pass
            self._lock = None


class FileStore:
    """Writes and verifies the immutable files of one workspace folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------------
    def stage(self, write: Callable[[Path], None], suffix: str) -> Staged:
        """Run ``write(path)`` into a fresh locked staging folder, fsync the result and hash it."""
        token = uuid.uuid4().hex[:12]
        tmp_root = _mkdirs(self.root, Path(TMP_DIR))
        folder = tmp_root / f"{token}.tmp"
        folder.mkdir()
        lock = open(folder / ".lock", "w", encoding="utf-8")
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        payload = folder / f"payload{suffix}"
        staged = Staged(self, folder, payload, suffix, "", 0, token, lock)
        try:
            write(payload)
            if not payload.is_file():
                raise HilaError(f"{payload}: the writer produced no file")
            fsync_file(payload)
            fsync_dir(folder)
            staged.sha256 = sha256_file(payload)
            staged.size = payload.stat().st_size
        except (OSError, RuntimeError) as exc:  # RuntimeError: ITK's writers (a full disk among them)
            free = shutil.disk_usage(folder).free  # measured with the partial file still there
            staged.cleanup()
            if getattr(exc, "errno", None) == errno.ENOSPC or free < (1 << 20):
                raise HilaError(f"{self.root}: no space left on its disk ({free // 1024} kB free) while storing a "
                                "file; nothing was recorded; free some space and try again") from None
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1][:160]
            raise HilaError(f"{self.root}: cannot store a file in the workspace ({reason}); nothing was recorded") from None
        except BaseException:
            staged.cleanup()
            raise
        return staged

    def stage_copy(self, source: Path, suffix: str) -> Staged:
        """Stage a byte-exact copy of ``source``."""
        return self.stage(lambda p: shutil.copyfile(source, p), suffix)

    # -- checking ------------------------------------------------------------------------------
    def managed_files(self) -> List[str]:
        """Every file under the managed folders, as workspace-relative POSIX paths."""
        out = []
        for top in MANAGED_DIRS:
            base = self.root / top
            if not base.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(base):
                for f in files:
                    out.append((Path(dirpath) / f).relative_to(self.root).as_posix())
        return sorted(out)

    def temporaries(self) -> List[Tuple[Path, bool]]:
        """Staging folders as ``(path, stale)``: stale when the writer that made it is gone."""
        base = self.root / TMP_DIR
        if not base.is_dir():
            return []
        out = []
        for entry in sorted(base.iterdir()):
            out.append((entry, self._is_stale(entry)))
        return out

    def _is_stale(self, entry: Path) -> bool:
        lockfile = entry / ".lock"
        if fcntl is None or not lockfile.exists():
            try:
                age = time.time() - entry.stat().st_mtime
            except OSError:
                return False
            # a folder with no lock file yet was either just made (live) or its maker died at once
            return age > (STALE_AGE_S if fcntl is None else 60.0)
        try:
            with open(lockfile, "r", encoding="utf-8") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False  # a live writer holds it
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                return True
        except OSError:
            return False

    def move_to_lost_found(self, path: Path, stamp: str) -> Path:
        """Move a file or folder under ``lost+found/<stamp>/`` keeping its relative path (nothing deleted)."""
        rel = path.relative_to(self.root)
        target = self.root / LOST_DIR / stamp / rel
        _mkdirs(self.root, target.parent.relative_to(self.root))
        os.rename(path, target)
        fsync_dir(path.parent)
        fsync_dir(target.parent)
        return target
