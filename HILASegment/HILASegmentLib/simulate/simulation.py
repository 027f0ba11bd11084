"""Rounds of the simulated loop on a real workspace in RUN, resumable after the last completed round.

RUN/config.json            the run's configuration (another config on this RUN is refused)
RUN/cases/                 the cohort's images and merged references (synthesised ones cropped to the labels)
RUN/workspace/             the real HILASegment workspace (hila status / hila check work on it)
RUN/rounds.json|csv        one record per completed round (written atomically after each round)
RUN/baseline/, baseline.json   full supervision on every pool reference, same total training time
RUN/summary.json, curves.png   see report.py

Length (~490 lines): one job, a round and its exact resume (replaying a killed round without double
submits or a second training run is most of it); cohort, synthesis, the radiologist, case selection and the
report already live in their own modules.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..ground import metrics
from ..ground.durable import atomic_write_text
from ..ground.errors import HilaError
from ..ground.paths import check_outputs
from ..models.normalize import guess_modality
from ..quality.learned import add_quality_features
from ..training.gatedefaults import GATE_MARGIN, GATE_MIN_CASES
from . import cohort as co
from . import radiologist as rad
from . import report, selection, synthesis

#: Where a run's wall time goes (summary.json's time_split): synthesis once, then per round the test-split
#: evaluation, training (incl. the trainer's own validation and export), inference on pool cases (strategy
#: and corrector), the simulated corrections; the rest (ledger writes, imports, reports) is "other".
TIMING_KEYS = ("synthesis_s", "evaluation_s", "training_s", "inference_s", "correction_s")


@dataclass
class SimConfig:
    out: str
    cohort: Optional[str] = None
    synthetic: Optional[str] = None
    appearance: Optional[str] = None
    labels: str = ""
    test: int = 4
    initial: int = 2
    per_round: int = 2
    rounds: int = 4
    train_minutes: float = 1.5
    train_steps: Optional[int] = None
    train_budget: str = "fixed"      # fixed (train_minutes) | effort[:F] (the round's radiologist seconds x F)
    config: str = "auto"             # hila train --config (a new model's configuration)
    strategy: str = "random"
    corrector: str = "tolerant"
    tolerance_mm: float = 2.0
    rough_rate: float = 0.0
    rough_unmarked: bool = False     # degraded labels submitted as reviewed (to measure suspect detection)
    ignore_band: bool = False        # hila train --ignore-band (the quality-aware loss)
    weak_marks: str = "box"          # --corrector weak: box | lines | mixed (radiologist.WEAK_MARKS)
    baseline: bool = False
    model: Optional[str] = None
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    gate_margin: float = GATE_MARGIN        # hila train --gate-margin
    gate_min_cases: int = GATE_MIN_CASES    # hila train --gate-min-cases
    promote: str = "auto"            # hila train --promote: always for a pool too small to gate (2 cases)
    extra: Dict[str, object] = field(default_factory=dict)

    def key(self) -> dict:
        """What must match for a rerun on the same RUN to resume (paths resolved, out/threads excluded)."""
        d = asdict(self)
        for k in ("out", "threads"):
            d.pop(k)
        # options added later drop out at their default, so runs made before them still resume
        for k, default in (("gate_margin", GATE_MARGIN), ("gate_min_cases", GATE_MIN_CASES), ("rough_unmarked", False),
                           ("promote", "auto"), ("weak_marks", "box"), ("ignore_band", False),
                           ("train_budget", "fixed"), ("config", "auto")):
            if d[k] == default:
                d.pop(k)
        for k in ("cohort", "synthetic", "model"):
            if d[k] and Path(d[k]).exists():
                d[k] = str(Path(d[k]).resolve())
        if d["appearance"] and Path(d["appearance"]).is_file():
            d["appearance"] = synthesis.load_appearance(d["appearance"])
        return d


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))  # the engine's durable write (fsync, one rename)


def prepare(cfg: SimConfig) -> dict:
    """Validate everything (no writes): cohort, labels, appearance, split sizes, strategy, RUN state."""
    if bool(cfg.cohort) == bool(cfg.synthetic):
        raise HilaError("give exactly one of --cohort MANIFEST.csv or --synthetic SHAPES_DIR")
    appearance_file = cfg.appearance if cfg.appearance and Path(cfg.appearance).is_file() else None
    model_file = cfg.model if cfg.model and Path(cfg.model).is_file() else None
    check_outputs({"--cohort": cfg.cohort, "--synthetic": cfg.synthetic, "--appearance": appearance_file,
                   "--model": model_file}, {"--out": cfg.out})
    spec = co.parse_label_spec(cfg.labels)
    from ..workspace.api import parse_labels  # the workspace tier, as open_workspace imports it

    parse_labels([name for name, _ in spec])  # the run's workspace takes these names: its rules, checked now
    cases = co.from_manifest(Path(cfg.cohort)) if cfg.cohort else co.from_shapes(Path(cfg.synthetic))
    appearance = synthesis.load_appearance(cfg.appearance or "t2w") if (cfg.synthetic or cfg.appearance) else None
    if cfg.per_round < 1:
        raise HilaError(f"--per-round {cfg.per_round}: must be at least 1")
    if cfg.rounds < 0 or cfg.initial < (0 if cfg.model else 1):
        raise HilaError("--rounds must be >= 0 and --initial >= 1 (unless --model)")
    if not 1 <= cfg.test < len(cases):
        raise HilaError(f"--test {cfg.test}: must be at least 1 and below the cohort size ({len(cases)})")
    if cfg.initial > len(cases) - cfg.test:
        raise HilaError(f"--initial {cfg.initial}: the pool has only {len(cases) - cfg.test} cases")
    budget_factor(cfg.train_budget)
    if cfg.promote not in ("auto", "always"):
        raise HilaError(f"--promote {cfg.promote}: use auto or always")
    if cfg.strategy not in selection.strategies():
        raise HilaError(f"--strategy {cfg.strategy}: use one of {', '.join(selection.strategies())}")
    if cfg.corrector not in rad.CORRECTORS:
        raise HilaError(f"--corrector {cfg.corrector}: use one of {', '.join(rad.CORRECTORS)}")
    if cfg.weak_marks not in rad.WEAK_MARKS:
        raise HilaError(f"--weak-marks {cfg.weak_marks}: use one of {', '.join(rad.WEAK_MARKS)}")
    if cfg.corrector == "weak" and cfg.rough_rate:
        raise HilaError("--rough-rate with --corrector weak: weak labels are not degraded further; give one of them")
    if not 0.0 <= cfg.rough_rate <= 1.0 or cfg.tolerance_mm < 0 or cfg.train_minutes <= 0:
        raise HilaError("--rough-rate must lie in [0, 1], --tolerance-mm >= 0, --train-minutes > 0")
    if len({c.case for c in cases}) != len(cases):
        raise HilaError("the cohort has duplicate case names")
    co.check_label_values(cases, spec)
    run = Path(cfg.out)
    key = cfg.key()
    resume = False
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        cf = run / "config.json"
        if not cf.is_file():
            raise HilaError(f"{run}: exists and is not a simulate run (no config.json); give a new folder")
        try:
            old = json.loads(cf.read_text(encoding="utf-8"))
        except ValueError:
            raise HilaError(f"{cf}: unreadable") from None
        if old != json.loads(json.dumps(key, default=str)):
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != json.loads(json.dumps(key.get(k), default=str)))
            raise HilaError(f"{run}: holds a run with another config ({', '.join(diff)} differ); give a new --out")
        resume = True
    modality = appearance["modality"] if appearance else _guess_modality(cases[0].image)
    if cfg.model:  # the run's workspace starts from it: a model of another modality or labels is refused now
        from ..workspace.api import _resolve_model  # the workspace tier, as open_workspace imports it

        _resolve_model(str(cfg.model), modality, [name for name, _ in spec])
    rng = np.random.default_rng(cfg.seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    test = sorted(order[: cfg.test], key=lambda c: c.case)
    pool = sorted(order[cfg.test:], key=lambda c: c.case)
    return {"spec": spec, "cases": cases, "appearance": appearance, "modality": modality, "test": test,
            "pool": pool, "key": key, "resume": resume}


def budget_factor(spec: str) -> Optional[float]:
    """``--train-budget``: None for ``fixed``, F for ``effort[:F]`` (a positive finite number; default 1)."""
    kind, _, f = str(spec).partition(":")
    if kind == "fixed" and not f:
        return None
    if kind == "effort":
        try:
            v = float(f) if f else 1.0
        except ValueError:
            v = float("nan")
        if np.isfinite(v) and 0 < v <= 100:
            return v
    raise HilaError(f"--train-budget {spec!r}: use fixed or effort[:F] with 0 < F <= 100 (e.g. effort:0.5)")


def _guess_modality(path: Path) -> str:
    """The product's guess (``normalize.guess_modality``, as ``hila import`` checks it); MR when it cannot tell."""
    img = sitk.ReadImage(str(path))
    meta = img.GetMetaData("0008|0060") if img.HasMetaDataKey("0008|0060") else None
    return guess_modality(sitk.GetArrayViewFromImage(img), meta) or "MR"


