"""Each decision the product makes is defined once and every caller asks that one definition (issue 25).

The ranking strategies (``hila rank --by``, the workspace, Slicer's Next case, ``hila simulate --strategy``), the gate
defaults, the modality guess, durable JSON writes, IJK->LPS, network architectures and export formats: each test here
fails when a second definition appears beside the one (a copy in the simulator, a literal default in a parser).
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from HILASegmentLib.inference.summary import PredictionSummary

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "HILASegment" / "HILASegmentLib"


def _sources(*skip: str):
    for f in sorted(ENGINE.rglob("*.py")):
        rel = f.relative_to(ENGINE).as_posix()
        if rel not in skip:
            yield rel, f.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- item 1: one ranking registry

def test_a_strategy_registered_once_is_served_by_rank_the_workspace_and_simulate(monkeypatch, tmp_path):
    """A newcomer's strategy (one ``register`` line) is at once a ``hila rank --by`` choice, a ``hila simulate
    --strategy`` and what the workspace ranks by; the simulator's choice is the product's order."""
    from HILASegmentLib.cli import build_parser
    from HILASegmentLib.quality import strategies
    from HILASegmentLib.quality.ranking import rank_cases
    from HILASegmentLib.simulate import selection

    def smallest_first(summary, predicted_dice=None):  # fewest labelled voxels first
        return -float(sum(lab.voxels for lab in summary.labels)) if summary and summary.labels else None

    monkeypatch.setitem(strategies.STRATEGIES, "smallest", strategies.Strategy("smallest", "fewest voxels first",
                                                                               smallest_first))
    assert build_parser().parse_args(["rank", str(tmp_path), "--by", "smallest"]).by == "smallest"
    sim = selection.strategies()
    assert "smallest" in sim
    # the simulator adds only its own: everything else is the product's registry
    assert set(sim) - set(strategies.STRATEGIES) == set(selection.OWN) == {"sequential"}

    voxels = {"a": 50, "b": 5, "c": 20}
    summaries = {n: PredictionSummary.from_dict({"labels": [{"value": 1, "name": "p", "voxels": v}]})
                 for n, v in voxels.items()}
    ctx = SimpleNamespace(has_model=lambda: True, predict=lambda n: SimpleNamespace(summary=summaries[n].to_dict()))
    chosen = sim["smallest"](["a", "b", "c"], 2, np.random.default_rng(0), ctx)
    product = [r["case_id"] for r in rank_cases([{"case_id": n, "predicted": True, "uncertainty": s.to_dict()}
                                                 for n, s in summaries.items()], by="smallest")]
    assert chosen == product[:2] == ["b", "c"]


def test_simulate_ranks_as_the_workspace_does(tmp_path):
    """``hila simulate --strategy quality|uncertainty|random`` choose what ``ws.rank(by=...)`` lists first, on the
    same predictions (the simulator's strategies are the product's, not a copy)."""
    from HILASegmentLib.quality import strategies
    from HILASegmentLib.quality.ranking import rank_cases
    from HILASegmentLib.simulate import selection

    dice = {"a": 0.9, "b": 0.6, "c": 0.75, "d": 0.8}
    unc = {"a": 0.3, "b": 0.1, "c": 0.5, "d": 0.2}
    summ = {n: PredictionSummary(model_version=1, predicted_dice=dice[n], mean_uncertainty=unc[n]).to_dict()
            for n in dice}
    ws = SimpleNamespace(current_model=lambda: SimpleNamespace(version=1), quality_model=lambda v: None,
                         parts=SimpleNamespace(quality=SimpleNamespace(label_scorer=lambda: None)),
                         case_states=lambda: [])
    ctx = SimpleNamespace(has_model=lambda: True, sim=SimpleNamespace(ws=ws),
                          predict=lambda n: SimpleNamespace(summary=summ[n]))
    for name in strategies.STRATEGIES:
        got = selection.strategies()[name](sorted(dice), 3, np.random.default_rng(4), ctx)
        items = [{"case_id": n, "predicted": strategies.STRATEGIES[name].reads_predictions,
                  "uncertainty": summ[n] if strategies.STRATEGIES[name].reads_predictions else None} for n in sorted(dice)]
        want = [r["case_id"] for r in rank_cases(items, by=name, rng=np.random.default_rng(4))][:3]
        assert got == want, name
    assert selection.strategies()["quality"](sorted(dice), 2, np.random.default_rng(0), ctx) == ["b", "c"]
    assert selection.strategies()["uncertainty"](sorted(dice), 2, np.random.default_rng(0), ctx) == ["c", "a"]


def test_no_ranking_order_is_written_outside_the_registry():
    """Ordering cases by predicted Dice or uncertainty happens in quality/ranking.py only (the simulator's old copy
    sorted by ``-score``/``score`` of each summary)."""
    pat = re.compile(r"sorted\([^)]*key=lambda[^)]*score\[")
    hits = [rel for rel, src in _sources() if pat.search(src)]
    assert hits == []


# --------------------------------------------------------------------------- item 2: simulate asks the product

def test_gate_defaults_have_one_definition(tmp_path):
    """``hila train``, ``hila simulate``, the trainer's options, the simulate run and the gate rule default to the
    same margin and count, and no line that names them spells a number of its own."""
    from HILASegmentLib.cli import build_parser
    from HILASegmentLib.simulate.simulation import SimConfig
    from HILASegmentLib.training import gatedefaults
    from HILASegmentLib.training.gate import GateRule

    p = build_parser()
    train = p.parse_args(["train", str(tmp_path)])
    sim = p.parse_args(["simulate", "--out", str(tmp_path), "--synthetic", str(tmp_path), "--labels", "p=1"])
    cfg, rule = SimConfig(out=str(tmp_path)), GateRule()
    want = (gatedefaults.GATE_MARGIN, gatedefaults.GATE_MIN_CASES)
    for got in ((train.gate_margin, train.gate_min_cases), (sim.gate_margin, sim.gate_min_cases),
                (cfg.gate_margin, cfg.gate_min_cases), (rule.margin, rule.min_cases)):
        assert got == want
    names = re.compile(r"gate[_-]margin|gate[_-]min[_-]cases|\bmargin: float|\bmin_cases: int")
    spelled = "|".join(re.escape(str(v)) for v in (gatedefaults.GATE_MARGIN, gatedefaults.GATE_MIN_CASES,
                                                    gatedefaults.GATE_MARGIN_BEFORE_NONINFERIORITY))
    literal = re.compile(rf"(default=|= |, )({spelled})\b")
    hits = [f"{rel}: {line.strip()}" for rel, src in _sources("training/gatedefaults.py")
            for line in src.splitlines() if names.search(line) and literal.search(line)]
    assert hits == []


def test_simulate_trains_with_the_trainers_budget_and_gate(monkeypatch, tmp_path):
    """A simulated round hands the trainer its optimisation budget (``train_minutes``) and the run's gate options;
    the reserve for export and validation is the trainer's (no second formula in the simulator)."""
    from HILASegmentLib.simulate import simulation
    from HILASegmentLib.training import run as training_run

    seen = {}

    def fake_train(ws, opts, progress):
        seen["opts"] = opts
        return {"model_version": 2, "promoted": True, "reason": "ok", "steps": 1}

    monkeypatch.setattr(training_run, "train_workspace", fake_train)
    cfg = simulation.SimConfig(out=str(tmp_path), gate_margin=0.05, gate_min_cases=3)
    sim = simulation.Simulation(cfg, {"spec": [("p", [1])]})
    sim.train(None, 1, "auto", 2.5)
    opts = seen["opts"]
    assert opts.max_minutes is None and opts.train_minutes == 2.5
    assert opts.check().margin == 0.05 and opts.check().min_cases == 3
    src = (ENGINE / "simulate" / "simulation.py").read_text(encoding="utf-8")
    assert "RESERVE" not in src and "max_minutes=minutes" not in src


