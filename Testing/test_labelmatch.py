from pathlib import Path

import pytest

from HILASegmentLib.ground.labelmatch import match_label, missing_labels, terminology_name

LABELS = [("prostate", 1), ("bladder", 2), ("rectum", 3)]


def test_name_case_tag_and_alias():
    assert match_label("Prostate", {}, LABELS) == 1
    assert match_label("  prostate ", {}, LABELS) == 1
    assert match_label("Segment_7", {"hila_1": "1"}, LABELS) == 1
    assert match_label("x", {"hila_label": "3"}, LABELS) == 3
    assert match_label("Vescica", {}, LABELS) == 2
    assert match_label("Urinary bladder", {}, LABELS) == 2
    assert match_label("Anorectum", {}, LABELS) == 3
    assert match_label("Retto", {}, LABELS) == 3
    assert match_label("liver", {}, LABELS) is None
    assert match_label("x", {"hila_9": "9"}, LABELS) is None


def test_missing_labels_named():
    assert missing_labels([("Prostata", {}), ("bladder", {})], LABELS) == ["rectum"]


def test_terminology_tag_from_real_seg_nrrd():
    path = Path(__file__).resolve().parents[1] / "../shared/data/slicer_seg/Segmentation.seg.nrrd"
    if not path.is_file():
        pytest.skip("real Slicer .seg.nrrd not available")
    header = path.read_bytes()[:20000].decode("latin-1")
    line = next(ln for ln in header.splitlines() if ln.startswith("Segment0_Tags:="))
    tags = dict(t.split(":", 1) for t in line.split(":=", 1)[1].split("|") if ":" in t)
    assert terminology_name(tags) == "Rib"
    assert match_label("Segment_1", tags, [("rib", 5)]) == 5


def test_the_review_segment_matches_no_label_even_when_named_like_one():
    from HILASegmentLib.ground.labelmatch import REVIEW_NAME, REVIEW_TAG, match_label, missing_labels
    labels = [("prostate", 1), (REVIEW_NAME, 2)]
    assert match_label(REVIEW_NAME, {REVIEW_TAG: "1"}, labels) is None
    assert match_label("prostate", {REVIEW_TAG: "1", "hila_label": "1"}, labels) is None
    assert match_label("prostate", {}, labels) == 1
    assert missing_labels([("prostate", {REVIEW_TAG: "1"})], [("prostate", 1)]) == ["prostate"]


def test_a_segment_renamed_to_another_labels_name_is_flagged_not_matched_by_either():
    """The AI's prostate (tag 1) renamed "bladder" by the user: tag and name stand for two labels; Accept asks."""
    from HILASegmentLib.ground.labelmatch import renamed_to_another

    pairs = [("prostate", 1), ("bladder", 2)]
    assert renamed_to_another("bladder", {"hila_label": "1"}, pairs) == ("prostate", "bladder")
    assert renamed_to_another("Bladder", {"hila_label": "2"}, pairs) is None  # name and tag agree
    assert renamed_to_another("my prostate edit", {"hila_label": "1"}, pairs) is None  # a name of no label: the tag
    assert renamed_to_another("bladder", {}, pairs) is None  # no tag: the name decides
    assert renamed_to_another("bladder", {"hila_label": "1", "hila_review": "1"}, pairs) is None
