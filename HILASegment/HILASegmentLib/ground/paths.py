"""What a path a user gave names, in words: unreadable inputs, and outputs that would overwrite inputs.

``Path.exists()`` says False for a symlink loop, a broken link and a folder it may not look into
alike, so "no such file" was reported for all three, and a file without read permission reached
ITK and came back as "corrupt". ``check_readable`` says which it is.

Every writing command (``infer``, ``convert``, ``export``, ``simulate``...) names its inputs and
outputs here before it reads anything, because a mistyped ``--out`` that equals ``--image``
silently replaces a patient's CT with a label map. Paths are compared after resolving symlinks and
``..``, and by inode when both exist (hard links); an output inside an input *folder* (a DICOM
series folder, a workspace) is refused too, since writing there changes the input.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Mapping, Optional, Union

from .errors import HilaError

PathLike = Union[str, "os.PathLike[str]"]


def _resolved(p: PathLike) -> Path:
    try:
        return Path(p).expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compare the path as written
        return Path(os.path.abspath(os.fspath(p)))


def same_path(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (symlinks, ``..`` and hard links seen through)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs(inputs: Mapping[str, Optional[PathLike]], outputs: Mapping[str, Optional[PathLike]]) -> None:
    """Raise a one-line ``HilaError`` when an output equals an input, lies inside an input folder, or
    equals another output. Keys are the option names users typed (``--out``, ``IMAGE``...); ``None``
    values (options not given) are ignored."""
    ins = [(k, v) for k, v in inputs.items() if v is not None and str(v) != ""]
    outs = [(k, v) for k, v in outputs.items() if v is not None and str(v) != ""]
    for i, (oname, out) in enumerate(outs):
        for iname, inp in ins:
            if same_path(out, inp):
                raise HilaError(f"{out}: {oname} is the same file as {iname} ({inp}); it would be overwritten, "
                                "nothing was written; choose another output")
            rin = _resolved(inp)
            if Path(inp).is_dir() and rin in _resolved(out).parents:
                raise HilaError(f"{out}: {oname} is inside the input folder {iname} ({inp}); write it elsewhere")
        for oname2, out2 in outs[i + 1:]:
            if same_path(out, out2):
                raise HilaError(f"{out}: {oname} and {oname2} are the same file; give each output its own name")


def check_readable(path: PathLike, want: str = "any") -> str:
    """``"file"`` or ``"folder"`` when ``path`` can be read; else a one-line ``HilaError`` saying why:
    no such file, a broken or looping symbolic link, no permission, or the wrong kind (``want`` is
    ``"file"``, ``"folder"`` or ``"any"``)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HilaError(f"{p}: a symbolic link loop (the link points back to itself); fix or remove the link") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise HilaError(f"{p}: permission denied (a folder on the way cannot be searched)") from None
        if exc.errno == errno.ENOENT and os.path.islink(p):
            raise HilaError(f"{p}: a broken symbolic link (it points to {os.readlink(p)}, which does not exist)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise HilaError(f"{p}: no such file or folder") from None
        raise HilaError(f"{p}: cannot be read ({exc.strerror})") from None
    kind = "folder" if stat.S_ISDIR(st.st_mode) else ("file" if stat.S_ISREG(st.st_mode) else "special file")
    if want != "any" and kind != want:
        raise HilaError(f"{p}: a {kind}, not a {want}")
    if kind == "special file":
        raise HilaError(f"{p}: not a regular file or folder")
    if not os.access(p, os.R_OK | (os.X_OK if kind == "folder" else 0)):
        raise HilaError(f"{p}: permission denied: this user may not read the {kind}")
    return kind


# -- names from outside -------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
#: the longest value DICOM allows for the text value representations hila writes (PS3.5 6.2)
DICOM_MAX_CHARS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UT": 1 << 20}


def name_component(text: object, fallback: str = "unnamed", max_chars: int = 100) -> str:
    """An outside name (a case name, a UID from a PACS, a segment name, an annotator) as one safe file name
    component: letters, digits, ``_ . -`` only, never ``.``/``..``, never hidden, never empty, at most
    ``max_chars`` long. Why: a name is never a path — ``../../evil`` or ``/etc/x`` must not leave the folder
    the file is written into."""
    name = _UNSAFE.sub("_", str(text if text is not None else "")).strip("._-")
    return name[:max_chars].rstrip("._-") or fallback


def dicom_value(text: object, vr: str = "LO") -> str:
    """An outside name as a valid DICOM text value of ``vr``: no control characters (CR/LF in a PN makes an
    invalid DICOM some PACS reject), no backslash (the value separator) and within the VR's length."""
    value = _CONTROL.sub(" ", str(text if text is not None else "")).replace("\\", "/")
    value = " ".join(value.split()) if vr not in ("ST", "LT", "UT") else value.strip()
    return value[:DICOM_MAX_CHARS.get(vr, 64)].rstrip()
