"""A small read cache for the workspace's immutable stored images, keyed by their checksum.

A case's stored image never changes once its row is committed (its sha256 is in the ledger), so the image
read for one operation (a submit) can serve the next (the prediction recorded after it) without reading the
file again. The cache is bounded (a few entries, and bytes), hands out copies (SimpleITK copies share the
voxels until one is changed, so a caller that changes its image never changes the cached one), and checks
that the file is still the one it read (same inode, size and modification time) before serving it: a file
removed or replaced outside hila is read again, and its problem is reported exactly as without a cache.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Tuple

import SimpleITK as sitk

#: How many images stay cached, and how many bytes of voxels at most (an image larger than that is not kept): three
#: pelvic CTs of 512x512x300 int16 (150 MB each) fit, in a Slicer session that keeps a workspace open.
MAX_ENTRIES = 3
MAX_BYTES = 512 << 20

_Stamp = Tuple[int, int, int]


def _stamp(path: Path) -> Optional[_Stamp]:
    """What tells a file apart from one put in its place (the link itself, not what it points to)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _nbytes(img: sitk.Image) -> int:
    return img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel() * img.GetSizeOfPixelComponent()


class ImageCache:
    """Least-recently-used images of immutable files, keyed by the file's checksum (thread-safe)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: "OrderedDict[str, Tuple[_Stamp, sitk.Image]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, checksum: str, path: Path, read: Callable[[], sitk.Image]) -> sitk.Image:
        """The image of the file ``path`` whose checksum is ``checksum``: cached, else ``read()`` (whose errors
        pass through unchanged). Always a copy the caller may change."""
        stamp = _stamp(path)
        with self._lock:
            hit = self._items.get(checksum)
            if hit is not None and stamp is not None and hit[0] == stamp:
                self._items.move_to_end(checksum)
                return sitk.Image(hit[1])
        img = read()
        stamp_after = _stamp(path)
        if stamp is not None and stamp_after == stamp and _nbytes(img) <= self.max_bytes:
            with self._lock:
                self._items[checksum] = (stamp, img)
                self._items.move_to_end(checksum)
                while len(self._items) > self.max_entries or self._total() > self.max_bytes:
                    self._items.popitem(last=False)
        return sitk.Image(img)

    def _total(self) -> int:
        return sum(_nbytes(img) for _, img in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
