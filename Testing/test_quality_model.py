"""The learned quality model (quality/learned.py, workspace/qualitymodels.py) and `hila rank --by/--review-budget`.

Real data: the three pelvic CTs predicted by the CT starter and corrected with their manual contours.
"""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.cli import main
from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.ground.metrics import dice
from HILASegmentLib.inference.summary import PredictionSummary
from HILASegmentLib.quality.learned import (
    FEATURES,
    MIN_PAIRS,
    WORKSPACE_FEATURES,
    QualityModel,
    fit_quality_model,
    prediction_features,
)

CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")


def _pairs(n, rng, true_from):
    """Pairs whose features are random and whose true Dice follows ``true_from(features, unsupervised)``."""
    out = []
    for i in range(n):
        f = {k: float(rng.random()) for k in FEATURES}
        a = float(rng.uniform(0.5, 1.0))
        out.append({"prediction_id": i + 1, "model_version": 1, "features": f, "unsupervised": a,
                    "true": float(np.clip(true_from(f, a), 0, 1))})
    return out


def test_learned_model_used_only_where_it_beats_the_unsupervised_estimate_by_leave_one_out():
    rng = np.random.default_rng(3)
    # the truth follows two features the unsupervised estimate ignores: the learned model wins
    learnable = _pairs(30, rng, lambda f, a: 0.95 - 0.5 * f["err_mass_ratio"] - 0.2 * f["boundary_ratio"]
                       + rng.normal(0, 0.02))
    qm = fit_quality_model(learnable, model_version=4)
    assert qm.in_use and qm.source == "learned" and qm.n_pairs == 30 and qm.model_version == 4
    assert qm.loo["learned"]["mae"] < qm.loo["unsupervised"]["mae"]
    assert qm.loo["learned"]["spearman"] > 0.7
    f = dict(learnable[0]["features"], err_mass_ratio=0.0, boundary_ratio=0.0)
    g = dict(f, err_mass_ratio=1.0, boundary_ratio=1.0)
    assert qm.predict(f) > qm.predict(g) and 0.0 <= qm.predict(g) <= 1.0
    # the unsupervised estimate is the truth itself: nothing can beat it, so it stays in use
    exact = _pairs(30, rng, lambda f, a: a)
    qm2 = fit_quality_model(exact, model_version=4)
    assert not qm2.in_use and qm2.source == "expected_soft_dice" and "does not beat" in qm2.reason
    assert qm2.predict(f) is None
    # too few pairs: not fitted, and it says so
    few = fit_quality_model(learnable[:MIN_PAIRS - 1], model_version=4)
    assert not few.in_use and f"needs {MIN_PAIRS}" in few.reason and few.weights is None
    # round trip through the ledger's JSON
    assert QualityModel.from_dict(json.loads(json.dumps(qm.to_dict()))).predict(f) == qm.predict(f)
    # a record an older version fitted on other features is set aside (ranking and status keep working), not used
    old = dict(qm.to_dict(), features=list(qm.features)[:-1], weights=list(qm.weights)[:-1])
    aside = QualityModel.from_dict(json.loads(json.dumps(old)))
    assert not aside.in_use and "other features" in aside.reason and aside.predict(f) is None


def test_a_quality_model_never_scores_a_prediction_of_another_model_version():
    rng = np.random.default_rng(1)
    qm = fit_quality_model(_pairs(20, rng, lambda f, a: 1 - 0.6 * f["err_mean_fg"]), model_version=2)
    feats = {k: 0.5 for k in FEATURES}
    assert qm.score(PredictionSummary(model_version=2, quality_features=feats)) is not None
    with pytest.raises(HilaError, match="model v3.*scores model v2 predictions only"):
        qm.score(PredictionSummary(model_version=3, quality_features=feats), where="case c0001")


