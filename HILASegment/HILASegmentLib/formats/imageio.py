"""Reading and writing 3-D medical volumes with their exact physical geometry.

Everything enters the engine through here as a SimpleITK image (origin, spacing and direction in
LPS, the ITK convention), from a volume file or a DICOM series folder, and leaves through here
atomically. Bad input becomes one ``HilaError`` line that names the file and the problem, because
radiologists and scripts both need to know *which* file is wrong, not where in ITK it failed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
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

from ..ground.durable import fsync_dir, fsync_file, staging_dir
from ..ground.errors import HilaError
from ..ground.paths import check_readable
from . import gridcheck

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
    except OSError as exc:
        full = no_space(target, exc) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
        if full is not None:
            raise full from None
        raise
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


def _slice_geometry(path: str) -> gridcheck.SliceGeometry:
    """One DICOM file's geometry tags, read from its header only (no pixel data)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise HilaError(f"{path}: cannot read this DICOM file of the series ({_itk_reason(exc)})") from None
    tags = {key: reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else None
            for key, tag in gridcheck.SLICE_TAGS.items()}
    return gridcheck.SliceGeometry(name=Path(path).name, tags=tags)


def read_dicom_series_files(folder: PathLike) -> Tuple[sitk.Image, List[str]]:
    """(image, its files in slice order) of the single DICOM series in ``folder``: every slice's geometry is
    checked against the series first (:func:`gridcheck.check_slices`), a gantry-tilted stack is read as the
    sheared grid it is, and the result is checked to hold every slice where its file puts it. Every reader of
    DICOM series (convert, infer --image, import, --reference) comes through here, so they all decide alike."""
    folder_p = Path(folder)
    series = list_dicom_series(folder_p)
    if not series:
        raise HilaError(f"{folder_p}: no DICOM series in this folder")
    if len(series) > 1:
        listed = "; ".join(f"{sid} ({n} files)" for sid, n in series)
        raise HilaError(f"{folder_p}: {len(series)} DICOM series in one folder, expected one: {listed}")
    sid = series[0][0]
    with quiet_itk():
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder_p), sid))
        first = sitk.ImageFileReader()
        first.SetFileName(files[0])
        try:
            first.ReadImageInformation()
        except RuntimeError:
            pass  # the series reader names the problem
        else:
            size = list(first.GetSize()[:2]) + [len(files) * (first.GetSize()[2] if first.GetDimension() > 2 else 1)]
            check_voxel_budget(folder_p, size, _pixel_bytes(first.GetPixelID()))
        slices = [_slice_geometry(f) for f in files]
    listed = set(files)
    unread = sorted(p.name for p in folder_p.iterdir() if p.is_file() and str(p) not in listed
                    and not p.name.startswith("."))
    plan = gridcheck.check_slices(folder_p, slices, unread)
    if plan.order and plan.order[::-1] == list(range(len(files))):
        plan.order = plan.order[::-1]  # GDCM's own (reversed) order: the same grid as always
    files = [files[i] for i in plan.order]
    slices = [slices[i] for i in plan.order]
    with quiet_itk():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise HilaError(f"{folder_p}: cannot read DICOM series {sid} ({_itk_reason(exc)})") from None
    if img.GetDimension() == 2:  # a single-file series: make it a one-slice volume
        img = sitk.JoinSeries(img)
    img = _check_scalar_3d(img, str(folder_p))
    if plan.sheared and len(files) == img.GetSize()[2]:
        # a gantry tilt: the slices step along the tilted axis, not the normal; keep that exactly (a sheared grid)
        direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
        first, last = slices[0].numbers("position", 3), slices[-1].numbers("position", 3)
        step = (last - first) / (len(files) - 1)  # in the order the files are stacked
        direction[:, 2] = step / np.linalg.norm(step)
        img.SetDirection(direction.ravel().tolist())
        img.SetSpacing(list(img.GetSpacing()[:2]) + [float(np.linalg.norm(step))])
    gridcheck.check_read_exactly(folder_p, img, slices)
    return img, files


def read_dicom_series(folder: PathLike) -> sitk.Image:
    """Read the single DICOM series in ``folder``; no series or several are errors (the latter lists them)."""
    return read_dicom_series_files(folder)[0]


