"""The bundled starter models: small, carded, reproducible, and sensible on the real data they came from."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, shared

from HILASegmentLib.formats import terminology
from HILASegmentLib.formats.imageio import read_image, same_grid
from HILASegmentLib.formats.segfile import read_segmentation
from HILASegmentLib.ground.colors import label_color
from HILASegmentLib.models.modelcard import resolve_model

MODELS = ROOT / "HILASegment" / "HILASegmentLib" / "models"
ORGANS = {1: "prostate", 2: "bladder", 3: "rectum"}


def test_every_starter_is_small_carded_and_rebuilt_by_a_script():
    files = sorted(MODELS.glob("*.onnx"))
    assert files, "no starter model in HILASegmentLib/models"
    script = (ROOT / "scripts" / "make_starter_models.py").read_text(encoding="utf-8")
    for f in files:
        assert f.stat().st_size <= 25 * 2**20, f"{f.name} is over 25 MB"
        path, card = resolve_model(f.stem)
        assert path == f and card.name == f.stem
        assert f.name in script, f"{f.name} is not written by scripts/make_starter_models.py"


def test_ct_starter_card_records_disjoint_leave_one_out_folds():
    """The card's structure only (which case each fold held out and trained on); its figures are the build
    script's, so the test below recomputes what it asserts instead of reading them."""
    _, card = resolve_model("pelvic_ct_unet")
    assert card.modality == "CT" and [l.name for l in card.labels] == list(ORGANS.values())
    folds = card.metrics.leave_one_out["folds"]
    assert sorted(f["held_out"] for f in folds) == ["Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"]
    for f in folds:
        assert f["held_out"] not in f["trained_on"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def _atlas_baseline(case: str, image: sitk.Image) -> np.ndarray:
    """A real baseline that looks at no voxel of this case: another patient's manual labels, moved so that
    the two fields of view share their centre, resampled onto this case's grid (nearest neighbour)."""
    other = next(c for c in ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005") if c != case)
    lab = sitk.ReadImage(str(shared("pelvic_ct", other, "labels_manual.nii.gz")))

    def centre(im):
        return np.asarray(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))

    shift = sitk.TranslationTransform(3, [float(v) for v in centre(lab) - centre(image)])
    return sitk.GetArrayFromImage(sitk.Resample(lab, image, shift, sitk.sitkNearestNeighbor, 0))


@pytest.mark.parametrize("case", ["Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"])
def test_hila_infer_with_the_ct_starter_beats_an_atlas_baseline_on_the_real_ct(case, tmp_path):
    """In-sample (the starter saw all three cases): the shipped file through the CLI, its Dice recomputed here
    against the manual labels and compared with a baseline recomputed here too (never the card's figures)."""
    ct = shared("pelvic_ct", case, "ct.nii.gz")
    out = tmp_path / "p.seg.nrrd"
    r = subprocess.run([sys.executable, "-m", "HILASegmentLib", "infer", "--image", str(ct), "--out", str(out),
                        "--model", "pelvic_ct_unet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    seg = read_segmentation(out)
    image = read_image(ct)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("pelvic_ct", case, "labels_manual.nii.gz"))))
    atlas = _atlas_baseline(case, image)
    for value, organ in ORGANS.items():
        mask = seg.mask(organ)
        assert same_grid(mask, image, tol=1e-6)
        m, g = sitk.GetArrayFromImage(mask) > 0, ref == value
        d, base = _dice(m, g), _dice(atlas == value, g)
        assert d > base + 0.1, f"{case} {organ}: Dice {d:.3f}, atlas baseline {base:.3f}"
        assert seg.segment(organ).tags.get("HILA.model") == "pelvic_ct_unet"
        # the one colour table and the structure's standard terminology (SNOMED CT), not the card's colour / "Tissue"
        assert seg.segment(organ).color == label_color(organ)
        assert seg.segment(organ).tags["TerminologyEntry"] == terminology.entry_for(organ)
