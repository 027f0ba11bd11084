"""The NIfTI header, read by hand: ITK reads a truncated NIfTI without complaint, trusts qform over a disagreeing
sform, and turns NaN into 0; these checks refuse such files first, in one line that names the file.
"""
from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..ground.errors import HilaError
from .itkcalls import PathLike, numbers, one_line


@dataclasses.dataclass
class NiftiHeader:
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


def _nifti_header(header: bytes) -> Optional[NiftiHeader]:
    """The header of a NIfTI-1 or NIfTI-2 file from its first 540 bytes, or None when it is not one."""
    for endian in "<>":
        u = lambda fmt, off: struct.unpack_from(endian + fmt, header, off)  # noqa: E731
        if len(header) >= 348 and u("i", 0)[0] == 348:
            return NiftiHeader(endian, u("8h", 40), u("h", 70)[0], u("h", 72)[0], int(u("f", 108)[0]), u("8f", 76),
                                u("h", 252)[0], u("h", 254)[0], u("6f", 256), u("12f", 280))
        if len(header) >= 540 and u("i", 0)[0] == 540:
            return NiftiHeader(endian, u("8q", 16), u("h", 12)[0], u("h", 14)[0], u("q", 168)[0], u("8d", 104),
                                u("i", 344)[0], u("i", 348)[0], u("6d", 352), u("12d", 400))
    return None


def _nifti_bytes_needed(header: bytes) -> Optional[int]:
    """Bytes a NIfTI-1/-2 file must hold (vox_offset + voxel data), from its header; None if unknown."""
    h = _nifti_header(header)
    return None if h is None else h.bytes_needed()


def read_nifti_header(path: Path) -> Optional[NiftiHeader]:
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
                raise HilaError(f"{path}: cannot read image, the gzip data is corrupt ({one_line(exc)})") from None
        else:
            head = fh.read(540)
    return _nifti_header(head)


#: How far apart (mm, at the volume's corners) a NIfTI's qform and sform may place it and still be one placement.
QFORM_SFORM_TOLERANCE_MM = 0.1


def check_nifti_geometry(path: Path, h: NiftiHeader) -> None:
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
            raise HilaError(f"{path}: its qform (code {h.qform_code}, origin {numbers(q[:3, 3], 5)} RAS) and sform "
                            f"(code {h.sform_code}, origin {numbers(sf[:3, 3], 5)} RAS) place the volume up to "
                            f"{apart:.3g} mm apart; tools disagree on which to use (ITK the qform, nibabel and FSL "
                            "the sform), so hila does not guess; rewrite the file with one placement (qform = sform)")


#: NIfTI datatypes that can hold NaN or infinity: float32, float64.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nonfinite_count(buf: bytes, dtype: str) -> int:
    return int(np.count_nonzero(~np.isfinite(np.frombuffer(buf, dtype=dtype)))) if buf else 0


def check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (the missing voxels become 0): check the length here. ITK also
    reads NaN voxels as 0 (water, in a CT): count them on the way, and refuse a file that has any."""
    name = path.name.lower()
    h = read_nifti_header(path)
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
            raise HilaError(f"{path}: cannot read image, the gzip data is corrupt ({one_line(exc)})") from None
        if not d.eof:
            raise HilaError(f"{path}: cannot read image, the file is truncated (the gzip stream ends early)")
    else:
        return
    needed = h.bytes_needed() if h is not None else None
    if needed is not None and have < needed:
        raise HilaError(f"{path}: cannot read image, the file is truncated ({have} of {needed} bytes)")
    if nonfinite:
        refuse_nonfinite(path, nonfinite, h.voxels() if h is not None else 0)


def refuse_nonfinite(where: PathLike, n: int, total: int) -> None:
    """NaN or infinite voxels are refused, counted: no model or measurement means anything there, and hila does not
    guess values for them (ITK would read a NIfTI's NaN as 0, which in a CT is water)."""
    if total and n >= total:
        raise HilaError(f"{where}: every voxel ({total}) is NaN or infinite, not a number: there is no image to use")
    share = f" ({100.0 * n / total:.2g} %)" if total else ""
    raise HilaError(f"{where}: {n} of {total} voxels{share} are NaN or infinite, not numbers; hila does not guess "
                    "values for them; fill them (e.g. with the background value) and try again")