@dataclasses.dataclass
class _NiftiHeader:
    """The fields of a NIfTI-1/-2 header that say how big the volume is, where it lies and what its voxels are."""

    endian: str
    dims: Tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: int
    pixdim: Tuple[float, ...]
    qform_code: int
    sform_code: int
    quatern: Tuple[float, ...]   # b, c, d, qoffset x, y, z
    srow: Tuple[float, ...]      # 12 numbers: srow_x, srow_y, srow_z

    def bytes_needed(self) -> int:
        return max(self.vox_offset, 348) + self.voxels() * max(self.bitpix, 1) // 8

    def voxels(self) -> int:
        n = 1
        for d in self.dims[1: max(0, min(7, self.dims[0])) + 1]:
            n *= max(1, int(d))
        return n

    def size3(self) -> Tuple[int, int, int]:
        d = [max(1, int(x)) for x in self.dims[1:4]]
        return d[0], d[1], d[2]

    def qform(self) -> np.ndarray:
        """The qform's voxel-to-RAS affine (4x4), as the NIfTI standard defines it (method 2)."""
        b, c, d, qx, qy, qz = self.quatern
        a = float(np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d))))
        r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                      [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                      [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if self.pixdim[0] < 0 else 1.0
        m = np.eye(4)
        m[:3, :3] = r @ np.diag([self.pixdim[1], self.pixdim[2], qfac * self.pixdim[3]])
        m[:3, 3] = (qx, qy, qz)
        return m

    def sform(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :] = np.reshape(np.asarray(self.srow, float), (3, 4))
        return m


def _nifti_header(header: bytes) -> Optional[_NiftiHeader]:
    """The header of a NIfTI-1 or NIfTI-2 file from its first 540 bytes, or None when it is not one."""
    for endian in "<>":
        u = lambda fmt, off: struct.unpack_from(endian + fmt, header, off)  # noqa: E731
        if len(header) >= 348 and u("i", 0)[0] == 348:
            return _NiftiHeader(endian, u("8h", 40), u("h", 70)[0], u("h", 72)[0], int(u("f", 108)[0]), u("8f", 76),
                                u("h", 252)[0], u("h", 254)[0], u("6f", 256), u("12f", 280))
        if len(header) >= 540 and u("i", 0)[0] == 540:
            return _NiftiHeader(endian, u("8q", 16), u("h", 12)[0], u("h", 14)[0], u("q", 168)[0], u("8d", 104),
                                u("i", 344)[0], u("i", 348)[0], u("6d", 352), u("12d", 400))
    return None


def _nifti_bytes_needed(header: bytes) -> Optional[int]:
    """Bytes a NIfTI-1/-2 file must hold (vox_offset + voxel data), from its header; None if unknown."""
    h = _nifti_header(header)
    return None if h is None else h.bytes_needed()


def _read_nifti_header(path: Path) -> Optional[_NiftiHeader]:
    """The header of a .nii or .nii.gz file, read without decompressing more than its first bytes."""
    with open(path, "rb") as fh:
        if path.name.lower().endswith(".gz"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            head = b""
            try:
                while len(head) < 540:
                    chunk = fh.read(1 << 14)
                    if not chunk:
                        break
                    head += d.decompress(chunk, 540 - len(head))
                    while d.unconsumed_tail and len(head) < 540:
                        head += d.decompress(d.unconsumed_tail, 540 - len(head))
            except zlib.error as exc:
                raise HilaError(f"{path}: cannot read image, the gzip data is corrupt ({_one_line(exc)})") from None
        else:
            head = fh.read(540)
    return _nifti_header(head)


#: How far apart (mm, at the volume's corners) a NIfTI's qform and sform may place it and still be one placement.
QFORM_SFORM_TOLERANCE_MM = 0.1


def _check_nifti_geometry(path: Path, h: _NiftiHeader) -> None:
    """A NIfTI whose placement is ambiguous is refused: qform and sform that disagree (ITK reads one, nibabel and
    FSL the other: a label would land centimetres away in another tool), or neither (the orientation is unknown)."""
    if h.qform_code <= 0 and h.sform_code <= 0:
        raise HilaError(f"{path}: qform_code and sform_code are both 0, so the file does not say how the volume is "
                        "oriented in the patient (an Analyze-style header); hila does not guess its orientation; "
                        "write it with its qform or sform set")
    if h.qform_code > 0 and h.sform_code > 0:
        n = [max(1, int(v)) - 1 for v in h.size3()]
        corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])]).T
        q, sf = h.qform(), h.sform()
        apart = float(np.linalg.norm((q @ corners - sf @ corners)[:3], axis=0).max())
        if not np.isfinite(apart) or apart > QFORM_SFORM_TOLERANCE_MM:
            raise HilaError(f"{path}: its qform (code {h.qform_code}, origin {_fmt(q[:3, 3], 5)} RAS) and sform "
                            f"(code {h.sform_code}, origin {_fmt(sf[:3, 3], 5)} RAS) place the volume up to "
                            f"{apart:.3g} mm apart; tools disagree on which to use (ITK the qform, nibabel and FSL "
                            "the sform), so hila does not guess; rewrite the file with one placement (qform = sform)")


