"""The workspace's suspects: flags on corrections that disagree far more than their peers (issue 13).

A flag names one exact correction version; it never changes or hides the correction and is itself never
edited or deleted (ledger triggers). A newer correction of the case supersedes it: only flags on a
case's latest correction count (:meth:`Suspects.suspects`), so re-reviewing a case clears its flag.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Sequence, Set, Tuple

from .base import Core, now
from .records import dumps


@dataclass(eq=False)
class Suspects:
    """Flags on corrections that disagree far more than their peers."""

    core: Core

    def flag_suspects(self, flagged: Sequence[dict], run_id=None, model_version=None) -> int:
        """Record flags for ``flagged`` (dicts with case_id, correction_version, dice, reason); returns how many."""
        n = 0
        with self.core.ledger.write() as con:
            for f in flagged:
                row = con.execute("SELECT correction_id FROM corrections WHERE case_id = ? AND version = ?",
                                  (str(f["case_id"]), int(f["correction_version"]))).fetchone()
                if row is None:
                    continue
                con.execute("INSERT INTO suspects (correction_id, case_id, correction_version, run_id, model_version, "
                            "scores, reason, created_at) VALUES (?,?,?,?,?,?,?,?)",
                            (row[0], str(f["case_id"]), int(f["correction_version"]), run_id, model_version,
                             dumps(f.get("dice") or {}), str(f.get("reason", "")), now()))
                self.core.event(con, "suspect", f"{f['case_id']} v{f['correction_version']}",
                            {"run_id": run_id, "model_version": model_version, "reason": f.get("reason")})
                n += 1
        return n

    def suspects(self) -> List[dict]:
        """Flags standing on each case's latest correction (one per case: the latest flag), by case order."""
        with self.core.ledger.read() as con:
            rows = con.execute(
                "SELECT s.*, c.quality, k.name FROM suspects s JOIN corrections c ON c.correction_id = s.correction_id "
                "JOIN cases k ON k.case_id = s.case_id WHERE s.correction_version = (SELECT MAX(version) FROM "
                "corrections c2 WHERE c2.case_id = s.case_id) ORDER BY k.seq, s.suspect_id").fetchall()
        out = {}
        for r in rows:
            out[r["case_id"]] = {"case_id": r["case_id"], "name": r["name"], "correction_version": r["correction_version"],
                                 "quality": r["quality"], "run_id": r["run_id"], "model_version": r["model_version"],
                                 "dice": json.loads(r["scores"]), "reason": r["reason"], "flagged_at": r["created_at"]}
        return list(out.values())

    def suspect_keys(self) -> Set[Tuple[str, int]]:
        """(case_id, correction_version) of every standing flag (what training weights down)."""
        return {(s["case_id"], int(s["correction_version"])) for s in self.suspects()}
