"""Reading and writing 3-D medical volumes with their exact physical geometry.

Everything enters the engine through here as a SimpleITK image (origin, spacing and direction in
LPS, the ITK convention), from a volume file or a DICOM series folder, and leaves through here
atomically. Bad input becomes one ``HilaError`` line that names the file and the problem, because
radiologists and scripts both need to know *which* file is wrong, not where in ITK it failed.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import gridcheck
from .durable import fsync_dir, fsync_file, staging_dir
from .errors import HilaError
from .paths import check_readable

PathLike = Union[str, "os.PathLike[str]"]

#: Volume file suffixes read and written (longest first, so ``.seg.nrrd``/``.nii.gz`` win over ``.nrrd``/``.gz``).
VOLUME_SUFFIXES: Tuple[str, ...] = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")

_INTEGER_TYPES = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
    sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64,
}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def volume_suffix(path: PathLike) -> Optional[str]:
    """The supported volume suffix of ``path`` (lower case, e.g. ``.nii.gz``), or None."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _one_line(text: str, limit: int = 220) -> str:
    """Squeeze a (multi-line, ITK-style) message into one short line."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _itk_reason(exc: BaseException, native: str = "") -> str:
    """The useful part of a SimpleITK/ITK exception (plus what the native library printed), in one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    nrrd_lines = [re.sub(r"^\[nrrd\]\s*\w+:\s*", "", ln) for ln in lines if ln.startswith("[nrrd]")]
    nrrd_lines = [ln for ln in nrrd_lines if ln and not ln.startswith("trouble")]
    if nrrd_lines:
        return _one_line(nrrd_lines[-1])
    reason = ""
    for ln in reversed(lines):
        m = re.search(r"(?:itk::ERROR|ITK ERROR|Description):?\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.*)", ln)
        if m and m.group(1).strip():
            reason = m.group(1).strip()
            break
    if not reason:
        reason = lines[-1] if lines else exc.__class__.__name__
    native = _one_line(native, 120)
    return _one_line(f"{reason}; {native}" if native else reason)


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
        raise HilaError(f"{target}: cannot write: {_one_line(exc.strerror or exc)}") from None
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
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------

def _fmt(values: Sequence[float], digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def describe_grid(img: sitk.Image) -> str:
    """A one-line description of an image's voxel grid, for error messages and logs."""
    size = "x".join(str(s) for s in img.GetSize())
    return (f"size {size}, spacing {_fmt(img.GetSpacing())}, origin {_fmt(img.GetOrigin(), 8)}, "
            f"direction {_fmt(img.GetDirection(), 6)}")


def grid_difference(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> Optional[str]:
    """What differs between two grids (``None`` when they are the same grid).

    Origin and spacing are compared relative to their magnitude (``tol * max(1, |value|)``), so a
    label stored as NIfTI (float32 geometry) still matches its NRRD image; direction absolutely.
    """
    if a.GetDimension() != b.GetDimension():
        return f"dimension {a.GetDimension()} != {b.GetDimension()}"
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"size {a.GetSize()} != {b.GetSize()}"
    for name, x, y, relative in (
        ("spacing", a.GetSpacing(), b.GetSpacing(), True),
        ("origin", a.GetOrigin(), b.GetOrigin(), True),
        ("direction", a.GetDirection(), b.GetDirection(), False),
    ):
        x, y = np.asarray(x, float), np.asarray(y, float)
        bound = tol * np.maximum(1.0, np.maximum(np.abs(x), np.abs(y))) if relative else tol
        if np.any(np.abs(x - y) > bound):
            return f"{name} {_fmt(x)} != {_fmt(y)}"
    return None


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> bool:
    """True when ``a`` and ``b`` have the same size, origin, spacing and direction (within ``tol``)."""
    return grid_difference(a, b, tol) is None


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------

def _check_scalar_3d(img: sitk.Image, where: str) -> sitk.Image:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise HilaError(f"{where}: a vector/multi-component image ({img.GetNumberOfComponentsPerPixel()} "
                        f"components per voxel, {img.GetPixelIDTypeAsString()}); a scalar 3-D volume is needed")
    dim = img.GetDimension()
    if dim != 3:
        size = "x".join(str(s) for s in img.GetSize())
        raise HilaError(f"{where}: a {dim}-D image (size {size}); a scalar 3-D volume is needed")
    return img


def list_dicom_series(folder: PathLike) -> List[Tuple[str, int]]:
    """The DICOM series in ``folder`` (not its sub-folders) as ``(SeriesInstanceUID, number of files)``."""
    folder = str(folder)
    with quiet_itk():
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        except RuntimeError as exc:
            raise HilaError(f"{folder}: cannot scan for DICOM series ({_itk_reason(exc)})") from None
        return [(sid, len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid))) for sid in ids]


