"""Labels of every quality (issue 13), the parts measured so far, on the real pelvic CT:

1. Suspect detection: the three CTs in one workspace with the CT starter as the parent model; one case's
   corrections replaced by its auto-contour set (`labels_dl` or `labels_mbs`), the others manual; which
   corrections the peer rule (HILASegmentLib.suspects) flags. Plus all-manual (should flag nothing).
   Caveat: the starter was trained on these three CTs' manual contours, so it agrees with them in-sample.
2. Weak labels: Dice of the box pseudo-mask (HILASegmentLib.weak.box_mask, tight box from the manual
   label) against the manual prostate and bladder.

3. ``--simulate-run RUN`` (repeatable): suspect precision/recall of a finished
   ``hila simulate --rough-rate P --rough-unmarked`` run: the injected (degraded, submitted as reviewed)
   corrections of rounds >= 1 (round 0 has no parent model to score it) against the flags in its workspace.

Not measured here (not yet run): accuracy against rough-label rate with/without --ignore-band, weak cold start.
Usage: nice -n 10 python scripts/bench_labels.py [--data ../shared/data] [--simulate-run RUN] [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))

from HILASegmentLib.metrics import dice  # noqa: E402
from HILASegmentLib.training import suspects as tsus  # noqa: E402
from HILASegmentLib.weak import box_mask  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")
LABELS = [(1, "prostate"), (2, "bladder"), (3, "rectum")]


def _organs(path: Path) -> sitk.Image:
    lab = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(lab)
    arr[arr > 3] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(lab)
    return out


def suspect_configs(data: Path, tmp: Path) -> list:
    ws = Workspace.create(tmp / "ws", "CT", [n for _, n in LABELS], model="pelvic_ct_unet")
    ids = {c: ws.import_volume(data / "pelvic_ct" / c / "ct.nii.gz", name=c).case_id for c in CASES}
    model = ws.current_model()
    cache = {}
    rows = []
    configs = [(None, None)] + [(c, s) for c in CASES for s in ("labels_dl", "labels_mbs")]
    for bad, kind in configs:
        items = []
        for c in CASES:
            key = (c, kind if c == bad else "labels_manual")
            if key not in cache:  # one correction per (case, set), submitted once: versions stay comparable
                ws.submit(ids[c], _organs(data / "pelvic_ct" / c / f"{key[1]}.nii.gz"))
                cache[key] = ws.snapshot()
            items.append(next(s for s in cache[key] if s.case_id == ids[c]))
        t = time.monotonic()
        res = tsus.scan(_NoFlags(), None, model, items, LABELS)
        flagged = sorted(next(c for c in CASES if ids[c] == f["case_id"]) for f in res["flagged"])
        rows.append({"intruder": f"{bad} {kind}" if bad else "none (all manual)", "flagged": flagged,
                     "reasons": [f["reason"] for f in res["flagged"]], "seconds": round(time.monotonic() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    ws.close()
    return rows


class _NoFlags:
    """The bench scores and reports; it records no flags (configurations share one workspace)."""

    def flag_suspects(self, flagged, **_):
        return len(flagged)


def weak_dice(data: Path) -> dict:
    out = {}
    for c in CASES:
        img = sitk.ReadImage(str(data / "pelvic_ct" / c / "ct.nii.gz"))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "pelvic_ct" / c / "labels_manual.nii.gz")))
        for value, name in LABELS[:2]:
            k, j, i = np.nonzero(lab == value)
            pts = [img.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
                   for x in (i.min(), i.max()) for y in (j.min(), j.max()) for z in (k.min(), k.max())]
            corners = list(np.min(pts, 0)) + list(np.max(pts, 0))
            m = box_mask(img, corners)
            out[f"{c} {name}"] = round(dice(m, lab == value), 3)
    return out


def simulate_detection(run: Path) -> dict:
    rounds = json.loads((run / "rounds.json").read_text())
    rounds = rounds["rounds"] if isinstance(rounds, dict) else rounds
    scored = [e for r in rounds if r["round"] >= 1 for e in r["efforts"]]
    injected = {e["case"] for e in scored if "rough" in e}
    with Workspace.open(run / "workspace", readonly=True) as ws:
        flagged = {s["name"] for s in ws.suspects()}
    hit = flagged & injected
    return {"run": str(run), "scored": len(scored), "injected": len(injected), "flagged": len(flagged),
            "true_flags": len(hit), "precision": round(len(hit) / len(flagged), 3) if flagged else None,
            "recall": round(len(hit) / len(injected), 3) if injected else None,
            "kinds_missed": sorted(e["rough"] for e in scored if "rough" in e and e["case"] not in flagged)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--simulate-run", type=Path, action="append", default=[])
    a = ap.parse_args()
    if a.simulate_run:
        det = [simulate_detection(r) for r in a.simulate_run]
        print(json.dumps(det, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = {"suspects_real_ct": suspect_configs(a.data, Path(tmp)), "weak_box_dice_real_ct": weak_dice(a.data)}
    print(json.dumps(res["weak_box_dice_real_ct"]))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
