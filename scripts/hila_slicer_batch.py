#!/usr/bin/env python3
"""Segment one volume with HILASegment in 3D Slicer's batch mode.

    Slicer --no-main-window --python-script scripts/hila_slicer_batch.py --image F --out F.seg.nrrd [--model M]

Inside Slicer the volume is read with Slicer's own loader (``slicer.util.loadVolume``) and the
result written with Slicer's own writer (``slicer.util.saveNode`` on the volume's segmentation node, filled by the
module's Logic exactly as the panel's Segment fills it: ``ModuleLogic.loadSegmentation``, one segment per label
with the table's colours, the structures' terminology and the model version in the segment tags); the engine
(``HILASegmentLib.inference.segmenter.Segmenter``) does the inference. The script exits
with its own code (``sys.exit``, also under ``--testing``): 0 done, 2 a problem the user can fix
(one line on stderr), 1 an unexpected failure.

Run with plain Python (no Slicer) it says so on stderr and uses the engine's own readers and
writers instead — the same as ``hila infer --image F --out F.seg.nrrd``.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_DIR = os.path.join(os.path.dirname(HERE), "HILASegment")  # the engine, when run from a source checkout
USER_ERROR, FAILURE = 2, 1


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="hila_slicer_batch.py", description="Segment one volume with HILASegment (Slicer batch mode).")
    ap.add_argument("--image", required=True, help="input volume: .nrrd .nii .nii.gz .mha, or a DICOM series folder")
    ap.add_argument("--out", required=True, help="output segmentation, .seg.nrrd")
    ap.add_argument("--model", default="taps", help="model: preset name, starter model name or .onnx path (default: taps)")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation (slower)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime CPU threads (default: all cores)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--testing", action="store_true", help="accepted for Slicer's test harness; the exit code is the same")
    return ap.parse_args(argv)


def import_slicer():
    """Slicer's ``slicer`` module when this runs inside the Slicer application, else None.

    Decided by ``slicer.app`` (the application object), not by importability: Kitware's slicer-core wheel
    makes ``import slicer`` work in any Python, with MRML but no application to load or save through.
    """
    try:
        import slicer  # noqa: F401
    except ImportError:
        return None
    return slicer if getattr(slicer, "app", None) is not None and hasattr(slicer, "util") else None


def ensure_engine():
    """Make HILASegmentLib importable (installed extension or source checkout) and check its inference packages."""
    try:
        import HILASegmentLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, MODULE_DIR)
        import HILASegmentLib  # noqa: F401
    from HILASegmentSlicerLib import installplan
    plan = installplan.plan_install("inference")
    if plan.needed or plan.broken_slicer:
        from HILASegmentLib.ground.errors import HilaError
        how = " ; ".join(installplan.manual_command(plan)) or plan.message()
        raise HilaError("missing Python packages for inference; install them first: " + how)


def check_paths(args):
    from HILASegmentLib.ground.errors import HilaError
    if not os.path.exists(args.image):
        raise HilaError(f"{args.image}: no such file or folder")
    if not args.out.endswith(".seg.nrrd"):
        raise HilaError(f"{args.out}: the output must end in .seg.nrrd")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise HilaError(f"{out_dir}: output folder does not exist")


def run_in_slicer(slicer, args):
    """Slicer's loader -> engine -> the module's Logic (the panel's one way from an engine result to segments) ->
    Slicer's writer. Returns a one-line summary."""
    import vtk

    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.inference.segmenter import Segmenter
    from HILASegmentSlicerLib import mrmlgeometry, segments
    from HILASegmentSlicerLib.logic import ModuleLogic

    logic = ModuleLogic(slicer, vtk)
    if os.path.isdir(args.image):  # Slicer's DICOM loading needs its database; the engine reads series folders
        from HILASegmentLib.formats.imageio import read_image
        image = read_image(args.image)
        array, ijkToRas = mrmlgeometry.image_to_array(image)
        volume = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRas, name="input")
    else:
        try:
            volume = slicer.util.loadVolume(args.image)
        except RuntimeError as exc:
            raise HilaError(f"{args.image}: Slicer could not load it as a volume ({exc})") from None
        image = logic.volumeToImage(volume)
    result = Segmenter(args.model, threads=args.threads, device=args.device).segment(image, tta=args.tta)
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    segNode.SetName(os.path.basename(args.out)[:-len(".seg.nrrd")])
    logic.loadSegmentation(result.to_segmentation(), segNode, volume)  # what the panel's Segment does with a result
    if not slicer.util.saveNode(segNode, args.out):
        raise HilaError(f"{args.out}: Slicer could not write the segmentation")
    return "%s: %d segments by %s v%s in %.1f s" % (args.out, len(result.card.labels), result.card.name,
                                                    result.card.version, result.seconds)


def run_plain(args):
    """No Slicer: the engine's own readers and writers (exactly `hila infer --image ... --out ...`)."""
    from HILASegmentLib.formats.imageio import read_image
    from HILASegmentLib.formats.segfile import write_segmentation
    from HILASegmentLib.inference.segmenter import Segmenter
    result = Segmenter(args.model, threads=args.threads, device=args.device).segment(read_image(args.image), tta=args.tta)
    write_segmentation(result.to_segmentation(), args.out)
    return "%s: %d segments by %s v%s in %.1f s" % (args.out, len(result.card.labels), result.card.name,
                                                    result.card.version, result.seconds)


def main(argv=None):
    """Run once and return the exit code (never raises)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return USER_ERROR if exc.code else 0
    slicer = import_slicer()
    t0 = time.monotonic()
    try:
        ensure_engine()
        check_paths(args)
        if slicer is None:
            print("hila_slicer_batch: Slicer not found, using the engine's readers and writers", file=sys.stderr)
            summary = run_plain(args)
        else:
            summary = run_in_slicer(slicer, args)
    except Exception as exc:
        from_engine = type(exc).__name__ == "HilaError" or getattr(type(exc), "exit_code", None) is not None
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"hila_slicer_batch: error: {msg}" if from_engine else f"hila_slicer_batch: failed: {type(exc).__name__}: {msg}",
              file=sys.stderr)
        return USER_ERROR if from_engine else FAILURE
    print(f"{summary} (total {time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    # Always exit with the code, --testing included: Slicer's --python-script does not turn a returned
    # value into an exit status, so a script that only returns ends with 0 whatever happened.
    sys.exit(main())
