"""``hila export``: the images and their latest corrections, for use in other tools.

Writes ``images/<name>.nii.gz``, ``labels/<name>.nii.gz`` (label map, workspace values),
``labels/<name>.seg.nrrd`` (Slicer segmentation with the workspace's names and colours) and a
``manifest.json`` naming every file, the correction version and its quality. The manifest is
written last, so a folder with a manifest is a complete export.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import SimpleITK as sitk

from .. import segfile
from ..errors import HilaError
from ..imageio import write_image
from ..paths import check_outputs
from ..progress import ProgressFn, null_progress

if TYPE_CHECKING:  # pragma: no cover
    from .api import Workspace


def export_workspace(ws: "Workspace", out: Path, include_unlabelled: bool = False,
                     progress: Optional[ProgressFn] = None) -> dict:
    progress = progress or null_progress
    check_outputs({"WORKSPACE": ws.root}, {"OUT": out})
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HilaError(f"{out}: exists and is not an empty folder; export into a new or empty folder")
    settings = ws.settings
    snap = {s.case_id: s for s in ws.snapshot()}           # one consistent read
    cases = [c for c in ws.cases() if include_unlabelled or c.case_id in snap]
    corr = {c.correction_id: c for c in ws.corrections()}
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    entries = []
    for i, case in enumerate(cases):
        progress(i / max(1, len(cases)), f"exporting {case.name}")
        img_rel = f"images/{case.name}.nii.gz"
        write_image(sitk.ReadImage(str(case.path)), out / img_rel)
        entry = {"case_id": case.case_id, "name": case.name, "image": img_rel, "source_path": case.source_path,
                 "label": None, "segmentation": None, "correction_version": None, "quality": None}
        s = snap.get(case.case_id)
        if s is not None:
            c = corr[s.correction_id]
            lab = sitk.ReadImage(str(c.path))
            lab_rel = f"labels/{case.name}.nii.gz"
            write_image(lab, out / lab_rel)
            entry.update(label=lab_rel, correction_version=c.version, correction_id=c.correction_id, quality=c.quality,
                         annotator=c.annotator, seconds=c.seconds, submitted_at=c.created_at, label_sha256=c.sha256)
            seg = segfile.Segmentation.from_label_image(
                lab, [(l.value, l.name, tuple(l.color)) for l in settings.labels],
                tags={"HILASegment.case": case.case_id, "HILASegment.correction": f"v{c.version}",
                      "HILASegment.quality": c.quality})
            seg_rel = f"labels/{case.name}.seg.nrrd"
            segfile.write_segmentation(seg, out / seg_rel)
            entry["segmentation"] = seg_rel
        entries.append(entry)
    manifest = {
        "format": "hilasegment-export", "format_version": 1, "workspace": str(ws.root),
        "modality": settings.modality,
        "labels": [{"value": l.value, "name": l.name, "color": list(l.color)} for l in settings.labels],
        "current_model": (lambda m: None if m is None else {"version": m.version, "name": m.card.get("name")})(ws.current_model()),
        "cases": entries,
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(out / "manifest.json")
    progress(1.0, "exported")
    return {"directory": str(out), "cases": len(entries), "labels": sum(1 for e in entries if e["label"]),
            "segmentations": sum(1 for e in entries if e["segmentation"]), "manifest": str(out / "manifest.json")}
