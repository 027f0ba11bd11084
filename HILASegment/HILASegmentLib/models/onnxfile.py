"""The ONNX file at the protobuf wire level: its top-level metadata and its checksum, read by
streaming, and a copy with one metadata entry replaced, so neither needs the ``onnx`` package.

Checksum: ``"sha256:<hex>"`` of the file's bytes with every top-level ``metadata_props`` record
left out (see ``modelcard``): it survives embedding a card and covers graph, weights and opsets.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, Tuple, Union

from ..ground.errors import HilaError

PathLike = Union[str, "os.PathLike[str]"]


_METADATA_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto {key = 1; value = 2})


def _read_varint(fh: BinaryIO) -> Tuple[int, bytes]:
    """One base-128 varint from ``fh``: its value and its raw bytes (ValueError "eof" at a clean end)."""
    raw = bytearray()
    value = shift = 0
    while True:
        b = fh.read(1)
        if not b:
            raise ValueError("truncated varint" if raw else "eof")
        raw += b
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value, bytes(raw)
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _records(fh: BinaryIO, size: int) -> Iterator[Tuple[int, int, bytes, int]]:
    """The one protobuf reader: top-level records of the message in ``fh`` (``size`` bytes) as
    ``(field, wire type, head bytes, payload length)``, ``fh`` at the payload's start; the caller
    reads the payload or leaves it (it is skipped). Varint payloads are in the head (length 0)."""
    while True:
        try:
            tag, head = _read_varint(fh)
        except ValueError as exc:
            if str(exc) == "eof":
                return
            raise
        fnum, wt = tag >> 3, tag & 7
        if fnum == 0:
            raise ValueError("field number 0")
        if wt == 0:
            _, raw = _read_varint(fh)
            yield fnum, wt, head + raw, 0
            continue
        if wt == 2:
            length, raw = _read_varint(fh)
            head += raw
        elif wt in (1, 5):
            length = 8 if wt == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        start = fh.tell()
        if start + length > size:
            raise ValueError("truncated record")
        yield fnum, wt, head, length
        fh.seek(start + length)


def _metadata_entry(payload: bytes) -> Tuple[str, str]:
    """(key, value) of one StringStringEntryProto."""
    key = value = ""
    fh = io.BytesIO(payload)
    for fnum, wt, _head, length in _records(fh, len(payload)):
        if wt == 2 and fnum in (1, 2):
            text = fh.read(length).decode("utf-8", "replace")
            key, value = (text, value) if fnum == 1 else (key, text)
    return key, value


@dataclass
class OnnxInfo:
    """What the engine needs from an ONNX file without building a session: metadata and checksum."""

    path: Path
    metadata: Dict[str, str]
    checksum: str
    size: int


def inspect_onnx(path: PathLike) -> OnnxInfo:
    """Stream an ONNX file once: its top-level metadata and its checksum (see the module docstring).

    Streaming (1 MiB chunks) instead of reading the file whole keeps an 80 MB model out of memory;
    onnxruntime then loads it from the path.
    """
    p = Path(path)
    if not p.is_file():
        raise HilaError(f"{p}: no such ONNX model file")
    h = hashlib.sha256()
    meta: Dict[str, str] = {}
    seen_graph = False
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            for fnum, wt, head, length in _records(fh, size):
                if fnum == _METADATA_FIELD and wt == 2:
                    k, v = _metadata_entry(fh.read(length))
                    meta[k] = v
                    continue
                seen_graph |= fnum == 7 and wt == 2
                h.update(head)
                left = length
                while left:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        raise ValueError("truncated record")
                    h.update(chunk)
                    left -= len(chunk)
    except ValueError as exc:
        raise HilaError(f"{p}: not an ONNX model (the file is corrupt or truncated: {exc})") from None
    except OSError as exc:
        raise HilaError(f"{p}: cannot read the model file ({exc.strerror})") from None
    if not seen_graph:
        raise HilaError(f"{p}: not an ONNX model (no graph in the file)")
    return OnnxInfo(p, meta, "sha256:" + h.hexdigest(), size)


def onnx_checksum(path: PathLike) -> str:
    """The card checksum of an ONNX file: sha256 of its bytes without the top-level metadata records."""
    return inspect_onnx(path).checksum


def with_metadata(src: Path, info: OnnxInfo, key: str, value: str) -> bytes:
    """The bytes of ``src`` (already inspected: ``info``) with metadata ``key`` set to ``value``;
    other entries and every other record are kept as they are."""
    out = bytearray()
    with open(src, "rb") as fh:
        for fnum, wt, head, length in _records(fh, info.size):
            payload = fh.read(length)
            if fnum == _METADATA_FIELD and wt == 2 and _metadata_entry(payload)[0] == key:
                continue
            out += head + payload
    k, v = key.encode(), value.encode("utf-8")
    entry = b"\x0a" + _encode_varint(len(k)) + k + b"\x12" + _encode_varint(len(v)) + v
    out += _encode_varint((_METADATA_FIELD << 3) | 2) + _encode_varint(len(entry)) + entry
    return bytes(out)
