"""hila simulate: the simulated radiologist's effort, synthesis, and every bad input (one line, exit 2, nothing written)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.simulate import radiologist as rad
from HILASegmentLib.simulate import synthesis

SP = (3.0, 1.0, 1.0)  # z, y, x: slices along z


def _disc(shape, c, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) <= r * r


def _volume(radii, shift=None):
    ref = np.zeros((5, 60, 60), np.uint8)
    for k, r in enumerate(radii):
        if r:
            ref[k][_disc((60, 60), (30, 30 + (shift or {}).get(k, 0)), r)] = 1
    return ref


def test_tolerant_redraws_a_slice_off_by_3mm_and_accepts_one_within_1mm():
    ref = _volume([10, 10, 10, 0, 0])
    pred = _volume([10, 10, 10, 0, 0], shift={0: 3, 1: 1})  # slice 0 off by 3 mm, slice 1 by 1 mm
    out, eff = rad.tolerant(pred, ref, SP, tolerance_mm=2.0)
    assert eff["slices"] == 1
    assert np.array_equal(out[0], ref[0])           # redrawn to the reference
    assert np.array_equal(out[1], pred[1])          # accepted as predicted
    assert 0 < eff["contour_mm"] < 40               # only the off part of a circle of radius 10 mm (~63 mm)
    assert eff["seconds"] == pytest.approx(rad.FIXED_S + rad.SLICE_S + rad.MM_S * eff["contour_mm"], abs=0.2)
    assert eff["scratch_s"] == rad.draw_from_scratch(ref, SP)["seconds"]  # effort_vs_scratch's denominator
    out2, whole = rad.redraw(pred, ref, SP, tolerance_mm=2.0)  # the older model: the slice's whole contour
    assert np.array_equal(out2, out) and whole["slices"] == 1 and 40 < whole["contour_mm"] < 90
    _, perfect = rad.tolerant(ref, ref, SP)
    assert perfect["slices"] == 0 and perfect["seconds"] == rad.FIXED_S


def test_correcting_a_bulge_redraws_the_bulge_not_the_contour():
    ref = _volume([10, 10, 10, 0, 0])
    pred = ref.copy()
    pred[1][_disc((60, 60), (30, 40), 4)] = 1       # a 4 mm bulge on one side of slice 1
    empty = ref.copy()
    empty[2] = 0                                     # slice 2 missed entirely
    _, bulge = rad.tolerant(pred, ref, SP, tolerance_mm=2.0)
    _, missed = rad.tolerant(empty, ref, SP, tolerance_mm=2.0)
    full = rad.contour_mm(ref[1] == 1, SP[1:])
    assert bulge["slices"] == 1 and 0 < bulge["contour_mm"] < 0.3 * full
    assert missed["slices"] == 1 and missed["contour_mm"] == pytest.approx(full)


def test_scratch_touches_every_labelled_slice_and_exact_matches_reference():
    ref = _volume([10, 8, 6, 0, 0])
    scratch = rad.draw_from_scratch(ref, SP)
    assert scratch["slices"] == 3
    out, eff = rad.exact(_volume([10, 8, 7, 0, 0]), ref, SP)
    assert np.array_equal(out, ref) and eff["slices"] == 1 and eff["seconds"] < scratch["seconds"]


def test_a_useless_proposal_costs_no_more_than_clearing_it_and_drawing_from_scratch():
    ref = _volume([10, 10, 10, 0, 0])
    wrong = np.zeros_like(ref)
    for k in range(5):  # a blob on every slice, far from the gland
        wrong[k][_disc((60, 60), (8, 8), 5)] = 1
    scratch = rad.draw_from_scratch(ref, SP)
    for corrector in (rad.tolerant, rad.redraw, rad.exact):
        out, eff = corrector(wrong, ref, SP)
        assert np.array_equal(out, ref)
        assert eff["cleared"] and eff["seconds"] == pytest.approx(scratch["seconds"] + rad.SLICE_S)
    _, fine = rad.tolerant(ref, ref, SP)  # a good proposal is corrected, not cleared
    assert "cleared" not in fine


def test_proposal_effort_is_the_fixed_cost_for_a_perfect_proposal_and_rises_as_it_drifts():
    """The paired effort of a test case, on a real prostate shape (MSD) resampled as simulate's cases are."""
    p = sorted(shared("prostate_shapes", "msd").glob("*.nii.gz"))[0]
    img = sitk.ReadImage(str(p))
    ref = (sitk.GetArrayFromImage(img) > 0).astype(np.uint8)
    sp = img.GetSpacing()[::-1]
    scratch = rad.draw_from_scratch(ref, sp)["seconds"]
    perfect = rad.proposal_effort(ref, ref, sp)
    assert perfect == {"vs_scratch": pytest.approx(rad.FIXED_S / scratch), "touched": 0.0, "cleared": False}
    ax = rad.slice_axis(sp)
    step = int(np.ceil(1.5 / sp[(ax + 1) % 3]))  # about 1.5 mm in-plane: within the 2 mm tolerance
    near, far = (np.roll(ref, n, axis=(ax + 1) % 3) for n in (step, 3 * step))
    e_near, e_far = rad.proposal_effort(near, ref, sp), rad.proposal_effort(far, ref, sp)
    assert e_near == perfect  # within the tolerance: accepted untouched, the fixed cost alone
    assert perfect["vs_scratch"] < e_far["vs_scratch"] <= 1.0 + rad.SLICE_S / scratch
    assert e_far["touched"] > 0.8
    m = rad.mean_proposal_effort([perfect, e_far])
    assert m["cases"] == 2 and m["vs_scratch"] == pytest.approx((perfect["vs_scratch"] + e_far["vs_scratch"]) / 2, abs=1e-3)
    assert rad.mean_proposal_effort([]) is None


