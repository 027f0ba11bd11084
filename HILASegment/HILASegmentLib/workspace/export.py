"""``hila export``: the images and their latest corrections, for use in other tools.

Writes ``images/<name>.nii.gz``, ``labels/<name>.nii.gz`` (label map, workspace values),
``labels/<name>.seg.nrrd`` (Slicer segmentation with the workspace's names and colours) and a
``manifest.json`` naming every file, the correction version and its quality. Everything is written
into a hidden staging folder beside OUT that is renamed to OUT at the end, so an export appears
whole or not at all (a damaged store file stops it with one line and leaves nothing). A case whose
grid is sheared is written as ``.nrrd``, which keeps it, since NIfTI would move its voxels.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Protocol

from ..formats import segfile
from ..formats.gridcheck import shear
from ..formats.imageio import write_image
from ..formats.itkcalls import no_space
from ..ground.durable import fsync_dir, staging_dir
from ..ground.errors import HilaError
from ..ground.paths import check_outputs, name_component
from ..ground.progress import ProgressFn, null_progress
from .files import read_stored
from .records import Case, Correction, ModelRecord, Settings, SnapshotItem


class ExportedWorkspace(Protocol):
    """What ``export`` reads of a workspace (the :class:`~.api.Workspace` has it; api imports this module, not back)."""

    root: Path

    @property
    def settings(self) -> Settings: ...

    def snapshot(self) -> List[SnapshotItem]: ...

    def cases(self) -> List[Case]: ...

    def corrections(self, case_id: Optional[str] = None) -> List[Correction]: ...

    def current_model(self) -> Optional[ModelRecord]: ...


def export_workspace(ws: ExportedWorkspace, out: Path, include_unlabelled: bool = False,
                     progress: Optional[ProgressFn] = None) -> dict:
    progress = progress or null_progress
    check_outputs({"WORKSPACE": ws.root}, {"OUT": out})
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HilaError(f"{out}: exists and is not an empty folder; export into a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = staging_dir(out.parent, out.name, "export")  # (a killed export's leftover is removed here)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        try:
            _export_into(ws, work, include_unlabelled, progress)
        except OSError as exc:  # (the manifest, a folder): a full disk is said as such
            full = no_space(out, exc)
            if full is not None:
                raise full from None
            raise
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(work, out)  # the export appears whole, or not at all
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entries = m["cases"]
    progress(1.0, "exported")
    return {"directory": str(out), "cases": len(entries), "labels": sum(1 for e in entries if e["label"]),
            "segmentations": sum(1 for e in entries if e["segmentation"]), "manifest": str(out / "manifest.json")}


def file_stems(cases) -> Dict[str, str]:
    """case id -> the stem of its exported files: the case name made a safe file name (a name is never a path:
    ``../../evil`` wrote outside OUT), with the case id added where two names come out the same."""
    stems = {c.case_id: name_component(c.name, c.case_id) for c in cases}
    taken: Dict[str, int] = {}
    for stem in stems.values():
        taken[stem.lower()] = taken.get(stem.lower(), 0) + 1  # case-insensitive file systems too
    return {cid: stem if taken[stem.lower()] == 1 else f"{stem}-{cid}" for cid, stem in stems.items()}


def _stored(root: Path, path: Path, what: str):
    """A stored workspace file as an image (sitk.Image); one line when it was removed or damaged outside hila, or
    lies outside the workspace (then it is never read)."""
    try:
        return read_stored(root, path, what)
    except HilaError as exc:
        raise HilaError(f"{what}: its stored file cannot be read ({exc}); nothing was exported") from None


def _export_into(ws: ExportedWorkspace, out: Path, include_unlabelled: bool, progress: ProgressFn) -> None:
    """Write the whole export into ``out`` (a fresh staging folder), manifest last."""
    settings = ws.settings
    snap = {s.case_id: s for s in ws.snapshot()}           # one consistent read
    cases = [c for c in ws.cases() if include_unlabelled or c.case_id in snap]
    corr = {c.correction_id: c for c in ws.corrections()}
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    entries = []
    stems = file_stems(cases)
    for i, case in enumerate(cases):
        progress(i / max(1, len(cases)), f"exporting {case.name}")
        image = _stored(ws.root, case.path, f"case {case.case_id}")
        ext = ".nrrd" if shear(image.GetDirection()) else ".nii.gz"  # NIfTI cannot hold a sheared grid
        stem = stems[case.case_id]
        img_rel = f"images/{stem}{ext}"
        write_image(image, out / img_rel)
        entry = {"case_id": case.case_id, "name": case.name, "image": img_rel, "source_path": case.source_path,
                 "label": None, "segmentation": None, "correction_version": None, "quality": None}
        s = snap.get(case.case_id)
        if s is not None:
            c = corr[s.correction_id]
            lab = _stored(ws.root, c.path, f"case {case.case_id} correction v{c.version}")
            lab_rel = f"labels/{stem}{ext}"
            write_image(lab, out / lab_rel)
            entry.update(label=lab_rel, correction_version=c.version, correction_id=c.correction_id, quality=c.quality,
                         annotator=c.annotator, seconds=c.seconds, submitted_at=c.created_at, label_sha256=c.sha256)
            seg = segfile.Segmentation.from_label_image(
                lab, [(l.value, l.name, tuple(l.color)) for l in settings.labels],
                tags={"HILASegment.case": case.case_id, "HILASegment.correction": f"v{c.version}",
                      "HILASegment.quality": c.quality})
            seg_rel = f"labels/{stem}.seg.nrrd"
            segfile.write_segmentation(seg, out / seg_rel)
            entry["segmentation"] = seg_rel
        entries.append(entry)
    manifest = {
        "format": "hilasegment-export", "format_version": 1, "workspace": str(ws.root),
        "modality": settings.modality,
        "labels": [{"value": l.value, "name": l.name, "color": list(l.color)} for l in settings.labels],
        "current_model": (lambda m: None if m is None else {"version": m.version, "name": m.card.name})(ws.current_model()),
        "cases": entries,
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(out / "manifest.json")
