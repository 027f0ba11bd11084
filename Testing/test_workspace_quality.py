"""quality/effort.py and quality/ranking.py: the effort signal (Dice per label, voxels changed) and the review ranking."""
import numpy as np
import pytest

from HILASegmentLib.inference.summary import PredictionSummary
from HILASegmentLib.quality import effort as q
from HILASegmentLib.quality import ranking

PAIRS = [(1, "prostate"), (2, "bladder")]


def test_dice_and_label_change():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2, :2] = 1          # 4 voxels
    b[0, :2, :1] = 1          # 2 voxels, inside a
    b[3, 3, 3] = 2
    ch = q.label_change(a, b, PAIRS)
    assert ch["dice"] == {"prostate": pytest.approx(2 * 2 / 6), "bladder": 0.0}
    assert ch["voxels_changed"] == 3 and ch["voxels_changed_per_label"] == {"prostate": 2, "bladder": 1}
    assert ch["fraction_changed"] == pytest.approx(3 / 5)
    same = q.label_change(a, a, PAIRS)
    assert same["voxels_changed"] == 0 and same["dice"] == {"prostate": 1.0, "bladder": 1.0}
    with pytest.raises(ValueError):
        q.label_change(a, a[:2], PAIRS)
    scratch = q.drawn_from_scratch(a, PAIRS)
    assert scratch["voxels_changed"] == 4 and scratch["dice"] == {"prostate": None, "bladder": None}


@pytest.mark.parametrize("summary,need", [
    (PredictionSummary(mean_uncertainty=0.3, uncertainty="entropy"), 0.3),
    (PredictionSummary(predicted_dice=0.8), pytest.approx(0.2)),
    (PredictionSummary(predicted_dice=0.8, mean_uncertainty=0.5), pytest.approx(0.2)),  # the expected Dice first
    (PredictionSummary(uncertainty="entropy"), None), (None, None), (PredictionSummary(mean_uncertainty=float("nan")), None),
    # a stored summary: the keys the Segmenter writes, and no guessing among others
    (PredictionSummary.from_dict({"predicted_dice": 0.9, "labels": [{"value": 1, "name": "p", "predicted_dice": 0.9}]}),
     pytest.approx(0.1)),
    (PredictionSummary.from_dict({"expected_dice": 0.8, "entropy": 0.5}), None),
])
def test_review_need(summary, need):
    assert ranking.review_need(summary) == need


def test_summary_round_trip_keeps_named_and_unknown_keys():
    d = {"model": "m", "predicted_dice": 0.7, "labels": [{"value": 1, "name": "prostate", "voxels": 5, "ml": 0.1,
                                                          "mean_uncertainty": 0.2, "predicted_dice": 0.7}],
         "labels_not_in_workspace": ["femur"]}
    s = PredictionSummary.from_dict(d)
    assert s.labels[0].name == "prostate" and s.labels[0].predicted_dice == 0.7 and s.extra == {"labels_not_in_workspace": ["femur"]}
    assert {k: v for k, v in s.to_dict().items() if v is not None} == d


def test_rank_order():
    cases = [{"case_id": "a", "predicted": False}, {"case_id": "b", "predicted": True, "uncertainty": {"mean_uncertainty": 0.1}},
             {"case_id": "c", "predicted": True, "uncertainty": None}, {"case_id": "d", "predicted": True,
                                                                         "uncertainty": {"mean_uncertainty": 0.7}}]
    ranked = ranking.rank_cases(cases)
    assert [r["case_id"] for r in ranked] == ["d", "b", "c", "a"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4] and ranked[0]["review_need"] == 0.7
