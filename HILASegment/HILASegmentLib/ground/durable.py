"""Durable bytes on disk: fsync a file or a folder, write bytes atomically, hash a file.

The lowest layer of the engine, beside ``errors``: the image writers, the workspace's file store and
the model-card writer all need these, and none of them should reach into another for it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import List

from .errors import HilaError


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a written file's bytes to the disk (before it is renamed into place)."""
    with open(path, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (models and volumes can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a fsync'ed temporary beside it, then one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise HilaError(f"{path}: cannot write the file ({exc.strerror})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all or nothing, as :func:`atomic_write_bytes` (JSON records, CSV tables)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# -- staging folders beside an output ----------------------------------------------------------------------------

def _staging_pattern(name: str, kind: str) -> "re.Pattern[str]":
    return re.compile(re.escape(f".{name}.{kind}-") + r"(\d+)-[A-Za-z0-9_]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a pid: leave it
        return True
    return True


def clean_stale_staging(parent: Path, name: str, kind: str) -> List[Path]:
    """Remove the staging folders for ``name`` in ``parent`` that a killed process left behind (its pid, in the
    folder's name, no longer runs); returns them. Only folders of exactly :func:`staging_dir`'s name pattern are
    touched, never a link."""
    removed = []
    pat = _staging_pattern(name, kind)
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pat.match(p.name)
        if m and not p.is_symlink() and p.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def staging_dir(parent: Path, name: str, kind: str) -> Path:
    """A new hidden folder ``.<name>.<kind>-<pid>-<random>`` in ``parent`` to write ``name`` in before it is
    renamed into place. A SIGKILL leaves such a folder behind; the next write of the same ``name`` removes it
    (its pid is dead), so partial outputs do not pile up beside the user's files."""
    clean_stale_staging(parent, name, kind)
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{os.getpid()}-", dir=str(parent)))