def test_synthesis_deterministic_and_within_ranges():
    lab = sitk.ReadImage(str(shared("prostate_shapes", "msd", "prostate_00.nii.gz")))
    app = synthesis.load_appearance("t2w")
    small = synthesis.resample_crop(lab, app["spacing"])
    assert small.GetSpacing() == pytest.approx(tuple(app["spacing"]))
    assert np.prod(small.GetSize()) < np.prod(lab.GetSize())
    a, drawn = synthesis.synthesize(small, app, seed=3)
    b, _ = synthesis.synthesize(small, app, seed=3)
    c, _ = synthesis.synthesize(small, app, seed=4)
    arr, labels = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(small)
    assert np.array_equal(arr, sitk.GetArrayFromImage(b)) and not np.array_equal(arr, sitk.GetArrayFromImage(c))
    for key, d in app["labels"].items():
        m = drawn[key]
        assert abs(m - d["mean"]) <= 4 * app["case_jitter"] * d["mean"]
        # the voxels' median lies near the drawn mean (bias field and noise are bounded)
        assert abs(np.median(arr[labels == int(key)]) - m) < 0.25 * d["mean"] + 3 * app["noise_sd"]


def _bad_appearance(tmp_path, **change):
    a = json.loads(json.dumps(synthesis.PRESETS["t2w"]))
    for k, v in change.items():
        if v is None:
            a.pop(k)
        else:
            a[k] = v
    p = tmp_path / "app.json"
    p.write_text(json.dumps(a))
    return p


def test_appearance_file_refuses_unknown_missing_key_and_negative_sd(tmp_path):
    for change, word in (({"colour": 1}, "unknown"), ({"noise_sd": None}, "missing"),
                         ({"labels": {"1": {"mean": 1.0, "sd": -0.1}}}, "negative")):
        with pytest.raises(HilaError, match=word):
            synthesis.load_appearance(str(_bad_appearance(tmp_path, **change)))