def test_simulate_guesses_modality_as_the_product_does(tmp_path):
    """A pelvic CT cropped to the body (fat at -150..-300 HU, no air below -500) is CT to ``hila import``'s guess;
    the simulator's run workspace must say the same (its own ``min < -500`` said MR, and import then refused)."""
    import SimpleITK as sitk

    from HILASegmentLib.models.normalize import guess_modality
    from HILASegmentLib.simulate.prepare import _guess_modality

    arr = np.full((12, 16, 16), 40, np.int16)
    arr[:, :4] = -300  # fat and some air, but nothing below -500
    p = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    assert guess_modality(arr) == "CT"
    assert _guess_modality(p) == "CT"
    mr = tmp_path / "mr.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.abs(arr).astype(np.uint16)), str(mr))
    assert _guess_modality(mr) == "MR"


def test_simulate_writes_its_records_durably(monkeypatch, tmp_path):
    """config.json, rounds.json/csv and summary records go through the engine's atomic write (fsync'ed), not a
    rename of an unsynced temporary."""
    import os

    from HILASegmentLib.simulate import report, simulation

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    simulation._write_json(tmp_path / "config.json", {"a": 1})
    assert synced and json_of(tmp_path / "config.json") == {"a": 1}
    synced.clear()
    report.write_rounds(tmp_path, [])
    assert len(synced) >= 2 and (tmp_path / "rounds.csv").is_file() and json_of(tmp_path / "rounds.json") == []
    assert not list(tmp_path.glob("*.tmp"))


