"""The workspace's cases: importing volumes (each distinct volume once) and finding cases by id or name."""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import read_image
from ..ground.errors import HilaError
from ..ground.paths import name_component
from ..ground.progress import ProgressFn, null_progress
from ..models.normalize import guess_modality, offset_ct_reason
from .base import Core, PathLike, image_writer, now
from .files import Staged, check_stored, read_stored
from .readcache import ImageCache
from .records import Case, dumps

#: File stems that say nothing about the case; the folder's name is used instead.
_GENERIC_NAMES = {"ct", "mr", "mri", "t2", "t2w", "image", "img", "volume", "vol", "data", "scan", "series", "dicom"}


def content_hash(img: sitk.Image) -> str:
    """A hash of what a volume *is*: voxel values, pixel type and geometry (not its file format)."""
    h = hashlib.sha256()
    h.update(img.GetPixelIDTypeAsString().encode())
    geom = (img.GetSize(), [round(v, 4) for v in img.GetSpacing()], [round(v, 3) for v in img.GetOrigin()],
            [round(v, 5) for v in img.GetDirection()])
    h.update(json.dumps(geom).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(img)).tobytes())
    return h.hexdigest()


def grid_of(img: sitk.Image) -> dict:
    """The grid a case is stored with (the ledger keeps it so checks need not read the image)."""
    return {"size": list(img.GetSize()), "spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin()),
            "direction": list(img.GetDirection()), "pixel_type": img.GetPixelIDTypeAsString()}


