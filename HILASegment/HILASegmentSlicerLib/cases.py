"""Workspace-side steps of the panel: reopen the last workspace, pick the model, accept a case, reopen one.

Each step ends in a consistent state whatever fails: a stale workspace path leaves the panel with
no workspace, the setting cleared and a message (not a traceback at every Slicer start); a failed
save after a successful submit reports the submitted version, never "nothing was submitted".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.models import catalog

from . import segments

__all__ = ["reopen_workspace", "ModelChoice", "model_choices", "AcceptOutcome", "accept_case", "accept_weak",
           "reopen_case_segments", "output_path", "workspace_model", "own_case",
           "prepare_accept", "accept_outcome"]


def reopen_workspace(path: str, open_fn: Callable[[str], Any], clear_setting: Callable[[], None]) -> Tuple[Any, str]:
    """(workspace or None, message). A path that no longer opens is cleared from the settings, with the reason."""
    if not path:
        return None, ""
    try:
        return open_fn(path), ""
    except (HilaError, OSError, ValueError) as exc:
        clear_setting()
        return None, f"The last workspace ({path}) could not be reopened and was forgotten: {exc}"


@dataclass(frozen=True)
class ModelChoice:
    """One row of the model selector: what Segment passes to ``hila infer --model`` and how it is shown."""

    key: str            # "workspace" or a catalog name
    model: str          # model name or .onnx path for the engine
    version: Optional[Any]
    label: str          # shown in the selector and on the Segment button
    needs_package: Optional[str] = None


def model_choices(ws: Any, modality: Optional[str] = None) -> List[ModelChoice]:
    """The workspace's current model first (when it has one), then the catalog's models for the modality."""
    out = []
    current = ws.current_model() if ws is not None else None
    if current is not None:
        out.append(ModelChoice("workspace", str(current.path), current.version,
                               f"workspace model v{current.version} ({ws.settings.modality})"))
    modality = modality or (ws.settings.modality if ws is not None else None)
    for e in catalog.entries():
        if modality and e.modality and e.modality != modality:
            continue
        out.append(ModelChoice(e.name, e.name, e.version, e.display(),
                               needs_package=e.package if e.kind == "preset" else None))
    return out


@dataclass
class AcceptOutcome:
    case_id: Optional[str]
    version: Optional[int]
    saved: Optional[str]
    save_error: Optional[str] = None

    def message(self) -> str:
        head = f"Accepted case {self.case_id} as correction v{self.version}" if self.version else \
            "Not a workspace case (import it to submit)"
        if self.save_error:
            return f"{head}; but saving the .seg.nrrd copy failed: {self.save_error}"
        return f"{head}; saved {self.saved}" if self.saved else head


def accept_case(ws: Any, util: Any, volume: Any, segNode: Any, ijk_to_ras: np.ndarray, mutable: Callable[[str], Any],
                save: Callable[[Any, Optional[int]], str], quality: str = "reviewed", annotator: Optional[str] = None,
                seconds: Optional[float] = None) -> AcceptOutcome:
    """Submit the shown volume's OWN segmentation as the correction of the volume's OWN case.

    The case comes from the volume (its case attribute), the segmentation from the volume's node
    reference: never from whatever else the panel last showed. A missing label refuses the submit
    (HilaError); a failure to save the extra .seg.nrrd copy after the submit is reported, not raised.
    """
    case_id, export = prepare_accept(ws, util, volume, segNode, ijk_to_ras, mutable)
    version = None
    if isinstance(export, segments.LabelExport):
        correction = ws.submit(case_id, export.image(), quality=quality, annotator=annotator, seconds=seconds)
        version = correction.version
    try:
        saved = save(segNode, version)
    except Exception as exc:  # the submit stands; only the convenience copy failed
        return AcceptOutcome(case_id, version, None, str(exc) or type(exc).__name__)
    return AcceptOutcome(case_id, version, saved)


def prepare_accept(ws: Any, util: Any, volume: Any, segNode: Any, ijk_to_ras: np.ndarray,
                   mutable: Callable[[str], Any]) -> Tuple[Optional[str], Any]:
    """(case id, ``segments.LabelExport``) of what Accept submits, or (None, ``segments.SegmentsExport``) for a volume
    that is no case of ``ws`` (only its copy is written): the part of Accept that needs the scene, its checks and the
    segments' layers copied out; merging, writing, the submit and the compressed copy run in the job
    (``ModuleLogic.startAccept``). Refuses (HilaError) what cannot be accepted, and Accept without a workspace: its
    copy goes into a workspace, never beside the user's file or into the home folder."""
    if segNode is None:
        raise HilaError("there is no segmentation to accept: Segment first, or draw in the Segment Editor")
    if ws is None:
        raise HilaError("Accept keeps its work in a workspace: open or create one first (nothing was written)")
    case_id = own_case(ws, volume)
    if not case_id:
        return None, segments.segments_export(util, segNode, volume, mutable, ijk_to_ras)
    return case_id, segments.label_export(util, segNode, volume, ws.settings.labels, mutable, ijk_to_ras)