def test_features_see_the_error_map_and_shape():
    lab = np.zeros((12, 20, 20), np.uint8)
    lab[3:9, 5:15, 5:15] = 1
    img = np.where(lab > 0, 100.0, 0.0) + np.random.default_rng(0).normal(0, 5, lab.shape)
    calm = np.where(lab > 0, 0.05, 0.0).astype(np.float32)
    unsure = np.where(lab > 0, 0.45, 0.0).astype(np.float32)
    a = prediction_features(calm, lab, img, (1, 1, 2), [1], [0.95])
    b = prediction_features(unsure, lab, img, (1, 1, 2), [1], [0.6])
    assert set(a) | set(WORKSPACE_FEATURES) == set(FEATURES)
    assert b["err_mean_fg"] > a["err_mean_fg"] and b["err_mass_ratio"] > a["err_mass_ratio"]
    assert a["components"] == 0 and a["intensity_contrast"] > 3  # one piece, a bright object on dark
    lab2 = lab.copy()
    lab2[3:9, 9:11, :] = 0  # cut in two
    assert prediction_features(calm, lab2, img, (1, 1, 2), [1], [0.95])["components"] == 1
    empty = prediction_features(calm * 0, lab * 0, img, (1, 1, 2), [1], [1.0])
    assert empty["empty_label_fraction"] == 1.0 and empty["log_volume_ml"] == 0.0


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def ct_ws(tmp_path_factory):
    """The three real CTs, predicted by the CT starter (v1); the manual contours of two as reviewed corrections."""
    ws = tmp_path_factory.mktemp("q") / "ws"
    assert main(["init", str(ws), "--modality", "CT", "--labels", "prostate,bladder,rectum",
                 "--model", "pelvic_ct_unet"]) == 0
    ids = {}
    for c in CASES:
        assert main(["import", str(ws), str(shared("pelvic_ct", c, "ct.nii.gz")), "--name", c]) == 0
    from HILASegmentLib.workspace import Workspace
    with Workspace.open(ws) as w:
        ids = {k.name: k.case_id for k in w.cases()}
    for c in CASES:
        assert main(["infer", str(ws), ids[c]]) == 0
    for c in CASES[:2]:
        man = sitk.ReadImage(str(shared("pelvic_ct", c, "labels_manual.nii.gz")))
        arr = sitk.GetArrayFromImage(man)
        arr[arr > 3] = 0
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(man)
        sitk.WriteImage(out, str(ws.parent / f"{c}_manual.nii.gz"))
        assert main(["submit", str(ws), ids[c], str(ws.parent / f"{c}_manual.nii.gz"), "--quality", "reviewed"]) == 0
    return ws, ids


def test_pairs_are_the_predictions_and_the_dice_their_correction_shows(ct_ws):
    from HILASegmentLib.workspace import Workspace
    ws, ids = ct_ws
    with Workspace.open(ws) as w:
        pairs = {p["prediction_id"]: p for p in w.quality_pairs()}
        assert len(pairs) == 2
        for c in CASES[:2]:
            pred = w.predictions(ids[c])[-1]
            p = pairs[pred.prediction_id]
            assert p["model_version"] == 1 and set(FEATURES) <= set(p["features"])
            assert {f"ml:{n}" for n in ("prostate", "bladder", "rectum")} <= set(p["features"])  # per-label figures
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(pred.path)))
            m = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("pelvic_ct", c, "labels_manual.nii.gz"))))
            want = np.mean([dice(a == v, m == v) for v in (1, 2, 3)])
            assert p["true"] == pytest.approx(want, abs=1e-5)
            assert 0.0 < p["unsupervised"] <= 1.0


def test_status_names_the_unsupervised_source_and_why(ct_ws, capsys):
    ws, _ = ct_ws
    rc, out, _ = run(capsys, "status", ws)
    assert rc == 0 and "predicted Dice: expected_soft_dice (no learned quality model fitted for model v1" in out
    from HILASegmentLib.workspace import Workspace
    with Workspace.open(ws) as w:
        before = w.quality_model(1)
        qm = w.fit_quality_model()
        assert before is None and qm.model_version == 1 and qm.n_pairs == 2 and not qm.in_use
        assert w.quality_model(1).to_dict() == qm.to_dict()
    rc, out, _ = run(capsys, "status", ws, "--json")
    q = json.loads(out.strip().splitlines()[-1])["quality"]
    assert q["source"] == "expected_soft_dice" and "only 2 accepted correction" in q["reason"]