def json_of(path: Path):
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def test_ijk_to_lps_has_one_definition():
    """The index -> physical matrix (direction x spacing, then the origin) is written once, in formats/voxelgrid.py;
    everything else asks it (five copies lived in contours, gridcheck, weak marks, the simulated radiologist and
    the model grid)."""
    hits = []
    for rel, src in _sources("formats/voxelgrid.py"):
        lines = src.splitlines()
        for i, line in enumerate(lines):  # a direction matrix, then spacing and origin within a few lines
            if "irection" in line and re.search(r"reshape\(3, ?3\)", line):
                window = "\n".join(lines[i:i + 6])
                if "pacing" in window and "rigin" in window:
                    hits.append(f"{rel}:{i + 1}")
    assert hits == []


# --------------------------------------------------------------------------- item 6: registries where extension is expected

def test_an_architecture_registered_once_reaches_train_the_plan_and_the_checkpoint(monkeypatch, tmp_path):
    """One ``register`` line makes a network a ``hila train --arch`` choice, what the plan makes of a fresh model,
    what a checkpoint rebuilds, and an own model for the card (the registry's flags, not a list of names)."""
    import torch

    from HILASegmentLib.cli import build_parser
    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.training import architectures, network, plan
    from HILASegmentLib.training.candidate import Start
    from HILASegmentLib.training.run import TrainOptions

    def build(arch, onnx_path=None):
        return torch.nn.Conv3d(1, int(arch["out_channels"]), 1)

    mine = architectures.Architecture("Pointwise", "a 1x1x1 convolution", build,
                                      fresh=lambda base, conf: dict(base, name="Pointwise"), divisor=lambda a: 4)
    monkeypatch.setitem(architectures.ARCHITECTURES, "Pointwise", mine)
    assert build_parser().parse_args(["train", str(tmp_path), "--arch", "Pointwise"]).arch == "Pointwise"
    arch = plan.architecture("3d_lowres", network.default_architecture("CT", 2), "Pointwise")
    assert arch["name"] == "Pointwise" and arch["out_channels"] == 3
    net = network.build_network(arch)
    assert isinstance(net, torch.nn.Conv3d) and Start("scratch", {}, arch, net).own
    ck = network.save_checkpoint(net, arch, tmp_path / "m.pt")
    back, arch2 = network.load_checkpoint(ck)
    assert arch2 == arch and torch.equal(back.weight, net.weight)
    TrainOptions(arch="Pointwise", config="3d_lowres").check()
    with pytest.raises(HilaError, match="--arch Pointwise"):  # a 3-D network for a per-slice configuration
        TrainOptions(arch="Pointwise", config="2d").check()
    with pytest.raises(HilaError, match="unknown network architecture 'Nope' in the model card"):
        network.build_network({"name": "Nope"})


def test_dynunet_is_a_fresh_architecture_that_builds_and_runs():
    """``--arch DynUNet``: nnU-Net's network with the U-Net's levels, built by the registry, 5-D in and out."""
    import torch

    from HILASegmentLib.training import network, plan

    arch = plan.architecture("3d_lowres", network.default_architecture("MR", 1), "DynUNet")
    net = network.build_network(arch).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 16, 16, 16))
    assert y.shape == (1, 2, 16, 16, 16)


def test_no_architecture_is_decided_by_name_outside_its_registry():
    """Which networks are own, per slice, converted, or what their windows divide by is asked of the registry; no
    module compares an architecture's name (candidate, plan and network each did)."""
    pat = re.compile(r"(==|!=|\bin)\s*\(?\s*\"(UNet|DynUNet|SliceUNet|onnx2torch)\"")
    hits = [f"{rel}: {line.strip()}" for rel, src in _sources("training/architectures.py")
            for line in src.splitlines() if pat.search(line)]
    assert hits == []


def test_an_export_format_registered_once_is_a_choice_of_export_and_convert(monkeypatch, tmp_path):
    """One ``register`` line makes a DICOM object a ``hila export --format`` and a ``hila convert --format``
    choice; the workspace and convert write and record it through the registry's entry."""
    from HILASegmentLib.cli import build_parser
    from HILASegmentLib.dicom import exportformats
    from HILASegmentLib.ground.errors import HilaError

    mine = exportformats.ExportFormat("sr", "DICOM SR", "SR", "a structured report", lambda *a, **k: None)
    monkeypatch.setitem(exportformats.EXPORT_FORMATS, "sr", mine)
    p = build_parser()
    assert p.parse_args(["export", str(tmp_path), str(tmp_path / "o"), "--format", "sr"]).format == "sr"
    assert p.parse_args(["convert", "in.nrrd", "out.dcm", "--format", "sr"]).dicom_format == "sr"
    assert exportformats.get("sr") is mine
    with pytest.raises(HilaError, match="--format png: use seg or rtstruct or sr"):
        exportformats.get("png")