def accept_outcome(case_id: Optional[str], results: List[Optional[dict]], errors: List[Optional[str]],
                   pending: str, final: Callable[[Optional[int]], str]) -> AcceptOutcome:
    """What an Accept job did, from its commands' results (``hila submit``'s, then the copy's): the compressed copy
    written at ``pending`` gets its versioned name (``final(version)``); a failed copy is reported with the version
    that was submitted, never as "nothing was submitted"."""
    submitted = results[-2] if case_id and len(results) >= 2 else None  # the steps end in the submit, then the copy
    version = int(submitted["version"]) if submitted else None
    copy_error = errors[-1] if errors else None
    if copy_error or not Path(pending).exists():
        return AcceptOutcome(case_id, version, None, copy_error or "the compressed copy was not written")
    target = Path(final(version))
    target.parent.mkdir(parents=True, exist_ok=True)
    Path(pending).replace(target)
    return AcceptOutcome(case_id, version, str(target))


def own_case(ws: Any, volume: Any) -> Optional[str]:
    """The volume's own case id (None for a volume that is no case); refused when it is another workspace's case."""
    case_id = volume.GetAttribute(segments.CASE_ATTRIBUTE) if volume is not None else None
    home = volume.GetAttribute(segments.WORKSPACE_ATTRIBUTE) if volume is not None else None
    if ws is not None and case_id and home and Path(home) != Path(ws.root):
        raise HilaError(f"this volume is case {case_id} of the workspace {home}, not of {ws.root}; "
                        "open that workspace to accept it")
    return case_id


def accept_weak(ws: Any, volume: Any, marks: dict, annotator: Optional[str] = None, seconds: Optional[float] = None):
    """Submit marks (``marks.marks_from_markups``) as a weak label of the volume's OWN case through
    ``Workspace.submit_marks`` (the path of ``hila submit --box/--lines``); returns the Correction."""
    case_id = own_case(ws, volume)
    if ws is None or not case_id:
        raise HilaError("not a workspace case: open a workspace and import the volume (or load a case) first")
    return ws.submit_marks(case_id, marks, annotator=annotator, seconds=seconds)


def reopen_case_segments(ws: Any, util: Any, volume: Any, segNode: Any) -> Optional[int]:
    """Load the case's latest correction into its segmentation (when it has one and the segmentation is empty).

    Returns the correction version loaded, or None. Never overwrites segments already there.
    """
    case_id = volume.GetAttribute(segments.CASE_ATTRIBUTE)
    if ws is None or not case_id or segNode.GetSegmentation().GetNumberOfSegments() > 0:
        return None
    corrections = ws.corrections(case_id)
    if not corrections:
        return None
    import SimpleITK as sitk  # the engine's image library; loaded only when a case is reopened

    label = sitk.GetArrayFromImage(ws.correction_label(case_id))
    segments.load_label_array(util, segNode, volume, label, ws.settings.labels)
    return corrections[-1].version


#: Accept's .seg.nrrd copies: a folder of the workspace the ledger does not manage (``workspace.files.MANAGED_DIRS``).
COPIES_DIR = "segmentations"


def output_path(volume: Any, ws: Any, case_id: Optional[str] = None, version: Optional[int] = None) -> str:
    """Where Accept's .seg.nrrd copy goes: ``<workspace>/segmentations/<case>/<volume>_v<n>.seg.nrrd`` (a volume that
    is no case: ``<workspace>/segmentations/<volume>.seg.nrrd``).

    Never beside the volume's source file (a user's data folder, a read-only mount: Accept must not write
    there), never into the ledger's own folders, never into the home folder: without a workspace, HilaError.
    """
    if ws is None:
        raise HilaError("Accept keeps its work in a workspace: open or create one first (nothing was written)")
    raw = (volume.GetName() if volume is not None else "") or "segmentation"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._") or "segmentation"
    name += f"_v{version}" if version else ""
    return str(Path(ws.root) / COPIES_DIR / re.sub(r"[^A-Za-z0-9._-]+", "_", case_id or "") / (name + ".seg.nrrd"))


def workspace_model(modality: str, preferred: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(model for a new workspace or None, note): the user's pick when it fits the modality, else the starter.

    CT starts from the pelvic CT starter, MR from TAPS; a model whose file or package is not here is
    not copied in (the note says so, and the catalog still offers it once installed).
    """
    entry = catalog.get(preferred) if preferred else None
    if entry is None or (entry.modality and entry.modality != str(modality).upper()):
        entry = catalog.starter_for(modality)
    if entry is None:
        return None, f"no catalog model for {modality}: the workspace starts without one"
    if not entry.available:
        return None, f"{entry.name} is not installed yet ({entry.pip or entry.file}): the workspace starts without a model"
    return entry.name, f"the workspace starts from {entry.name} v{entry.version}"
