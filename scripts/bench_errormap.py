"""Does flip agreement make the likely-error map find more of the wrong voxels? (issue 26, item 2)

    nice -n 19 .venv/bin/python scripts/bench_errormap.py [--out bench-errormap]

The shipped CT starter on the three real pelvic CTs (in-sample: it was trained on them), against their manual
contours. For each way of making the map, the recall at 20 % of the predicted foreground (wrong voxels inside the
flagged 20 %, micro over the three CTs), against the boundary band (the same number of voxels nearest the predicted
boundary, mm) and random voxels, as ``bench_quality.recall`` counts them. Maps: the model's own ``1 - p(chosen)``
(no TTA); with the left-right flip (the product's ``--tta``: the larger of that and the flips' disagreement); with
the three array-axis flips (the old default). Each map's own prediction is scored (TTA changes the labels too), and
the Dice is printed beside it. Then the model's own map combined with the disagreement of an independent second
prediction (the image mirrored left-right, segmented, mirrored back), at weights 0, 0.25 and 1. Deterministic (seeded band tie-breaks and random voxels); load-independent figures.
Writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import COUNTS, rates, recall  # noqa: E402

from HILASegmentLib.ground.metrics import dice  # noqa: E402
from HILASegmentLib.inference.segmenter import Segmenter, patient_lr_axis  # noqa: E402
from HILASegmentLib.models.modelcard import resolve  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pelvic_ct"
CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-errormap")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    found = resolve("pelvic_ct_unet")
    three = dataclasses.replace(found.card, inference={**found.card.inference, "tta_flips": [[0], [1], [2]]})
    arms = {"no_tta": (Segmenter(found.path, threads=a.threads), False),
            "lr_flip": (Segmenter(found.path, threads=a.threads), True),
            "three_flips": (Segmenter(found.path, card=three, threads=a.threads), True)}
    results = {}
    for arm, (seg, tta) in arms.items():
        rng = np.random.default_rng(0)
        counts, dices = dict.fromkeys(COUNTS, 0), []
        for c in CASES:
            img = sitk.ReadImage(str(DATA / c / "ct.nii.gz"))
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / c / "labels_manual.nii.gz")))
            ref[ref > 3] = 0
            r = seg.segment(img, tta=tta)
            pred = sitk.GetArrayFromImage(r.label)
            dices.append([round(dice(pred == v, ref == v), 4) for v in (1, 2, 3)])
            rc = recall(sitk.GetArrayViewFromImage(r.review_map), pred, ref, rng, img.GetSpacing())
            for k in counts:
                counts[k] += rc[k]
        results[arm] = {"recall_micro": rates(counts), "dice_per_case": dices,
                        "dice_mean": round(float(np.mean(dices)), 4), "flips": r.summary.get("tta_flips")}
        print(json.dumps({arm: results[arm]}), flush=True)
    results.update(mirrored_disagreement(arms["no_tta"][0]))
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def mirrored_disagreement(seg: Segmenter) -> dict:
    """The model's own map combined with the disagreement of a second, independent prediction: the same model on
    the image mirrored across the patient's left-right axis (its labels mirrored back). Flagged first: voxels where
    the two predictions disagree (``err + w`` there), ordered by the model's own error probability."""
    out = {}
    rows = []
    for c in CASES:
        img = sitk.ReadImage(str(DATA / c / "ct.nii.gz"))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / c / "labels_manual.nii.gz")))
        ref[ref > 3] = 0
        ax = 2 - patient_lr_axis(np.asarray(img.GetDirection()).reshape(3, 3))  # the array axis (z, y, x order)
        mir = sitk.GetImageFromArray(np.flip(sitk.GetArrayFromImage(img), axis=ax).copy())
        mir.CopyInformation(img)
        r, rm = seg.segment(img), seg.segment(mir)
        pred = sitk.GetArrayFromImage(r.label)
        second = np.flip(sitk.GetArrayFromImage(rm.label), axis=ax)
        rows.append((img, ref, pred, sitk.GetArrayFromImage(r.review_map), second != pred))
    for w in (0.0, 0.25, 1.0):
        rng = np.random.default_rng(0)
        counts = dict.fromkeys(COUNTS, 0)
        for img, ref, pred, err, dis in rows:
            rc = recall(np.clip(err + w * dis, 0, 2).astype(np.float32), pred, ref, rng, img.GetSpacing())
            for k in counts:
                counts[k] += rc[k]
        out[f"own_map_plus_{w:g}_x_mirror_disagreement"] = {"recall_micro": rates(counts)}
        print(json.dumps({f"own_map_plus_{w:g}_x_mirror_disagreement": rates(counts)}), flush=True)
    out["mirror_disagreement_share_of_foreground"] = round(float(np.mean([d.sum() / max((p > 0).sum(), 1)
                                                                          for _, _, p, _, d in rows])), 4)
    return out


if __name__ == "__main__":
    sys.exit(main())
