"""Preparing a simulate run: its configuration, every check made before anything is written (``prepare``), and
the cohort's images and merged references written into RUN/cases (``materialise``). The rounds themselves are
``simulation``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import write_image
from ..ground.errors import HilaError
from ..ground.paths import check_outputs
from ..inference import boxassist
from ..models.normalize import guess_modality
from ..training import plan
from ..training.gatedefaults import GATE_MARGIN, GATE_MARGIN_BEFORE_NONINFERIORITY, GATE_MIN_CASES
from . import cohort as co
from . import radiologist as rad
from . import selection, synthesis


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
    arch: Optional[str] = None       # hila train --arch (a new model's network; None: the configuration's)
    strategy: str = "random"
    corrector: str = "tolerant"
    tolerance_mm: float = 2.0
    rough_rate: float = 0.0
    rough_unmarked: bool = False     # degraded labels submitted as reviewed (to measure suspect detection)
    ignore_band: bool = False        # hila train --ignore-band (the quality-aware loss)
    weak_marks: str = "box"          # --corrector weak: box | lines | mixed (radiologist.WEAK_MARKS)
    weak_builder: str = "ellipsoid"  # --corrector weak: the pseudo-mask builder, as hila submit --builder
    baseline: bool = False
    baseline_minutes: Optional[float] = None  # None: the loop's total training time (time-matched)
    model: Optional[str] = None
    warm_start: str = "auto"         # hila train's --warm-start: auto | calibrate | distill | none (a --model preset)
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
        # options added later drop out at their default, so runs made before them still resume; the margin drops out
        # at the default those runs were made under (a run that recorded none resumes only under that rule)
        for k, default in (("gate_margin", GATE_MARGIN_BEFORE_NONINFERIORITY), ("gate_min_cases", GATE_MIN_CASES), ("rough_unmarked", False),
                           ("promote", "auto"), ("weak_marks", "box"), ("ignore_band", False),
                           ("train_budget", "fixed"), ("config", "auto"), ("baseline_minutes", None),
                           ("arch", None), ("warm_start", "auto"), ("weak_builder", "ellipsoid")):
            if d[k] == default:
                d.pop(k)
        if d.get("promote") == "always":  # the gate's rule decides nothing then: no reason to refuse a resume
            d.pop("gate_margin", None)
        for k in ("cohort", "synthetic", "model"):
            if d[k] and Path(d[k]).exists():
                d[k] = str(Path(d[k]).resolve())
        if d["appearance"] and Path(d["appearance"]).is_file():
            d["appearance"] = synthesis.load_appearance(d["appearance"])
        if d["corrector"] == "tolerant":  # its effort model changed (rad.TOLERANT_MODEL): an older run is not resumed
            d["effort_model"] = rad.TOLERANT_MODEL  # under the new one halfway
        return d


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
    configuration, _ = plan.choose_configuration(cfg.device, cfg.config)  # as hila train: an unknown --config or
    plan.family(configuration, cfg.arch)  # an --arch unknown or unfit for it refused before anything is written
    if cfg.corrector == "box":
        boxassist.verify(boxassist.assist_dir())  # not installed: one line saying how, before any run row
    if cfg.weak_marks not in rad.WEAK_MARKS:
        raise HilaError(f"--weak-marks {cfg.weak_marks}: use one of {', '.join(rad.WEAK_MARKS)}")
    if cfg.corrector == "weak" and cfg.rough_rate:
        raise HilaError("--rough-rate with --corrector weak: weak labels are not degraded further; give one of them")
    if cfg.baseline_minutes is not None and not (np.isfinite(cfg.baseline_minutes) and cfg.baseline_minutes > 0):
        raise HilaError(f"--baseline-minutes {cfg.baseline_minutes}: must be a positive number of minutes")
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
        from ..workspace.api import resolve_workspace_model  # the workspace tier, loaded only with --model

        resolve_workspace_model(str(cfg.model), modality, [name for name, _ in spec])
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
            write_image(im, p)  # the product's one durable image write
    return time.perf_counter() - t0
