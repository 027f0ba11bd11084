"""The DICOM side of ``hila import | submit | export``: DICOM series folders keep their UIDs, SEG and
RTSTRUCT files become corrections, corrections go out as SEG or RTSTRUCT.

Kept apart from ``cli/workspace.py`` so that the plain commands need neither pydicom nor highdicom:
this module imports them (through the engine) only when a DICOM object is involved.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..ground.errors import HilaError
from . import emit, progress_for


def register(sub, parent) -> None:
    p = sub.add_parser("sync", parents=[parent], help="share accepted corrections through a PACS (DICOMweb)",
                       description="Store this workspace's new corrections as DICOM SEG (STOW-RS), then import the "
                       "SEGs other workspaces stored for its series as new correction versions (never overwriting). "
                       "Idempotent: a SEG already known (by SOP instance UID) is not imported again.")
    p.add_argument("workspace", type=Path)
    p.add_argument("--dicomweb", metavar="URL", required=True,
                   help="the DICOMweb root (credentials: HILA_DICOMWEB_USER/PASSWORD or HILA_NETRC)")
    p.set_defaults(func=cmd_sync)


def cmd_sync(args) -> int:
    from ..workspace import Workspace
    from ..workspace.sync import sync

    with Workspace.open(args.workspace) as ws:
        with progress_for(args, "sync") as prog:
            res = sync(ws, args.dicomweb, progress=prog)
    emit(args, res, f"sync {args.workspace}: {sync_summary(res, args.dicomweb)}")
    return 0


def sync_summary(res: dict, url: str) -> str:
    """What a sync did, in one line (the CLI's summary and the Slicer panel's status)."""
    left = res.get("skipped") or []
    return (f"stored {len(res['pushed'])} correction(s), imported "
            f"{sum(1 for c in res['pulled'] if not c['existing'])} from {url}"
            + (f"; skipped {len(left)} object(s) whose SOPInstanceUID is not a DICOM UID "
               f"({', '.join(repr(x['sop_uid']) for x in left[:3])})" if left else ""))


def export_summary(res: dict) -> str:
    """What ``export --dicomweb`` did, in one line."""
    return f"stored {len(res['stored'])} correction(s) as DICOM SEG on {res['dicomweb']}"


def cmd_import_dicomweb(args) -> int:
    """``hila import WS --dicomweb URL --study UID [--series UID]``."""
    from ..workspace import Workspace
    from ..workspace.sync import pull_study

    if not (args.dicomweb and args.study):
        raise HilaError("import: --dicomweb URL and --study UID go together (--series UID optional)")
    if args.paths:
        raise HilaError("import: PATHs or --dicomweb, not both")
    with Workspace.open(args.workspace) as ws:
        with progress_for(args, "import") as prog:
            cases = pull_study(ws, args.dicomweb, args.study, args.series, sets=args.contour_sets, progress=prog)
    res = {"case_id": cases[0]["case_id"], "existing": cases[0]["existing"], "cases": cases}
    emit(args, res, "\n".join(describe(c) for c in cases))
    return 0


def export_dicomweb(ws, args, progress) -> dict:
    """``hila export WS --dicomweb URL [--case CASE...]``."""
    from ..workspace.sync import push

    if args.directory is not None or args.format not in (None, "seg") or args.prediction:
        raise HilaError("export --dicomweb: stores the corrections as DICOM SEG on the server; no output folder, "
                        "other --format or --prediction")
    return {"dicomweb": args.dicomweb, "stored": push(ws, args.dicomweb, cases=args.case or None, progress=progress)}


def is_dicom_object(path: Path) -> bool:
    """A DICOM SEG or RTSTRUCT file (by its Modality)."""
    from ..dicom.dicomref import object_modality

    return path.is_file() and object_modality(path) in ("SEG", "RTSTRUCT")


def _has_pydicom() -> bool:
    try:
        import pydicom  # noqa: F401  (optional `dicom` extra: only probing whether it is there)
    except ImportError:
        return False
    return True


def objects_in(folder: Path, series_uid: str) -> List[Path]:
    """The SEG and RTSTRUCT files directly in ``folder`` that reference the series ``series_uid``
    (structure sets of other series lying beside it are left alone)."""
    import pydicom  # optional `dicom` extra

    from ..workspace.dicom import referenced_series_uid

    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_object(p)
                  and referenced_series_uid(pydicom.dcmread(p, stop_before_pixels=True)) == series_uid)


def import_path(ws, p: Path, args, progress) -> dict:
    """Import one PATH: a SEG/RTSTRUCT file, a DICOM series folder (with the structure sets in it), or a volume."""
    from ..formats.imageio import list_dicom_series

    sets = getattr(args, "contour_sets", None)
    if p.is_file() and is_dicom_object(p):  # a DICOM file without pydicom: the one-line missing-package error
        done = ws.import_dicom_object(p, sets=sets, quality=args.quality, annotator=args.annotator,
                                      strict=args.strict, progress=progress)
        return {"source": str(p), "case_id": done[0]["case_id"], "existing": all(d["existing"] for d in done),
                "corrections": done}
    if p.is_dir() and _has_pydicom() and list_dicom_series(p):
        case = ws.import_series(p, name=args.name, progress=progress,
                                modality_override=getattr(args, "modality_override", False))
        out = {"source": str(p), "case_id": case.case_id, "name": case.name, "existing": case.existing,
               "corrections": []}
        if (sets or "manual").lower() != "none":
            own = ws.case_series(case.case_id)["series_uid"]
            for obj in objects_in(p, own):
                out["corrections"] += ws.import_dicom_object(obj, case_id=case.case_id, sets=sets,
                                                             quality=args.quality, annotator=args.annotator,
                                                             strict=args.strict)
        return out
    c = ws.import_volume(p, name=args.name, progress=progress, modality_override=getattr(args, "modality_override", False))
    return {"case_id": c.case_id, "name": c.name, "existing": c.existing, "source": str(p), "corrections": []}


def describe(entry: dict) -> str:
    """One line per imported PATH."""
    head = f"{entry['case_id']}"
    if entry.get("name"):
        head += f" {entry['name']}"
    parts = []
    if "name" in entry:
        parts.append("already in the workspace" if entry["existing"] else "imported")
    if entry.get("skipped"):
        parts.append(f"skipped {len(entry['skipped'])} object(s) whose SOPInstanceUID is not a DICOM UID")
    for c in entry.get("corrections", []):
        what = f"{c['part'] or 'SEG'}" if c.get("part") is not None else "object"
        parts.append(f"{what}: already imported" if c["existing"] else
                     f"{what} -> correction v{c['version']} ({c['quality']})"
                     + (f" [{c['note']}]" if c.get("note") else ""))
    return f"{head}: {'; '.join(parts)} ({entry['source']})"


def submit_object(ws, args) -> dict:
    """``hila submit WS CASE SEG.dcm|RS.dcm``: the object's structures as corrections of CASE."""
    done = ws.import_dicom_object(args.labelfile, case_id=args.case, sets=getattr(args, "contour_sets", None),
                                  quality=args.quality, annotator=args.annotator, strict=args.strict)
    return {"case_id": done[0]["case_id"], "corrections": done}


def export(ws, args, progress) -> Optional[dict]:
    """``hila export WS OUT --format seg|rtstruct [--case CASE...]``."""
    if not args.format:
        return None
    cases = args.case or None
    files = ws.export_dicom(args.directory, args.format, cases=cases, prediction=args.prediction, progress=progress)
    if not files:
        raise HilaError(f"{ws.root}: no case imported from a DICOM series has a "
                        f"{'prediction' if args.prediction else 'correction'}; nothing to export")
    return {"directory": str(args.directory), "format": args.format, "files": files}
