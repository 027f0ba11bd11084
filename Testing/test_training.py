"""The bundled trainer: real (tiny) runs end to end, cancellation, devices, gate, promotion and rollback.

Synthetic pelvis-like CTs (a body, a bladder and a rectum with gas, in Hounsfield units) keep the
runs to a few steps on 32x32x16 patches, so the file runs in about a minute on 2 cores and needs no
shared data. The leave-one-out check on the real CTs is ``test_training_loo.py`` (slow), with the figures
per fold in ``scripts/make_starter_models.py``.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"), OMP_NUM_THREADS="1")

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from tiny_models import card_json, synthetic_workspace  # noqa: E402

from HILASegmentLib.ground.errors import CancelledError, HilaError  # noqa: E402
from HILASegmentLib.models.modelcard import METADATA_KEY, ModelCard, inspect_onnx, read_card  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402
from HILASegmentLib.workspace.records import SnapshotItem, dumps  # noqa: E402

TINY = dict(patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64], steps=3, max_minutes=5,
            threads=1)


@pytest.fixture
def tiny_ws(tmp_path):
    """A CT workspace with 3 synthetic cases, 2 of them corrected; no model."""
    ws, ids, labels = synthetic_workspace(tmp_path, range(3), corrected=2)
    ws.labels_for_test = labels  # type: ignore[attr-defined]
    ws.ids_for_test = ids  # type: ignore[attr-defined]
    return ws


def opts(**kw):
    from HILASegmentLib.training.run import TrainOptions

    d = dict(TINY)
    d.update(kw)
    return TrainOptions(**d)


def ledger_rows(ws):
    return {"models": [(m.version, m.status, str(m.path)) for m in ws.models()],
            "runs": [(r.run_id, r.status, r.model_version) for r in ws.training_runs()]}


# ------------------------------------------------------------------------------------------------ runs

def test_round_trip_train_export_parity_register_promote_rollback(tiny_ws):
    from HILASegmentLib.training.run import train_workspace

    ws = tiny_ws
    events = []
    r1 = train_workspace(ws, opts(), progress=lambda f, m, **k: events.append(dict(k, fraction=f)))
    # first model: no held-out set with 2 corrections, validated on the training cases, promoted (no current)
    assert r1["model_version"] == 1 and r1["promoted"] and not r1["held_out"]
    assert r1["validation"]["set"].startswith("training")
    assert {e.get("phase") for e in events} >= {"prepare", "train", "validate", "done"}
    train_ev = [e for e in events if e.get("phase") == "train"]
    assert train_ev and all(k in train_ev[0] for k in ("epoch", "step", "loss", "val_dice", "seconds_left"))
    m1 = ws.model(1)
    assert m1.status == "current" and m1.checkpoint_path is not None and m1.checkpoint_path.exists()
    card = read_card(m1.path).to_dict()
    par = card["metrics"]["parity"]
    assert 0.0 <= par["max_abs_diff"] <= par["tolerance"] and par["label_agreement"] > 0.99
    assert [l["name"] for l in card["labels"]] == ["bladder", "rectum"]
    assert card["architecture"]["name"] == "UNet" and card["architecture"]["channels"] == [8, 16, 32, 64]
    # the card lists exactly the corrections it was trained on
    snap = {(s.case_id, s.correction_version) for s in ws.snapshot()}
    assert {(t["case_id"], t["correction_version"]) for t in card["training_set"]} == snap
    assert ws.training_runs()[-1].status == "done" and ws.training_runs()[-1].model_version == 1
    # a quality model is fitted after the run, for the model now current; no predictions yet: not in use
    q1 = r1["quality_model"]
    assert q1["model_version"] == 1 and not q1["in_use"] and q1["n_pairs"] == 0 and "needs" in q1["reason"]
    assert ws.quality_model(1).n_pairs == 0 and ws.quality_model(2) is None

    # second round: a 3rd correction and a new version of case 1; with --gate-min-cases 1 the new case
    # (never seen by v1) gates, the other two train; fine-tuned from v1's checkpoint
    ids, labels = ws.ids_for_test, ws.labels_for_test
    ws.submit(ids[2], labels[ids[2]], quality="rough")
    ws.submit(ids[0], labels[ids[0]], quality="reviewed")
    r2 = train_workspace(ws, opts(promote="always", gate_min_cases=1))
    assert r2["init"] == "finetune v1" and r2["held_out"] and r2["promoted"]
    # suspect scan: the parent v1 scores only what it never trained on (case 2); round 1 had no parent
    assert r1["suspects"]["scored"] == 0 and r2["suspects"]["scored"] == 1
    assert r2["suspects"]["model_version"] == 1 and r2["suspects"]["flagged"] == []  # one is no peer group
    card2 = read_card(ws.model(2).path).to_dict()
    assert card2["parent_version"] == 1 and card2["metrics"]["parent_validation"]["version"] == 1
    assert {(t["case_id"], t["correction_version"]) for t in card2["training_set"]} == {(ids[0], 2), (ids[1], 1)}
    assert [(g["case_id"], g["correction_version"]) for g in card2["training"]["gate_set"]] == [(ids[2], 1)]
    # the gate compared both models on the same gate corrections
    v, pv = card2["metrics"]["validation"], card2["metrics"]["parent_validation"]
    assert v["set"] == "gate" and [c["case_id"] for c in v["cases"]] == [c["case_id"] for c in pv["cases"]] == [ids[2]]
    assert ws.current_model().version == 2
    assert ws.rollback().version == 1 and ws.current_model().version == 1

    # --promote never keeps a candidate; auto follows the held-out comparison
    r3 = train_workspace(ws, opts(promote="never"))
    assert not r3["promoted"] and ws.model(r3["model_version"]).status == "candidate"
    assert r3["init"] == "finetune v1"  # v2, retired by the rollback, ends its line: not continued
    assert ws.current_model().version == 1
    # the refit is for the version that scores the next predictions (v1, current), not the kept candidate
    assert r3["quality_model"]["model_version"] == 1 and ws.quality_model(r3["model_version"]) is None

    # a kept candidate holds its steps and the next round would continue it (line_head, tested below), but v3 trained
    # on every correction: continuing it would leave nothing to gate with, where v1 alone still has case 2, so the
    # round starts from v1 again and case 2 gates it (with one correction a round a line could otherwise never be
    # promoted again)
    v3 = r3["model_version"]
    seen3 = {t["case_id"] for t in read_card(ws.model(v3).path).to_dict()["training_set"]}
    r4 = train_workspace(ws, opts(promote="never", gate_min_cases=1))
    card4 = read_card(ws.model(r4["model_version"]).path).to_dict()
    assert ids[2] in seen3 and r4["init"] == "finetune v1" and card4["parent_version"] == 1
    assert [g["case_id"] for g in card4["training"]["gate_set"]] == [ids[2]]
    assert ws.check().ok


def test_gate_scores_unseen_corrections_with_the_engine_and_says_why(tmp_path):
    """v1 trains on two corrections; three new ones arrive. The candidate trains on the two plus one new,
    and both models are scored by the inference engine on the other two new ones (seen by neither)."""
    from HILASegmentLib.ground.metrics import dice
    from HILASegmentLib.inference.segmenter import Segmenter
    from HILASegmentLib.training.run import train_workspace

    ws, ids, labels = synthetic_workspace(tmp_path, range(10, 15), corrected=2)
    r1 = train_workspace(ws, opts(steps=6))
    assert r1["promoted"] and "no current model" in r1["reason"] and not r1["held_out"]
    for cid in ids[2:]:
        ws.submit(cid, labels[cid])
    r2 = train_workspace(ws, opts(steps=6, lr=1e-2))
    card = ws.model(r2["model_version"]).card
    # the card the trainer wrote reads back to exactly its JSON, in the ONNX metadata and in the ledger
    embedded = inspect_onnx(ws.model(r2["model_version"]).path).metadata[METADATA_KEY]
    assert ModelCard.from_json(embedded).to_json() == embedded
    (stored,) = ws.ledger.con.execute("SELECT card FROM models WHERE version = ?", (r2["model_version"],)).fetchone()
    assert dumps(card.to_dict()) == stored and json.loads(stored)["training"]["gate_set"]
    gate_ids = [g["case_id"] for g in card.training.gate_set]
    trained = {t["case_id"] for t in card.training_set}
    assert len(gate_ids) == 2 and set(gate_ids) <= set(ids[2:]) and not trained & set(gate_ids)
    assert trained >= set(ids[:2]) and len(trained) == 3
    assert card.training.checkpoint.chosen_on == [] and card.seen_cases() == trained
    assert [c["case_id"] for c in card.metrics.validation.cases] == gate_ids
    assert [c["case_id"] for c in card.metrics.parent_validation.cases] == gate_ids

    # recompute both models' Dice on the gate corrections with the engine users run, and the rule's verdict
    def engine_dice(version, cid, card=None):
        seg = Segmenter(ws.model(version).path, card=card) if card else Segmenter(ws.model(version).path)
        pred = sitk.GetArrayFromImage(seg.segment(ws.case_image(cid)).label)
        ref = sitk.GetArrayFromImage(labels[cid])
        return float(np.mean([dice(pred == v, ref == v) for v in (1, 2)]))

    cand = {c: engine_dice(r2["model_version"], c) for c in gate_ids}
    cur = {c: engine_dice(1, c) for c in gate_ids}
    for row in card.metrics.validation.cases:
        assert row["mean_dice"] == pytest.approx(cand[row["case_id"]], abs=1e-3)
    # the post-processing the gate chose (or not) segments the gate corrections at least as well as the other way
    other = copy.deepcopy(card)
    hulls = other.postprocess.pop("convex_slices", None)
    if hulls is None:
        other.postprocess["convex_slices"] = [lab.name for lab in card.labels]
    toggled = float(np.mean([engine_dice(r2["model_version"], c, other) for c in gate_ids]))
    assert float(np.mean(list(cand.values()))) >= toggled - 1e-3, (card.postprocess, toggled)
    gain, margin = float(np.mean([cand[c] - cur[c] for c in gate_ids])), opts().gate_margin
    if abs(gain - margin) > 1e-3:
        assert r2["promoted"] == (gain > margin), (gain, r2["reason"])
    assert ws.training_runs()[-1].metrics["gate"]["reason"] == r2["reason"]

    # fewer gate corrections than asked for: auto keeps the candidate and says why, here and in the run record
    before = ws.current_model().version
    r3 = train_workspace(ws, opts(steps=2, gate_min_cases=4))
    assert not r3["promoted"] and "--gate-min-cases" in r3["reason"]
    assert "--gate-min-cases" in ws.training_runs()[-1].metrics["gate"]["reason"]
    assert ws.current_model().version == before


def _ev(**per_case):
    """An evaluate_model-shaped result with these per-case mean Dice values."""
    return {"mean_dice": float(np.mean(list(per_case.values()))),
            "cases": [{"case_id": k, "correction_version": 1, "mean_dice": v} for k, v in per_case.items()]}


def test_default_gate_is_non_inferiority_so_one_hard_case_of_three_does_not_hold_a_weak_model():
    """The default rule promotes a candidate unless it loses more than 0.05 Dice per gate case on average. The per-case
    figures are a simulate run's (selection campaign, random, seed 4): the current model (test Dice 0.42) against two
    later candidates (test Dice 0.78 and 0.79), both better on two gate cases and worse on the third, hard one; the old
    rule (better by 0.01) refused both and kept the 0.42 model to the end."""
    from HILASegmentLib.training.gate import GateRule, decide

    rule = GateRule().check()
    assert rule.margin < 0
    cur = _ev(c55=0.7101, c24=0.7831, c62=0.3953)
    v5, v6 = _ev(c55=0.7209, c24=0.8448, c62=0.0439), _ev(c55=0.7953, c24=0.8411, c62=0.1234)
    ok, why, cmp = decide("auto", v6, cur, rule, True, 3)
    assert ok and (cmp["wins"], cmp["losses"]) == (2, 1) and cmp["mean_gain"] == pytest.approx(-0.0429, abs=1e-4)
    assert "loses 0.043" in why and "less than 0.050" in why
    ok, why, _ = decide("auto", _ev(c55=0.76, c24=0.82, c62=0.45), cur, rule, True, 3)   # +0.047: said as a gain
    assert ok and why.startswith("candidate gains +0.047 mean Dice per case over the current model")
    ok, why, _ = decide("auto", v5, cur, rule, True, 3)                 # -0.093: clearly worse on average
    assert not ok and "loses 0.093" in why and "kept as candidate" in why
    weak = _ev(c55=0.04, c24=0.03, c62=0.02)                           # an empty candidate over a weak current model
    ok, why, _ = decide("auto", _ev(c55=0.0, c24=0.0, c62=0.0), weak, rule, True, 3)
    assert not ok and "scores Dice 0" in why
    assert not any(decide("auto", c, cur, GateRule(margin=0.01), True, 3)[0] for c in (v5, v6))  # the old rule
    assert decide("auto", cur, cur, rule, True, 3)[0]                   # a tie: the candidate has seen more
    assert not decide("auto", _ev(c55=0.0, c24=0.0, c62=0.0), cur, rule, True, 3)[0]  # a broken run never
    assert not decide("auto", _ev(c55=0.66, c24=0.73, c62=0.34), cur, rule, True, 3)[0]  # forgetting: -0.052 a case
    ok, why, _ = decide("auto", v6, cur, rule, True, 1)                 # the minimum count still holds
    assert not ok and "--gate-min-cases" in why


def test_gate_rule_per_case_margin_and_minimum_count():
    from HILASegmentLib.training.gate import GateRule, decide

    rule = GateRule(margin=0.01, min_cases=2)
    cur = _ev(a=0.6, b=0.6)
    assert decide("auto", _ev(a=0.7, b=0.7), cur, rule, True, 2)[0]
    ok, why, _ = decide("auto", _ev(a=0.6, b=0.6), cur, rule, True, 2)
    assert not ok and "margin" in why                                       # a tie does not replace a model
    assert not decide("auto", _ev(a=0.605, b=0.61), cur, rule, True, 2)[0]  # a gain within the margin neither
    ok, why, cmp = decide("auto", _ev(a=0.9, b=0.35), cur, rule, True, 2)   # paired per case: +0.3 and -0.25
    assert ok and cmp["wins"] == 1 and cmp["losses"] == 1 and cmp["mean_gain"] == pytest.approx(0.025)
    # below the minimum count auto keeps the candidate and says why, however good it looks
    ok, why, _ = decide("auto", _ev(a=0.9), _ev(a=0.1), rule, True, 1)
    assert not ok and "--gate-min-cases" in why
    assert decide("auto", _ev(a=0.9), _ev(a=0.1), GateRule(min_cases=1), True, 1)[0]
    # pairs by case: a current model scored on other cases is no comparison
    assert not decide("auto", _ev(a=0.9, b=0.9), _ev(c=0.1, d=0.1), rule, True, 2)[0]
    assert decide("auto", _ev(a=0.5), None, rule, False, 0)[0]              # nothing to lose
    assert not decide("auto", _ev(a=0.0), None, rule, False, 0)[0]
    assert not decide("auto", _ev(a=0.9, b=0.9), None, rule, True, 2)[0]    # current could not be validated
    assert decide("always", _ev(a=0.0), cur, rule, True, 0)[0]
    assert not decide("never", _ev(a=0.9, b=0.9), cur, rule, True, 2)[0]
    with pytest.raises(HilaError):
        decide("sometimes", cur, cur, rule, True, 2)
    for bad in (dict(margin=float("nan")), dict(min_cases=0), dict(margin=2.0)):
        with pytest.raises(HilaError, match="gate"):
            GateRule(**bad).check()


def _items(*case_ids):
    """Snapshot items of these cases (the gate reads only their ids here)."""
    return [SnapshotItem(c, 1, Path(f"{c}.nrrd"), Path(f"{c}_label.nrrd"), "reviewed") for c in case_ids]


def _card(**fields):
    """A registry card with these JSON fields (training_set, training), read as the registry reads it."""
    return ModelCard.from_dict(card_json("m", **fields))


def test_gate_set_is_unseen_by_the_current_model_and_stable():
    from HILASegmentLib.training.gate import GateRule, split_for_gate

    cases = _items(*(f"c{i}" for i in range(8)))
    card = _card(training_set=[{"case_id": c} for c in ("c0", "c1", "c2")], training={"gate_set": [{"case_id": "c6"}]})
    train, gate, why = split_for_gate(cases, card, GateRule())
    g = {c.case_id for c in gate}
    assert len(gate) == 2 and "c6" in g and not g & {"c0", "c1", "c2"}     # the old gate case stays, seen ones never gate
    assert not g & {c.case_id for c in train} and len(train) + len(gate) == 8
    more = cases + _items(*(f"c{i}" for i in range(8, 20)))
    card2 = _card(training_set=[{"case_id": c.case_id} for c in train],
                  training={"gate_set": [{"case_id": c.case_id} for c in gate]})
    _, gate2, _ = split_for_gate(more, card2, GateRule())
    assert g <= {c.case_id for c in gate2} and len(gate2) == 4            # 20 % of 20, the earlier gate kept
    # an old card: the held-out cases its checkpoint was chosen on count as seen
    old = _card(training_set=[{"case_id": "c0"}], training={"held_out_cases": ["c1", "c2"]})
    _, gate3, _ = split_for_gate(cases[:5], old, GateRule())
    assert {c.case_id for c in gate3} <= {"c3", "c4"}
    # too few unseen corrections: nothing held out, and the reason names the option
    train, gate, why = split_for_gate(cases[:4], card, GateRule())
    assert gate == [] and len(train) == 4 and "--gate-min-cases" in why
    assert split_for_gate(cases[:4], None, GateRule())[1] == []              # no current model: nothing to compare


def test_a_kept_back_line_is_continued_only_while_it_can_still_be_gated_and_ends_at_a_rollback(tmp_path):
    """Rounds continue the newest kept-back candidate of the current model's line (line_head), except where that would
    leave no gate set the current model alone would have (one new correction a round after a head that trained on
    everything: nothing would ever be promoted again), and never through a model retired after the current one."""
    from types import SimpleNamespace

    from HILASegmentLib.training.candidate import line_head
    from HILASegmentLib.training.gate import GateRule, line_keeps_gate

    ck = tmp_path / "w.pt"
    ck.write_bytes(b"x")

    def ws(*rows):
        models = [SimpleNamespace(version=v, status=st, parent=p, checkpoint_path=ck, card=_card()) for v, st, p in rows]
        return SimpleNamespace(models=lambda: models), {m.version: m for m in models}

    w, m = ws((1, "current", None), (2, "candidate", 1), (3, "candidate", 2))
    assert line_head(w, m[1]) is m[3] and line_head(w, m[1], gateable=lambda head: False) is m[1]
    w, m = ws((1, "current", None), (2, "candidate", 1), (3, "retired", 2))  # v3 continued v2, was promoted, rolled back
    assert line_head(w, m[1]) is m[1]
    w, m = ws((1, "current", None), (2, "retired", 1), (3, "candidate", 1))  # a line begun after the rollback
    assert line_head(w, m[1]) is m[3]
    # one correction a round: current trained on a, b (no gate set); the kept-back head on a, b, c1; now c2 lands
    cards = {"current": _card(training_set=[{"case_id": c} for c in ("a", "b")]),
             "head": _card(training_set=[{"case_id": c} for c in ("a", "b", "c1")])}
    snap = _items("a", "b", "c1", "c2")
    assert not line_keeps_gate(snap, cards["current"], cards["head"], GateRule())   # -> continue the current model
    assert line_keeps_gate(snap + _items("c3"), cards["current"], cards["head"], GateRule())  # c2, c3 gate
    assert line_keeps_gate(snap[:3], cards["current"], cards["head"], GateRule())   # no gate either way: continue


def test_quality_weights():
    from HILASegmentLib.training.dataset import quality_weight

    assert quality_weight("reviewed") > quality_weight("rough") > quality_weight("weak") > 0
    assert quality_weight("rough", {"rough": 0.9}) == 0.9


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_changes_nothing(tiny_ws, tmp_path):
    from HILASegmentLib.training.run import train_workspace

    ws = tiny_ws
    before = ledger_rows(ws)
    with pytest.raises(HilaError, match="not a HILASegment workspace"):
        train_workspace(tmp_path / "nowhere", opts())
    with pytest.raises(HilaError, match="max-minutes"):
        train_workspace(ws, opts(max_minutes=0))
    with pytest.raises(HilaError, match="promote"):
        train_workspace(ws, opts(promote="maybe"))
    with pytest.raises(HilaError, match="multiple of 8"):
        train_workspace(ws, opts(patch_size=[30, 30, 16]))
    with pytest.raises(HilaError, match="imported"):
        train_workspace(ws, opts(init="imported"))
    empty = Workspace.create(tmp_path / "empty", "CT", ["bladder"])
    with pytest.raises(HilaError, match="no corrections"):
        train_workspace(empty, opts())
    assert ledger_rows(ws) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_absent_is_one_line_error(tiny_ws):
    p = subprocess.run([PY, "-m", "HILASegmentLib", "train", str(tiny_ws.root), "--device", "cuda"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2
    err = [l for l in p.stderr.splitlines() if l.startswith("hila: error:")]
    assert len(err) == 1 and "cuda" in err[0].lower()
    assert tiny_ws.training_runs() == []


def test_help_does_not_import_torch():
    code = ("import sys; from HILASegmentLib.cli import build_parser; p = build_parser(); "
            "p.parse_args(['train', 'x']); print(any(m in sys.modules for m in ('torch', 'monai', 'onnx')))")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


# ------------------------------------------------------------------------------------------------ cancel

def test_sigterm_cancels_cleanly(tiny_ws):
    ws = tiny_ws
    before = ledger_rows(ws)
    files_before = sorted(p.name for p in (ws.root / "models").iterdir()) if (ws.root / "models").exists() else []
    proc = subprocess.Popen([PY, "-m", "HILASegmentLib", "train", str(ws.root), "--json", "--max-minutes", "5",
                             "--patch", "32,32,16", "--channels", "8,16,32,64", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stdout:
            rec = json.loads(line)
            if rec.get("phase") == "train":
                break
        else:
            pytest.fail(f"no training progress: {proc.stderr.read()[-500:]}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == CancelledError.exit_code, err[-500:]
    assert "cancelled" in err
    after = ledger_rows(ws)
    assert after["models"] == before["models"]
    assert [r[1] for r in after["runs"]] == ["cancelled"] and after["runs"][0][2] is None
    files_after = sorted(p.name for p in (ws.root / "models").iterdir()) if (ws.root / "models").exists() else []
    assert files_after == files_before
    rep = ws.check()
    assert rep.ok and not rep.orphans and not rep.stale_temporaries, rep.summary()


# ------------------------------------------------------------------------------------------------ onnx import

def test_onnx2torch_import_matches_onnx(tmp_path):
    from HILASegmentLib.training import network, onnxexport

    arch = network.default_architecture("CT", 2)
    arch["channels"] = [8, 16, 32]
    arch["strides"] = [2, 2]
    net = network.build_network(arch)
    onnx_path = onnxexport.export_onnx(net, tmp_path / "m.onnx", [32, 32, 16])
    conv = network.convert_onnx(onnx_path)
    diff = network.check_conversion(conv, onnx_path, shape=(1, 1, 32, 32, 16))
    assert diff < 1e-3
    # the converted module trains (gradients flow) and round-trips through a checkpoint
    x = torch.randn(1, 1, 32, 32, 16)
    conv(x).sum().backward()
    assert any(p.grad is not None for p in conv.parameters())
    ck = network.save_checkpoint(net, arch, tmp_path / "m.pt")
    net2, arch2 = network.load_checkpoint(ck)
    assert arch2 == arch
    with pytest.raises(HilaError, match="not a readable"):
        network.load_checkpoint(onnx_path)


# ------------------------------------------------------------------------------------------------ recipe + layering

def test_recipe_planned_from_the_real_corrections():
    """nnU-Net's fingerprint idea on the real pelvic CT: spacing no finer than the data or the CT floor,
    a patch that holds the labelled organs plus context within the voxel budget."""
    from types import SimpleNamespace

    from conftest import shared

    from HILASegmentLib.training import plan

    items = [SimpleNamespace(image_path=shared("pelvic_ct", c, "ct.nii.gz"),
                             label_path=shared("pelvic_ct", c, "labels_manual.nii.gz")) for c in ("Pelvic-Ref002", "Pelvic-Ref003")]
    fp = plan.fingerprint(items, n_labels=3)
    assert fp["median_spacing"] == [1.0, 1.0, 3.0]
    # organ extents measured independently: bounding box of labels 1..3 (femoral heads 4/5 excluded)
    for it, ext in zip(items, fp["label_extent_mm"]):
        lab = sitk.ReadImage(str(it.label_path))
        idx = np.argwhere((sitk.GetArrayFromImage(lab) > 0) & (sitk.GetArrayFromImage(lab) <= 3))
        want = (idx.max(0) - idx.min(0) + 1)[::-1] * np.array(lab.GetSpacing())
        assert ext == pytest.approx(want.tolist())
    rec = plan.plan("CT", fp, divisor=8)
    assert rec["spacing"] == [3.0, 3.0, 3.0]
    assert all(p % 8 == 0 for p in rec["patch_size"]) and np.prod(rec["patch_size"]) <= plan.PATCH_BUDGET["CT"]
    ext = np.max(fp["label_extent_mm"], 0)
    fov = np.array(rec["patch_size"]) * 3.0
    assert np.all(fov >= np.minimum(ext + 2 * plan.CONTEXT_MM, np.array(fp["median_image_mm"])) - 3.0 * 8)
    coarse = plan.plan("CT", dict(fp, median_spacing=[4.0, 4.0, 5.0]), divisor=8)
    assert coarse["spacing"] == [4.0, 4.0, 5.0]                               # never finer than the data
    assert plan.plan("CT", fp, 8, spacing=[2, 2, 2], patch=[32, 32, 32])["rule"].endswith("spacing, patch_size")


def test_fresh_model_card_records_the_planned_recipe(tmp_path):
    from HILASegmentLib.training.run import train_workspace

    ws, _, _ = synthetic_workspace(tmp_path, (20, 21), corrected=2)
    o = opts(steps=2)
    o.patch_size = o.spacing = None
    card = ws.model(train_workspace(ws, o)["model_version"]).card.to_dict()
    recipe = card["training"]["recipe"]
    assert recipe["fingerprint"]["median_spacing"] == [2.0, 2.0, 3.0] and recipe["fingerprint"]["cases"] == 2
    assert card["spacing"] == recipe["spacing"] == [3.0, 3.0, 3.0]
    assert card["patch_size"] == recipe["patch_size"] and "overridden" not in recipe["rule"]


def test_precision_float32_turns_mixed_precision_off_and_the_card_says_which_ran(tiny_ws):
    """--precision auto uses bfloat16 autocast on a CPU that runs it natively (this project's CI CPU does) and
    float32 elsewhere; --precision float32 is the off switch. The card records what the forward pass ran in."""
    from HILASegmentLib.training.loop import cpu_bf16
    from HILASegmentLib.training.run import train_workspace

    ran = {}
    for precision in ("float32", "auto"):
        v = train_workspace(tiny_ws, opts(precision=precision, promote="always"))["model_version"]
        ran[precision] = read_card(tiny_ws.model(v).path).to_dict()["training"]["precision"]
    assert ran == {"float32": "float32", "auto": "bfloat16" if cpu_bf16() else "float32"}
    before = ledger_rows(tiny_ws)
    with pytest.raises(HilaError, match="--precision 'half'"):
        train_workspace(tiny_ws, opts(precision="half"))
    assert ledger_rows(tiny_ws) == before


def test_training_imports_nothing_from_the_cli():
    import ast

    pkg = ROOT / "HILASegment" / "HILASegmentLib" / "training"
    for f in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                assert not (mod.startswith("..cli") or mod.startswith("HILASegmentLib.cli")), f"{f.name}: {mod}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("HILASegmentLib.cli") for a in node.names), f.name


def test_ignore_band_trains_on_rough_labels_and_is_recorded(tiny_ws):
    from HILASegmentLib.training.run import train_workspace

    ids, labels = tiny_ws.ids_for_test, tiny_ws.labels_for_test
    tiny_ws.submit(ids[1], labels[ids[1]], quality="rough")
    r = train_workspace(tiny_ws, opts(ignore_band=True))
    assert r["steps"] == 3 and np.isfinite(r["final_loss"])
    card = read_card(tiny_ws.model(r["model_version"]).path).to_dict()
    assert card["training"]["ignore_band"] == {"rough": 1, "weak": 3}
    r0 = train_workspace(tiny_ws, opts())
    assert read_card(tiny_ws.model(r0["model_version"]).path).to_dict()["training"]["ignore_band"] is None
