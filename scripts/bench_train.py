#!/usr/bin/env python3
"""Training benchmarks: step cost, epoch cost, TAPS fine-tuning cost, and one fine-tune round vs its parent.

1. ``steps``: seconds per 100 optimisation steps and per epoch of the shipped CT recipe (3 mm grid,
   48x64x64 patches as planned for the pelvic CT, batch 2, U-Net 16-128) on CPU, and on CUDA when torch sees a GPU.
2. ``taps``: what fine-tuning the imported 20 M-parameter TAPS model costs per step on CPU
   (onnx2torch conversion, 128x128x32 patch, batch 1), whole network vs frozen encoder.
3. ``round``: the loop on the real pelvic CT: round 1 trains a parent on one corrected case, round 2
   fine-tunes it on two within ``--round-minutes`` (default 5); both are validated on the third case
   with the inference engine. Target: the round finishes in <= 5 minutes and beats its parent.
4. ``prostatex``: the MRI loop from the TAPS preset (TAPS's output stands in for the radiologist): the
   own U-Net is trained on the ProstateX corrections, the gate compares it with TAPS on the same held-out
   correction, and the current model afterwards is whichever validated better.

Timings on a shared 2-core machine are noisy; every figure is printed with what it was measured on.
    .venv/bin/python scripts/bench_train.py [--only steps,taps,round] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HILASegment"))

import HILASegmentLib.training  # noqa: E402,F401  (OpenMP wait policy before torch loads)


def bench_steps(device: str, n: int = 20) -> dict:
    import numpy as np
    import torch

    from HILASegmentLib.training import network as nw
    from HILASegmentLib.training.loop import LoopConfig, train_loop

    torch.set_num_threads(os.cpu_count() or 1)
    patch = [48, 64, 64]  # what training/plan.py plans for the real pelvic CT (3 mm grid)
    rng = np.random.default_rng(0)
    shape = (1, 72, 80, 64)
    cases = []
    for i in range(2):
        lab = np.zeros(shape, np.uint8)
        lab[0, 20:40, 20:40, 20:40] = 1 + i
        flat = lab[0].ravel()
        cases.append({"image": rng.standard_normal(shape).astype(np.float32), "label": lab, "weight": 1.0,
                      "fg_indices": np.flatnonzero(flat > 0), "bg_indices": np.flatnonzero(flat == 0)})
    net = nw.build_network(nw.default_architecture("CT", 3))
    cfg = LoopConfig(patch_size=patch, device=device, max_steps=3, max_seconds=1e9)
    train_loop(net, cases, 4, cfg)  # warm-up
    cfg = LoopConfig(patch_size=patch, device=device, max_steps=n, max_seconds=1e9)
    res = train_loop(net, cases, 4, cfg)
    return {"device": device, "patch": patch, "batch": cfg.batch_size, "steps": res.steps,
            "seconds_per_100_steps": round(100 * res.seconds_per_step, 1),
            "seconds_per_epoch_10_cases": round(10 / (cfg.batch_size // cfg.samples_per_case) * res.seconds_per_step, 1),
            "epoch": "one draw (2 patches) per training case", "parameters": nw.count_parameters(net),
            "threads": torch.get_num_threads()}


def bench_taps(steps: int = 2) -> dict:
    import torch

    from HILASegmentLib.models.modelcard import resolve_model
    from HILASegmentLib.training import network as nw
    from HILASegmentLib.training.loop import freeze_encoder

    torch.set_num_threads(os.cpu_count() or 1)
    path, card = resolve_model("taps")
    t = time.monotonic()
    net = nw.convert_onnx(path)
    conv_s = time.monotonic() - t
    diff = nw.check_conversion(net, path, shape=(1, 1, *card.patch_size))
    out = {"model": "taps", "parameters": nw.count_parameters(net), "conversion_s": round(conv_s, 1),
           "conversion_max_abs_diff": diff, "patch": list(card.patch_size), "batch": 1}
    x = torch.randn(1, 1, *card.patch_size)
    y = (torch.rand(1, 1, *card.patch_size) > 0.9).float()
    for mode in ("full", "frozen_encoder"):
        net = nw.convert_onnx(path)
        trainable = freeze_encoder(net) if mode == "frozen_encoder" else nw.count_parameters(net)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)
        net.train()
        times = []
        for _ in range(steps + 1):
            t = time.monotonic()
            opt.zero_grad()
            o = net(x)
            o = o[0] if isinstance(o, (list, tuple)) else o
            loss = torch.nn.functional.binary_cross_entropy_with_logits(o, y)
            loss.backward()
            opt.step()
            times.append(time.monotonic() - t)
        out[mode] = {"trainable_parameters": trainable, "seconds_per_step": round(sum(times[1:]) / steps, 2)}
    return out


def bench_round(minutes: float, data: Path) -> dict:
    from HILASegmentLib.formats.labelio import read_label
    from HILASegmentLib.training.gate import evaluate_model
    from HILASegmentLib.training.run import TrainOptions, train_workspace
    from HILASegmentLib.workspace import SnapshotItem, Workspace

    ct = data / "pelvic_ct"
    if not ct.is_dir():
        return {"skipped": f"no data at {ct}"}
    labels = ["prostate", "bladder", "rectum"]
    held = "Pelvic-Ref005"
    test = [SnapshotItem(held, 1, ct / held / "ct.nii.gz", ct / held / "labels_manual.nii.gz", "reviewed")]
    with tempfile.TemporaryDirectory(prefix="hila-bench-") as tmp:
        ws = Workspace.create(Path(tmp) / "ws", "CT", labels)
        ids = {}
        for c in ("Pelvic-Ref002", "Pelvic-Ref003"):
            ids[c] = ws.import_volume(ct / c / "ct.nii.gz", name=c).case_id
        ws.submit(ids["Pelvic-Ref002"], read_label(ct / "Pelvic-Ref002" / "labels_manual.nii.gz"))
        t = time.monotonic()
        r1 = train_workspace(ws, TrainOptions(max_minutes=minutes, started=time.monotonic()))
        t1 = time.monotonic() - t
        ws.submit(ids["Pelvic-Ref003"], read_label(ct / "Pelvic-Ref003" / "labels_manual.nii.gz"))
        t = time.monotonic()
        r2 = train_workspace(ws, TrainOptions(max_minutes=minutes, promote="never", started=time.monotonic()))
        t2 = time.monotonic() - t
        pairs = [(i + 1, n) for i, n in enumerate(labels)]
        e1 = evaluate_model(ws.model(r1["model_version"]).path, test, pairs)
        e2 = evaluate_model(ws.model(r2["model_version"]).path, test, pairs)
    return {"held_out": held, "parent": {"corrections": 1, "seconds": round(t1, 1), "steps": r1["steps"], "dice": e1["dice"],
                                         "mean_dice": e1["mean_dice"]},
            "round": {"corrections": 2, "init": r2["init"], "seconds": round(t2, 1), "steps": r2["steps"],
                      "dice": e2["dice"], "mean_dice": e2["mean_dice"]},
            "round_within_5_min": t2 <= 300, "better_than_parent": e2["mean_dice"] > e1["mean_dice"]}


def bench_prostatex(minutes: float, data: Path) -> dict:
    """The MRI loop from the TAPS preset: TAPS's own output stands in for the radiologist's corrections on the
    ProstateX series; the trainer trains the own U-Net on them and the gate compares it with TAPS on the same
    held-out correction; the current model afterwards is whichever validated better."""
    from HILASegmentLib.formats.labelio import read_label
    from HILASegmentLib.training.run import TrainOptions, train_workspace
    from HILASegmentLib.workspace import Workspace

    mri = data / "prostate_mri"
    series = sorted(p for p in mri.glob("*_t2_*.nrrd") if (mri / p.name.replace(".nrrd", "_taps.nii.gz")).exists())
    if not series:
        return {"skipped": f"no ProstateX series with TAPS output in {mri}"}
    with tempfile.TemporaryDirectory(prefix="hila-bench-mr-") as tmp:
        ws = Workspace.create(Path(tmp) / "ws", "MR", ["prostate"], model="taps")
        for p in series:
            case = ws.import_volume(p, name=p.name.split(".")[0])
            ws.submit(case.case_id, read_label(mri / p.name.replace(".nrrd", "_taps.nii.gz")), quality="reviewed")
        t = time.monotonic()
        r = train_workspace(ws, TrainOptions(max_minutes=minutes, started=time.monotonic()))
        cur = ws.current_model()
        return {"series": [p.name for p in series], "seconds": round(time.monotonic() - t, 1), "init": r["init"],
                "own_unet": r["validation"], "taps": r["parent_validation"], "gate": r["reason"],
                "promoted": r["promoted"], "current_after": {"version": cur.version, "name": cur.card.name}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="steps,taps,round,prostatex")
    ap.add_argument("--round-minutes", type=float, default=5.0)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    import torch

    what = set(a.only.split(","))
    out = {"cpu_count": os.cpu_count(), "torch": torch.__version__}
    if "steps" in what:
        out["steps_cpu"] = bench_steps("cpu")
        print(json.dumps(out["steps_cpu"]), flush=True)
        if torch.cuda.is_available():
            out["steps_cuda"] = bench_steps("cuda", n=50)
            print(json.dumps(out["steps_cuda"]), flush=True)
    if "taps" in what:
        try:
            out["taps_finetune_cpu"] = bench_taps()
        except Exception as exc:  # noqa: BLE001 - TAPS not installed etc.
            out["taps_finetune_cpu"] = {"skipped": str(exc)}
        print(json.dumps(out["taps_finetune_cpu"]), flush=True)
    if "round" in what:
        out["round"] = bench_round(a.round_minutes, a.data)
        print(json.dumps(out["round"]), flush=True)
    if "prostatex" in what:
        out["prostatex_from_taps"] = bench_prostatex(a.round_minutes, a.data)
        print(json.dumps(out["prostatex_from_taps"]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
