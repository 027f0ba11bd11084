"""The workspace's reports: each case's state, the workspace's status and effort so far, and the review
ranking (the two whole-workspace jobs, ``check`` and ``export``, are functions of a workspace in their own modules)."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..quality.ranking import learned_scorer, rank_cases
from ..quality.strategies import DEFAULT as DEFAULT_STRATEGY
from .base import Core
from .ledger import SCHEMA_VERSION
from .qualitymodels import QualityModels
from .records import QUALITIES
from .registry import Registry
from .suspectflags import Suspects


@dataclass(eq=False)
class Reports:
    """Case states, the workspace's status and the review ranking, from the ledger and the parts named."""

    core: Core
    registry: Registry
    quality: QualityModels
    suspects: Suspects

    def case_states(self) -> List[dict]:
        """Each case with its state: new, predicted, or the quality of its latest correction."""
        with self.core.ledger.read() as con:
            rows = con.execute(
                "SELECT k.case_id, k.name, k.seq, "
                " (SELECT COUNT(*) FROM predictions p WHERE p.case_id = k.case_id) AS n_pred, "
                " (SELECT p.uncertainty FROM predictions p WHERE p.case_id = k.case_id ORDER BY p.prediction_id DESC LIMIT 1) AS unc, "
                " (SELECT p.model_version FROM predictions p WHERE p.case_id = k.case_id ORDER BY p.prediction_id DESC LIMIT 1) AS pmv, "
                " (SELECT COUNT(*) FROM corrections c WHERE c.case_id = k.case_id) AS n_corr, "
                " (SELECT c.quality FROM corrections c WHERE c.case_id = k.case_id ORDER BY c.version DESC LIMIT 1) AS q, "
                " (SELECT COUNT(*) FROM corrections c WHERE c.case_id = k.case_id AND c.quality = 'reviewed') AS n_rev "
                "FROM cases k ORDER BY k.seq").fetchall()
        out = []
        for r in rows:
            state = r["q"] if r["n_corr"] else ("predicted" if r["n_pred"] else "new")
            out.append({"case_id": r["case_id"], "name": r["name"], "state": state, "predictions": r["n_pred"],
                        "corrections": r["n_corr"], "reviewed": bool(r["n_rev"]), "predicted": bool(r["n_pred"]),
                        "latest_model_version": r["pmv"], "uncertainty": json.loads(r["unc"]) if r["unc"] else None})
        return out

    def status(self) -> dict:
        """Cases by state, corrections per quality, models, training runs and the effort so far."""
        s = self.core.settings
        with self.core.ledger.read() as con:
            states = self.case_states()
            corr = con.execute("SELECT quality, COUNT(*) AS n, SUM(seconds) AS s FROM corrections GROUP BY quality").fetchall()
            latest_q = con.execute("SELECT c.quality, COUNT(*) FROM corrections c WHERE c.version = (SELECT MAX(version) "
                                   "FROM corrections c2 WHERE c2.case_id = c.case_id) GROUP BY c.quality").fetchall()
            effort_rows = con.execute("SELECT c.effort, c.seconds, p.model_version FROM corrections c "
                                      "LEFT JOIN predictions p ON p.prediction_id = c.based_on ORDER BY c.correction_id").fetchall()
            n_pred = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            runs = con.execute("SELECT status, COUNT(*) FROM training_runs GROUP BY status").fetchall()
            models = self.registry.models()
            n_events = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        by_state: Dict[str, int] = {k: 0 for k in ("new", "predicted", "weak", "rough", "reviewed")}
        for c in states:
            by_state[c["state"]] = by_state.get(c["state"], 0) + 1
        per_q = {q: 0 for q in QUALITIES}
        per_q.update({r["quality"]: r["n"] for r in corr})
        return {
            "workspace": str(self.core.root), "schema_version": SCHEMA_VERSION, "modality": s.modality,
            "journal_mode": self.core.ledger.journal_mode(),
            "labels": [{"value": l.value, "name": l.name, "color": list(l.color)} for l in s.labels],
            "cases": {"total": len(states), "by_state": by_state, "list": states},
            "predictions": n_pred,
            "corrections": {"total": sum(per_q.values()), "by_quality": per_q,
                            "latest_by_quality": {q: dict((r[0], r[1]) for r in latest_q).get(q, 0) for q in QUALITIES}},
            "models": [{"version": m.version, "status": m.status, "parent": m.parent, "name": m.card.name,
                        "metrics": m.card.metrics.to_dict()} for m in models],
            "current_model": next((m.version for m in models if m.status == "current"), None),
            "training_runs": {r[0]: r[1] for r in runs},
            "effort": effort_summary(effort_rows, s.names()), "events": n_events,
            "suspects": self.suspects.suspects(),
            "quality": self.quality.quality_source(next((m.version for m in models if m.status == "current"), None)),
        }

    def rank(self, by: str = DEFAULT_STRATEGY, seed: int = 0) -> List[dict]:
        """Cases without a reviewed correction, most in need of review first, by the registered strategy ``by``
        (``quality.strategies``; see ``quality.rank_cases``).

        By quality, a prediction is scored by the learned quality model of its own model version where one
        is in use (``qualitymodels``), else by its expected soft Dice; each case lists its labels' predicted Dice
        with their source (``QualityModels.label_scorer``). A spread strategy (``diverse``) also reads the reviewed
        cases' latest predictions, to spread away from them."""
        states = self.case_states()
        todo = [c for c in states if not c["reviewed"]]
        for c in todo:  # the ledger's model version is the one a quality model is filed under
            if isinstance(c["uncertainty"], dict):
                c["uncertainty"] = dict(c["uncertainty"], model_version=c["latest_model_version"])
        scorer = learned_scorer(self.quality.quality_model)
        return rank_cases(todo, by=by, scorer=scorer, rng=np.random.default_rng(seed),
                          label_scorer=self.quality.label_scorer(), reviewed=[c for c in states if c["reviewed"]])


def effort_summary(rows: Sequence[sqlite3.Row], names: List[str]) -> dict:
    """Effort so far, overall and per model version of the corrected prediction (the loop's learning curve)."""
    groups: Dict[str, List[Tuple[dict, Optional[float]]]] = {}
    for r in rows:
        e = json.loads(r["effort"])
        key = "unpredicted" if r["model_version"] is None else f"v{r['model_version']}"
        groups.setdefault(key, []).append((e, r["seconds"]))
        groups.setdefault("all", []).append((e, r["seconds"]))

    def summarise(items):
        secs = [s for _, s in items if s is not None]
        out = {"corrections": len(items), "from_scratch": sum(1 for e, _ in items if e.get("against") == "nothing"),
               "seconds_total": round(sum(secs), 3) if secs else 0.0,
               "seconds_mean": round(sum(secs) / len(secs), 3) if secs else None,
               "voxels_changed_mean": round(float(np.mean([e.get("voxels_changed", 0) for e, _ in items])), 3) if items else None}
        dice = {}
        for n in names:
            vals = [e["dice"][n] for e, _ in items if e.get("dice", {}).get(n) is not None]
            dice[n] = round(float(np.mean(vals)), 4) if vals else None
        out["dice_vs_prediction_mean"] = dice
        return out

    return {k: summarise(v) for k, v in sorted(groups.items())} if groups else {"all": summarise([])}