def test_rank_by_quality_uncertainty_diverse_random_and_review_budget(ct_ws, capsys):
    ws, ids = ct_ws
    only = ids[CASES[2]]  # the one case without a reviewed correction
    rc, out, _ = run(capsys, "rank", ws, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and res["by"] == "quality" and [r["case_id"] for r in res["cases"]] == [only]
    d = res["cases"][0]["predicted_dice"]
    assert 0.0 < d < 1.0 and res["cases"][0]["predicted_dice_source"] == "expected_soft_dice"
    rc, out, _ = run(capsys, "rank", ws)
    assert rc == 0 and f"predicted Dice {d:.3f}" in out
    for by in ("uncertainty", "diverse", "random"):
        rc, out, _ = run(capsys, "rank", ws, "--by", by, "--json")
        assert rc == 0 and json.loads(out.strip().splitlines()[-1])["cases"][0]["predicted_dice"] == d
    rc, out, _ = run(capsys, "rank", ws, "--review-budget", "1", "--json")
    b = json.loads(out.strip().splitlines()[-1])["review_budget"]
    assert b["cases"] == [only] and b["predicted_cohort_dice"] == pytest.approx(d, abs=1e-4)
    assert b["predicted_cohort_dice_after"] == 1.0


def test_rank_orders_by_predicted_dice_and_the_budget_takes_the_worst():
    from HILASegmentLib.quality.ranking import rank_cases, review_budget
    dices = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.8}
    cases = [{"case_id": k, "predicted": True, "uncertainty": PredictionSummary(predicted_dice=v,
             mean_uncertainty=1 - v if k != "d" else 0.9).to_dict()} for k, v in dices.items()]
    cases.append({"case_id": "e", "predicted": False, "uncertainty": None})
    assert [r["case_id"] for r in rank_cases(cases)] == ["b", "c", "d", "a", "e"]
    assert [r["case_id"] for r in rank_cases(cases, by="uncertainty")] == ["d", "b", "c", "a", "e"]
    # the learned model's Dice, where it gives one, replaces the summary's
    learned = rank_cases(cases, scorer=lambda s: 0.1 if s.predicted_dice == 0.9 else None)
    assert learned[0]["case_id"] == "a" and learned[0]["predicted_dice_source"] == "learned"
    shuffled = [r["case_id"] for r in rank_cases(cases, by="random", rng=np.random.default_rng(1))]
    assert sorted(shuffled[:4]) == ["a", "b", "c", "d"] and shuffled[-1] == "e"
    b = review_budget(rank_cases(cases), 0.5)
    assert b["cases"] == ["b", "c"] and b["of_predicted"] == 4
    assert b["predicted_cohort_dice"] == pytest.approx(0.725) and b["predicted_cohort_dice_after"] == pytest.approx(0.925)
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(HilaError, match="review-budget"):
            review_budget([], bad)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "nan", "x"])
def test_review_budget_outside_0_1_is_one_line(ct_ws, capsys, value):
    ws, _ = ct_ws
    rc, out, err = run_exit(capsys, "rank", ws, "--review-budget", value)
    assert rc == 2 and err.startswith("hila: error:") and "--review-budget" in err and len(err.strip().splitlines()) == 1
    assert out == ""


def run_exit(capsys, *args):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _with_quality_model(ct_ws, tmp_path, n, seed, truth, version):
    """A copy of the CT workspace with a quality model (fitted on synthetic pairs for ``version``) filed under v1."""
    import shutil
    ws = tmp_path / "ws"
    shutil.copytree(ct_ws[0], ws)
    qm = fit_quality_model(_pairs(n, np.random.default_rng(seed), truth), model_version=version)
    con = sqlite3.connect(ws / "hila.sqlite")
    with con:
        con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES ('t', 'quality_model', "
                    "'model v1', 'test', ?)", (json.dumps(qm.to_dict()),))
    con.close()
    return ws, qm


