"""Which buttons are live, from the panel's state: one function, so the rules are tested, not scattered.

Rules: training never blocks the case loop (Segment, Accept, Next case and Import stay live while a
training job runs); while a segment job runs for the *shown* case, the case table and the volume
selector are locked and Segment turns into Cancel (MONAIAuto3DSeg's pattern), so the case cannot
change under the result; Accept needs a volume and no segment job on it, and turns into Cancel while its
own job runs; Promote/Discard need a candidate; Train, Import, Accept and the dependency installer each
have one slot; Keep learning's trainer holds the Train slot while it runs; Fix with box needs a selected segment and
a picked ROI and is Cancel while its job runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["PanelState", "button_states", "segment_button_text", "accept_button_text", "fix_button_text"]


@dataclass(frozen=True)
class PanelState:
    has_workspace: bool
    has_volume: bool
    segmenting_shown: bool = False      # a segment job runs for the shown volume
    segmenting_other: bool = False      # a segment job runs for another volume
    training: bool = False
    installing: bool = False
    has_candidate: bool = False
    has_models: bool = False
    importing: bool = False             # an import job runs
    accepting_shown: bool = False       # an Accept job runs for the shown volume
    accepting_other: bool = False       # an Accept job runs for another volume
    learning: bool = False              # the training slot holds Keep learning's watching trainer
    has_segment: bool = False           # a segment is selected in the Segment Editor
    has_roi: bool = False               # an ROI is picked for Fix with box
    fixing: bool = False                # a Fix with box job runs


def button_states(s: PanelState) -> Dict[str, bool]:
    """``{ui widget name: enabled}`` for every control the state decides."""
    segment_busy = s.segmenting_shown or s.segmenting_other
    return {
        # Segment doubles as Cancel for the shown case's job; it is dead while another case's job runs
        "segmentButton": s.segmenting_shown or (s.has_volume and not segment_busy and not s.installing),
        # Accept doubles as Cancel for the shown case's Accept job; one Accept at a time
        "acceptButton": s.accepting_shown or (s.has_volume and not s.segmenting_shown and not s.accepting_other),
        "acceptWeakButton": s.has_workspace and s.has_volume and not s.segmenting_shown,
        "inputVolumeSelector": not s.segmenting_shown,
        "caseTableWidget": s.has_workspace and not s.segmenting_shown,
        "nextCaseButton": s.has_workspace and not s.segmenting_shown,
        "importVolumeButton": s.has_workspace and s.has_volume and not s.importing,
        "importFilesButton": s.has_workspace and not s.importing,
        "importFolderButton": s.has_workspace and not s.importing,
        "cancelImportButton": s.importing,
        "trainButton": s.has_workspace and not s.training and not s.installing,
        # Keep learning: on while its trainer runs (unticking stops it); off, it waits for a free training slot
        "keepLearningCheckBox": s.learning or (s.has_workspace and not s.training and not s.installing),
        "cancelButton": s.training,
        "promoteButton": s.has_candidate and not s.training,
        "discardButton": s.has_candidate and not s.training,
        "rollbackButton": s.has_workspace and s.has_models and not s.training,
        "plotButton": s.has_workspace,
        "installDependenciesButton": not s.installing and not s.training,
        "cancelInstallButton": s.installing,
        # Fix with box: a segment and an ROI picked; Cancel while its job runs; never under the shown case's Segment
        "fixBoxButton": s.fixing or (s.has_volume and s.has_segment and s.has_roi and not s.segmenting_shown),
        "openWorkspaceButton": not s.training,
        "createWorkspaceButton": not s.training,
    }


def fix_button_text(fixing: bool) -> str:
    return "Cancel fix" if fixing else "Fix with box"


def accept_button_text(accepting_shown: bool) -> str:
    return "Cancel accept" if accepting_shown else "Accept"


def segment_button_text(segmenting_shown: bool, model_label: Optional[str]) -> str:
    """"Cancel" while the shown case segments; else the model version Segment will run."""
    if segmenting_shown:
        return "Cancel"
    return f"Segment with {model_label}" if model_label else "Segment"
