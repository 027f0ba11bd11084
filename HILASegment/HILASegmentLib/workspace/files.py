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
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, List, Optional, Tuple, Union

import SimpleITK as sitk

from ..formats.imageio import read_image
from ..ground.durable import fsync_dir, fsync_file, sha256_file
from ..ground.errors import HilaError
from .ledger import LEDGER_NAME

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


def _folder_mode(root: Path) -> int:
    """The permission bits of the workspace folder: the store's folders get the same (a shared workspace stays
    shared whatever the umask of whoever wrote last)."""
    try:
        return stat.S_IMODE(os.stat(root).st_mode) & 0o777
    except OSError:  # pragma: no cover
        return 0o755


def file_mode(root: Path) -> int:
    """The mode of a stored file: readable by whoever may read the workspace folder (never by more), written by
    its owner only (an annotator's umask 077 must not make a correction unreadable to the others of a shared
    workspace, whose check and export would then fail)."""
    return 0o600 | (_folder_mode(root) & 0o044)


def link_escape(root: Path, rel: str) -> Optional[str]:
    """Why the workspace-relative path ``rel`` (from a ledger row or a walk of the store) does not stay inside the
    workspace, or None: an absolute path, a ``..`` step, or a symbolic link on the way (the store holds its own
    files; a link sends reads and writes into another folder, perhaps another workspace)."""
    pure = PurePosixPath(str(rel))
    if pure.is_absolute() or os.path.isabs(str(rel)):
        return "an absolute path"
    if ".." in pure.parts:
        return "a '..' step in the path"
    d = Path(root)
    for part in pure.parts:
        d = d / part
        if os.path.islink(d):
            try:
                target = os.readlink(d)
            except OSError:  # pragma: no cover
                target = "?"
            return f"{d.relative_to(root).as_posix()} is a symbolic link to {target}"
    return None


def stored_file_problem(root: Path, rel: str, sha256: Optional[str] = None) -> Optional[str]:
    """What is wrong with the store file ``rel`` that a ledger row names, in words that follow its name, or None:
    outside the workspace (then never opened), missing, unreadable by this user, or (given ``sha256``) changed."""
    why = link_escape(root, rel)
    if why:
        return f"is outside the workspace ({why}); not read"
    path = Path(root) / rel
    try:
        if not path.is_file():
            return "is missing"
        if not os.access(path, os.R_OK):
            return "cannot be read by this user (permission denied; its owner's umask kept it private)"
        actual = sha256_file(path) if sha256 is not None else None
    except OSError as exc:
        return f"cannot be read by this user ({exc.strerror})"
    if actual is not None and actual != sha256:
        return f"has changed (sha256 {actual[:12]}... != {str(sha256)[:12]}...)"
    return None


def check_stored(root: Path, path: Union[str, Path], what: str, noun: str = "file", hint: str = "") -> str:
    """``path``'s name in the workspace when it may be read (inside it, present, readable), else the one line
    :func:`read_stored` gives; nothing is opened (what a cached read checks before it serves the file's image)."""
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
    problem = stored_file_problem(Path(root), rel)
    if problem:
        raise HilaError(f"{what}: its stored {noun} {rel} {problem}; {hint or 'nothing was changed'}; "
                        f"`hila check {root}` lists what else is")
    return rel


def read_stored(root: Path, path: Union[str, Path], what: str, noun: str = "file", hint: str = "") -> sitk.Image:
    """The one reader of the images a ledger row names (cases, predictions, corrections): a file outside the
    workspace is refused unread, a missing, unreadable or damaged one is one line naming ``what`` (e.g. ``case
    c0001``) and the file; ``hint`` says how to get it back."""
    rel = check_stored(root, path, what, noun, hint)
    try:
        return read_image(Path(root) / rel)
    except HilaError as exc:
        raise HilaError(f"{what}: its stored {noun} is damaged ({exc}); {hint or 'nothing was changed'}; "
                        f"`hila check {root}` lists what else is") from None


def _nested_in(folder: Path) -> List[Path]:
    """The entries of ``folder`` that are workspaces (they hold a ledger)."""
    try:
        return [e for e in sorted(folder.iterdir()) if not e.is_symlink() and (e / LEDGER_NAME).is_file()]
    except OSError:
        return []


def _mkdirs(root: Path, rel_dir: Path) -> Path:
    """Create ``root/rel_dir`` step by step, fsync'ing each parent so the new folders survive a crash; refuse to go
    through a symbolic link (a linked store folder would put this workspace's file in another folder)."""
    d = root
    for part in rel_dir.parts:
        nxt = d / part
        if os.path.islink(nxt):
            raise HilaError(f"{nxt}: a symbolic link (to {os.readlink(nxt)}) in the workspace store; hila writes only "
                            "into the workspace's own folders; nothing was recorded (`hila check` lists the links)")
        if not nxt.is_dir():
            try:
                nxt.mkdir()
                os.chmod(nxt, _folder_mode(root))
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
        why = link_escape(self.store.root, rel_path)
        if why:
            raise HilaError(f"{target}: would be written outside the workspace ({why}); nothing was recorded "
                            "(`hila check` lists the links)")
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


@dataclass
class StoreWalk:
    """What :meth:`FileStore.walk` found in the managed folders (workspace-relative POSIX paths)."""

    files: List[str] = field(default_factory=list)
    links: List[str] = field(default_factory=list)
    nested: List[str] = field(default_factory=list)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)


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
            os.chmod(payload, file_mode(self.root))
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
        """Every file under the managed folders, as workspace-relative POSIX paths (see :meth:`walk`)."""
        return self.walk().files

    def walk(self) -> "StoreWalk":
        """The managed folders as they are: plain files, symbolic links (to folders or files; never followed) and
        workspaces nested inside them (never entered: their files are theirs, not orphans of this one)."""
        out = StoreWalk()
        for top in MANAGED_DIRS + (TMP_DIR,):
            base = self.root / top
            if os.path.islink(base):
                out.links.append(top)
                continue
            if top == TMP_DIR:
                out.nested += [e.relative_to(self.root).as_posix() for e in _nested_in(base)]
                continue
            if not base.is_dir():
                continue

            def unreadable(exc: OSError) -> None:
                out.unreadable.append((Path(exc.filename).relative_to(self.root).as_posix(), exc.strerror or str(exc)))

            for dirpath, dirs, files in os.walk(base, onerror=unreadable):
                here = Path(dirpath)
                if (here / LEDGER_NAME).exists() or any(f.startswith(f".{LEDGER_NAME}.init-") for f in files):
                    out.nested.append(here.relative_to(self.root).as_posix())
                    dirs[:] = []
                    continue
                for d in list(dirs):
                    if os.path.islink(here / d):
                        out.links.append((here / d).relative_to(self.root).as_posix())
                        dirs.remove(d)
                for f in files:
                    (out.links if os.path.islink(here / f) else out.files).append(
                        (here / f).relative_to(self.root).as_posix())
        out.files.sort()
        out.links.sort()
        return out

    def temporaries(self) -> List[Tuple[Path, bool]]:
        """Staging folders as ``(path, stale)``: stale when the writer that made it is gone."""
        base = self.root / TMP_DIR
        if os.path.islink(base) or not base.is_dir():  # (a linked tmp/ is reported by walk, never entered)
            return []
        out = []
        nested = set(_nested_in(base))
        try:
            entries = sorted(base.iterdir())
        except OSError:  # (another user's private tmp/: nothing of ours to tell stale from live)
            return []
        for entry in entries:
            if entry not in nested:  # (a workspace put there by hand is reported by walk, never moved)
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