def materialise(run: Path, cfg: SimConfig, plan: dict) -> float:
    """Write each case's image and merged reference into RUN/cases (synthesised ones by the seed); returns seconds."""
    t0 = time.perf_counter()
    d = run / "cases"
    d.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(sorted(plan["cases"], key=lambda c: c.case)):
        img_p, ref_p = d / f"{c.case}_image.nii.gz", d / f"{c.case}_ref.nii.gz"
        if img_p.is_file() and ref_p.is_file():
            continue
        lab = sitk.ReadImage(str(c.reference))
        if c.image is None:
            lab = synthesis.resample_crop(lab, plan["appearance"]["spacing"])
            img, _ = synthesis.synthesize(lab, plan["appearance"], seed=cfg.seed * 100003 + i)
        else:
            img = sitk.ReadImage(str(c.image))
        ref = sitk.GetImageFromArray(co.merge_labels(sitk.GetArrayFromImage(lab), plan["spec"]))
        ref.CopyInformation(lab)
        for im, p in ((ref, ref_p), (img, img_p)):
            tmp = p.with_name("tmp_" + p.name)
            sitk.WriteImage(im, str(tmp), True)
            os.replace(tmp, p)
    return time.perf_counter() - t0


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
                            promote=promote, init=init, config=self.cfg.config, steps=steps, threads=self.cfg.threads,
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
                    "mean_dice": 0.0, "mean_hd95": None}
        if previous is not None and previous["model_version"] == m.version:
            return {"model_version": m.version, "dice": previous["test_dice"], "hd95": previous["test_hd95"],
                    "mean_dice": previous["mean_dice"], "mean_hd95": previous["mean_hd95"]}
        seg = m.segmenter(threads=self.cfg.threads, device=self.cfg.device)
        labels = [(i, n) for i, (n, _) in enumerate(self.plan["spec"], start=1)]
        per: Dict[str, Dict[str, list]] = {n: {"dice": [], "hd95": []} for _, n in labels}
        for c in self.plan["test"]:
            ref = self.reference(c.case)
            pred = sitk.GetArrayFromImage(seg.segment(self.image(c.case)).label)  # a copy: the result is a temporary
            for n, v in metrics.per_label(pred, ref, labels, spacing_zyx=self.spacing_zyx[c.case]).items():
                per[n]["dice"].append(v["dice"])
                if v.get("hd95") is not None:
                    per[n]["hd95"].append(v["hd95"])
        out = {"model_version": m.version, "dice": {}, "hd95": {}}
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
                "rng": np.random.default_rng([self.cfg.seed, rnd, sum(map(ord, name)), 1]), "marks": self.cfg.weak_marks}
        if ctx is None and not marking:
            label, eff = ref.copy(), rad.draw_from_scratch(ref, sp)
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
                                     based_on=based_on)
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
        cum = (rounds[-1]["cumulative_effort_s"] if rounds else 0.0) + sum(sec)
        return {"round": rnd, "model_version": ev["model_version"], "cases": chosen, "efforts": efforts,
                "effort_s": round(sum(sec), 1), "effort_per_case_s": round(float(np.mean(sec)), 1) if sec else None,
                "cumulative_effort_s": round(cum, 1), "effort_fraction": round(cum / full, 4) if full else None,
                "test_dice": ev["dice"], "test_hd95": ev["hd95"], "mean_dice": ev["mean_dice"],
                "mean_hd95": ev["mean_hd95"], "train": tr,
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
        minutes = sum((r["train"] or {}).get("seconds", 0.0) for r in rounds) / 60.0 or self.cfg.train_minutes
        tr = self.train(ws, 0, "scratch" if not self.cfg.model else "auto", minutes, promote="always",
                        label="baseline")
        e0 = self.timing["evaluation_s"]
        ev = self.evaluate(ws)
        ws.close()
        self.ws = loop_ws
        out = {"mean_dice": ev["mean_dice"], "dice": ev["dice"], "hd95": ev["hd95"], "train": tr,
               "train_minutes": round(minutes, 2),
               "eval_s": round(self.timing["evaluation_s"] - e0, 2), "wall_s": round(time.perf_counter() - t0, 1)}
        _write_json(bf, out)
        return out


def simulate(cfg: SimConfig, progress=None, on_round=None) -> dict:
    plan = prepare(cfg)
    return Simulation(cfg, plan, progress, on_round).execute()
