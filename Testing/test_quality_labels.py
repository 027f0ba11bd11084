"""Per-label predicted Dice (quality/labelmodel.py): shape and volume plausibility (quality/plausibility.py), synthetic
degradations of accepted corrections (quality/degrade.py), the per-label source chosen by nested leave-one-case-out,
and `hila rank --json` listing each label's predicted Dice with its source.

Real data: the three pelvic CTs with their manual, deep-learning and model-based contours; the CT starter's predictions.
"""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.cli import main
from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.ground.metrics import dice
from HILASegmentLib.inference.summary import PredictionSummary
from HILASegmentLib.quality.degrade import DEGRADATIONS, degraded_copies
from HILASegmentLib.quality.labelmodel import (
    SOURCE_ASSISTANT,
    SOURCE_LEARNED,
    SOURCE_SOFT,
    SYNTHETIC_WEIGHT,
    LabelQualityModel,
    fit_label_model,
)
from HILASegmentLib.quality.plausibility import MIN_REFERENCES, RAW_KEYS, label_shape, plausibility, zscore

CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")
ORGANS = ((1, "prostate"), (2, "bladder"), (3, "rectum"))


def _case(c, labels="manual"):
    img = sitk.ReadImage(str(shared("pelvic_ct", c, "ct.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("pelvic_ct", c, f"labels_{labels}.nii.gz"))))
    return img, sitk.GetArrayFromImage(img), lab


def test_shape_figures_of_real_organs():
    img, arr, lab = _case(CASES[0])
    vox_ml = float(np.prod(img.GetSpacing())) / 1000.0
    for v, name in ORGANS:
        m = lab == v
        raw = label_shape(m, arr, img.GetSpacing())
        assert set(raw) == set(RAW_KEYS)
        assert raw["ml"] == pytest.approx(np.count_nonzero(m) * vox_ml, rel=1e-4)
        ks = np.nonzero(m.any(axis=(1, 2)))[0]
        assert raw["extent_mm"] >= (ks.max() - ks.min() + 1) * img.GetSpacing()[2]  # at least its height
        assert raw["components"] == 0.0 and 0.0 < raw["boundary_ratio"] < 1.0  # manual organs are one piece
        assert raw["intensity_contrast"] > 0.0 and raw["intensity_sd"] > 0.0
    m = lab == 1
    cut = m.copy()
    ks = np.nonzero(m.any(axis=(1, 2)))[0]
    cut[ks[len(ks) // 2]] = False  # one slice removed: two pieces
    assert label_shape(cut, arr, img.GetSpacing())["components"] == 1.0
    assert label_shape(m & False, arr, img.GetSpacing())["ml"] == 0.0


def test_degradations_of_a_real_correction_and_their_true_dice():
    img, arr, lab = _case(CASES[1])
    for v, _ in ORGANS:
        m = lab == v
        base = label_shape(m, arr, img.GetSpacing())
        copies = {k: (bad, d) for k, bad, d in degraded_copies(m, seed=1)}
        assert len(copies) == len(DEGRADATIONS)
        for k, (bad, d) in copies.items():
            assert d == pytest.approx(dice(bad, m), abs=1e-5) and d < 1.0, k
        ml = {k: label_shape(bad, arr, img.GetSpacing())["ml"] for k, (bad, _) in copies.items()}
        assert ml["erode:2"] < ml["erode:1"] < base["ml"] < ml["dilate:1"] < ml["dilate:2"]
        assert ml["shift:2"] <= base["ml"] and ml["drop_slices:0.4"] < ml["drop_slices:0.2"] < base["ml"]
        n_slices = int(m.any(axis=(1, 2)).sum())
        assert int(copies["drop_slices:0.4"][0].any(axis=(1, 2)).sum()) == n_slices - round(0.4 * n_slices)


def test_volume_z_flags_the_genuinely_bad_auto_contour_on_real_ct():
    """Pelvic-Ref003's model-based contours are genuinely bad (prostate Dice 0.24, rectum 0.42 against the manual
    ones): against the other two cases' manual and deep-learning contours their volumes are far less plausible
    than the manual contour's. (The bladder is left out: its volume follows its filling, not the contour's quality.)"""
    raws = {}
    for c in CASES:
        img, arr, _ = _case(c)
        for s in ("manual", "dl", "mbs"):
            lab = _case(c, s)[2]
            for v, name in ORGANS:
                raws[c, s, name] = label_shape(lab == v, arr, img.GetSpacing())
    for name in ("prostate", "rectum"):
        refs = [raws[c, s, name] for c in (CASES[0], CASES[2]) for s in ("manual", "dl")]
        good, bad = plausibility(raws[CASES[1], "manual", name], refs), plausibility(raws[CASES[1], "mbs", name], refs)
        assert abs(bad["volume_z"]) > abs(good["volume_z"]) + 2.0, (name, good, bad)
        assert plausibility(raws[CASES[1], "mbs", name], refs[:MIN_REFERENCES - 1]) == {"volume_z": None,
                                                                                           "extent_z": None}
    # near-equal references: the spread is floored at a tenth of their mean, and z is capped at 10
    assert zscore(1.1, [1.0, 1.0, 1.0]) == pytest.approx(1.0) and zscore(5.0, [1.0, 1.0, 1.0]) == 10.0


def _raw(rng):
    return {"ml": float(rng.uniform(20, 80)), "extent_mm": float(rng.uniform(40, 60)),
            "boundary_ratio": float(rng.uniform(0.1, 0.3)), "components": float(rng.integers(0, 3)),
            "intensity_contrast": float(rng.uniform(0, 1)), "intensity_sd": float(rng.uniform(0, 2))}


def test_a_cases_degraded_copies_never_train_the_model_that_scores_it():
    """Each case's synthetic copies repeat its real pair exactly (features and true Dice), and six cases with seven
    features let a linear model pass through every pair: trained on a case's copies, it would predict that case
    almost perfectly (measured with the hold-out broken: rho 1.0, abs error 0.05). Held out by case, the features
    say nothing about the truth, so the nested leave-one-case-out figure must stay no better than a constant."""
    rng = np.random.default_rng(0)
    real, synth = [], []
    for i in range(6):
        p = {"case_id": f"c{i:02d}", "label": "prostate", "raw": _raw(rng), "soft": 0.7, "assistant": None,
             "true": float(rng.uniform(0.3, 0.95))}
        real.append(p)
        synth += [dict(p, synthetic=True) for _ in DEGRADATIONS]
    lm = fit_label_model(real, synth, {}, model_version=1)
    assert lm.n_real == 6 and lm.n_synthetic == 6 * len(DEGRADATIONS)
    assert lm.loo[SOURCE_LEARNED]["spearman"] < 0.9 and lm.loo[SOURCE_LEARNED]["mae"] > lm.loo[SOURCE_SOFT]["mae"]
    assert lm.source == SOURCE_SOFT
    assert SYNTHETIC_WEIGHT == pytest.approx(1.0 / len(DEGRADATIONS))


def test_the_per_label_source_is_the_one_that_wins_by_leave_one_case_out():
    rng = np.random.default_rng(2)

    def pairs(true_from, assistant_from=None):
        out = []
        for i in range(24):
            raw = _raw(rng)
            true = float(np.clip(true_from(raw), 0, 1))
            out.append({"case_id": f"c{i // 2:02d}", "label": ("prostate", "rectum")[i % 2], "raw": raw,
                        "soft": float(rng.uniform(0.6, 0.95)), "true": true,
                        "assistant": None if assistant_from is None else float(assistant_from(true))})
        return out

    learnable = pairs(lambda r: 0.95 - 0.8 * r["boundary_ratio"] - 0.1 * r["components"] + rng.normal(0, 0.01))
    lm = fit_label_model(learnable, [], {}, model_version=3)
    assert lm.source == SOURCE_LEARNED and lm.loo[SOURCE_LEARNED]["spearman"] > 0.7, lm.reason
    d, src = lm.predict("prostate", dict(_raw(rng), boundary_ratio=0.1, components=0.0), 0.5, None, {}, "new")
    assert src == SOURCE_LEARNED and d > 0.8
    agree = pairs(lambda r: float(rng.uniform(0.3, 0.95)), lambda t: t + rng.normal(0, 0.01))
    lm2 = fit_label_model(agree, [], {}, model_version=3)
    assert lm2.source == SOURCE_ASSISTANT, lm2.reason
    assert lm2.predict("rectum", None, 0.9, 0.42, {}, "new") == (0.42, SOURCE_ASSISTANT)
    assert lm2.predict("rectum", None, 0.9, None, {}, "new") == (0.9, SOURCE_SOFT)  # nothing recorded: soft
    exact = [dict(p, soft=p["true"]) for p in learnable]
    assert fit_label_model(exact, [], {}, model_version=3).source == SOURCE_SOFT
    few = fit_label_model(learnable[:4], [], {}, model_version=3)
    assert few.source == SOURCE_SOFT and "needs 6" in few.reason
    back = LabelQualityModel.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert back.predict("prostate", learnable[0]["raw"], 0.5, None, {}, "x") == lm.predict(
        "prostate", learnable[0]["raw"], 0.5, None, {}, "x")
    # a learned record an older version fitted on other features is set aside (the soft Dice stands), not an error
    old = dict(lm.to_dict(), features=list(lm.features)[:-1])
    aside = LabelQualityModel.from_dict(json.loads(json.dumps(old)))
    assert aside.source == SOURCE_SOFT and "other features" in aside.reason
    assert aside.predict("prostate", learnable[0]["raw"], 0.5, None, {}, "x") == (0.5, SOURCE_SOFT)


def test_a_per_label_model_never_scores_a_prediction_of_another_model_version():
    rng = np.random.default_rng(4)
    real = [{"case_id": f"c{i}", "label": "prostate", "raw": _raw(rng), "soft": 0.8, "assistant": None,
             "true": float(rng.uniform(0.3, 0.9))} for i in range(8)]
    lm = fit_label_model(real, [], {}, model_version=2)
    ev = {"prostate": (real[0]["raw"], 0.8, None)}
    assert lm.score(PredictionSummary(model_version=2), {}, "c0", ev)["prostate"][0] is not None
    with pytest.raises(HilaError, match="model v5.*scores model v2 predictions only"):
        lm.score(PredictionSummary(model_version=5), {}, "c0", ev, where="case c0")


# ---------------------------------------------------------------------------------------------- a real workspace

def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def ws4(tmp_path_factory):
    """The three real CTs with their manual contours as reviewed corrections of the CT starter's predictions, and a
    fourth, unreviewed case (Pelvic-Ref003 without its first and last five slices), predicted; quality model fitted."""
    root = tmp_path_factory.mktemp("ql")
    ws = root / "ws"
    assert main(["init", str(ws), "--modality", "CT", "--labels", "prostate,bladder,rectum",
                 "--model", "pelvic_ct_unet"]) == 0
    for c in CASES:
        assert main(["import", str(ws), str(shared("pelvic_ct", c, "ct.nii.gz")), "--name", c]) == 0
    img = sitk.ReadImage(str(shared("pelvic_ct", CASES[1], "ct.nii.gz")))
    sitk.WriteImage(img[:, :, 5:-5], str(root / "crop.nii.gz"))
    assert main(["import", str(ws), str(root / "crop.nii.gz"), "--name", "crop"]) == 0
    from HILASegmentLib.workspace import Workspace
    with Workspace.open(ws) as w:
        ids = {k.name: k.case_id for k in w.cases()}
    for name in ids:
        assert main(["infer", str(ws), ids[name]]) == 0
    for c in CASES:
        man = sitk.ReadImage(str(shared("pelvic_ct", c, "labels_manual.nii.gz")))
        arr = sitk.GetArrayFromImage(man)
        arr[arr > 3] = 0
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(man)
        sitk.WriteImage(out, str(root / f"{c}.nii.gz"))
        assert main(["submit", str(ws), ids[c], str(root / f"{c}.nii.gz"), "--quality", "reviewed"]) == 0
    with Workspace.open(ws) as w:
        qm = w.fit_quality_model()
    return ws, ids, qm


def test_fit_records_the_per_label_source_with_real_and_synthetic_pairs(ws4):
    ws, ids, qm = ws4
    lm = LabelQualityModel.from_dict(qm.per_label)
    assert lm.model_version == 1 and lm.n_real == 9 and lm.n_synthetic == 9 * len(DEGRADATIONS)
    assert set(lm.loo) >= {SOURCE_SOFT, SOURCE_LEARNED} and lm.source in (SOURCE_SOFT, SOURCE_LEARNED)
    assert "leave-one-case-out over 9 real per-label pairs (3 cases, plus 72 synthetic" in lm.reason
    from HILASegmentLib.workspace import Workspace
    with Workspace.open(ws) as w:
        pairs = w.parts.quality.label_pairs()
        pred = w.predictions(ids[CASES[0]])[-1]
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(pred.path)))
    m = _case(CASES[0])[2]
    got = {p["label"]: p["true"] for p in pairs if p["case_id"] == ids[CASES[0]]}
    assert got == pytest.approx({n: dice(a == v, m == v) for v, n in ORGANS}, abs=1e-4)


def test_rank_json_lists_each_labels_predicted_dice_and_its_source(ws4, capsys, tmp_path):
    ws, ids, qm = ws4
    rc, out, _ = run(capsys, "status", ws)
    assert rc == 0 and "per-label predicted Dice: " in out and "leave-one-case-out over 9 real per-label pairs" in out
    rc, out, _ = run(capsys, "rank", ws, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and [r["case_id"] for r in res["cases"]] == [ids["crop"]]
    case = res["cases"][0]
    assert [lab["name"] for lab in case["labels"]] == ["prostate", "bladder", "rectum"]
    lm = LabelQualityModel.from_dict(qm.per_label)
    assert res["quality_source"]["per_label"]["source"] == lm.source
    from HILASegmentLib.workspace import Workspace
    with Workspace.open(ws) as w:
        summary = PredictionSummary.from_dict(w.predictions(ids["crop"])[-1].uncertainty)
    soft = {lab.name: lab.predicted_dice for lab in summary.labels}
    for lab in case["labels"]:
        assert lab["source"] == lm.source and 0.0 <= lab["predicted_dice"] <= 1.0
        if lm.source == SOURCE_SOFT:
            assert lab["predicted_dice"] == soft[lab["name"]]
    # the per-label learned model, where it is the workspace's choice: its Dice per label, their mean for the case
    forced = tmp_path / "ws"
    shutil.copytree(ws, forced)
    rec = dict(qm.to_dict(), per_label=dict(qm.per_label, source=SOURCE_LEARNED))
    con = sqlite3.connect(forced / "hila.sqlite")
    with con:
        con.execute("INSERT INTO events (time, kind, entity, actor, details) VALUES ('t', 'quality_model', 'model v1', "
                    "'test', ?)", (json.dumps(rec),))
    con.close()
    rc, out, _ = run(capsys, "rank", forced, "--json")
    case = json.loads(out.strip().splitlines()[-1])["cases"][0]
    assert {lab["source"] for lab in case["labels"]} == {SOURCE_LEARNED}
    assert case["predicted_dice_source"] == SOURCE_LEARNED
    assert case["predicted_dice"] == pytest.approx(np.mean([lab["predicted_dice"] for lab in case["labels"]]), abs=1e-4)
    rc, out, _ = run(capsys, "rank", forced)
    assert rc == 0 and "prostate " in out and "(learned)" in out


def test_volume_plausibility_feeds_the_whole_prediction_model_never_from_its_own_case(ws4):
    """``volume_z_max`` (the learned model's plausibility feature): a pair's own correction is never among its
    references (three cases, so each pair has two others: too few, the feature reads 0); the unreviewed case is
    compared with all three, and a prediction with an implausible volume scores higher."""
    ws, ids, qm = ws4
    from HILASegmentLib.quality.learned import volume_z_max, with_plausibility
    from HILASegmentLib.workspace import Workspace
    with Workspace.open(ws) as w:
        pairs = w.quality_pairs()
        summary = PredictionSummary.from_dict(w.predictions(ids["crop"])[-1].uncertainty)
    assert len(pairs) == 3 and all(p["features"]["volume_z_max"] == 0.0 for p in pairs)
    assert sorted(qm.references) == sorted(ids[c] for c in CASES)
    z = with_plausibility(summary, qm.references)["volume_z_max"]
    big = PredictionSummary.from_dict(summary.to_dict())
    big.labels[0].ml = 5 * big.labels[0].ml
    assert volume_z_max(big, qm.references) > z >= 0.0
    assert volume_z_max(summary, qm.references, exclude=[ids[CASES[0]]]) == 0.0  # two references left: none
