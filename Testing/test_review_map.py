"""Likely-error map and expected Dice (quality.error_probability / review_region / add_review_segment)."""
import numpy as np
import SimpleITK as sitk

from HILASegmentLib.formats.segfile import Segmentation
from HILASegmentLib.ground.labelmatch import REVIEW_TAG
from HILASegmentLib.inference.errormap import add_review_segment, error_probability, review_region


def test_error_probability_softmax_is_one_minus_chosen_and_soft_dice():
    p = np.zeros((2, 1, 1, 4), np.float32)
    p[1, 0, 0] = [0.9, 0.6, 0.4, 0.1]
    p[0] = 1 - p[1]
    lab = p.argmax(axis=0)
    err, dices = error_probability(p, lab, softmax=True)
    assert np.allclose(err[0, 0], [0.1, 0.4, 0.4, 0.1], atol=1e-6)
    assert abs(dices[0] - 2 * 1.5 / (2.0 + 2)) < 1e-3  # 2 Σp·m / (Σp + Σm)
    err2, _ = error_probability(p, lab, softmax=True, spread=np.full(lab.shape, 0.5, np.float32))
    assert (err2 >= 0.5).all()


def test_review_region_is_the_top_share_of_foreground_in_its_own_layer():
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[1:3, 2:8, 2:8] = 1
    err = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    m = review_region(err, lab, 0.2)
    assert abs(int(m.sum()) - round(0.2 * lab.astype(bool).sum())) <= 1
    assert err[m].min() >= err[~m].max()
    img = sitk.GetImageFromArray(lab)
    seg = Segmentation.from_label_image(img, [(1, "prostate", (0.8, 0.6, 0.4))])
    s = add_review_segment(seg, sitk.GetImageFromArray(err), img)
    assert s.layer not in {x.layer for x in seg.segments if x is not s}
    assert s.tags[REVIEW_TAG] == "1"
    seg.validate()


def test_a_prediction_without_a_review_map_asked_for_one_is_refused_nothing_written(tmp_path):
    """A result whose review map was dropped (or never made) asked for the review segment or map: one line."""
    import pytest
    from conftest import shared

    from HILASegmentLib.cli.infer import sitk_review
    from HILASegmentLib.formats.segfile import write_segmentation
    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.inference.segmenter import Segmenter

    image = sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref005", "ct.nii.gz")))
    res = Segmenter("pelvic_ct_unet").segment(image)
    seg = res.to_segmentation(review=True)
    assert any(s.tags.get(REVIEW_TAG) == "1" for s in seg.segments)
    res.review_map = None
    for ask in (lambda: res.to_segmentation(review=True), lambda: sitk_review(res)):
        with pytest.raises(HilaError, match="has no review map") as exc:
            ask()
        assert "\n" not in str(exc.value)
    out = tmp_path / "p.seg.nrrd"
    with pytest.raises(HilaError):
        write_segmentation(res.to_segmentation(review=True), out)
    assert not out.exists()
    assert not any(s.tags.get(REVIEW_TAG) for s in res.to_segmentation().segments)