def test_a_quality_model_filed_for_another_version_is_refused_nothing_changed(ct_ws, capsys, tmp_path):
    ws, _ = _with_quality_model(ct_ws, tmp_path, 12, 2, lambda f, a: 1 - 0.5 * f["err_mean_fg"], version=7)
    before = (ws / "hila.sqlite").read_bytes()
    for cmd in (["rank"], ["status"]):
        rc, out, err = run_exit(capsys, *cmd, ws)
        assert rc != 0 and err.startswith("hila: error:") and len(err.strip().splitlines()) == 1
        assert "says it scores model v7" in err and "v1" in err
    assert (ws / "hila.sqlite").read_bytes() == before


def test_rank_uses_a_learned_model_in_use_for_the_predictions_version(ct_ws, capsys, tmp_path):
    from HILASegmentLib.workspace import Workspace
    ws, qm = _with_quality_model(ct_ws, tmp_path, 30, 5, lambda f, a: 0.9 - 0.4 * f["err_mass_ratio"], version=1)
    assert qm.in_use
    with Workspace.open(ws) as w:
        pred = w.predictions(ct_ws[1][CASES[2]])[-1]
        want = qm.predict(pred.uncertainty["quality_features"])
    rc, out, _ = run(capsys, "rank", ws, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert res["quality_source"]["source"] == "learned"
    assert res["cases"][0]["predicted_dice"] == want and res["cases"][0]["predicted_dice_source"] == "learned"
    rc, out, _ = run(capsys, "status", ws)
    assert "predicted Dice: learned (beats the unsupervised estimate" in out


def test_workspace_infer_writes_the_review_map_on_the_case_grid(ct_ws, capsys, tmp_path):
    import shutil

    from HILASegmentLib.workspace import Workspace
    ws = tmp_path / "ws"
    shutil.copytree(ct_ws[0], ws)
    cid = ct_ws[1][CASES[2]]
    with Workspace.open(ws) as w:
        n_before = len(w.predictions(cid))
    rc, out, err = run_exit(capsys, "infer", ws, cid, "--review-map", tmp_path / "r.seg.nrrd")
    assert rc != 0 and err.startswith("hila: error:") and "review map is a volume" in err
    rc, out, err = run_exit(capsys, "infer", ws, cid, "--review-map", tmp_path / "no" / "r.nrrd")
    assert rc != 0 and "does not exist" in err and len(err.strip().splitlines()) == 1
    with Workspace.open(ws) as w:
        assert len(w.predictions(cid)) == n_before  # refused before anything was stored
    rc, _, _ = run(capsys, "infer", ws, cid, "--review-map", tmp_path / "r.nrrd")
    assert rc == 0
    ct = sitk.ReadImage(str(shared("pelvic_ct", CASES[2], "ct.nii.gz")))
    r = sitk.ReadImage(str(tmp_path / "r.nrrd"))
    assert r.GetSize() == ct.GetSize() and np.allclose(r.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    a = sitk.GetArrayFromImage(r)
    assert a.min() >= 0 and 0 < a.max() <= 1


def test_diverse_spreads_over_unlike_cases_of_the_real_ct_and_away_from_the_reviewed(fixtures):
    """``--by diverse``: the most-needed case first, then the unlike organs ahead of the prostate's near-copy that
    plain quality ranks second; with a prostate already reviewed, the bladder comes first. Features computed by the
    product on the real CT fixture."""
    from HILASegmentLib.quality import strategies
    from HILASegmentLib.quality.ranking import rank_cases
    img = sitk.ReadImage(str(fixtures / "pelvic_ct_small.nrrd"))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(fixtures / "pelvic_ct_small_labels.nii.gz")))
    image, spacing = sitk.GetArrayFromImage(img).astype(np.float32), img.GetSpacing()
    prostate = (lab == 1).astype(np.uint8)
    grown = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(prostate), [1, 1, 0])).astype(np.uint8)
    masks = {"p1": prostate, "p2": grown, "bladder": (lab == 2).astype(np.uint8), "rectum": (lab == 3).astype(np.uint8)}
    dices = {"p1": 0.55, "p2": 0.6, "bladder": 0.7, "rectum": 0.8, "seen": 0.9}

    def case(k, m):
        f = prediction_features(np.zeros(m.shape, np.float32), m, image, spacing, [1], [dices[k]])
        assert set(strategies.SPREAD_FEATURES) <= set(f)  # every feature spread over is one the product computes
        return {"case_id": k, "predicted": True,
                "uncertainty": PredictionSummary(predicted_dice=dices[k], quality_features=f).to_dict()}

    cases = [case(k, m) for k, m in masks.items()]
    assert [r["case_id"] for r in rank_cases(cases, by="quality")] == ["p1", "p2", "bladder", "rectum"]
    diverse = rank_cases(cases, by="diverse")
    assert [r["case_id"] for r in diverse] == ["p1", "bladder", "rectum", "p2"]
    assert diverse[1]["review_need"] == pytest.approx(0.3)  # the need itself stays 1 - predicted Dice
    seen = [case("seen", prostate)]  # a prostate reviewed already: the unlike case first
    assert [r["case_id"] for r in rank_cases(cases, by="diverse", reviewed=seen)] == ["bladder", "p1", "rectum", "p2"]
    assert [r["case_id"] for r in rank_cases(cases, by="quality", reviewed=seen)][0] == "p1"
    # an empty prediction of the reviewed case says nothing about it: left out, as one without features
    empty = case("seen", prostate)
    empty["uncertainty"]["quality_features"]["empty_label_fraction"] = 1.0
    assert [r["case_id"] for r in rank_cases(cases, by="diverse", reviewed=[empty])] == ["p1", "bladder", "rectum", "p2"]
    # stored summaries of any shape rank: features that are not an object, a reviewed case's summary that is not one
    for bad in (["x"], "abc", 3):
        odd = [dict(c, uncertainty=dict(c["uncertainty"], quality_features=bad)) if c["case_id"] == "p2" else c
               for c in cases]
        assert [r["case_id"] for r in rank_cases(odd, by="diverse", reviewed=[{"uncertainty": [1, 2]}])][0] == "p1"


