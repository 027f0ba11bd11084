"""Rebuild Resources/DemoData/ from the real pelvic CTs in ../shared/data/pelvic_ct.

`make demo` runs on a fresh clone, so it needs its data in the repository. The three real pelvic CTs
(TCIA Pelvic-Reference-Data, CC BY) are resampled from 1x1x3 mm to 2x2x3 mm (linear for the CT,
nearest neighbour for the label maps, same physical extent) to keep them about 1.5 MB in all; the
trainer works on a 3 mm grid anyway, so the demo's numbers are representative.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
CASES = ["Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"]
SPACING = (2.0, 2.0, 3.0)


def resample(img: sitk.Image, interpolator: int, spacing=SPACING) -> sitk.Image:
    """Same origin and direction, coarser spacing, covering the same physical extent."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    return sitk.Resample(img, size, sitk.Transform(), interpolator, img.GetOrigin(), spacing,
                         img.GetDirection(), 0 if interpolator == sitk.sitkNearestNeighbor else -1024,
                         img.GetPixelID())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "pelvic_ct")
    ap.add_argument("--out", type=Path, default=ROOT / "Resources" / "DemoData" / "pelvic_ct")
    a = ap.parse_args(argv)
    if not a.source.is_dir():
        print(f"make_demo_data: no source folder {a.source}", file=sys.stderr)
        return 2
    for case in CASES:
        out = a.out / case
        out.mkdir(parents=True, exist_ok=True)
        ct = sitk.ReadImage(str(a.source / case / "ct.nii.gz"))
        sitk.WriteImage(resample(ct, sitk.sitkLinear), str(out / "ct.nii.gz"), True)
        for name in ("labels_manual", "labels_dl"):
            lab = sitk.ReadImage(str(a.source / case / f"{name}.nii.gz"))
            sitk.WriteImage(resample(lab, sitk.sitkNearestNeighbor), str(out / f"{name}.nii.gz"), True)
        print(f"{case}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
