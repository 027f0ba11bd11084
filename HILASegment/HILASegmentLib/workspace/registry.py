"""The workspace's model registry: model versions are added, never replaced; one is *current*; rollback
goes one step back along the history of current models.

That history (``model_promotions``) is append-only like everything else: a promotion and a rollback
are each a new row, and which model a rollback returns to is found by replaying the rows
(:func:`current_stack`), so nothing about past models is ever forgotten.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from ..ground.errors import HilaError
from ..models.modelcard import ModelCard
from .base import Core, PathLike, as_int, copier, now
from .files import Staged
from .records import MODEL_STATUSES, ModelRecord, dumps


class VersionTaken(HilaError):
    """The version a model's card names is no longer the next one (another model was added meanwhile)."""


def current_stack(rows: Sequence[Tuple[int, str]]) -> List[int]:
    """The models a rollback can return to, oldest first, replayed from ``(version, action)`` history rows.

    ``init``/``promote`` put a version on top (unless it already is); ``rollback`` takes the top off
    (the row names the version that became current, which is then the top).
    """
    stack: List[int] = []
    for version, action in rows:
        if action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:  # a history that does not replay (older ledgers): trust the row
                stack.append(version)
        elif not stack or stack[-1] != version:
            stack.append(version)
    return stack


@dataclass(eq=False)
class Registry:
    """Model versions: added, never replaced; one current; rollback one step back."""

    core: Core

    def _model_from_row(self, r: sqlite3.Row) -> ModelRecord:
        card = ModelCard.from_dict(json.loads(r["card"]), f"{self.core.root}: model v{r['version']} card")
        return ModelRecord(r["version"], self.core.root / r["file"], r["sha256"], card, r["parent"], r["status"],
                           self.core.abspath(r["checkpoint_file"]), r["training_run"], r["created_at"])

    def models(self) -> List[ModelRecord]:
        with self.core.ledger.read() as con:
            return [self._model_from_row(r) for r in con.execute("SELECT * FROM models ORDER BY version")]

    def model(self, version: int) -> ModelRecord:
        with self.core.ledger.read() as con:
            r = con.execute("SELECT * FROM models WHERE version = ?", (as_int(version, "model version"),)).fetchone()
        if r is None:
            raise HilaError(f"{self.core.root}: no model version {version} (`hila models {self.core.root} list`)")
        return self._model_from_row(r)

    def current_model(self) -> Optional[ModelRecord]:
        with self.core.ledger.read() as con:
            r = con.execute("SELECT * FROM models WHERE status = 'current'").fetchone()
        return None if r is None else self._model_from_row(r)

    def next_model_version(self) -> int:
        """The version the next ``add_model`` will most likely get (a hint; allocation happens at commit)."""
        with self.core.ledger.read() as con:
            return int(con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models").fetchone()[0])

    def add_model(self, onnx_path: PathLike, card: Union[ModelCard, Mapping[str, Any]], parent: Optional[int] = None,
                  status: str = "candidate", checkpoint_path: Optional[PathLike] = None,
                  training_run: Optional[int] = None, version: Optional[int] = None) -> ModelRecord:
        """Copy a model (ONNX, and its torch checkpoint) in as the next version; files are never replaced.

        ``card``: the model's ModelCard (or its JSON form, read and checked here). ``version``: the version the model's card already names (the trainer embeds it before
        registering); if the registry would assign another, nothing is added and :class:`VersionTaken`
        is raised, so a card never names a version other than its own.
        """
        if status not in MODEL_STATUSES:
            raise HilaError(f"model status {status!r}: use one of {', '.join(MODEL_STATUSES)}")
        src = Path(onnx_path)
        if not src.is_file():
            raise HilaError(f"{src}: no such model file")
        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise HilaError(f"{checkpoint_path}: no such checkpoint file")
        if not isinstance(card, ModelCard):
            card = ModelCard.from_dict(dict(card or {}), f"{src} (model card)")
        card_d = card.to_dict()
        files = [(copier(src), ".onnx")]
        if checkpoint_path is not None:
            ck = Path(checkpoint_path)
            files.append((copier(ck), "".join(ck.suffixes[-1:]) or ".pt"))

        def record(con: sqlite3.Connection, staged: Sequence[Staged]) -> int:
            assigned = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models").fetchone()[0]
            if version is not None and int(version) != assigned:
                raise VersionTaken(f"{self.core.root}: the model's card names v{version} but the registry's next version "
                                   f"is v{assigned} (another model was added meanwhile)")
            if parent is not None and not con.execute("SELECT 1 FROM models WHERE version = ?", (int(parent),)).fetchone():
                raise HilaError(f"{self.core.root}: parent model version {parent} does not exist")
            rels = [f"models/{s.name(f'v{assigned:04d}')}" for s in staged]
            for s, rel in zip(staged, rels):
                s.place(rel)
            if status == "current":
                con.execute("UPDATE models SET status = 'retired' WHERE status = 'current'")
            con.execute("INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (assigned, rels[0], staged[0].sha256, dumps(card_d), parent, status,
                         rels[1] if len(rels) > 1 else None, staged[1].sha256 if len(staged) > 1 else None,
                         training_run, now()))
            if status == "current":
                con.execute("INSERT INTO model_promotions (version, action, time) VALUES (?, 'promote', ?)",
                            (assigned, now()))
            self.core.event(con, "model_add", f"v{assigned}", {"status": status, "parent": parent, "name": card.name})
            return int(assigned)

        return self.model(self.core.store(files, record))

    def promote(self, version: int) -> ModelRecord:
        """Make a model version current (the previous current one is retired, and can come back by rollback)."""
        version = as_int(version, "model version")
        with self.core.ledger.write() as con:
            r = con.execute("SELECT status FROM models WHERE version = ?", (version,)).fetchone()
            if r is None:
                raise HilaError(f"{self.core.root}: no model version {version} (`hila models {self.core.root} list`)")
            if r[0] != "current":
                old = con.execute("SELECT version FROM models WHERE status = 'current'").fetchone()
                con.execute("UPDATE models SET status = 'retired' WHERE status = 'current'")
                con.execute("UPDATE models SET status = 'current' WHERE version = ?", (version,))
                con.execute("INSERT INTO model_promotions (version, action, time) VALUES (?, 'promote', ?)", (version, now()))
                self.core.event(con, "promote", f"v{version}", {"previous": old[0] if old else None})
        return self.model(version)

    def rollback(self) -> ModelRecord:
        """One step back: the model that was current before the present one becomes current again."""
        with self.core.ledger.write() as con:
            cur = con.execute("SELECT version FROM models WHERE status = 'current'").fetchone()
            if cur is None:
                raise HilaError(f"{self.core.root}: no current model to roll back from")
            stack = current_stack(con.execute("SELECT version, action FROM model_promotions ORDER BY promotion_id"))
            if stack and stack[-1] != cur[0]:  # current set outside the history (an older ledger): it is the top
                stack.append(cur[0])
            if len(stack) < 2:
                raise HilaError(f"{self.core.root}: model v{cur[0]} is the first current model; nothing to roll back to")
            target = stack[-2]
            con.execute("UPDATE models SET status = 'retired' WHERE version = ?", (cur[0],))
            con.execute("UPDATE models SET status = 'current' WHERE version = ?", (target,))
            con.execute("INSERT INTO model_promotions (version, action, time) VALUES (?, 'rollback', ?)", (target, now()))
            self.core.event(con, "rollback", f"v{target}", {"from": cur[0]})
        return self.model(target)
