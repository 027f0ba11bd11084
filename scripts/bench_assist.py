"""Pseudo-mask Dice against the manual contours on the real pelvic CT: the box assistant vs the ellipsoid, and
the assistant's speed per slice.

    python scripts/bench_assist.py [--data ../shared/data/pelvic_ct] [--seeds 5] [--threads 2] [--json OUT]

Marks per case and organ (prostate, bladder, rectum): a tight box (the organ's voxel corners), jittered boxes
and RECIST lines placed by the simulated radiologist (``simulate.radiologist.place_box`` / ``place_lines``,
their documented jitter) over --seeds seeds. Builders: the ellipsoid (``weak.box_mask``), the assistant
prompting each slice with the rectangle of the box's inscribed ellipsoid on it (``ellipse``) or with the box
(``box``), and, from the tight box only, the assistant propagating
from the middle slice (``propagate``, upstream's 3-D recipe), and every slice prompted with the reference's
own rectangle on that slice (``own rectangle per slice``). Prints mean ± sd Dice per organ and mark, the speed (first box on a slice: encoder + decoder;
a second box on the same slice: decoder only, the encoding cached), the ellipsoid's time, and the drawing time
of the effort model for comparison. State the machine's load with the figures: ``uptime`` is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HILASegment"))

from HILASegmentLib.formats import weak
from HILASegmentLib.inference import boxassist as assist  # noqa: E402
from HILASegmentLib.simulate import radiologist  # noqa: E402

ORGANS = [(1, "prostate"), (2, "bladder"), (3, "rectum")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def tight_box(image: sitk.Image, mask: np.ndarray) -> list:
    """The organ's extent at voxel corners (as the acceptance's box.py), LPS mm."""
    zz, yy, xx = np.nonzero(mask)
    pts = np.asarray([image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
                      for i in (xx.min() - .5, xx.max() + .5) for j in (yy.min() - .5, yy.max() + .5)
                      for k in (zz.min() - .5, zz.max() + .5)])
    return [float(v) for v in np.concatenate([pts.min(0), pts.max(0)])]


def oracle_slices(a: "assist.Assistant", image: sitk.Image, ref: np.ndarray) -> np.ndarray:
    """The assistant's mask when every slice of the organ is prompted with the reference's own bounding rectangle on
    that slice: the best-placed box a user could draw on each slice."""
    ks = [k for k in range(ref.shape[0]) if ref[k].any()]
    norm = assist.normalised(sitk.GetArrayViewFromImage(image), assist.guess_modality(image), ks[0], ks[-1])
    out = np.zeros(ref.shape, bool)
    for k in ks:
        ys, xs = np.nonzero(ref[k])
        out[k] = a.segment_slice(norm[k], (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    return out


def synthetic_rows(a: "assist.Assistant", shapes: Path, n: int, seeds: int) -> list:
    """Pseudo-mask Dice on the synthetic T2-like cohort (``hila simulate --synthetic``'s images from the first ``n``
    MSD prostate label maps, whole gland): a tight box and ``seeds`` jittered boxes per case, ellipsoid vs the
    assistant's prompts."""
    from HILASegmentLib.simulate import synthesis

    appearance = synthesis.load_appearance("t2w")
    rows = []
    for i, path in enumerate(sorted(shapes.glob("*.nii*"))[:n]):
        lab = synthesis.resample_crop(sitk.ReadImage(str(path)), appearance["spacing"])
        image, _ = synthesis.synthesize(lab, appearance, seed=i)
        ref = sitk.GetArrayFromImage(lab) > 0
        marks = [("tight box", tight_box(image, ref))]
        marks += [("jittered box", radiologist.place_box(ref, image, np.random.default_rng(1000 + s)))
                  for s in range(seeds)]
        for kind, box in marks:
            rows.append({"case": path.name, "organ": "prostate (synthetic)", "marks": kind, "builder": "ellipsoid",
                         "dice": dice(weak.box_mask(image, box), ref)})
            for prompt in ("ensemble", "box", "ellipse"):
                rows.append({"case": path.name, "organ": "prostate (synthetic)", "marks": kind,
                             "builder": f"assistant ({prompt})", "dice": dice(a.segment(image, box, prompt=prompt), ref)})
        print(f"{path.name}: " + ", ".join(f"{r['builder']} {r['dice']:.3f}" for r in rows[-4:]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pelvic_ct")
    ap.add_argument("--cases", default="Pelvic-Ref002,Pelvic-Ref003,Pelvic-Ref005")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="instead: N synthetic T2-like prostates (MSD shapes, hila simulate's synthesis)")
    ap.add_argument("--shapes", type=Path,
                    default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "prostate_shapes" / "msd")
    args = ap.parse_args(argv)
    a = assist.Assistant(threads=args.threads)
    a.cache_slices = 400  # the whole case's slices stay encoded: every mark reuses them
    if args.synthetic:
        rows = synthetic_rows(a, args.shapes, args.synthetic, args.seeds)
        for kind in ("tight box", "jittered box"):
            cells = []
            for b in ("ellipsoid", "assistant (ensemble)", "assistant (box)", "assistant (ellipse)"):
                d = [r["dice"] for r in rows if r["marks"] == kind and r["builder"] == b]
                cells.append(f"{b} {np.mean(d):.3f} ± {np.std(d, ddof=1) if len(d) > 1 else 0:.3f} (n={len(d)})")
            print(f"| synthetic prostate | {kind} | " + " | ".join(cells) + " |")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows}, indent=1))
        return 0
    rows, speed = [], {"encode_s": [], "decode_s": [], "ellipsoid_s": [], "slices": [], "draw_s": []}
    for case in args.cases.split(","):
        image = sitk.ReadImage(str(args.data / case / "ct.nii.gz"))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / case / "labels_manual.nii.gz")))
        sp = image.GetSpacing()[::-1]
        for value, organ in ORGANS:
            ref = lab == value
            ks = [k for k in range(ref.shape[0]) if ref[k].any()]
            speed["draw_s"].append(sum(radiologist.SLICE_S + radiologist.MM_S * radiologist.contour_mm(ref[k], sp[1:])
                                       for k in ks) / len(ks))
            marks = [("tight box", tight_box(image, ref))]
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 + seed)
                marks.append(("jittered box", radiologist.place_box(ref, image, rng)))
            for seed in range(args.seeds):
                rng = np.random.default_rng(2000 + seed)
                ln = radiologist.place_lines(ref, image, sp, rng)
                marks.append(("lines", weak.lines_box(image, ln[0], ln[1]).tolist()))
            for kind, box in marks:
                t = time.perf_counter()
                ell = weak.box_mask(image, box)
                speed["ellipsoid_s"].append(time.perf_counter() - t)
                rows.append({"case": case, "organ": organ, "marks": kind, "builder": "ellipsoid", "dice": dice(ell, ref)})
                for prompt in (assist.PROMPTS if kind == "tight box" else ("box", "ensemble", "ellipse")):
                    enc0, t = a.encoded, time.perf_counter()
                    m = a.segment(image, box, prompt=prompt)
                    dt, n_enc = time.perf_counter() - t, a.encoded - enc0
                    lo, hi = assist.box_block(image, box)
                    n = int(hi[2] - lo[2] + 1)
                    if n_enc == n:  # every slice newly encoded: encoder + decoder per slice
                        speed["encode_s"].append(dt / n)
                        speed["slices"].append(n)
                    elif n_enc == 0:  # all cached: the decoder alone
                        speed["decode_s"].append(dt / n)
                    rows.append({"case": case, "organ": organ, "marks": kind, "builder": f"assistant ({prompt})",
                                 "dice": dice(m, ref)})
            # each slice prompted with the reference's own tight rectangle on that slice
            rows.append({"case": case, "organ": organ, "marks": "own rectangle per slice",
                         "builder": "assistant (box)", "dice": dice(oracle_slices(a, image, ref), ref)})
            last = [r for r in rows if r["case"] == case and r["organ"] == organ and r["marks"] == "tight box"]
            print(f"{case} {organ} tight box: " + ", ".join(f"{r['builder']} {r['dice']:.3f}" for r in last), flush=True)
    print()
    builders = ["ellipsoid"] + [f"assistant ({p})" for p in assist.PROMPTS]
    print("| organ | marks | " + " | ".join(builders) + " |")
    print("|---" * (len(builders) + 2) + "|")
    for _, organ in ORGANS:
        for kind in ("tight box", "jittered box", "lines", "own rectangle per slice"):
            cells = []
            for b in builders:
                d = [r["dice"] for r in rows if r["organ"] == organ and r["marks"] == kind and r["builder"] == b]
                cells.append(f"{np.mean(d):.3f} ± {np.std(d, ddof=1) if len(d) > 1 else 0:.3f} (n={len(d)})" if d else "–")
            print(f"| {organ} | {kind} | " + " | ".join(cells) + " |")
    enc = float(np.median(speed["encode_s"])) if speed["encode_s"] else float("nan")
    dec = float(np.median(speed["decode_s"])) if speed["decode_s"] else float("nan")
    ell = float(np.median(speed["ellipsoid_s"]))
    nsl = float(np.median(speed["slices"])) if speed["slices"] else float("nan")
    draw = float(np.median(speed["draw_s"]))
    print()
    print(f"speed ({args.threads} onnxruntime threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): first box "
          f"on a slice {enc:.2f} s/slice (encoder + decoder), a second box on the same slice {dec:.3f} s/slice "
          f"(decoder, encoding cached); ellipsoid {ell:.2f} s per organ; a {nsl:.0f}-slice organ: assistant "
          f"{enc * nsl:.0f} s = {enc * nsl / max(ell, 1e-9):.0f}x the ellipsoid; the effort model's hand drawing: "
          f"{draw:.1f} s/slice, so the assistant costs {enc / draw:.2f}x drawing (machine time, not the radiologist's)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speed": speed, "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
