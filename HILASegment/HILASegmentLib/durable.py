"""Durable bytes on disk: fsync a file or a folder, write bytes atomically, hash a file.

The lowest floor of the engine beside ``errors``: the image writers, the workspace's file store and
the model-card writer all need these, and none of them should reach into another for it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
