#!/usr/bin/env python
"""Inference benchmark: this engine vs a MONAI-style pipeline vs the TAPS command line.

Same volume, same ONNX model (TAPS's ``model_v1.onnx`` through the ``taps`` preset):
  * end to end, each as a separate process: wall time and peak memory (max RSS of the process);
  * warm, in-process: the model loaded once, the volume segmented ``--repeats`` times (best time);
  * windows run, seconds inside the ONNX calls and seconds elsewhere (the engine's overhead);
  * Dice of each output against TAPS's own output (``*_taps.nii.gz`` beside the volume).
Then the project's own small U-Net target: a ~5 M-parameter MONAI UNet exported to ONNX (built here
with torch, in a temporary folder, with a card), end to end and warm on a 384x384x19 T2 volume.

The MONAI-style pipeline is what MONAI Label and Auto3DSeg do: LoadImaged, EnsureChannelFirstd,
Orientationd(RAS), Spacingd, NormalizeIntensityd(nonzero), sliding_window_inference on torch tensors
(the ONNX session as predictor, the card's patch size, overlap and Gaussian mode), Invertd, threshold.

    .venv/bin/python scripts/bench_inference.py [--image IMG] [--repeats 2] [--skip-taps] [--skip-unet] [--json FILE]

Timings on a shared CPU are noisy: compare the ratios measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "prostate_mri" / "ProstateX-0000_t2_s4.nrrd"
BIN = Path(sys.executable).parent

# A wrapper that runs one command and reports its wall time and its own peak RSS (RUSAGE_CHILDREN of a
# fresh wrapper process is exactly that child's, not the benchmark's).
_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "w = time.perf_counter() - t\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rc': p.returncode, 'wall': w, 'maxrss_mb': r / 1024.0,"
    " 'stdout': p.stdout[-20000:], 'stderr': p.stderr[-4000:]}))\n"
)


def measured(cmd, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE] + [str(c) for c in cmd], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (rc {res['rc']}): {res['stderr'][-1500:]}")
    return res


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return {}


# ------------------------------------------------------------------------------------------------
# workers (run in child processes: `bench_inference.py --worker NAME ...`)
# ------------------------------------------------------------------------------------------------

def worker_hila_warm(a) -> dict:
    sys.path.insert(0, str(ROOT / "HILASegment"))
    from HILASegmentLib.formats.imageio import read_image
    from HILASegmentLib.inference.segmenter import Segmenter

    t = time.perf_counter()
    seg = Segmenter(a.model)
    load = time.perf_counter() - t
    img = read_image(a.image)
    runs = []
    for _ in range(a.repeats):
        r = seg.segment(img)
        runs.append(r.summary)
    best = min(runs, key=lambda s: s["seconds"])
    return {"load": load, "seconds": best["seconds"], "seconds_onnx": best["seconds_onnx"], "windows": best["windows"]}


class _CountingPredictor:
    def __init__(self, path, patch):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.windows, self.seconds = 0, 0.0

    def __call__(self, x):
        import torch

        t = time.perf_counter()
        y = self.session.run(None, {self.name: x.numpy()})[0]
        self.seconds += time.perf_counter() - t
        self.windows += x.shape[0]
        return torch.from_numpy(y)


def _monai_pipeline(card):
    import torch
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    return Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        EnsureTyped(keys="image", dtype=torch.float32),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=tuple(card.spacing), mode="bilinear"),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ])


def _monai_run(card, pre, predictor, image_path):
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import Invertd

    data = pre({"image": str(image_path)})
    with torch.inference_mode():
        logits = sliding_window_inference(data["image"].unsqueeze(0), roi_size=tuple(card.patch_size), sw_batch_size=1,
                                          predictor=predictor, overlap=float(card.inference.get("overlap", 0.25)),
                                          mode="gaussian")
    data["pred"] = logits[0]
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)(data)
    pred = inv["pred"]
    if card.activation == "sigmoid":
        thr = float(card.postprocess.get("threshold", 0.5))
        mask = (torch.sigmoid(pred[0]) > thr).to(torch.uint8).numpy()
    else:
        mask = torch.argmax(pred, dim=0).to(torch.uint8).numpy()
    return np.asarray(mask)


def worker_monai(a) -> dict:
    t0 = time.perf_counter()
    import monai  # noqa: F401
    import numpy as np
    import torch  # noqa: F401  (the import is part of what this pipeline costs)

    sys.path.insert(0, str(ROOT / "HILASegment"))
    from HILASegmentLib.models.modelcard import resolve_model

    t_import = time.perf_counter() - t0
    path, card = resolve_model(a.model)
    pre = _monai_pipeline(card)
    predictor = _CountingPredictor(path, card.patch_size)
    runs = []
    for _ in range(a.repeats):
        predictor.windows, predictor.seconds = 0, 0.0
        t = time.perf_counter()
        mask = _monai_run(card, pre, predictor, a.image)
        runs.append({"seconds": time.perf_counter() - t, "seconds_onnx": predictor.seconds, "windows": predictor.windows})
    if a.out:
        np.save(a.out, mask)  # (i, j, k) of the input file, as MONAI's readers give it
    best = min(runs, key=lambda s: s["seconds"])
    return {"import": t_import, **best}


def worker_taps_warm(a) -> dict:
    import logging

    from taps.inference import segment

    logging.disable(logging.WARNING)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        segment(a.image, a.out, None, device="cpu", exact=True)
        times.append(time.perf_counter() - t)
    return {"seconds": min(times)}


def worker_build_unet(a) -> dict:
    """A ~5 M-parameter MONAI UNet (the kind the trainer makes), exported with dynamic spatial axes + card."""
    import warnings

    import torch
    from monai.networks.nets import UNet

    sys.path.insert(0, str(ROOT / "HILASegment"))
    from HILASegmentLib.models.modelcard import LabelInfo, ModelCard, write_card

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    arch = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=[16, 32, 64, 128, 256],
                strides=[[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]], num_res_units=2)
    net = UNet(**arch).eval()
    nparams = sum(p.numel() for p in net.parameters())
    onnx_path = Path(a.out)
    torch.onnx.export(net, torch.zeros(1, 1, 96, 96, 32), str(onnx_path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "b", 2: "x", 3: "y", 4: "z"}, "output": {0: "b", 2: "x", 3: "y", 4: "z"}},
                      opset_version=17, dynamo=False)
    card = ModelCard(name="bench-unet", version=1, modality="MR", labels=[LabelInfo(1, "prostate", (0.9, 0.62, 0.41))],
                     spacing=(float(a.spacing), float(a.spacing), 3.0), patch_size=(96, 96, 32),
                     normalization={"kind": "zscore", "nonzero": True}, activation="softmax",
                     inference={"size_divisor": [16, 16, 4], "overlap": 0.25, "margin_vox": [5, 5, 2]},
                     # untrained weights: no fallback (a trained model adds the body pass only when its
                     # prediction reaches the ROI border)
                     roi={"kind": "center", "size": [128, 128, 32], "fallback": "none"} if a.unet_roi == "center" else {},
                     architecture={"family": "monai.UNet", **arch, "parameters": nparams},
                     licence="Apache-2.0", description="untrained, for timing only")
    write_card(onnx_path, card)
    return {"parameters": nparams}


WORKERS = {"hila-warm": worker_hila_warm, "monai": worker_monai, "taps-warm": worker_taps_warm,
           "build-unet": worker_build_unet}


def run_worker(name, image, model=None, out=None, repeats=1, spacing=None, unet_roi=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--image", str(image), "--repeats", str(repeats)]
    if model:
        cmd += ["--model", str(model)]
    if out:
        cmd += ["--out", str(out)]
    if spacing:
        cmd += ["--spacing", str(spacing)]
    if unet_roi:
        cmd += ["--unet-roi", unet_roi]
    res = measured(cmd)
    d = last_json(res["stdout"])
    d["wall"], d["maxrss_mb"] = res["wall"], res["maxrss_mb"]
    return d


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------

def dice_vs(ref_path: Path, mask_ijk, image_path: Path) -> float:
    import numpy as np
    import SimpleITK as sitk

    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path))).transpose(2, 1, 0) > 0
    m = np.asarray(mask_ijk) > 0
    if m.shape != ref.shape:
        return float("nan")
    return float(2 * (m & ref).sum() / max(1, m.sum() + ref.sum()))


def seg_mask(path: Path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def hila_e2e(image, model, out) -> dict:
    res = measured([BIN / "hila", "infer", "--image", image, "--out", out, "--model", model, "--json"])
    d = last_json(res["stdout"])
    return {"wall": res["wall"], "maxrss_mb": res["maxrss_mb"], "windows": d.get("windows"),
            "seconds_onnx": d.get("seconds_onnx"), "roi": d.get("roi")}


def taps_section(a, tmp, ref, figures) -> None:
    """The three pipelines on the preset model: end to end, warm, table and ratios."""
    # --- end to end, separate processes -----------------------------------------------------------
    h = hila_e2e(a.image, a.model, tmp / "hila.seg.nrrd")
    h["dice"] = dice_vs(ref, seg_mask(tmp / "hila.seg.nrrd"), a.image) if ref.exists() else None
    figures["hila_e2e"] = h
    print(f"  hila e2e {h['wall']:.1f} s", flush=True)
    if not a.skip_monai:
        m = run_worker("monai", a.image, a.model, tmp / "monai.npy")
        import numpy as np

        m["dice"] = dice_vs(ref, np.load(tmp / "monai.npy"), a.image) if ref.exists() else None
        figures["monai_e2e"] = m
        print(f"  monai e2e {m['wall']:.1f} s", flush=True)
    taps_cli = BIN / "taps"
    if not a.skip_taps and taps_cli.exists():
        res = measured([taps_cli, "segment", a.image, tmp / "taps.nii.gz", "--device", "cpu", "--exact"])
        t = {"wall": res["wall"], "maxrss_mb": res["maxrss_mb"], "windows": None, "seconds_onnx": None}
        t["dice"] = dice_vs(ref, seg_mask(tmp / "taps.nii.gz"), a.image) if ref.exists() else None
        figures["taps_e2e"] = t
        print(f"  taps e2e {t['wall']:.1f} s", flush=True)

    # --- warm, in-process -----------------------------------------------------------------------
    figures["hila_warm"] = run_worker("hila-warm", a.image, a.model, repeats=a.repeats)
    if not a.skip_monai:
        figures["monai_warm"] = run_worker("monai", a.image, a.model, repeats=a.repeats)
    if not a.skip_taps and taps_cli.exists():
        figures["taps_warm"] = run_worker("taps-warm", a.image, out=tmp / "taps_warm.nii.gz", repeats=a.repeats)

    # --- table ----------------------------------------------------------------------------------
    def fmt(x, f="{:.1f}"):
        return "-" if x is None else f.format(x)

    print()
    print(f"{'pipeline':<22}{'e2e s':>8}{'peak MB':>9}{'warm s':>8}{'windows':>8}{'ONNX s':>8}{'other s':>8}{'Dice':>7}")
    for key, name in (("hila", "hila infer (this)"), ("monai", "MONAI-style"), ("taps", "taps segment (CLI)")):
        e, w = figures.get(f"{key}_e2e"), figures.get(f"{key}_warm")
        if not e:
            continue
        onnx_s = e.get("seconds_onnx")
        if key == "monai":
            onnx_s = e.get("seconds_onnx")
        other = (e["wall"] - onnx_s) if onnx_s is not None else None
        print(f"{name:<22}{e['wall']:>8.1f}{e['maxrss_mb']:>9.0f}{fmt(w and w.get('seconds')):>8}"
              f"{fmt(e.get('windows'), '{}'):>8}{fmt(onnx_s):>8}{fmt(other):>8}{fmt(e.get('dice'), '{:.4f}'):>7}")
    he = figures["hila_e2e"]
    if he.get("seconds_onnx") is not None:
        over = (he["wall"] - he["seconds_onnx"]) / he["wall"]
        figures["hila_overhead_fraction"] = over
        print(f"hila engine overhead (everything but the ONNX calls): {over:.1%} of end to end (target < 15%)")
    for key, name in (("taps", "TAPS CLI"), ("monai", "MONAI-style")):
        if f"{key}_e2e" in figures:
            e = figures[f"{key}_e2e"]
            r_t = e["wall"] / he["wall"]
            r_m = e["maxrss_mb"] / he["maxrss_mb"]
            figures[f"ratio_{key}"] = {"time": r_t, "memory": r_m}
            line = f"vs {name}: {r_t:.1f}x faster end to end, {r_m:.1f}x less peak memory"
            if figures.get(f"{key}_warm") and figures["hila_warm"].get("seconds"):
                line += f", {figures[f'{key}_warm']['seconds'] / figures['hila_warm']['seconds']:.1f}x faster warm"
            print(line)



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--model", default="taps")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-taps", action="store_true")
    ap.add_argument("--skip-monai", action="store_true")
    ap.add_argument("--skip-unet", action="store_true")
    ap.add_argument("--only-unet", action="store_true", help="only the own-U-Net target")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures here")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spacing", default="0.8", help="in-plane spacing of the own-U-Net card (mm)")
    ap.add_argument("--unet-roi", default="center", choices=["body", "center"],
                    help="own-U-Net card: centre ROI 128x128x32 (as the TAPS preset) or the whole body crop")
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a), default=float), flush=True)
        return 0

    if not a.image.exists():
        print(f"bench_inference: no such image {a.image}", file=sys.stderr)
        return 2
    ref = Path(str(a.image).replace(".nrrd", "_taps.nii.gz"))
    tmp = Path(tempfile.mkdtemp(prefix="hila-bench-"))
    figures = {"image": str(a.image), "load": os.getloadavg()[0]}
    print(f"image {a.image.name}; model {a.model}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
          flush=True)

    if not a.only_unet:
        taps_section(a, tmp, ref, figures)

    # --- the own small U-Net target ---------------------------------------------------------------
    if not a.skip_unet:
        onnx_path = tmp / "unet.onnx"
        b = run_worker("build-unet", a.image, out=onnx_path, spacing=a.spacing, unet_roi=a.unet_roi)
        ue = hila_e2e(a.image, onnx_path, tmp / "unet.seg.nrrd")
        uw = run_worker("hila-warm", a.image, onnx_path, repeats=max(a.repeats, 3))
        figures["unet"] = {"parameters": b.get("parameters"), "spacing": a.spacing, "roi": a.unet_roi, "e2e": ue, "warm": uw}
        print(f"\nown U-Net ({b.get('parameters', 0) / 1e6:.1f} M parameters, {a.spacing} mm in-plane, {a.unet_roi} ROI) on "
              f"{a.image.name}: end to end {ue['wall']:.2f} s (target < 3 s), warm {uw['seconds']:.2f} s (target < 1 s), "
              f"{ue['windows']} window(s), ONNX {uw['seconds_onnx']:.2f} s warm, peak {ue['maxrss_mb']:.0f} MB")
    figures["load_after"] = os.getloadavg()[0]
    print(f"load average now {os.getloadavg()[0]:.1f}")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=1, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
