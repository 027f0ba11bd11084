"""Calling ITK safely: its messages squeezed into one line, its native stderr chatter silenced, its output written
atomically (and a full disk named as such). ``imageio`` and every other writer of files go through here.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import SimpleITK as sitk

from ..ground.durable import fsync_dir, fsync_file, staging_dir
from ..ground.errors import HilaError

PathLike = Union[str, "os.PathLike[str]"]


def one_line(text: str, limit: int = 220) -> str:
    """Squeeze a (multi-line, ITK-style) message into one short line."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def numbers(values: Sequence[float], digits: int = 6) -> str:
    """A vector in a message, short: ``(0.5, 0.5, 3)``."""
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def itk_reason(exc: BaseException, native: str = "") -> str:
    """The useful part of a SimpleITK/ITK exception (plus what the native library printed), in one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    nrrd_lines = [re.sub(r"^\[nrrd\]\s*\w+:\s*", "", ln) for ln in lines if ln.startswith("[nrrd]")]
    nrrd_lines = [ln for ln in nrrd_lines if ln and not ln.startswith("trouble")]
    if nrrd_lines:
        return one_line(nrrd_lines[-1])
    reason = ""
    for ln in reversed(lines):
        m = re.search(r"(?:itk::ERROR|ITK ERROR|Description):?\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.*)", ln)
        if m and m.group(1).strip():
            reason = m.group(1).strip()
            break
    if not reason:
        reason = lines[-1] if lines else exc.__class__.__name__
    native = one_line(native, 120)
    return one_line(f"{reason}; {native}" if native else reason)


class _Captured:
    text = ""


_QUIET_LOCK = threading.RLock()
_quiet_depth = 0


@contextlib.contextmanager
def quiet_itk() -> Iterator[_Captured]:
    """Silence ITK's warnings and the native libraries' own stderr chatter while reading or writing.

    Bad files make ITK, MetaIO, NrrdIO or GDCM print several lines straight to file descriptor 2,
    around the one clear line we want users to see. The captured text is kept (``.text``) so it
    can serve as the reason in an error. Serialised by a lock (fd 2 is process-wide); nested uses
    share the outer redirection. Set ``HILA_NATIVE_STDERR=1`` to let the native output through.
    """
    global _quiet_depth
    captured = _Captured()
    with _QUIET_LOCK:
        outer = _quiet_depth == 0
        _quiet_depth += 1
        previous = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        redirect = outer and os.environ.get("HILA_NATIVE_STDERR", "") not in ("1", "true", "yes")
        saved_fd = sink = None
        if redirect:
            try:
                sys.stderr.flush()
                sink = tempfile.TemporaryFile()
                saved_fd = os.dup(2)
                os.dup2(sink.fileno(), 2)
            except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
                if saved_fd is not None:
                    os.close(saved_fd)
                saved_fd = None
        try:
            yield captured
        finally:
            _quiet_depth -= 1
            sitk.ProcessObject.SetGlobalWarningDisplay(previous)
            if saved_fd is not None:
                os.dup2(saved_fd, 2)
                os.close(saved_fd)
            if sink is not None:
                try:
                    sink.seek(0)
                    captured.text = sink.read().decode("utf-8", "replace")
                finally:
                    sink.close()


def no_space(target: Path, exc: BaseException) -> Optional[HilaError]:
    """The one line for a write that failed because the disk is full (ENOSPC/EDQUOT, or a native writer's error with
    under 1 MB left beside ``target``), else None: ITK names an unrelated cause (e.g. no ImageIO reader)."""
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    try:
        free = shutil.disk_usage(target.parent if str(target.parent) else ".").free
    except OSError:
        free = None
    if not full and (free is None or free >= (1 << 20)):
        return None
    left = f" ({free // 1024} kB free)" if free is not None else ""
    return HilaError(f"{target}: cannot write, no space left on its disk{left}; nothing was written; free some space "
                     "or write elsewhere")


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path with ``path``'s own file name; on success move it (and siblings) into place.

    The temporary file lives in a hidden folder beside the target, so the final rename is atomic
    and formats that write companion files (``.mhd`` + ``.raw``) keep their internal references.
    On any error nothing appears at ``path`` and the temporary folder is removed.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise HilaError(f"{target}: cannot write: folder {parent} does not exist")
    try:
        tmpdir = staging_dir(parent, target.name, "tmp")
    except OSError as exc:
        raise HilaError(f"{target}: cannot write: {one_line(exc.strerror or exc)}") from None
    try:
        tmp_target = tmpdir / target.name
        yield tmp_target
        if not tmp_target.exists():
            raise HilaError(f"{target}: writer produced no file")
        produced = sorted(tmpdir.iterdir(), key=lambda p: p == tmp_target)  # the main file last
        for f in produced:
            fsync_file(f)
        for f in produced:
            os.replace(f, parent / f.name)
        fsync_dir(parent)
    except OSError as exc:
        full = no_space(target, exc) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
        if full is not None:
            raise full from None
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
