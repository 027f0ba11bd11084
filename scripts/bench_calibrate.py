"""Which conventions threshold calibration can learn: TAPS's threshold fitted on two ProstateX patients, tested on the
third (each patient once), against references constructed from TAPS's own output in several ways.

    python scripts/bench_calibrate.py [--data ../shared/data/prostate_mri] [--threads 2]

Why: the convention-shift cohort (TAPS's output grown by 3 mm) is a best case for calibration, since lowering a
threshold grows the very probability field the reference was made from. This control (first written by an
independent reviewer) asks the same question of an anisotropic margin, a shrunk contour, dropped end slices and a
shifted contour: calibration can only widen or narrow the model's masks, so it should gain nothing on the shift.
Prints, per convention, TAPS as shipped, the leave-one-patient-out calibrated Dice and the best threshold's in hindsight
(mean over the three test patients), with the thresholds chosen. Load-independent (no training).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HILASegment"))

from HILASegmentLib.formats.imageio import read_image  # noqa: E402
from HILASegmentLib.ground.metrics import dice  # noqa: E402
from HILASegmentLib.inference.segmenter import Segmenter  # noqa: E402
from HILASegmentLib.models.modelgrid import largest_components  # noqa: E402
from HILASegmentLib.training.calibrate import THRESHOLDS  # noqa: E402

SERIES = ("ProstateX-0000_t2_s4", "ProstateX-0001_t2_s10", "ProstateX-0218_t2_s5")


def distance_mm(label: sitk.Image, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Signed distance (mm, negative inside) to ``label``, with the axes' spacing multiplied by ``scale``."""
    lab = sitk.Cast(label > 0, sitk.sitkUInt8)
    lab.SetSpacing(tuple(float(s) * f for s, f in zip(lab.GetSpacing(), scale)))
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(lab, insideIsPositive=False, squaredDistance=False,
                                                                useImageSpacing=True))


def conventions(taps: sitk.Image) -> dict:
    t = sitk.GetArrayFromImage(taps) > 0
    iso = distance_mm(taps)
    zs = np.flatnonzero(t.any(axis=(1, 2)))
    dropped = np.isin(np.arange(t.shape[0]), zs[:2])[:, None, None]
    return {"3 mm isotropic margin (the cohort's)": iso <= 3.0,
            "1 mm in-plane, 6 mm superior-inferior": distance_mm(taps, (3.0, 3.0, 0.5)) <= 3.0,
            "shrunk by 2 mm": iso <= -2.0,
            "3 mm margin, first 2 slices dropped": (iso <= 3.0) & ~dropped,
            "shifted 4 mm along the image's rows": np.roll(t, int(round(4.0 / taps.GetSpacing()[1])), axis=1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "prostate_mri")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    seg = Segmenter("taps", threads=args.threads, device="cpu")
    own = float(seg.card.postprocess["threshold"])
    grid = sorted(set(THRESHOLDS) | {own})
    tables = {}
    for name in SERIES:
        image = read_image(args.data / f"{name}.nrrd")
        (prob,) = seg.segment(image, probabilities=True).probabilities.values()
        p = sitk.GetArrayFromImage(sitk.Resample(prob, image, sitk.Transform(), sitk.sitkLinear, 0.0))
        masks = {t: largest_components((p > t).astype(np.uint8), [1]) > 0 for t in grid}
        for conv, ref in conventions(sitk.ReadImage(str(args.data / f"{name}_taps.nii.gz"))).items():
            tables.setdefault(conv, {})[name] = {t: dice(m, ref) for t, m in masks.items()}
    print(f"| reference constructed from TAPS's output | TAPS as shipped ({own:g}) | threshold fitted on the other two "
          "patients | best threshold in hindsight | thresholds chosen |")
    print("|---|---|---|---|---|")
    for conv, tab in tables.items():
        rows = []
        for test in SERIES:
            fit = [n for n in SERIES if n != test]
            best = max(grid, key=lambda t: (np.mean([tab[n][t] for n in fit]), -abs(t - own)))
            rows.append((tab[test][own], tab[test][best], max(tab[test].values()), best))
        m = np.mean([r[:3] for r in rows], axis=0)
        print(f"| {conv} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {', '.join(f'{r[3]:g}' for r in rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
