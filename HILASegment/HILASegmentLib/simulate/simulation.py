"""Rounds of the simulated loop on a real workspace in RUN, resumable after the last completed round.

RUN/config.json            the run's configuration (another config on this RUN is refused)
RUN/cases/                 the cohort's images and merged references (synthesised ones cropped to the labels)
RUN/workspace/             the real HILASegment workspace (hila status / hila check work on it)
RUN/rounds.json|csv        one record per completed round (written atomically after each round)
RUN/baseline/, baseline.json   full supervision on every pool reference, same total training time
RUN/summary.json, curves.png   see report.py

One job: a round and its exact resume (replaying a killed round without double submits or a second training
run is most of it); the run's configuration and checks (``prepare``), cohort, synthesis, the radiologist,
case selection and the report live in their own modules.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..ground import metrics
from ..ground.durable import atomic_write_text
from ..quality.learned import add_quality_features
from . import radiologist as rad
from . import report, selection
from .prepare import SimConfig, budget_factor, materialise, prepare

#: Where a run's wall time goes (summary.json's time_split): synthesis once, then per round the test-split
#: evaluation, training (incl. the trainer's own validation and export), inference on pool cases (strategy
#: and corrector), the simulated corrections; the rest (ledger writes, imports, reports) is "other".
TIMING_KEYS = ("synthesis_s", "evaluation_s", "training_s", "inference_s", "correction_s")


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))  # the engine's durable write (fsync, one rename)


class _Context:
    """Per-round access to the current model's predictions (cached) for strategies and the corrector."""

    def __init__(self, sim: "Simulation"):
        self.sim, self.cache = sim, {}

    def has_model(self) -> bool:
        return self.sim.ws.current_model() is not None

    def predict(self, name: str):
        if name not in self.cache:
            t0 = time.perf_counter()
            image = self.sim.image(name)
            self.cache[name] = add_quality_features(self.sim.segmenter().segment(image), image)
            self.sim.timing["inference_s"] += time.perf_counter() - t0
        return self.cache[name]


