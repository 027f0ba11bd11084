"""What the Slicer panel shows, computed from a Workspace: tables, curve, the model Segment uses.

The widget only copies these rows into Qt tables and a Slicer plot; keeping the choices here (which figure is
"effort", which case is next) makes them testable on a real workspace without Slicer. A prediction is recorded by
the Segment child (``hila infer WS CASE``, ``Workspace.record_prediction``), never here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from HILASegmentLib.models.modelcard import ModelCard

__all__ = ["Tables", "tables", "read_tables",
           "CASE_COLUMNS", "MODEL_COLUMNS", "CURVE_COLUMNS", "case_rows", "model_rows", "next_case_id",
           "model_dice", "learning_curve", "compare_text", "model_for"]

CASE_COLUMNS = ["Case", "Name", "State", "Last model", "Predicted Dice", "Corrections", "Effort", "Suspect"]
MODEL_COLUMNS = ["Version", "Status", "Parent", "Dice", "Created"]
CURVE_COLUMNS = ["Model version", "Validation Dice", "Correction effort (1 - Dice vs prediction)"]

def _num(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def model_dice(card: Optional["ModelCard"]) -> Optional[float]:
    """The model's validation Dice (its card's one accessor, ``ModelCard.mean_dice``), to 4 decimals."""
    d = None if card is None else card.mean_dice()
    return None if d is None else round(d, 4)


@dataclass
class Tables:
    """What the panel's tables, model selector and workspace line show, read from the ledger at one moment: by a
    job's worker thread when a job ends (``read_tables``), so the GUI thread only draws them."""

    root: Optional[str] = None
    modality: str = ""
    labels: List[str] = field(default_factory=list)
    cases: List[list] = field(default_factory=list)
    models: List[list] = field(default_factory=list)
    current: Optional[int] = None
    choices: list = field(default_factory=list)  # cases.ModelChoice


def tables(ws) -> Tables:
    """The :class:`Tables` of ``ws`` (None: no workspace, the catalog's models only)."""
    from .cases import model_choices  # the model selector's rows

    if ws is None:
        return Tables(choices=model_choices(None))
    current = ws.current_model()
    return Tables(str(ws.root), ws.settings.modality, [name for _, name in ws.settings.label_pairs()], case_rows(ws),
                  model_rows(ws), current.version if current else None, model_choices(ws))


def read_tables(root: str) -> Tables:
    """:func:`tables` of the workspace at ``root`` through a read-only connection of its own (a job's worker thread
    runs it: the panel's workspace object stays with the GUI thread)."""
    from HILASegmentLib.workspace import Workspace  # the ledger

    ws = Workspace.open(root, readonly=True)
    try:
        return tables(ws)
    finally:
        ws.close()


def case_rows(ws) -> List[list]:
    """One row per case (CASE_COLUMNS): state, last model, predicted Dice of its latest prediction (the source
    ``hila rank`` uses: the learned quality model where it is in use, else the expected soft Dice; empty for
    reviewed cases and predictions without one), corrections, effort.

    Effort is the fraction of labelled voxels the latest correction changed (0 = accepted as is). Suspect is
    the standing flag on the case's latest correction (``ws.suspects()``, what ``hila status`` lists: the
    version and the reason), empty when none; a newer correction clears it.
    """
    need = {r["case_id"]: r.get("predicted_dice") for r in ws.rank()}
    latest_effort = {}
    for c in ws.corrections():  # oldest first: later versions overwrite
        latest_effort[c.case_id] = (c.effort or {}).get("fraction_changed")
    flags = {f["case_id"]: f"suspect v{f['correction_version']}: {f['reason']}" for f in ws.suspects()}
    rows = []
    for s in ws.case_states():
        n = need.get(s["case_id"])
        score = "" if n is None else round(float(n), 3)
        last = s.get("latest_model_version")
        effort = latest_effort.get(s["case_id"])
        rows.append([s["case_id"], s["name"], s["state"], "" if last is None else f"v{last}", score,
                     s["corrections"], "" if effort is None else round(float(effort), 4), flags.get(s["case_id"], "")])
    return rows


def model_rows(ws) -> List[list]:
    """One row per model version (MODEL_COLUMNS)."""
    return [[m.version, m.status, "" if m.parent is None else m.parent,
             "" if model_dice(m.card) is None else model_dice(m.card), m.created_at] for m in ws.models()]


def next_case_id(ws) -> Optional[str]:
    """The unreviewed case most in need of review (``ws.rank()[0]``), or None when every case is reviewed."""
    ranked = ws.rank()
    return str(ranked[0]["case_id"]) if ranked else None


def learning_curve(ws) -> Tuple[List[List[float]], List[str]]:
    """Rows (version, validation Dice, correction effort) per model version, NaN where unknown, and the column names.

    Correction effort for version v is 1 - the mean Dice between the corrections and the
    predictions of v they corrected: 0 when radiologists accepted v's output as it was.
    """
    effort = (ws.status().get("effort") or {})
    rows = []
    for m in sorted(ws.models(), key=lambda r: r.version):
        e = effort.get(f"v{m.version}") or {}
        dices = [float(d) for d in (e.get("dice_vs_prediction_mean") or {}).values() if _num(d) is not None]
        dice = model_dice(m.card)
        rows.append([float(m.version), math.nan if dice is None else dice,
                     round(1.0 - sum(dices) / len(dices), 4) if dices else math.nan])
    return rows, list(CURVE_COLUMNS)


def compare_text(ws, version: int) -> str:
    """One line: the candidate's Dice against the current model's."""
    models = {m.version: m for m in ws.models()}
    cand = models[version]
    current = ws.current_model()
    fmt = lambda d: "n/a" if d is None else f"{d:.3f}"  # noqa: E731
    metrics = cand.card.metrics
    text = f"Candidate v{version}: Dice {fmt(model_dice(cand.card))}"
    parent = metrics.parent_validation
    if parent is not None and parent.mean() is not None:  # same validation cases
        text += f" vs v{parent.version}: Dice {fmt(parent.mean())} on the same cases"
    elif current is not None and current.version != version:
        text += f" vs current v{current.version}: Dice {fmt(model_dice(current.card))}"
    if current is not None and current.version == version:
        text += " (now current)"
    gate = metrics.gate
    if gate is not None and gate.reason:
        text += f"; gate: {gate.reason}"
    return text


def model_for(ws, starter: str = "taps"):
    """(model name or path, version or None) for Segment: the workspace's current model, else the MR starter.

    Without a workspace, or in an MR workspace with no model yet, the TAPS preset (prostate T2) is used;
    a CT workspace with no model gets a clear error instead of a model for the wrong modality.
    """
    from HILASegmentLib.ground.errors import HilaError

    if ws is None:
        return starter, None
    current = ws.current_model()
    if current is not None:
        return str(current.path), current.version
    if ws.settings.modality == "MR":
        return starter, None
    raise HilaError(f"{ws.root}: this {ws.settings.modality} workspace has no model yet: accept a few hand-drawn "
                    "cases and Train, or create it with a model (hila init --model)")
