"""Reading and writing 3-D medical volumes with their exact physical geometry.

Everything enters the engine through here as a SimpleITK image (origin, spacing and direction in
LPS, the ITK convention), from a volume file or a DICOM series folder, and leaves through here
atomically. Bad input becomes one ``HilaError`` line that names the file and the problem, because
radiologists and scripts both need to know *which* file is wrong, not where in ITK it failed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from ..ground.paths import check_readable
from . import gridcheck
from .itkcalls import PathLike, atomic_output, itk_reason, no_space, numbers, quiet_itk
from .niftiheader import check_nifti_complete, check_nifti_geometry, read_nifti_header, refuse_nonfinite

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


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------

def describe_grid(img: sitk.Image) -> str:
    """A one-line description of an image's voxel grid, for error messages and logs."""
    size = "x".join(str(s) for s in img.GetSize())
    return (f"size {size}, spacing {numbers(img.GetSpacing())}, origin {numbers(img.GetOrigin(), 8)}, "
            f"direction {numbers(img.GetDirection(), 6)}")


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
            return f"{name} {numbers(x)} != {numbers(y)}"
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
            raise HilaError(f"{folder}: cannot scan for DICOM series ({itk_reason(exc)})") from None
        return [(sid, len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid))) for sid in ids]


def _slice_geometry(path: str) -> gridcheck.SliceGeometry:
    """One DICOM file's geometry tags, read from its header only (no pixel data)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise HilaError(f"{path}: cannot read this DICOM file of the series ({itk_reason(exc)})") from None
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
            raise HilaError(f"{folder_p}: cannot read DICOM series {sid} ({itk_reason(exc)})") from None
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


def check_finite(img: sitk.Image, where: PathLike) -> None:
    """Refuse an image with NaN or infinite voxels, saying how many (one line; see :func:`refuse_nonfinite`)."""
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(img)
        n = int(np.count_nonzero(~np.isfinite(arr)))
        if n:
            refuse_nonfinite(where, n, int(arr.size))


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
                header = read_nifti_header(path)
                if header is not None:
                    check_nifti_geometry(path, header)
                check_nifti_complete(path)
            img = reader.Execute()
        except RuntimeError as exc:
            err = exc
        else:
            err = None
    if err is not None:
        raise HilaError(f"{path}: cannot read image, the file is corrupt, truncated or not a "
                        f"{volume_suffix(path)} volume ({itk_reason(err, native.text)})")
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
                raise no_space(tmp, exc) or HilaError(f"{target}: cannot write image ({itk_reason(exc)})") from None
        if img.GetDimension() == 3:
            moved = gridcheck.corner_shift_mm(img, written)
            if moved > gridcheck.CORNER_TOLERANCE_MM:
                raise HilaError(f"{target}: {suffix} cannot hold this grid exactly (its corners would move by "
                                f"{moved:.3g} mm); nothing was written; use .nrrd or .mha")
    return target