class Simulation:
    """One run: rounds on RUN/workspace; a rerun after a crash (even SIGKILL) continues with the same rounds.

    A round killed part-way leaves corrections, maybe a finished training run, in the workspace. On resume
    the round is replayed from its start: the same cases are chosen (same seed, same model), corrections
    already in the ledger are not submitted twice, and a training run that finished on exactly this
    round's corrections from this round's start model is taken as the round's training (its gate decision
    included) instead of training again. Only a kill inside the few milliseconds between registering a
    model and closing its training run makes the resumed round train again (under the next version number).
    """

    def __init__(self, cfg: SimConfig, plan: dict, progress: Optional[Callable] = None,
                 on_round: Optional[Callable[[dict], None]] = None):
        self.cfg, self.plan = cfg, plan
        self.run = Path(cfg.out)
        self.progress = progress or (lambda f, m="", **k: None)
        self.on_round = on_round or (lambda r: None)
        self.timing = dict.fromkeys(TIMING_KEYS, 0.0)
        self._seg = (None, None)
        self._images: Dict[str, sitk.Image] = {}
        self._refs: Dict[str, np.ndarray] = {}
        self.spacing_zyx: Dict[str, tuple] = {}
        self.teach_on: Optional[List[str]] = None  # the case IDs a teacher (--model preset) may label

    # ---------------------------------------------------------------- data (read once, kept in memory)
    def image(self, name: str) -> sitk.Image:
        if name not in self._images:
            self._images[name] = sitk.ReadImage(str(self.run / "cases" / f"{name}_image.nii.gz"))
        return self._images[name]

    def reference(self, name: str) -> np.ndarray:
        if name not in self._refs:
            img = sitk.ReadImage(str(self.run / "cases" / f"{name}_ref.nii.gz"))
            self.spacing_zyx[name] = tuple(img.GetSpacing()[::-1])
            self._refs[name] = sitk.GetArrayFromImage(img)
        return self._refs[name]

    def segmenter(self):
        m = self.ws.current_model()
        if self._seg[0] != m.version:
            self._seg = (m.version, m.segmenter(threads=self.cfg.threads, device=self.cfg.device))
        return self._seg[1]

    def _label_image(self, name: str, arr: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(arr.astype(np.uint8))
        img.CopyInformation(self.image(name))
        return img

    # ---------------------------------------------------------------- setup
    def open_workspace(self, folder: Path, model: Optional[str]):
        from ..workspace import Workspace

        if (folder / "hila.sqlite").exists():
            ws = Workspace.open(folder)
            ws.check(repair=True)  # after a kill: close its dead training run, set half-written files aside
            return ws
        names = [n for n, _ in self.plan["spec"]]
        return Workspace.create(folder, self.plan["modality"], names, model=model)

    def import_cases(self, ws, names: List[str]) -> Dict[str, str]:
        return {n: ws.import_volume(self.run / "cases" / f"{n}_image.nii.gz", name=n).case_id for n in names}

    # ---------------------------------------------------------------- steps
    def train(self, ws, rnd: int, init: str, minutes: float, promote: str = "auto", label: str = "") -> dict:
        from ..training.run import TrainOptions, train_workspace  # torch: only when training runs

        t0 = time.perf_counter()
        # --train-minutes is the optimisation time (the trainer's train_minutes); preparing the cases, export,
        # parity and validation come on top of it. A step count alone (tests) depends on no clock.
        steps = self.cfg.train_steps
        opts = TrainOptions(max_minutes=None, train_minutes=None if steps else minutes, device=self.cfg.device,
                            promote=promote, init=init, config=self.cfg.config, arch=self.cfg.arch, steps=steps, threads=self.cfg.threads,
                            warm_start=self.cfg.warm_start, teacher_cases=self.teach_on,
                            seed=self.cfg.seed + rnd, gate_margin=self.cfg.gate_margin,
                            gate_min_cases=self.cfg.gate_min_cases, ignore_band=self.cfg.ignore_band)
        total = self.cfg.rounds + 1

        def nested(fraction, message="", **_):  # the trainer's steps, inside this round's training band
            self.progress((rnd + 0.3 + 0.6 * float(fraction)) / total, f"{label or f'round {rnd}'}: training: {message}")

        res = train_workspace(ws, opts, nested)
        dt = time.perf_counter() - t0
        return {"seconds": dt, "model_version": res["model_version"], "promoted": res["promoted"],
                "reason": res["reason"], "steps": res["steps"]}

    def finished_training(self, ws, parent: Optional[int]) -> Optional[dict]:
        """A training run that already finished on exactly the present corrections from ``parent`` (a resumed
        round whose process was killed after training); its gate decision is re-applied."""
        snap = {s.correction_id for s in ws.snapshot()}
        for tr in reversed(ws.training_runs()):
            if (tr.status == "done" and tr.model_version is not None and tr.parent_model == parent
                    and {s.correction_id for s in tr.snapshot} == snap):
                m = tr.metrics or {}
                gate = m.get("gate") or {}
                cur = ws.current_model()
                if gate.get("promote") and (cur is None or cur.version != tr.model_version):
                    ws.promote(tr.model_version)
                return {"seconds": float((m.get("timings") or {}).get("total_s") or 0.0),
                        "model_version": tr.model_version, "promoted": bool(gate.get("promote")),
                        "reason": gate.get("reason"), "steps": m.get("steps"), "resumed": True}
        return None

    def evaluate(self, ws, previous: Optional[dict] = None) -> dict:
        """Current model on the test split: Dice and HD95 per label and their mean.

        When the round's gate kept the previous round's model, its figures are reused (same model, same
        test cases: the same numbers) instead of segmenting the test split again.
        """
        t0 = time.perf_counter()
        m = ws.current_model()
        if m is None:  # no model kept yet: nothing is segmented
            names = [n for n, _ in self.plan["spec"]]
            return {"model_version": None, "dice": {n: 0.0 for n in names}, "hd95": {n: None for n in names},
                    "mean_dice": 0.0, "mean_hd95": None, "test_effort": None}
        # (a round recorded before the test effort was: evaluated again rather than carrying None forward)
        if previous is not None and previous["model_version"] == m.version and "test_effort" in previous:
            return {"model_version": m.version, "dice": previous["test_dice"], "hd95": previous["test_hd95"],
                    "mean_dice": previous["mean_dice"], "mean_hd95": previous["mean_hd95"],
                    "test_effort": previous.get("test_effort")}
        seg = m.segmenter(threads=self.cfg.threads, device=self.cfg.device)
        labels = [(i, n) for i, (n, _) in enumerate(self.plan["spec"], start=1)]
        per: Dict[str, Dict[str, list]] = {n: {"dice": [], "hd95": []} for _, n in labels}
        efforts = []
        for c in self.plan["test"]:
            ref = self.reference(c.case)
            pred = sitk.GetArrayFromImage(seg.segment(self.image(c.case)).label)  # a copy: the result is a temporary
            for n, v in metrics.per_label(pred, ref, labels, spacing_zyx=self.spacing_zyx[c.case]).items():
                per[n]["dice"].append(v["dice"])
                if v.get("hd95") is not None:
                    per[n]["hd95"].append(v["hd95"])
            efforts.append(rad.proposal_effort(pred, ref, self.spacing_zyx[c.case], self.cfg.tolerance_mm))
        out = {"model_version": m.version, "dice": {}, "hd95": {}, "test_effort": rad.mean_proposal_effort(efforts)}
        for n, d in per.items():
            out["dice"][n] = round(float(np.mean(d["dice"])), 4)
            out["hd95"][n] = round(float(np.mean(d["hd95"])), 2) if d["hd95"] else None
        out["mean_dice"] = round(float(np.mean(list(out["dice"].values()))), 4)
        h = [v for v in out["hd95"].values() if v is not None]
        out["mean_hd95"] = round(float(np.mean(h)), 2) if h else None
        self.timing["evaluation_s"] += time.perf_counter() - t0
        return out

    def correct_and_submit(self, name: str, case_id: str, rnd: int, ctx: Optional[_Context]) -> dict:
        ref = self.reference(name)
        sp = self.spacing_zyx[name]
        already = bool(self.ws.corrections(case_id))  # submitted by this round before a kill: not twice
        based_on = None
        marking = self.cfg.corrector == "weak"  # marks need no proposal: round 0 is marked too (a weak cold start)
        case = {"image": self.image(name), "labels": [(i, n) for i, (n, _) in enumerate(self.plan["spec"], start=1)],
                "rng": np.random.default_rng([self.cfg.seed, rnd, sum(map(ord, name)), 1]), "marks": self.cfg.weak_marks,
                "builder": self.cfg.weak_builder}
        if ctx is None and not marking:
            label, eff = ref.copy(), rad.draw_from_scratch(ref, sp)
            eff["scratch_s"] = eff["seconds"]
        else:
            pred = None
            if ctx is not None:
                res = ctx.predict(name)
                pred = sitk.GetArrayFromImage(res.label)
                if not already:
                    based_on = self.ws.add_prediction(case_id, res.label, self.ws.current_model().version,
                                                      uncertainty=dict(res.summary)).prediction_id
            t0 = time.perf_counter()
            label, eff = rad.CORRECTORS[self.cfg.corrector](pred, ref, sp, self.cfg.tolerance_mm, **case)
            self.timing["correction_s"] += time.perf_counter() - t0
        if "marks" in eff:  # a weak label: the workspace builds the same pseudo-mask from the marks
            if not already:
                self.ws.submit_marks(case_id, eff["marks"], annotator="simulated radiologist", seconds=eff["seconds"],
                                     based_on=based_on, builder=self.cfg.weak_builder)
            return dict(eff, case=name, quality="weak")
        quality = "reviewed"
        rng = np.random.default_rng([self.cfg.seed, rnd, sum(map(ord, name))])
        if self.cfg.rough_rate and rng.random() < self.cfg.rough_rate:
            label, kind = rad.degrade(label, sp, rng)
            quality = "reviewed" if self.cfg.rough_unmarked else "rough"
            eff = dict(eff, rough=kind, rough_marked=not self.cfg.rough_unmarked)
        if not label.any():
            label = ref.copy()  # an empty submission would teach nothing; redraw from scratch
        if not already:
            self.ws.submit(case_id, self._label_image(name, label), quality=quality,
                           annotator="simulated radiologist", seconds=eff["seconds"], based_on=based_on)
        return dict(eff, case=name, quality=quality)

    # ---------------------------------------------------------------- the loop
    def execute(self) -> dict:
        cfg, plan, run = self.cfg, self.plan, self.run
        t_all = time.perf_counter()
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "config.json").is_file():
            _write_json(run / "config.json", plan["key"])
        self.timing["synthesis_s"] += materialise(run, cfg, plan)
        rounds = json.loads((run / "rounds.json").read_text(encoding="utf-8")) if (run / "rounds.json").is_file() else []
        pool = [c.case for c in plan["pool"]]
        full = sum(rad.draw_from_scratch(self.reference(n), self.spacing_zyx[n])["seconds"] for n in pool)
        self.ws = ws = self.open_workspace(run / "workspace", cfg.model)
        ids = self.import_cases(ws, pool + [c.case for c in plan["test"]])
        self.teach_on = [ids[n] for n in pool]  # a teacher labels the pool only: the test cases stay unseen
        for rnd in range(len(rounds), cfg.rounds + 1):
            rec = self.one_round(rnd, rounds, pool, ids, full)
            if rec is None:
                break
            rounds.append(rec)
            report.write_rounds(run, rounds)
            self.on_round(rec)
        base = self.baseline(rounds) if cfg.baseline else None
        ws.close()
        self.progress(1.0, "done")
        synth = self._synthesis_seconds(run)
        return report.summarise(run, plan, rounds, base, full, synth, session_s=time.perf_counter() - t_all)

    def one_round(self, rnd: int, rounds: List[dict], pool: List[str], ids: Dict[str, str], full: float):
        """Choose, predict, correct, submit, train (gated), evaluate; the round's record, or None (pool used up)."""
        cfg, ws = self.cfg, self.ws
        total = cfg.rounds + 1
        t_round = time.perf_counter()
        for k in TIMING_KEYS[1:]:
            self.timing[k] = 0.0
        start = rounds[-1]["model_version"] if rounds else None
        cur = ws.current_model()
        if start is not None and (cur is None or cur.version != start):
            ws.promote(start)  # a round killed after its training: back to the model the round began with
        start = ws.current_model().version if ws.current_model() else None
        done = {n for r in rounds for n in r["cases"]}
        cand = [n for n in pool if n not in done]
        rng = np.random.default_rng([cfg.seed, rnd])
        self.progress(rnd / total, f"round {rnd}: choosing")
        ctx, chosen = None, []
        if rnd == 0 and not cfg.model:
            chosen = selection.draw(cand, cfg.initial, rng)
        elif rnd > 0:
            if not cand:
                return None
            if ws.current_model() is None:  # the gate has kept no model yet (round 0's segmented nothing)
                chosen = selection.draw(cand, cfg.per_round, rng)
            else:
                ctx = _Context(self)
                chosen = selection.strategies()[cfg.strategy](cand, cfg.per_round, rng, ctx)
        efforts = [self.correct_and_submit(n, ids[n], rnd, ctx) for n in chosen]
        tr = None
        if chosen:
            self.progress((rnd + 0.3) / total, f"round {rnd}: training")
            factor = budget_factor(cfg.train_budget)
            minutes = cfg.train_minutes if factor is None else factor * sum(e["seconds"] for e in efforts) / 60.0
            tr = self.finished_training(ws, start) or self.train(ws, rnd, "auto" if ctx else "scratch", minutes,
                                                                      promote=cfg.promote)
            tr["budget_minutes"] = round(minutes, 3)
        self.timing["training_s"] = tr["seconds"] if tr else 0.0
        self.progress((rnd + 0.9) / total, f"round {rnd}: evaluating")
        ev = self.evaluate(ws, rounds[-1] if rounds else None)
        sec = [e["seconds"] for e in efforts]
        rel = [e["seconds"] / e["scratch_s"] for e in efforts if e.get("scratch_s")]
        vs_tol = [e["seconds"] / e["tolerant_s"] for e in efforts if e.get("tolerant_s")]  # --corrector box
        cum = (rounds[-1]["cumulative_effort_s"] if rounds else 0.0) + sum(sec)
        return {"round": rnd, "model_version": ev["model_version"], "cases": chosen, "efforts": efforts,
                "effort_s": round(sum(sec), 1), "effort_per_case_s": round(float(np.mean(sec)), 1) if sec else None,
                "effort_vs_scratch": round(float(np.mean(rel)), 3) if rel else None,
                **({"effort_vs_tolerant": round(float(np.mean(vs_tol)), 3)} if vs_tol else {}),
                "cumulative_effort_s": round(cum, 1), "effort_fraction": round(cum / full, 4) if full else None,
                "test_dice": ev["dice"], "test_hd95": ev["hd95"], "mean_dice": ev["mean_dice"],
                "mean_hd95": ev["mean_hd95"], "test_effort": ev["test_effort"], "train": tr,
                "timing": {k: round(self.timing[k], 2) for k in TIMING_KEYS[1:]},
                "wall_s": round(time.perf_counter() - t_round, 2)}

    def _synthesis_seconds(self, run: Path) -> float:
        f = run / "cases" / "synthesis.json"
        s = json.loads(f.read_text()) if f.is_file() else {"seconds": 0.0}
        s["seconds"] += self.timing["synthesis_s"]
        _write_json(f, s)
        return s["seconds"]

    def baseline(self, rounds: List[dict]) -> dict:
        """The same network trained on every pool reference for the loop's total training time."""
        bf = self.run / "baseline.json"
        if bf.is_file():
            return json.loads(bf.read_text(encoding="utf-8"))
        t0 = time.perf_counter()
        folder = self.run / "baseline"
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted baseline: ours to redo
        loop_ws = self.ws
        self.ws = ws = self.open_workspace(folder, self.cfg.model)
        pool = [c.case for c in self.plan["pool"]]
        ids = self.import_cases(ws, pool)
        for n in pool:
            ws.submit(ids[n], self._label_image(n, self.reference(n)), quality="reviewed", annotator="reference")
        minutes = self.cfg.baseline_minutes or \
            sum((r["train"] or {}).get("seconds", 0.0) for r in rounds) / 60.0 or self.cfg.train_minutes
        tr = self.train(ws, 0, "scratch" if not self.cfg.model else "auto", minutes, promote="always",
                        label="baseline")
        e0 = self.timing["evaluation_s"]
        ev = self.evaluate(ws)
        ws.close()
        self.ws = loop_ws
        out = {"mean_dice": ev["mean_dice"], "dice": ev["dice"], "hd95": ev["hd95"], "test_effort": ev["test_effort"],
               "train": tr,
               "train_minutes": round(minutes, 2),
               "eval_s": round(self.timing["evaluation_s"] - e0, 2), "wall_s": round(time.perf_counter() - t0, 1)}
        _write_json(bf, out)
        return out


def simulate(cfg: SimConfig, progress=None, on_round=None) -> dict:
    plan = prepare(cfg)
    return Simulation(cfg, plan, progress, on_round).execute()
