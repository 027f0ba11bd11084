"""After each run: score every training correction with a model that never trained on it, flag outliers.

The scorer is the parent model (the model current when the run started), through the ONNX engine
(``gate.evaluate_model``, the same evaluator as the gate), on the corrections of cases it never trained
on (its card's training set; any version of a case seen counts as seen). An imported model (no training
run in this workspace, e.g. the CT starter) names cases of another workspace in its card: it has seen
none of this workspace's corrections. The same inference also gives each correction's boundary figures
against the model's probabilities (``suspectrule.boundary_evidence``: mild errors that Dice cannot see); the gate
corrections were already scored so by the gate and are reused. Corrections every model has trained
on keep whatever flag an earlier round gave them; without a parent model (a first run from scratch) nothing
is scored. The peer rule is :func:`HILASegmentLib.quality.suspectrule.find_suspects`. A failure here never
fails the run.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from ..ground.errors import HilaError
from ..quality.suspectrule import boundary_evidence, find_suspects
from ..workspace.records import SnapshotItem
from . import gate


def boundary_figures(labels: Sequence[Tuple[int, str]]) -> Callable:
    """``gate.evaluate_models``'s ``evidence`` hook: the model's probabilities on the image grid, matched to the
    workspace's labels by name (``InferenceResult.probabilities_on``), against the correction."""
    names = [name for _, name in labels]

    def figures(result, image: sitk.Image, correction) -> dict:
        try:
            return boundary_evidence(correction, result.probabilities_on(image, names), labels,
                                     image.GetSpacing()[::-1])
        except Exception:  # noqa: BLE001 - no boundary figures for this case; its Dice still counts (gross errors)
            return {}
    return figures


def scan(ws, run_id: Optional[int], parent, items: Sequence[SnapshotItem], labels: Sequence[Tuple[int, str]],
         parent_eval: Optional[dict] = None, threads: Optional[int] = None,
         should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Score ``items`` (snapshot items) unseen by ``parent`` (a registry model or None); record flags.

    ``parent_eval``: the gate's scores of the parent on the gate corrections, with their boundary figures (the gate
    ran the same inference with :func:`boundary_figures`): reused, so each gate case is read once per run."""
    if parent is None:
        return {"scored": 0, "flagged": [], "why": "no parent model: nothing that has not trained on them"}
    seen = parent.card.seen_cases() if parent.training_run is not None else set()
    todo = [s for s in items if str(s.case_id) not in seen]
    known = {(c["case_id"], c.get("correction_version")): c for c in (parent_eval or {}).get("cases", [])
             if "evidence" in c}
    scored: List[dict] = []
    rest: List[SnapshotItem] = []
    for s in todo:
        hit = known.get((s.case_id, int(s.correction_version)))
        if hit is not None:
            scored.append({"case_id": s.case_id, "correction_version": int(s.correction_version), "dice": hit["dice"],
                           "boundary": hit["evidence"]})
        else:
            rest.append(s)
    if rest:
        try:
            ev = gate.evaluate_model(parent.path, rest, labels, threads=threads, should_stop=should_stop,
                                     card=parent.card, evidence=boundary_figures(labels))
        except HilaError as exc:
            return {"scored": len(scored), "flagged": [], "why": f"parent model v{parent.version}: {exc}"}
        scored += [{"case_id": c["case_id"], "correction_version": c["correction_version"], "dice": c["dice"],
                    "boundary": c.get("evidence") or {}} for c in ev["cases"]]
    flagged = find_suspects(scored)
    ws.flag_suspects(flagged, run_id=run_id, model_version=parent.version)
    return {"scored": len(scored), "model_version": parent.version,
            "flagged": [{"case_id": f["case_id"], "correction_version": f["correction_version"], "reason": f["reason"]}
                        for f in flagged]}
