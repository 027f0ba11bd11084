#!/usr/bin/env python3
"""Rebuild the bundled starter models in HILASegment/HILASegmentLib/models (their cards carry the figures printed here).

Pelvic CT (prostate, bladder, rectum) from the three real planning CTs in ../shared/data/pelvic_ct
(manual contours, ``labels_manual``): leave-one-out first — for each case, a workspace with the other
two cases' corrections is trained by exactly the code ``hila train`` runs, and the held-out case is
segmented with the inference engine (Dice per organ on its original grid, next to the untrained
network's Dice) — then the final model on all three. Writes ``HILASegment/HILASegmentLib/models/pelvic_ct_unet.onnx``
with its card (training set, leave-one-out Dice, recipe) in the ONNX metadata.

No MRI starter is made: there is no labelled prostate MRI here; the TAPS preset is the MRI start.

    .venv/bin/python scripts/make_starter_models.py [--minutes 6] [--data ../shared/data] [--folds-only]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))

import HILASegmentLib.training  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)

CASES = ["Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"]
LABELS = ["prostate", "bladder", "rectum"]
OUT = ROOT / "HILASegment" / "HILASegmentLib" / "models" / "pelvic_ct_unet.onnx"  # package data: travels with the module


def make_workspace(path: Path, data: Path, cases):
    from HILASegmentLib.formats.labelio import read_label
    from HILASegmentLib.workspace import Workspace

    ws = Workspace.create(path, "CT", LABELS)
    for c in cases:
        case = ws.import_volume(data / c / "ct.nii.gz", name=c)
        ws.submit(case.case_id, read_label(data / c / "labels_manual.nii.gz"), quality="reviewed")
    return ws


def untrained_dice(card, data: Path, case: str) -> dict:
    """Dice of the same network with its initial (untrained) weights on the held-out case (the inference engine)."""
    import dataclasses
    import tempfile

    import torch

    from HILASegmentLib.training import gate
    from HILASegmentLib.training import network as nw
    from HILASegmentLib.training import onnxexport as ex
    from HILASegmentLib.workspace import SnapshotItem

    torch.manual_seed(0)
    arch = {k: v for k, v in card.architecture.items() if k != "parameters"}
    net = nw.build_network(arch)
    with tempfile.TemporaryDirectory() as tmp:
        raw = ex.export_onnx(net, Path(tmp) / "raw.onnx", list(card.patch_size))
        path = ex.embed_card(raw, dataclasses.replace(card, checksum=None), Path(tmp) / "untrained.onnx")
        ev = gate.evaluate_model(path, [SnapshotItem(case, 1, data / case / "ct.nii.gz",
                                                     data / case / "labels_manual.nii.gz", "reviewed")],
                                 list(enumerate(LABELS, start=1)))
    return ev["dice"]


def train(ws, minutes: float, progress=None) -> dict:
    from HILASegmentLib.training.run import TrainOptions, train_workspace

    return train_workspace(ws, TrainOptions(max_minutes=minutes, device="cpu", promote="always",
                                            started=time.monotonic()), progress=progress)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="budget per training run (default 6, as hila train)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--folds-only", action="store_true", help="leave-one-out only; do not write the model")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    data = a.data / "pelvic_ct"
    if not data.is_dir():
        print(f"no pelvic CT data at {data}", file=sys.stderr)
        return 2
    from HILASegmentLib.models.modelcard import ModelCard, read_card, write_card
    from HILASegmentLib.training.gate import evaluate_model
    from HILASegmentLib.workspace import SnapshotItem

    folds = []
    with tempfile.TemporaryDirectory(prefix="hila-starter-") as tmp:
        tmp = Path(tmp)
        for held in CASES:
            train_cases = [c for c in CASES if c != held]
            ws = make_workspace(tmp / f"fold-{held}", data, train_cases)
            t = time.monotonic()
            res = train(ws, a.minutes)
            model = ws.model(res["model_version"])
            ev = evaluate_model(model.path, [SnapshotItem(held, 1, data / held / "ct.nii.gz",
                                                          data / held / "labels_manual.nii.gz", "reviewed")],
                                [(i + 1, n) for i, n in enumerate(LABELS)])
            base = untrained_dice(model.card, data, held)
            fold = {"held_out": held, "trained_on": train_cases, "dice": ev["dice"], "mean_dice": ev["mean_dice"],
                    "untrained_dice": base, "steps": res["steps"], "seconds": round(time.monotonic() - t, 1),
                    "training_set": res["training_set"]}
            folds.append(fold)
            print(json.dumps({k: fold[k] for k in ("held_out", "dice", "mean_dice", "untrained_dice", "steps", "seconds")}),
                  flush=True)
        organs = {n: round(sum(f["dice"][n] for f in folds) / len(folds), 4) for n in LABELS}
        loo = {"folds": [{k: f[k] for k in ("held_out", "trained_on", "dice", "mean_dice", "untrained_dice", "steps")}
                         for f in folds],
               "mean_dice_per_organ": organs, "mean_dice": round(sum(organs.values()) / len(organs), 4),
               "minutes_per_run": a.minutes, "cpu": "2 cores (shared)"}
        print(json.dumps({"leave_one_out_mean": organs}), flush=True)
        if a.folds_only:
            return 0
        ws = make_workspace(tmp / "final", data, CASES)
        res = train(ws, a.minutes)
        model = ws.model(res["model_version"])
        card = read_card(model.path).to_dict()
        card.update({
            "name": "pelvic_ct_unet", "version": "1", "parent_version": None,
            "description": ("Pelvic CT starter: prostate, bladder, rectum. A small MONAI U-Net (3 mm grid, CT window "
                            "-200..300 HU) trained by scripts/make_starter_models.py on the manual contours of the three "
                            "TCIA Pelvic-Reference-Data CTs. Quality from 3 cases is limited: leave-one-out Dice in "
                            "metrics.leave_one_out. Meant as the first model a CT workspace corrects and fine-tunes."),
            "training_set": [{"case": c, "labels": "labels_manual", "source": "TCIA Pelvic-Reference-Data via "
                              "MarcoSaguatti/Multimetric_analysis_of_automatic_contours @ cd895929"} for c in CASES],
            "licence": "CC BY 4.0 (trained on TCIA Pelvic-Reference-Data); code Apache-2.0",
            "source": {"script": "scripts/make_starter_models.py", "minutes": a.minutes},
        })
        trained = model.card.metrics
        card["metrics"] = {"leave_one_out": loo, "parity": trained.parity,
                           "training_cases_dice": trained.validation.to_dict() if trained.validation else None}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_card(model.path, ModelCard.from_dict(card), a.out)
    size = a.out.stat().st_size / 1e6
    print(json.dumps({"wrote": str(a.out), "mb": round(size, 2), "leave_one_out": organs}), flush=True)
    assert size <= 25, "starter models must stay <= 25 MB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