def test_no_export_format_is_decided_by_name_outside_its_registry():
    """Writer, title and recorded modality of an export format come from its registry entry; no module picks them
    by comparing the format's name (convert and the workspace's DICOM export each did)."""
    pat = re.compile(r"==\s*\"(seg|rtstruct)\"|\(\"seg\", \"rtstruct\"\)")
    hits = [f"{rel}: {line.strip()}" for rel, src in _sources("dicom/exportformats.py")
            for line in src.splitlines() if pat.search(line)]
    assert hits == []


# --------------------------------------------------------------------------- issue 25 item 4: one typed model card

def test_no_module_outside_models_probes_a_model_card_as_a_dict():
    """A card is read once (``ModelCard.from_dict``: its sections checked, old key names mapped) and then read by
    name: no engine or Slicer-glue module outside ``models/`` does ``card.get(``/``card["..."]`` or guesses among Dice
    keys (the panel once tried five)."""
    from HILASegmentLib.models.cardsections import LEGACY_DICE_KEYS

    probe = re.compile(r"\w*card\w*\s*(\.get\(|\[\s*[\"'])")
    guess = re.compile("|".join(rf"[\"']{k}[\"']" for k in LEGACY_DICE_KEYS if k not in ("dice", "mean_dice")))
    glue = ROOT / "HILASegment" / "HILASegmentSlicerLib"
    files = [(rel, src) for rel, src in _sources() if not rel.startswith("models/")]
    files += [(f"HILASegmentSlicerLib/{f.name}", f.read_text(encoding="utf-8")) for f in sorted(glue.glob("*.py"))]
    hits = [f"{rel}: {line.strip()}" for rel, src in files for line in src.splitlines()
            if (probe.search(line) or guess.search(line)) and not line.lstrip().startswith("#")]
    assert hits == []
    # the check sees what it forbids
    assert probe.search('name = m.card.get("name")') and probe.search('p = cur_card["patch_size"]')
    assert guess.search('for key in ("dice", "val_dice", "mean_dice"):')


def test_diverse_spreads_away_from_the_reviewed_cases_in_simulate_and_the_workspace(monkeypatch):
    """The simulator's ``diverse`` and the workspace's ranking both hand the reviewed cases to the one ranking: the
    case most like a reviewed one loses the first place it has by need."""
    from HILASegmentLib.quality.ranking import rank_cases
    from HILASegmentLib.simulate import selection
    from HILASegmentLib.workspace import reports

    feats = {"a": 0.0, "b": 10.0, "c": 5.0}
    summ = {n: PredictionSummary(model_version=1, predicted_dice=d, quality_features={
        "log_volume_ml": feats[n], "boundary_ratio": feats[n]}).to_dict() for n, d in (("a", 0.1), ("b", 0.2), ("c", 0.9))}
    reviewed = [{"case_id": "r", "reviewed": True, "corrections": 1, "predicted": True, "uncertainty": dict(summ["a"])}]
    ws = SimpleNamespace(current_model=lambda: SimpleNamespace(version=1), quality_model=lambda v: None,
                         parts=SimpleNamespace(quality=SimpleNamespace(label_scorer=lambda: None)),
                         case_states=lambda: reviewed)
    ctx = SimpleNamespace(has_model=lambda: True, sim=SimpleNamespace(ws=ws),
                          predict=lambda n: SimpleNamespace(summary=summ[n]))
    assert selection.strategies()["quality"](["a", "b", "c"], 1, np.random.default_rng(0), ctx) == ["a"]
    assert selection.strategies()["diverse"](["a", "b", "c"], 1, np.random.default_rng(0), ctx) == ["b"]
    seen = {}

    def spy(todo, **kw):
        seen["reviewed"] = [c["case_id"] for c in kw.get("reviewed", [])]
        return rank_cases(todo, **kw)

    monkeypatch.setattr(reports, "rank_cases", spy)
    states = reviewed + [{"case_id": n, "reviewed": False, "predicted": True, "uncertainty": dict(summ[n]),
                          "latest_model_version": 1} for n in summ]
    fake = SimpleNamespace(case_states=lambda: states, quality=SimpleNamespace(
        quality_model=lambda v: None, label_scorer=lambda: None))
    got = reports.Reports.rank(fake, by="diverse")
    assert seen["reviewed"] == ["r"] and [r["case_id"] for r in got][0] == "b"