#: NIfTI datatypes that can hold NaN or infinity: float32, float64.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nonfinite_count(buf: bytes, dtype: str) -> int:
    return int(np.count_nonzero(~np.isfinite(np.frombuffer(buf, dtype=dtype)))) if buf else 0


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (the missing voxels become 0): check the length here. ITK also
    reads NaN voxels as 0 (water, in a CT): count them on the way, and refuse a file that has any."""
    name = path.name.lower()
    h = _read_nifti_header(path)
    dtype = None if h is None or h.datatype not in _NIFTI_FLOATS else h.endian + _NIFTI_FLOATS[h.datatype]
    item = np.dtype(dtype).itemsize if dtype else 1
    start = max(h.vox_offset, 348) if h is not None else 0
    nonfinite, pos, rest = 0, 0, b""

    def scan(out: bytes) -> None:  # the voxel bytes of ``out`` (the stream from ``pos`` on)
        nonlocal nonfinite, pos, rest
        if dtype is not None:
            data = rest + out[max(0, start - pos):] if pos + len(out) > start else b""
            whole = len(data) // item * item
            nonfinite += _nonfinite_count(data[:whole], dtype)
            rest = data[whole:] if pos + len(out) > start else rest
        pos += len(out)

    if name.endswith(".nii"):
        with open(path, "rb") as fh:
            while dtype is not None:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                scan(chunk)
        have = path.stat().st_size
    elif name.endswith(".nii.gz"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        have = 0
        try:
            with open(path, "rb") as fh:
                while True:
                    chunk = fh.read(1 << 20)
                    if not chunk:
                        break
                    out = d.decompress(chunk)
                    scan(out)
                    have += len(out)
                    while d.unused_data and d.eof:  # concatenated gzip members
                        rest_in = d.unused_data
                        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        out = d.decompress(rest_in)
                        scan(out)
                        have += len(out)
                out = d.flush()
                scan(out)
                have += len(out)
        except zlib.error as exc:
            raise HilaError(f"{path}: cannot read image, the gzip data is corrupt ({_one_line(exc)})") from None
        if not d.eof:
            raise HilaError(f"{path}: cannot read image, the file is truncated (the gzip stream ends early)")
    else:
        return
    needed = h.bytes_needed() if h is not None else None
    if needed is not None and have < needed:
        raise HilaError(f"{path}: cannot read image, the file is truncated ({have} of {needed} bytes)")
    if nonfinite:
        _refuse_nonfinite(path, nonfinite, h.voxels() if h is not None else 0)


def _refuse_nonfinite(where: PathLike, n: int, total: int) -> None:
    """NaN or infinite voxels are refused, counted: no model or measurement means anything there, and hila does not
    guess values for them (ITK would read a NIfTI's NaN as 0, which in a CT is water)."""
    if total and n >= total:
        raise HilaError(f"{where}: every voxel ({total}) is NaN or infinite, not a number: there is no image to use")
    share = f" ({100.0 * n / total:.2g} %)" if total else ""
    raise HilaError(f"{where}: {n} of {total} voxels{share} are NaN or infinite, not numbers; hila does not guess "
                    "values for them; fill them (e.g. with the background value) and try again")


def check_finite(img: sitk.Image, where: PathLike) -> None:
    """Refuse an image with NaN or infinite voxels, saying how many (one line; see :func:`_refuse_nonfinite`)."""
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(img)
        n = int(np.count_nonzero(~np.isfinite(arr)))
        if n:
            _refuse_nonfinite(where, n, int(arr.size))


# ----------------------------------------------------------------------------------------------
# what a header may ask for: a voxel budget, and voxel files beside a detached header
# ----------------------------------------------------------------------------------------------

#: The most voxels hila reads into memory from one volume: 1024^3 (2 GiB as int16, 4 GiB as float32), far above any
#: clinical CT or MR (512x512x1000 is a quarter of it). ``HILA_MAX_VOXELS`` sets another limit.
DEFAULT_MAX_VOXELS = 1 << 30
_MAX_VOXELS_SEEN: dict = {}


def max_voxels() -> int:
    """The voxel budget (``HILA_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`), validated once per value."""
    raw = os.environ.get("HILA_MAX_VOXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    if raw not in _MAX_VOXELS_SEEN:
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            value = 0
        if not 1 <= value <= 10 ** 13:
            raise HilaError(f"HILA_MAX_VOXELS={raw[:40]!r}: not a whole number of voxels between 1 and 10^13 "
                            f"(unset it for the default, {DEFAULT_MAX_VOXELS} = 1024^3)")
        _MAX_VOXELS_SEEN[raw] = value
    return _MAX_VOXELS_SEEN[raw]


def check_voxel_budget(where: PathLike, size: Sequence[int], bytes_per_voxel: int) -> None:
    """Refuse, from a header and before anything is decompressed or allocated, a volume over the voxel budget."""
    n = 1
    for v in size:
        n *= max(1, int(v))
    limit = max_voxels()
    if n > limit:
        dims = "x".join(str(int(v)) for v in size)
        raise HilaError(f"{where}: its header declares {dims} voxels ({n:.3g}, {n * bytes_per_voxel / 2**30:.3g} GiB "
                        f"in memory), over hila's limit of {limit:.3g} voxels (HILA_MAX_VOXELS; default 1024^3); "
                        "nothing was read")


def _pixel_bytes(pixel_id: int) -> int:
    try:
        return sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).itemsize
    except RuntimeError:  # pragma: no cover - a vector type: counted per component by the caller
        return 8


_DATA_FILE = re.compile(r"^(?:data ?file|ElementDataFile)\s*[:=]\s*(.*?)\s*$", re.IGNORECASE)


def _header_data_files(path: Path) -> List[str]:
    """The voxel files an NRRD (.nhdr, .nrrd) or MetaImage (.mhd, .mha) header names: one name, a LIST (the names
    that follow), or a printf pattern with its first and last numbers; [] when the voxels are in the file itself."""
    with open(path, "rb") as fh:
        text = fh.read(1 << 16).decode("latin-1")
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip() and volume_suffix(path) in (".nrrd", ".nhdr"):
            break  # the end of an NRRD header
        m = _DATA_FILE.match(line.rstrip("\r"))
        if not m:
            continue
        value = m.group(1)
        words = value.split()
        if not words or words[0].upper() == "LOCAL":
            return []
        if words[0].upper() == "LIST":
            return [ln.strip() for ln in lines[i + 1:] if ln.strip()]
        if "%" in words[0] and len(words) >= 4:
            try:
                first, last, step = int(words[1]), int(words[2]), int(words[3])
                return [words[0] % first, words[0] % last] if step else [words[0] % first]
            except (ValueError, TypeError):
                return [words[0]]
        return [value]
    return []


def check_data_files(path: Path) -> None:
    """A header that names its voxel files may name only files in its own folder (or below): a header naming
    ``../../etc/hostname`` or another patient's raw data would make hila read, store and export any file."""
    if volume_suffix(path) not in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return
    folder = os.path.realpath(path.parent)
    for name in _header_data_files(path):
        target = os.path.realpath(os.path.join(folder, name))
        if target != folder and not target.startswith(folder.rstrip(os.sep) + os.sep):
            raise HilaError(f"{path}: its header names the voxel file {name[:120]}, which lies outside the header's "
                            f"folder ({target[:160]}); hila reads voxel files only beside the header; nothing was read")


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
            check_data_files(path)
            reader.ReadImageInformation()
            check_voxel_budget(path, reader.GetSize(), _pixel_bytes(reader.GetPixelID()) * reader.GetNumberOfComponents())
            if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
                # refuse before loading the voxels (and say why in volume terms)
                size = "x".join(str(s) for s in reader.GetSize())
                if reader.GetNumberOfComponents() != 1:
                    raise HilaError(f"{path}: a vector/multi-component image ({reader.GetNumberOfComponents()} "
                                    f"components per voxel, size {size}); a scalar 3-D volume is needed")
                raise HilaError(f"{path}: a {reader.GetDimension()}-D image (size {size}); a scalar 3-D volume is needed")
            if volume_suffix(path) in (".nii", ".nii.gz"):
                header = _read_nifti_header(path)
                if header is not None:
                    _check_nifti_geometry(path, header)
                _check_nifti_complete(path)
            img = reader.Execute()
        except RuntimeError as exc:
            err = exc
        else:
            err = None
    if err is not None:
        raise HilaError(f"{path}: cannot read image, the file is corrupt, truncated or not a "
                        f"{volume_suffix(path)} volume ({_itk_reason(err, native.text)})")
    img = _check_scalar_3d(img, str(path))
    check_finite(img, path)
    return img


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
                raise no_space(tmp, exc) or HilaError(f"{target}: cannot write image ({_itk_reason(exc)})") from None
        if img.GetDimension() == 3:
            moved = gridcheck.corner_shift_mm(img, written)
            if moved > gridcheck.CORNER_TOLERANCE_MM:
                raise HilaError(f"{target}: {suffix} cannot hold this grid exactly (its corners would move by "
                                f"{moved:.3g} mm); nothing was written; use .nrrd or .mha")
    return target