def default_case_name(source: Path) -> str:
    """A readable case name from a file or folder name (``.../P07/t2.nii.gz`` -> ``P07``)."""
    name = source.name
    for suf in (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    if name.lower() in _GENERIC_NAMES and source.parent.name:
        name = source.parent.name if source.is_file() else f"{source.parent.name}_{name}"
    return name_component(name, "case")


def check_case_name(name: Optional[str]) -> Optional[str]:
    """``name`` when it is a usable case name; else one line. A case name names files (``export`` writes
    ``images/<name>.nii.gz``), so a path (``../../evil``), a hidden name or control characters are refused."""
    if name is None:
        return None
    safe = name_component(name, "")
    if name != name.strip() or not name or _CONTROL_OR_SEP.search(name) or name.startswith(".") or not safe:
        raise HilaError(f"--name {name!r}: a case name is a name, not a path: no '/', '\\', leading '.' or control "
                        f"characters{f' (e.g. {safe!r})' if safe else ''}; nothing was imported")
    return name


_CONTROL_OR_SEP = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(eq=False)
class Cases:
    """The cases of a workspace; their stored images are read through ``images`` (read once, then served
    from memory while the file is unchanged)."""

    core: Core
    images: ImageCache

    def _case_from_row(self, r: sqlite3.Row, existing: bool = False) -> Case:
        return Case(r["case_id"], r["name"], r["content_hash"], self.core.root / r["file"], r["sha256"], r["source_path"],
                    json.loads(r["grid"]), r["imported_at"], existing)

    def cases(self) -> List[Case]:
        with self.core.ledger.read() as con:
            return [self._case_from_row(r) for r in con.execute("SELECT * FROM cases ORDER BY seq")]

    def case(self, case_id: str) -> Case:
        """A case by id (or by its unique name); HilaError naming the workspace when unknown."""
        key = str(case_id)
        with self.core.ledger.read() as con:
            r = con.execute("SELECT * FROM cases WHERE case_id = ?", (key,)).fetchone()
            if r is None:
                rows = con.execute("SELECT * FROM cases WHERE name = ?", (key,)).fetchall()
                r = rows[0] if len(rows) == 1 else None
            if r is None:
                n = con.execute("SELECT count(*) FROM cases").fetchone()[0]
        if r is None:
            raise HilaError(f"{self.core.root}: unknown case {key!r} ({n} case(s); `hila status {self.core.root}` lists them)")
        return self._case_from_row(r)

    def case_image(self, case_id: str) -> sitk.Image:
        """The case's stored image; one line when the store file is gone or damaged (changed outside hila)."""
        case = self.case(case_id)
        what, hint = f"case {case.case_id}", "importing the same volume again restores it"
        check_stored(self.core.root, case.path, what, "image", hint)  # a cached image is served only for a file still there
        return self.images.get(case.sha256, case.path,
                               lambda: read_stored(self.core.root, case.path, what, "image", hint))

    def check_modality(self, img: sitk.Image, where: str, override: bool = False) -> Optional[str]:
        """Refuse an image that looks like another modality than the workspace's (an MR volume in a CT
        workspace would become a training case); ``override`` lets it through. Returns the guess."""
        meta = img.GetMetaData("0008|0060") if img.HasMetaDataKey("0008|0060") else None
        arr = sitk.GetArrayViewFromImage(img)
        if meta is None and (arr.size == 0 or arr.min() == arr.max()):
            return None  # a blank volume says nothing about its modality
        guess = guess_modality(arr, meta)
        want = self.core.settings.modality
        offset = None if meta is not None or override else offset_ct_reason(arr)
        if offset:
            raise HilaError(f"{where}: {offset}" + ("; if it really is MR, give --modality-override" if want == "MR"
                                                   else "; or give --modality-override to store it as it is"))
        if guess is not None and guess != want and not override:
            why = "its DICOM Modality tag" if meta else (
                "air below -200 HU" if guess == "CT" else "no voxel below -1, i.e. no air in Hounsfield units")
            raise HilaError(f"{where}: looks like {guess} ({why}) but the workspace is {want}; if it really "
                            "belongs here, give --modality-override")
        return guess

    def rows_of_case(self, table: str, order_all: str, order_case: str, case_id: Optional[str]) -> List[sqlite3.Row]:
        """All rows of a table, or one case's (the case resolved by id or name), in ledger order."""
        with self.core.ledger.read() as con:
            if case_id is None:
                return con.execute(f"SELECT * FROM {table} ORDER BY {order_all}").fetchall()
            return con.execute(f"SELECT * FROM {table} WHERE case_id = ? ORDER BY {order_case}",
                               (self.case(case_id).case_id,)).fetchall()

    def import_volume(self, path: PathLike, name: Optional[str] = None, progress: Optional[ProgressFn] = None,
                      modality_override: bool = False) -> Case:
        """Import a volume file or DICOM series folder as a case; the same voxels+geometry again returns the
        existing case (``case.existing`` is True) and writes nothing, unless that case's stored file was lost:
        then it is restored (byte-identical, checked against the ledger's checksum)."""
        progress = progress or null_progress
        name = check_case_name(name)
        src = Path(path)
        progress(0.0, f"reading {src.name}")
        img = read_image(src)
        guess = self.check_modality(img, str(src), modality_override)
        chash = content_hash(img)
        with self.core.ledger.read() as con:
            r = con.execute("SELECT * FROM cases WHERE content_hash = ?", (chash,)).fetchone()
        if r is not None:
            case = self._case_from_row(r, existing=True)
            if not Path(case.path).exists():
                self._restore(case, img, r["sha256"], src)
                progress(1.0, "restored the lost store file")
            else:
                progress(1.0, "already imported")
            return case
        progress(0.4, "storing")

        def record(con: sqlite3.Connection, staged: Sequence[Staged]) -> Tuple[str, bool]:
            progress(0.9, "recording")
            r = con.execute("SELECT * FROM cases WHERE content_hash = ?", (chash,)).fetchone()
            if r is not None:  # another process imported it meanwhile
                return r["case_id"], True
            seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM cases").fetchone()[0]
            case_id = f"c{seq:04d}"
            base = name or default_case_name(src)
            cname, k = base, 2
            while con.execute("SELECT 1 FROM cases WHERE name = ?", (cname,)).fetchone():
                cname, k = f"{base}-{k}", k + 1
            rel = f"cases/{staged[0].name(case_id)}"
            staged[0].place(rel)
            con.execute("INSERT INTO cases VALUES (?,?,?,?,?,?,?,?,?)",
                        (case_id, seq, cname, chash, rel, staged[0].sha256, str(src.resolve()), dumps(grid_of(img)), now()))
            details = {"name": cname, "source": str(src)}
            if guess is not None and guess != self.core.settings.modality:
                details["modality_override"] = guess
            self.core.event(con, "import", case_id, details)
            return case_id, False

        case_id, existing = self.core.store([(image_writer(img), ".nrrd")], record)
        case = self.case(case_id)
        case.existing = existing
        if not existing:
            progress(1.0, f"imported {case_id}")
        return case

    def _restore(self, case: Case, img: sitk.Image, sha256: str, src: Path) -> None:
        """Put a lost case file back from the same volume, only if it comes out byte-identical."""
        rel = Path(case.path).relative_to(self.core.root).as_posix()

        def record(con: sqlite3.Connection, staged: Sequence[Staged]) -> None:
            if staged[0].sha256 != sha256:
                raise HilaError(f"{src}: the same volume, but it no longer writes the bytes case {case.case_id} "
                                "was stored with; its file cannot be restored")
            staged[0].place(rel)
            self.core.event(con, "restore", case.case_id, {"file": rel, "source": str(src)})

        self.core.store([(image_writer(img), ".nrrd")], record)