def test_spread_order_nearest_of_all_picked_scale_free_capped_and_missing_at_median():
    from HILASegmentLib.quality.ranking import spread_order
    needs = [0.9, 0.8, 0.7, 0.6]
    x = [[0.0], [10.0], [0.2], [5.0]]
    # after 0 and 10: 0.2 is near 0 (picked first), 5 is far from both; by distance to the last pick alone 0.2 wins
    assert spread_order(needs, x, 0.5) == [0, 1, 3, 2]
    # scale- and shift-free per feature: a second feature in other units changes nothing
    two = [[a[0], 3.0 * i] for i, a in enumerate(x)]
    assert spread_order(needs, two, 0.5) == spread_order(needs, [[a, 1000.0 * b + 7] for a, b in two], 0.5)
    # a case with no features sits at the median: as far from the others as the median point is
    assert spread_order(needs, [[0.0], [10.0], [None], [5.0]], 0.5) == spread_order(needs, [[0.0], [10.0], [5.0],
                                                                                            [5.0]], 0.5)
    # one odd case with the lowest need does not take the second place (standardised figures capped)
    grid = [[float(i % 5), float(i // 5)] for i in range(20)]
    odd = spread_order([1.0 - i / 40 for i in range(20)] + [0.0], grid + [[1e4, 1e4]], 0.5)
    assert odd[0] == 0 and odd.index(20) > 2
    # reviewed cases: spread away from them from the first pick on; one without features is left out
    assert spread_order([0.9, 0.8, 0.1], [[0.0], [10.0], [5.0]], 0.5, reviewed=[[0.0]])[0] == 1
    assert spread_order([0.9, 0.8, 0.1], [[5.0], [0.0], [10.0]], 0.5, reviewed=[[None]])[0] == 0
    # equal needs share their rank: the unlike one wins, whatever the order given
    assert spread_order([0.5, 0.5, 0.5], [[5.0], [0.1], [0.0]], 0.3, reviewed=[[0.0]])[0] == 0
    # without features to spread over (older summaries) the order is the need's alone
    assert spread_order([0.9, 0.5, 0.7], [[None] * 4] * 3, 0.5) == [0, 2, 1]
    assert spread_order([0.1], [[1.0]], 0.5) == [0] and spread_order([], [], 0.5) == []
