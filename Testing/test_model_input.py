"""One model input for both paths: a case's training arrays equal what the Segmenter feeds the network.

The Segmenter's input is captured where it is tiled into windows (``Segmenter._run_region``'s region of the
normalised model-grid image), for the shipped CT starter on a real CT and for an MR model on a real oblique
prostate MRI, and compared voxel for voxel with ``training.dataset.to_model_grid`` for the same card.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FIXTURES
from tiny_models import tiny_model

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.inference.segmenter import Segmenter
from HILASegmentLib.models.modelgrid import extract

ds = pytest.importorskip("HILASegmentLib.training.dataset", reason="could not import 'torch'")


def _segmenter_input(seg: Segmenter, image: sitk.Image, monkeypatch) -> np.ndarray:
    seen = []
    original = Segmenter._run_region

    def spy(self, norm, region, *a, **k):
        seen.append(extract(norm, region))
        return original(self, norm, region, *a, **k)

    monkeypatch.setattr(Segmenter, "_run_region", spy)
    seg.segment(image)
    assert seen, "the Segmenter never ran its network"
    return seen[0]


@pytest.mark.parametrize("case", ["ct", "mr_oblique"])
def test_training_input_equals_segmenter_input(case, tmp_path, monkeypatch):
    if case == "ct":
        image = sitk.ReadImage(str(FIXTURES / "pelvic_ct_small.nrrd"))
        label = sitk.ReadImage(str(FIXTURES / "pelvic_ct_small_labels.nii.gz"))
        seg = Segmenter("pelvic_ct_unet")
    else:
        image = sitk.ReadImage(str(FIXTURES / "prostate_mri_oblique_small.nrrd"))
        label = sitk.ReadImage(str(FIXTURES / "prostate_mri_oblique_small_taps.nii.gz"))
        seg = Segmenter(tiny_model(tmp_path, "softmax", spacing=(1.5, 1.5, 3.0), patch=(32, 32, 16)))
    fed = _segmenter_input(seg, image, monkeypatch)
    prep = ds.Preprocessing.from_card(seg.card)
    x, y = ds.to_model_grid(image, label, prep)
    assert x.shape[1:] == fed.shape
    assert np.array_equal(x[0], fed), f"max difference {np.abs(x[0] - fed).max()}"
    assert y.shape == x.shape and y.max() > 0


def test_no_body_refused_by_both_paths(tmp_path):
    image = sitk.Image([40, 40, 12], sitk.sitkFloat32)  # all zero: nothing to segment, nothing to learn from
    image.SetSpacing([1.0, 1.0, 2.0])
    seg = Segmenter(tiny_model(tmp_path, "softmax"))
    prep = ds.Preprocessing.from_card(seg.card)
    with pytest.raises(HilaError, match="no body"):
        seg.segment(image)
    with pytest.raises(HilaError, match="no body"):
        ds.to_model_grid(image, None, prep)
