"""A convention-shift MRI cohort: real ProstateX T2 series whose reference is TAPS's own output grown by a 3 mm margin.

    python scripts/make_convention_cohort.py OUT_DIR [--data ../shared/data/prostate_mri] [--margin-mm 3]

Why: a site whose convention differs from a pretrained model's (here, as a radiotherapy site might contour a
prostate with a margin) is where starting from that model should pay. The convention is CONSTRUCTED: no
radiologist drew these references; each is TAPS's output (``*_taps.nii.gz`` beside the series, the public TAPS
model's own result) grown by every voxel whose centre lies within ``--margin-mm`` of it (a Euclidean distance map
in mm, so the margin is isotropic in space whatever the voxel size). One series per patient (ProstateX-0001's
second series is the same patient and would leak between test and pool). Writes OUT_DIR/manifest.csv
(case,image,reference) for ``hila simulate --cohort``; images are linked, not copied.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import SimpleITK as sitk

SERIES = ("ProstateX-0000_t2_s4", "ProstateX-0001_t2_s10", "ProstateX-0218_t2_s5")


def grown(label: sitk.Image, margin_mm: float) -> sitk.Image:
    """``label`` (0/1) with every voxel whose centre lies within ``margin_mm`` of it (distances in mm)."""
    fg = sitk.Cast(label > 0, sitk.sitkUInt8)
    dist = sitk.SignedMaurerDistanceMap(fg, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    out = sitk.Cast(dist <= float(margin_mm), sitk.sitkUInt8)
    out.CopyInformation(label)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "prostate_mri")
    ap.add_argument("--margin-mm", type=float, default=3.0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in SERIES:
        image, taps = args.data / f"{name}.nrrd", args.data / f"{name}_taps.nii.gz"
        if not image.is_file() or not taps.is_file():
            sys.exit(f"{image if not image.is_file() else taps}: not found (the ProstateX series and their TAPS outputs)")
        ref = grown(sitk.ReadImage(str(taps)), args.margin_mm)
        ref_path = args.out / f"{name}_taps_plus{args.margin_mm:g}mm.nii.gz"
        sitk.WriteImage(ref, str(ref_path), True)
        link = args.out / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
        n0 = int(sitk.GetArrayFromImage(sitk.ReadImage(str(taps))).sum())
        n1 = int(sitk.GetArrayFromImage(ref).sum())
        print(f"{name}: TAPS {n0} voxels -> reference {n1} voxels (x{n1 / max(n0, 1):.2f})")
        rows.append({"case": name, "image": link.name, "reference": ref_path.name})
    with open(args.out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["case", "image", "reference"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out / 'manifest.csv'} ({len(rows)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