def _hila(*args):
    return subprocess.run([sys.executable, "-m", "HILASegmentLib", "simulate", *args], capture_output=True, text=True)


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path):
    msd = shared("prostate_shapes", "msd")
    empty = tmp_path / "empty"
    empty.mkdir()
    grid = tmp_path / "grid.csv"
    cts = sorted(p for p in shared("pelvic_ct").iterdir() if p.is_dir())
    grid.write_text(f"case,image,reference\na,{cts[0] / 'ct.nii.gz'},{cts[1] / 'labels_manual.nii.gz'}\n")
    missing = tmp_path / "missing.csv"
    missing.write_text("case,image,reference\na,nope.nii.gz,nope2.nii.gz\n")
    no_ref = tmp_path / "no_ref.csv"
    no_ref.write_text(f"case,image,reference\na,{cts[0] / 'ct.nii.gz'},{cts[0] / 'labels_nope.nii.gz'}\n")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("case,image,reference\n")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    bad_app = _bad_appearance(tmp_path, blur=1)
    no_key = tmp_path / "no_key"
    no_key.mkdir()
    no_key_app = _bad_appearance(no_key, noise_sd=None)
    neg = tmp_path / "neg"
    neg.mkdir()
    neg_app = _bad_appearance(neg, background={"mean": 0.5, "sd": -1, "structures": 3})
    base = ["--labels", "prostate=1+2", "--test", "2"]
    cases = [
        (["--synthetic", str(tmp_path / "nowhere")] + base, "not found"),
        (["--synthetic", str(empty)] + base, "no label maps"),
        (["--cohort", str(tmp_path / "none.csv")] + base, "not found"),
        (["--cohort", str(missing)] + base, "nope.nii.gz not found"),
        (["--cohort", str(no_ref)] + base, "labels_nope.nii.gz not found"),
        (["--cohort", str(header_only)] + base, "no rows"),
        (["--cohort", str(empty_csv)] + base, "no rows"),
        (["--cohort", str(grid), "--labels", "bladder=1", "--test", "1"], "another grid"),
        (["--synthetic", str(msd), "--labels", "prostate=1+7"], "value 7"),
        (["--synthetic", str(msd), "--appearance", str(bad_app)] + base, "unknown"),
        (["--synthetic", str(msd), "--appearance", str(no_key_app)] + base, "missing appearance key(s) noise_sd"),
        (["--synthetic", str(msd), "--appearance", str(neg_app)] + base, "background sd = -1 is negative"),
        (["--synthetic", str(msd), "--appearance", "mri"] + base, "neither a preset"),
        (["--synthetic", str(msd), "--labels", "prostate=1+2", "--test", "32"], "--test 32"),
        (["--synthetic", str(msd), "--labels", "prostate=1+2", "--test", "40"], "--test 40"),
        (["--synthetic", str(msd), "--labels", "prostate=1+2", "--test", "30", "--initial", "3"], "--initial 3"),
        (["--synthetic", str(msd), "--per-round", "0"] + base, "--per-round: '0': must be >= 1"),
        (["--synthetic", str(msd), "--baseline-minutes", "0"] + base, "--baseline-minutes"),
        (["--synthetic", str(msd), "--baseline-minutes", "nan"] + base, "--baseline-minutes"),
        (["--synthetic", str(msd), "--corrector", "lenient"] + base, "--corrector lenient"),
        (["--synthetic", str(msd), "--config", "3d_lowres", "--arch", "SliceUNet"] + base, "--arch SliceUNet"),
    ]
    for i, (args, word) in enumerate(cases):
        out = tmp_path / f"run{i}"
        r = _hila("--out", str(out), *args)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and err[0].startswith("hila: error:") and word in err[0], (args, r.stderr)
        assert not out.exists()


