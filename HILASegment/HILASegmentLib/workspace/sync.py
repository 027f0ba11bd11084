"""A workspace and a PACS: pull a study's image series (and its structure sets), push corrections as
DICOM SEG, and sync (push, then pull the SEGs other workspaces pushed) — idempotent by SOP UID.

Nothing is half-imported: a series is downloaded completely into a temporary folder before it is
imported (one transaction); a pulled SEG becomes a correction and its ``dicom_objects`` row in one
transaction. Push writes a correction's SEG with UIDs derived from the workspace and the correction,
stores it, and only then records it as exported: a kill in between sends the same instance again
next time, which the server stores once. Pull skips every SEG the ledger knows and every SEG this
workspace would write itself, so a sync after a kill neither loses nor duplicates a correction.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

from ..dicom.dicomweb import IMAGE_MODALITIES_EXCLUDED, Server, check_uid
from ..ground.errors import HilaError
from ..ground.paths import name_component
from ..ground.progress import ProgressFn, null_progress
from .base import now
from .dicom import referenced_series_uid

if TYPE_CHECKING:  # pragma: no cover
    from .api import Workspace


def pull_study(ws: "Workspace", url: str, study_uid: str, series_uid: Optional[str] = None,
               sets: Optional[str] = None, progress: Optional[ProgressFn] = None) -> List[dict]:
    """Import a study's image series (or one) from the PACS as cases, with the SEG/RTSTRUCT that reference
    them as corrections (``sets`` as for a folder import; ``none`` for images only)."""
    progress = progress or null_progress
    study_uid, series_uid = check_uid(study_uid, "study UID"), series_uid and check_uid(series_uid, "series UID")
    server = Server(url)
    series = server.series_of_study(study_uid)
    images = [s for s in series if s["modality"] not in IMAGE_MODALITIES_EXCLUDED]
    if series_uid:
        images = [s for s in images if s["uid"] == series_uid]
        if not images:
            raise HilaError(f"{url}: study {study_uid} has no image series {series_uid}")
    if not images:
        raise HilaError(f"{url}: study {study_uid} has no usable image series "
                        f"({len(series)} series: {', '.join(sorted({s['modality'] for s in series})) or 'none'})")
    objects = [s for s in series if s["modality"] in ("SEG", "RTSTRUCT")]
    out = []
    with tempfile.TemporaryDirectory(prefix="hila-wado-") as tmp:
        fetched = []  # every series downloaded (and its instances checked) before any becomes a case
        for i, s in enumerate(images):
            progress(i / len(images) / 2, f"fetching series {s['uid']}")
            folder = Path(tmp) / f"{i:04d}"
            folder.mkdir()
            fetched.append((s, folder, server.fetch_series(study_uid, s["uid"], folder)))
        for i, (s, folder, files) in enumerate(fetched):
            progress(0.5 + i / len(images) / 2, f"importing series {s['uid']}")
            case = ws.import_series(folder, name=_case_name(files))
            entry = {"case_id": case.case_id, "name": case.name, "existing": case.existing,
                     "source": f"{url} {s['uid']}", "corrections": [], "skipped": []}
            if (sets or "manual").lower() != "none" and objects:
                entry["corrections"] = _pull_objects(ws, server, study_uid, objects, sets, only_case=case.case_id,
                                                     skipped=entry["skipped"])
            out.append(entry)
    progress(1.0, "imported")
    return out


def _case_name(files: Sequence[Path]) -> Optional[str]:
    """A readable case name for a fetched series: the patient ID (else the automatic name)."""
    import pydicom  # optional `dicom` extra

    if not files:
        return None
    pid = str(pydicom.dcmread(files[0], stop_before_pixels=True).get("PatientID", "") or "")
    return name_component(pid, "") or None


def _pull_objects(ws: "Workspace", server: Server, study_uid: str, objects: Sequence[dict], sets: Optional[str],
                  only_case: Optional[str] = None, progress: Optional[ProgressFn] = None,
                  skipped: Optional[List[dict]] = None) -> List[dict]:
    """Import the SEG/RTSTRUCT instances of ``objects`` (series) the workspace does not know yet; an instance
    whose UID is not a DICOM UID is left out and added to ``skipped``."""
    progress = progress or null_progress
    known = ws.known_sop_uids() | own_sop_uids(ws)
    done = []
    with tempfile.TemporaryDirectory(prefix="hila-wado-") as tmp:
        for s in objects:
            for sop in server.instances(study_uid, s["uid"]):
                if sop in known:
                    continue
                try:
                    check_uid(sop, "SOP instance UID")
                except HilaError:  # a server's text never names a file: left out, and said so
                    if skipped is not None:
                        skipped.append({"sop_uid": str(sop)[:80], "series_uid": s["uid"],
                                        "why": "its SOPInstanceUID is not a DICOM UID"})
                    continue
                progress(0.5, f"pulling {sop}")
                path = server.fetch_instance(study_uid, s["uid"], sop, Path(tmp))
                import pydicom  # optional `dicom` extra

                ref = referenced_series_uid(pydicom.dcmread(path, stop_before_pixels=True))
                case_id = ws.case_of_series(ref) if ref else None
                if case_id is None or (only_case and case_id != only_case):
                    continue  # a structure set of a series this workspace does not hold
                done += ws.import_dicom_object(path, case_id=case_id, sets=sets, pulled=True)
                known.add(sop)
    return done


def own_sop_uids(ws: "Workspace") -> set:
    """The SOP UIDs of the SEGs this workspace writes for its corrections (see ``Dicom.export_dicom``)."""
    return {ws.parts.dicom.uid(c.case_id, str(c.correction_id), "seg", "instance") for c in ws.corrections()}


def push(ws: "Workspace", url: str, cases: Optional[Sequence[str]] = None,
         progress: Optional[ProgressFn] = None) -> List[dict]:
    """STOW each DICOM case's latest correction as a SEG (not those that came from the PACS)."""
    progress = progress or null_progress
    server = Server(url)
    stored = {r["correction_id"] for r in ws.dicom_objects() if r["role"] == "exported" and r["modality"] == "SEG"}
    out = []
    with tempfile.TemporaryDirectory(prefix="hila-stow-") as tmp:
        files = ws.export_dicom(tmp, "seg", cases=cases, skip_pulled=True, record=False, skip=sorted(stored))
        for i, f in enumerate(files):
            progress(i / max(1, len(files)), f"storing {f['name']} v{f['correction_version']}")
            server.store([Path(f["file"])])
            with ws.ledger.write() as con:
                con.execute("INSERT OR IGNORE INTO dicom_objects VALUES (?,?,?,?,?,?,?,?)",
                            (f["sop_uid"], "", "exported", "SEG", f["case_id"], f["correction_id"],
                             f["series_uid"], now()))
            f.pop("file")
            out.append(f)
    progress(1.0, "stored")
    return out


def pull(ws: "Workspace", url: str, progress: Optional[ProgressFn] = None,
         skipped: Optional[List[dict]] = None) -> List[dict]:
    """Import the SEGs in the PACS that reference this workspace's series and that it does not have yet (those
    whose UID is not a DICOM UID are left out, into ``skipped``)."""
    server = Server(url)
    with ws.ledger.read() as con:
        studies = sorted({r[0] for r in con.execute("SELECT study_uid FROM case_series")})
    done = []
    for study in studies:
        segs = server.series_of_study(study, modality="SEG")
        done += _pull_objects(ws, server, study, segs, None, progress=progress, skipped=skipped)
    return done


def sync(ws: "Workspace", url: str, progress: Optional[ProgressFn] = None) -> dict:
    """Push this workspace's new corrections, then pull the others' (push first, so that a kill between
    storing and recording never makes this workspace pull its own correction back)."""
    Server(url).check()
    pushed = push(ws, url, progress=progress)
    skipped: List[dict] = []
    pulled = pull(ws, url, progress=progress, skipped=skipped)
    return {"pushed": pushed, "pulled": pulled, "skipped": skipped}
