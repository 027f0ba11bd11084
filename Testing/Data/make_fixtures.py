"""Rebuild the small real-data fixtures in Testing/Data from ../shared/data (see PROVENANCE.md).

    .venv/bin/python Testing/Data/make_fixtures.py [SHARED_DATA]

Crops keep the real geometry (oblique direction, spacing, origin moved to the crop corner) so the
geometry tests run in a fresh clone without the shared data.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"


def crop_around(label: sitk.Image, values, margin_ijk):
    arr = sitk.GetArrayViewFromImage(label)
    idx = np.argwhere(np.isin(arr, values))  # k, j, i
    lo = np.maximum(idx.min(0) - margin_ijk[::-1], 0)
    hi = np.minimum(idx.max(0) + margin_ijk[::-1] + 1, arr.shape)
    start = [int(x) for x in lo[::-1]]
    size = [int(x) for x in (hi - lo)[::-1]]
    return start, size


def main() -> None:
    for name in ("Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"):
        shutil.copyfile(DATA / "slicer_seg" / name, HERE / name)

    ct = sitk.ReadImage(str(DATA / "pelvic_ct" / "Pelvic-Ref002" / "ct.nii.gz"))
    lab = sitk.ReadImage(str(DATA / "pelvic_ct" / "Pelvic-Ref002" / "labels_manual.nii.gz"))
    start, size = crop_around(lab, [1], np.array([6, 6, 2]))
    ct_c = sitk.RegionOfInterest(ct, size, start)
    lab_c = sitk.Cast(sitk.RegionOfInterest(lab, size, start), sitk.sitkUInt8)
    sitk.WriteImage(ct_c, str(HERE / "pelvic_ct_small.nrrd"), True)
    sitk.WriteImage(lab_c, str(HERE / "pelvic_ct_small_labels.nii.gz"), True)

    mr = sitk.ReadImage(str(DATA / "prostate_mri" / "ProstateX-0000_t2_s4.nrrd"))
    taps = sitk.ReadImage(str(DATA / "prostate_mri" / "ProstateX-0000_t2_s4_taps.nii.gz"))
    start, size = crop_around(taps, [1], np.array([4, 4, 1]))
    # every other voxel in-plane keeps the file small and the geometry real (spacing doubles)
    mr_c = sitk.RegionOfInterest(mr, size, start)[::2, ::2, :]
    taps_c = sitk.Cast(sitk.RegionOfInterest(taps, size, start)[::2, ::2, :], sitk.sitkUInt8)
    taps_c.CopyInformation(mr_c)
    sitk.WriteImage(mr_c, str(HERE / "prostate_mri_oblique_small.nrrd"), True)
    sitk.WriteImage(taps_c, str(HERE / "prostate_mri_oblique_small_taps.nii.gz"), True)
    for f in sorted(HERE.iterdir()):
        print(f.name, f.stat().st_size)


if __name__ == "__main__":
    main()