def read_dicom_series(folder: PathLike) -> sitk.Image:
    """Read the single DICOM series in ``folder``; no series or several are errors (the latter lists them)."""
    folder_p = Path(folder)
    series = list_dicom_series(folder_p)
    if not series:
        raise HilaError(f"{folder_p}: no DICOM series in this folder")
    if len(series) > 1:
        listed = "; ".join(f"{sid} ({n} files)" for sid, n in series)
        raise HilaError(f"{folder_p}: {len(series)} DICOM series in one folder, expected one: {listed}")
    sid = series[0][0]
    with quiet_itk():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder_p), sid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()  # each slice's position, to check the grid ITK assumes
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise HilaError(f"{folder_p}: cannot read DICOM series {sid} ({_itk_reason(exc)})") from None
    if img.GetDimension() == 2:  # a single-file series: make it a one-slice volume
        img = sitk.JoinSeries(img)
    img = _check_scalar_3d(img, str(folder_p))
    gridcheck.check_series_positions(folder_p, reader, files, img)
    return img


def _nifti_bytes_needed(header: bytes) -> Optional[int]:
    """Bytes a NIfTI-1/-2 file must hold (vox_offset + voxel data), from its header; None if unknown."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n = 1
    for d in dims[1: max(0, min(7, dims[0])) + 1]:
        n *= max(1, int(d))
    return max(vox_offset, 348) + n * max(bitpix, 1) // 8


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (the missing voxels become 0): check the length here."""
    name = path.name.lower()
    if name.endswith(".nii"):
        with open(path, "rb") as fh:
            needed = _nifti_bytes_needed(fh.read(540))
        have = path.stat().st_size
    elif name.endswith(".nii.gz"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        have, head = 0, b""
        try:
            with open(path, "rb") as fh:
                while True:
                    chunk = fh.read(1 << 20)
                    if not chunk:
                        break
                    out = d.decompress(chunk)
                    if len(head) < 540:
                        head += out[: 540 - len(head)]
                    have += len(out)
                    while d.unused_data and d.eof:  # concatenated gzip members
                        rest = d.unused_data
                        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        out = d.decompress(rest)
                        have += len(out)
                have += len(d.flush())
        except zlib.error as exc:
            raise HilaError(f"{path}: cannot read image, the gzip data is corrupt ({_one_line(exc)})") from None
        if not d.eof:
            raise HilaError(f"{path}: cannot read image, the file is truncated (the gzip stream ends early)")
        needed = _nifti_bytes_needed(head)
    else:
        return
    if needed is not None and have < needed:
        raise HilaError(f"{path}: cannot read image, the file is truncated ({have} of {needed} bytes)")


def _read_file(path: Path) -> sitk.Image:
    check_readable(path, "file")
    if volume_suffix(path) is None:
        with open(path, "rb") as fh:
            is_dicom = fh.read(132)[128:132] == b"DICM"
        if is_dicom or path.name.lower().endswith((".dcm", ".ima")):
            raise HilaError(f"{path}: a single DICOM file; to read its series give the folder ({path.parent})")
        raise HilaError(f"{path}: unsupported file type; use {', '.join(VOLUME_SUFFIXES)} or a DICOM folder")
    if path.stat().st_size == 0:
        raise HilaError(f"{path}: empty file")
    with quiet_itk() as native:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
                # refuse before loading the voxels (and say why in volume terms)
                size = "x".join(str(s) for s in reader.GetSize())
                if reader.GetNumberOfComponents() != 1:
                    raise HilaError(f"{path}: a vector/multi-component image ({reader.GetNumberOfComponents()} "
                                    f"components per voxel, size {size}); a scalar 3-D volume is needed")
                raise HilaError(f"{path}: a {reader.GetDimension()}-D image (size {size}); a scalar 3-D volume is needed")
            if volume_suffix(path) in (".nii", ".nii.gz"):
                _check_nifti_complete(path)
            img = reader.Execute()
        except RuntimeError as exc:
            err = exc
        else:
            err = None
    if err is not None:
        raise HilaError(f"{path}: cannot read image, the file is corrupt, truncated or not a "
                        f"{volume_suffix(path)} volume ({_itk_reason(err, native.text)})")
    return _check_scalar_3d(img, str(path))


def read_image(path: PathLike) -> sitk.Image:
    """Read a scalar 3-D volume from a file (.nrrd .nii .nii.gz .mha .mhd) or a DICOM series folder."""
    p = Path(path)
    if check_readable(p) == "folder":
        return read_dicom_series(p)
    return _read_file(p)


def as_label_image(img: sitk.Image, where: str = "label map") -> sitk.Image:
    """Check that ``img`` holds a label map (whole, non-negative values) and return it as an integer image.

    Integer images pass unchanged; float images whose values are all whole numbers (some tools
    store labels as float32) are cast to the smallest unsigned type that holds them.
    """
    pid = img.GetPixelID()
    if pid in _INTEGER_TYPES:
        if pid in (sitk.sitkInt8, sitk.sitkInt16, sitk.sitkInt32, sitk.sitkInt64):
            lo = float(np.min(sitk.GetArrayViewFromImage(img))) if img.GetNumberOfPixels() else 0.0
            if lo < 0:
                raise HilaError(f"{where}: not a label map: it has negative values (min {lo:g})")
        return img
    arr = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
        raise HilaError(f"{where}: not a label map: voxel type {img.GetPixelIDTypeAsString()} with "
                        "non-integer values (an intensity image?)")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0:
        raise HilaError(f"{where}: not a label map: it has negative values (min {lo:g})")
    if hi > 65535:
        raise HilaError(f"{where}: not a label map: values up to {hi:g}")
    return sitk.Cast(img, sitk.sitkUInt8 if hi <= 255 else sitk.sitkUInt16)


def check_label_grid(label: sitk.Image, reference: sitk.Image, where: PathLike) -> sitk.Image:
    """``label`` unchanged when it lies on exactly ``reference``'s grid; else a HilaError showing both grids."""
    diff = grid_difference(label, reference)
    if diff:
        raise HilaError(f"{where}: label map is not on the image's grid ({diff}): label grid "
                        f"[{describe_grid(label)}] vs image grid [{describe_grid(reference)}]")
    return label


def read_label_volume(path: PathLike, reference: Optional[sitk.Image] = None) -> sitk.Image:
    """Read an integer label map from a volume file or DICOM folder (a Slicer .seg.nrrd goes through
    ``labelio.read_label``); with ``reference`` also require exactly the reference's grid."""
    p = Path(path)
    label = as_label_image(read_image(p), str(p))
    return check_label_grid(label, reference, p) if reference is not None else label


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------

def check_format_holds(img: sitk.Image, path: PathLike) -> None:
    """Refuse, before any work, a grid the output's format cannot store: a sheared grid in NIfTI."""
    sheared = gridcheck.shear(img.GetDirection()) if img.GetDimension() == 3 else None
    if sheared and volume_suffix(path) in (".nii", ".nii.gz"):
        raise HilaError(f"{path}: the grid is sheared ({sheared}) and NIfTI can only store a rotation, so the "
                        "volume would move; write .nrrd or .mha, which keep the grid exactly")


def write_image(img: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write ``img`` atomically to .nrrd/.nii/.nii.gz/.mha/.mhd (format from the suffix); returns the path.

    Compressed by default (gzip for NRRD/MetaImage; .nii is never compressed, .nii.gz always is).
    """
    target = Path(path)
    suffix = volume_suffix(target)
    if suffix is None:
        raise HilaError(f"{target}: unsupported output type; use {', '.join(VOLUME_SUFFIXES)}")
    if target.is_dir():
        raise HilaError(f"{target}: is a folder, not a file name")
    if not isinstance(img, sitk.Image):
        raise HilaError(f"{target}: nothing to write (got {type(img).__name__}, not an image)")
    check_format_holds(img, target)
    with atomic_output(target) as tmp:
        with quiet_itk():
            try:
                sitk.WriteImage(img, str(tmp), compress and suffix != ".nii")
                written = sitk.ImageFileReader()
                written.SetFileName(str(tmp))
                written.ReadImageInformation()
            except RuntimeError as exc:
                raise HilaError(f"{target}: cannot write image ({_itk_reason(exc)})") from None
        if img.GetDimension() == 3:
            moved = gridcheck.corner_shift_mm(img, written)
            if moved > gridcheck.CORNER_TOLERANCE_MM:
                raise HilaError(f"{target}: {suffix} cannot hold this grid exactly (its corners would move by "
                                f"{moved:.3g} mm); nothing was written; use .nrrd or .mha")
    return target