def test_existing_run_with_another_config_is_refused_untouched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 1}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = _hila("--out", str(run), "--synthetic", str(shared("prostate_shapes", "msd")), "--labels", "prostate=1+2")
    assert r.returncode == 2 and "another config" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_run_made_under_the_older_effort_model_is_not_resumed_under_the_new_one(tmp_path):
    """`tolerant` changed what it charges (rad.TOLERANT_MODEL, recorded in config.json): a run whose config lacks it
    (made before) is refused on resume instead of mixing two effort models; --corrector redraw is the old one."""
    from HILASegmentLib.simulate.prepare import SimConfig

    cfg = SimConfig(out=str(tmp_path / "run"), synthetic=str(shared("prostate_shapes", "msd")), labels="prostate=1+2")
    key = json.loads(json.dumps(cfg.key(), default=str))
    assert key["effort_model"] == rad.TOLERANT_MODEL and "effort_model" not in SimConfig(**dict(
        cfg.__dict__, corrector="redraw")).key()
    run = tmp_path / "run"
    run.mkdir()
    old = dict(key)
    old.pop("effort_model")
    (run / "config.json").write_text(json.dumps(old))
    r = _hila("--out", str(run), "--synthetic", str(shared("prostate_shapes", "msd")), "--labels", "prostate=1+2")
    assert r.returncode == 2 and "effort_model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_run_made_under_the_older_gate_rule_is_not_resumed_under_the_new_default(tmp_path):
    """The default gate margin changed (better by 0.01 -> not worse by 0.05): a run whose config.json records no margin
    was made under the old default and is refused under today's, one line, nothing touched; the old rule spelled out
    (--gate-margin 0.01) is that run's config again."""
    from HILASegmentLib.simulate.prepare import SimConfig
    from HILASegmentLib.training.gatedefaults import GATE_MARGIN, GATE_MARGIN_BEFORE_NONINFERIORITY

    cfg = SimConfig(out=str(tmp_path / "run"), synthetic=str(shared("prostate_shapes", "msd")), labels="prostate=1+2")
    key = json.loads(json.dumps(cfg.key(), default=str))
    assert key["gate_margin"] == GATE_MARGIN
    old_rule = SimConfig(**dict(cfg.__dict__, gate_margin=GATE_MARGIN_BEFORE_NONINFERIORITY))
    old = json.loads(json.dumps(old_rule.key(), default=str))
    assert "gate_margin" not in old and {k: v for k, v in key.items() if k != "gate_margin"} == old
    # with --promote always the gate decides nothing: a run made under either default resumes
    always = [SimConfig(**dict(cfg.__dict__, promote="always", gate_margin=m)).key() for m in
              (GATE_MARGIN, GATE_MARGIN_BEFORE_NONINFERIORITY)]
    assert always[0] == always[1] and "gate_margin" not in always[0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    before = (run / "config.json").read_bytes()
    r = _hila("--out", str(run), "--synthetic", str(shared("prostate_shapes", "msd")), "--labels", "prostate=1+2")
    assert r.returncode == 2 and "gate_margin" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (run / "config.json").read_bytes() == before and [p.name for p in run.iterdir()] == ["config.json"]


def _rounds(run):
    return json.loads((run / "rounds.json").read_text())


def _assert_same_rounds(got, want, name):
    """Same cases, model versions, gate decisions and efforts; Dice/HD95 equal up to onnxruntime's float noise.

    The weights are bit-identical (seeded trainer, step-capped), but onnxruntime's CPU kernels may flip a
    handful of near-tie voxels between processes (seen: 5 of 109 000), hence the small tolerances.
    """
    assert [r["round"] for r in got] == [r["round"] for r in want], name
    for g, w in zip(got, want):
        assert (g["cases"], g["model_version"]) == (w["cases"], w["model_version"]), (name, g["round"])
        assert (g["train"] or {}).get("promoted") == (w["train"] or {}).get("promoted"), (name, g["round"])
        assert (g["train"] or {}).get("model_version") == (w["train"] or {}).get("model_version"), (name, g["round"])
        for ge, we in zip(g["efforts"], w["efforts"]):
            assert ge["case"] == we["case"] and ge["quality"] == we["quality"]
            assert ge["seconds"] == pytest.approx(we["seconds"], rel=0.05), (name, g["round"])
        assert g["mean_dice"] == pytest.approx(w["mean_dice"], abs=0.005), (name, g["round"])
        assert g["mean_hd95"] == pytest.approx(w["mean_hd95"], abs=1.0), (name, g["round"])


def _tiny_args(tmp_path):
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    for p in sorted(shared("prostate_shapes", "msd").glob("*.nii.gz"))[:5]:
        (shapes / p.name).write_bytes(p.read_bytes())
    return ["--synthetic", str(shapes), "--labels", "prostate=1+2", "--test", "1", "--initial", "2",
            "--per-round", "1", "--rounds", "2", "--train-steps", "2", "--threads", "1", "--seed", "5", "--json",
            # the gate on the one new case each round, any gain promotes: every round's training is kept, so the
            # kill 'after training' lands before the (real) evaluation
            "--gate-min-cases", "1", "--gate-margin", "-1"]


def _killed_at(run, args, message, delay=0.0):
    """Start a run, SIGKILL it `delay` s after its progress says `message` (a string or a compiled pattern);
    returns whether it was killed."""
    import time

    p = subprocess.Popen([sys.executable, "-m", "HILASegmentLib", "simulate", "--out", str(run), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if (message.search(line) if hasattr(message, "search") else message in line):
            time.sleep(delay)
            p.kill()
            break
    p.wait()
    return p.returncode == -9


@pytest.mark.slow
def test_resume_after_sigkill_mid_round_gives_the_same_rounds(tmp_path):
    from HILASegmentLib.workspace import Workspace

    args = _tiny_args(tmp_path)
    ref = tmp_path / "uninterrupted"
    assert _hila("--out", str(ref), *args).returncode == 0
    want = _rounds(ref)
    assert [r["round"] for r in want] == [0, 1, 2]
    # killed mid-training (the trainer's first report of round 1 after its start: preparing, a step, export or
    # validation, all before the run is recorded done), and after its training finished (before evaluation):
    # points in the run's own progress, not a clock (JSON progress is throttled, so no single step is certain)
    mid = re.compile(r'"round 1: training: (?!done)')
    for name, message, delay in (("mid_training", mid, 0.0), ("after_training", "round 1: evaluating", 0.0)):
        run = tmp_path / name
        assert _killed_at(run, args, message, delay), name
        assert len(_rounds(run)) < 3
        r = _hila("--out", str(run), *args)
        assert r.returncode == 0, r.stderr
        _assert_same_rounds(_rounds(run), want, name)
        assert any((r["train"] or {}).get("resumed") for r in _rounds(run)) == (name == "after_training")
        with Workspace.open(run / "workspace") as ws:
            assert ws.check().ok
            assert all(t.status != "running" for t in ws.training_runs())
            # each pool case corrected once: the resumed round did not submit its cases twice
            assert all(len(ws.corrections(c.case_id)) <= 1 for c in ws.cases())
    # the finished run: the same config again changes no round; another config is refused, RUN untouched
    r = _hila("--out", str(ref), *args)
    assert r.returncode == 0 and _rounds(ref) == want
    before = {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    r = _hila("--out", str(ref), *[a if a != "2" else "3" for a in args])  # --rounds 3 --train-steps 3
    assert r.returncode == 2 and r.stderr.startswith("hila: error:") and "another config" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "rounds" in r.stderr
    assert {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()} == before


def test_uncertainty_strategy_reads_the_prediction_summary_most_uncertain_first():
    from types import SimpleNamespace

    from HILASegmentLib.inference.summary import PredictionSummary
    from HILASegmentLib.simulate.selection import strategies

    unc = {"a": 0.1, "b": 0.7, "c": 0.4}
    ctx = SimpleNamespace(has_model=lambda: True, predict=lambda n: SimpleNamespace(
        summary=PredictionSummary(mean_uncertainty=unc[n]).to_dict()))
    assert strategies()["uncertainty"](["a", "b", "c"], 2, np.random.default_rng(0), ctx) == ["b", "c"]


def test_quality_strategy_lowest_predicted_dice_first_learned_only_for_its_version():
    from types import SimpleNamespace

    from HILASegmentLib.inference.summary import PredictionSummary
    from HILASegmentLib.quality.learned import FEATURES, fit_quality_model
    from HILASegmentLib.simulate.selection import strategies

    soft = {"a": 0.9, "b": 0.6, "c": 0.75}
    err = {"a": 0.9, "b": 0.1, "c": 0.5}  # the learned model reads this feature, the soft Dice does not
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(30):
        f = {k: float(rng.random()) for k in FEATURES}
        pairs.append({"prediction_id": i, "model_version": 3, "features": f, "unsupervised": float(rng.random()),
                      "true": 1.0 - 0.8 * f["err_mass_ratio"]})
    qm = fit_quality_model(pairs, model_version=3)
    assert qm.in_use

    def ctx(model):
        ws = SimpleNamespace(current_model=lambda: SimpleNamespace(version=3), quality_model=lambda v: model,
                             parts=SimpleNamespace(quality=SimpleNamespace(label_scorer=lambda: None)))
        return SimpleNamespace(has_model=lambda: True, sim=SimpleNamespace(ws=ws), predict=lambda n: SimpleNamespace(
            summary=PredictionSummary(model_version=1, predicted_dice=soft[n],
                                      quality_features={k: (err[n] if k == "err_mass_ratio" else 0.5)
                                                        for k in FEATURES}).to_dict()))
    assert strategies()["quality"](["a", "b", "c"], 2, rng, ctx(None)) == ["b", "c"]  # the soft Dice: none fitted
    assert strategies()["quality"](["a", "b", "c"], 2, rng, ctx(qm)) == ["a", "c"]    # the learned model's


@pytest.mark.slow
def test_simulate_quality_strategy_refits_each_round_and_rank_lists_predicted_dice(tmp_path):
    from HILASegmentLib.workspace import Workspace

    run = tmp_path / "run"
    args = _tiny_args(tmp_path)
    r = _hila("--out", str(run), *args, "--strategy", "quality")
    assert r.returncode == 0, r.stderr
    rounds = _rounds(run)
    with Workspace.open(run / "workspace") as ws:
        fits = [e for e in ws.events(1000) if e["kind"] == "quality_model"]
        assert len(fits) == sum(1 for x in rounds if x["train"])  # one fit after each training run
        assert all(not f["details"]["in_use"] for f in fits)    # a handful of pairs: the soft Dice stays
        n_pairs = len(ws.quality_pairs())
    assert n_pairs == sum(len(x["cases"]) for x in rounds[1:])  # every corrected prediction is a pair
    out = subprocess.run([sys.executable, "-m", "HILASegmentLib", "rank", str(run / "workspace"), "--json"],
                         capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and res["quality_source"]["source"] == "expected_soft_dice"
    assert res["cases"] and all(0.0 <= c["predicted_dice"] <= 1.0 for c in res["cases"] if c["predicted"])
    # each label's predicted Dice with its source (a few pairs: the per-label choice is the soft Dice, and says so)
    assert res["quality_source"]["per_label"]["source"] == "expected_soft_dice"
    for c in (c for c in res["cases"] if c["predicted"]):
        assert c["labels"] and all(lab["source"] == "expected_soft_dice" and 0.0 <= lab["predicted_dice"] <= 1.0
                                   for lab in c["labels"] if lab["predicted_dice"] is not None)


def test_a_two_case_pool_cannot_gate_so_promote_always_keeps_each_rounds_model(tmp_path):
    """Two pool cases leave no correction to gate with (the default needs 2): auto keeps round 1's candidate
    and the test Dice stays the round-0 model's; --promote always makes it current, as hila train does."""
    args = _tiny_args(tmp_path)
    args[args.index("--test") + 1] = "3"                 # 5 shapes: 3 test, a pool of 2
    args[args.index("--initial") + 1] = "1"
    args[args.index("--rounds") + 1] = "1"
    args = args[:args.index("--gate-min-cases")]        # the default gate
    got = {}
    for policy in ("auto", "always"):
        run = tmp_path / policy
        r = _hila("--out", str(run), *args, "--promote", policy)
        assert r.returncode == 0, r.stderr
        got[policy] = _rounds(run)
    auto, always = got["auto"][1], got["always"][1]
    assert auto["train"]["promoted"] is False and auto["model_version"] == got["auto"][0]["model_version"]
    assert always["train"]["promoted"] is True and always["model_version"] == always["train"]["model_version"]
    assert always["model_version"] != got["always"][0]["model_version"]


def test_ignore_band_reaches_the_trainer_and_a_changed_choice_does_not_resume(tmp_path):
    """``simulate --ignore-band`` is hila train's quality-aware loss: every degraded submission is marked rough
    and the round's model card records the band; without it the card records none. A rerun of the same RUN
    with the other choice is another config and is refused, nothing touched."""
    from HILASegmentLib.models.modelcard import read_card
    from HILASegmentLib.workspace import Workspace

    args = _tiny_args(tmp_path)
    args[args.index("--rounds") + 1] = "0"
    cards = {}
    for name, extra in (("band", ["--ignore-band"]), ("plain", [])):
        run = tmp_path / name
        r = _hila("--out", str(run), *args, "--rough-rate", "1", *extra)
        assert r.returncode == 0, r.stderr
        assert [e["quality"] for e in _rounds(run)[0]["efforts"]] == ["rough", "rough"]
        with Workspace.open(run / "workspace", readonly=True) as ws:
            cards[name] = read_card(ws.current_model().path).to_dict()["training"]["ignore_band"]
    assert cards == {"band": {"rough": 1, "weak": 3}, "plain": None}
    before = {p: p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    r = _hila("--out", str(tmp_path / "plain"), *args, "--rough-rate", "1", "--ignore-band")
    assert r.returncode == 2 and "another config" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file()} == before


def test_arch_reaches_the_trainer_as_hila_train_arch_and_a_changed_choice_does_not_resume(tmp_path):
    """``simulate --arch`` is hila train's network registry: the round's model is that network (its card says so);
    a rerun of the same RUN with another network is another config, refused with nothing touched."""
    from HILASegmentLib.models.modelcard import read_card
    from HILASegmentLib.workspace import Workspace

    args = _tiny_args(tmp_path)
    args[args.index("--rounds") + 1] = "0"
    names = {}
    for arch in ("DynUNet", "UNet"):
        run = tmp_path / arch
        r = _hila("--out", str(run), *args, "--config", "3d_lowres", "--arch", arch)
        assert r.returncode == 0, r.stderr
        with Workspace.open(run / "workspace", readonly=True) as ws:
            names[arch] = read_card(ws.current_model().path).architecture.get("name")
    assert names == {"DynUNet": "DynUNet", "UNet": "UNet"}
    before = {p: p.read_bytes() for p in (tmp_path / "UNet").rglob("*") if p.is_file()}
    r = _hila("--out", str(tmp_path / "UNet"), *args, "--config", "3d_lowres", "--arch", "DynUNet")
    assert r.returncode == 2 and "another config" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "UNet").rglob("*") if p.is_file()} == before


def test_a_round_0_candidate_the_gate_refuses_gives_dice_0_and_the_next_round_draws_from_scratch(tmp_path, monkeypatch):
    """The gate refuses a first candidate that segments nothing (no model is current). The simulation must not
    crash: that round scores Dice 0 (nothing is segmented), and the next round's cases are drawn from scratch
    (no proposal to correct) and trained from scratch."""
    from HILASegmentLib.simulate.prepare import SimConfig, prepare
    from HILASegmentLib.simulate.simulation import Simulation

    args = _tiny_args(tmp_path)
    cfg = SimConfig(out=str(tmp_path / "run"), synthetic=args[args.index("--synthetic") + 1], labels="prostate=1+2", test=1, initial=2,
                    per_round=1, rounds=1, train_steps=2, threads=1, seed=5)
    real = Simulation.train
    inits = []

    def gate_refuses_round_0(self, ws, rnd, init, minutes, promote="auto", label=""):
        inits.append(init)
        if rnd == 0:
            return {"seconds": 0.0, "model_version": None, "promoted": False,
                    "reason": "no current model, but the candidate segments nothing (mean Dice 0)", "steps": 0}
        return real(self, ws, rnd, init, minutes, promote, label)

    monkeypatch.setattr(Simulation, "train", gate_refuses_round_0)
    sim = Simulation(cfg, prepare(cfg), lambda *a, **k: None, lambda r: None)
    summary = sim.execute()
    r0, r1 = _rounds(tmp_path / "run")
    assert (r0["model_version"], r0["mean_dice"], r0["test_dice"]) == (None, 0.0, {"prostate": 0.0})
    assert inits == ["scratch", "scratch"] and r1["model_version"] is not None
    name = r1["cases"][0]
    assert r1["efforts"][0]["seconds"] == pytest.approx(rad.draw_from_scratch(sim.reference(name),
                                                                              sim.spacing_zyx[name])["seconds"])
    assert summary["dice_per_round"][0] == 0.0 and summary["rounds"] == 2
    # effort against the same cases drawn from scratch: 1 for round 0's drawn cases, recorded per round
    assert r0["effort_vs_scratch"] == 1.0 and summary["effort_vs_scratch_per_round"][0] == 1.0
    assert 0 < r1["effort_vs_scratch"] == summary["effort_vs_scratch_per_round"][1]
    # the paired effort on the test split: none without a model; then the round's own model on the unseen test case
    from HILASegmentLib.workspace import Workspace

    assert r0["test_effort"] is None and summary["test_effort_vs_scratch_per_round"][0] is None
    test = summary["test_cases"][0]
    with Workspace.open(tmp_path / "run" / "workspace", readonly=True) as ws:
        pred = sitk.GetArrayFromImage(ws.model(r1["model_version"]).segmenter().segment(sim.image(test)).label)
    want = rad.proposal_effort(pred, sim.reference(test), sim.spacing_zyx[test], cfg.tolerance_mm)
    assert r1["test_effort"]["cases"] == 1 and r1["test_effort"]["vs_scratch"] == pytest.approx(want["vs_scratch"], abs=1e-3)
    assert summary["test_effort_vs_scratch_per_round"][1] == r1["test_effort"]["vs_scratch"]
    import csv

    with open(tmp_path / "run" / "rounds.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["test_effort_vs_scratch"] for row in table] == ["", str(r1["test_effort"]["vs_scratch"])]


def test_train_budget_effort_gives_each_round_the_effort_it_measured(tmp_path):
    """``--train-budget effort:F``: each round trains for F x the seconds the simulated radiologist spent on
    that round's cases (not --train-minutes): recorded per round, used as the loop's budget, named in summary.json.
    A malformed budget is refused before anything is written."""
    from HILASegmentLib.models.modelcard import read_card
    from HILASegmentLib.workspace import Workspace

    args = [a for a in _tiny_args(tmp_path)]
    i = args.index("--train-steps")
    del args[i:i + 2]  # a step cap would make the budget moot
    args[args.index("--rounds") + 1] = "1"
    run = tmp_path / "run"
    r = _hila("--out", str(run), *args, "--train-budget", "effort:0.03")
    assert r.returncode == 0, r.stderr
    rounds = _rounds(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_budget"] == "effort:0.03"
    with Workspace.open(run / "workspace", readonly=True) as ws:
        cards = {m.version: read_card(m.path).to_dict() for m in ws.models()}
    for rec in rounds:
        want = 0.03 * sum(e["seconds"] for e in rec["efforts"]) / 60.0
        assert rec["train"]["budget_minutes"] == pytest.approx(want, abs=1e-3)
        loop = cards[rec["train"]["model_version"]]["training"]
        assert loop["stopped"] == "budget"
        assert loop["loop"]["max_seconds"] == pytest.approx(want * 60.0, abs=0.5)  # the optimisation's own budget
    assert summary["train_minutes_per_round"] == [rec["train"]["budget_minutes"] for rec in rounds]
    for bad in ("effort:0", "effort:x", "weekly", "fixed:2"):
        r = _hila("--out", str(tmp_path / bad.replace(":", "_")), *args, "--train-budget", bad)
        assert r.returncode == 2 and "--train-budget" in r.stderr and not (tmp_path / bad.replace(":", "_")).exists()
