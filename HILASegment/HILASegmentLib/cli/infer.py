"""``hila infer``: segment a volume with an ONNX model (no workspace), or a workspace case.

    hila infer --image FILE --out FILE.seg.nrrd --model NAME|PATH [--tta] [--threads N] [--uncertainty FILE]
    hila infer WORKSPACE CASE [--model VERSION|NAME|PATH] [--out FILE.seg.nrrd]

There is no default model for ``--image``: one model cannot be guessed from a file (the ``taps``
preset is for axial T2 prostate MRI only), so ``--model`` is required there. In the workspace form
the workspace's current model is the default.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..ground.errors import HilaError
from . import argtypes, emit, progress_for

_LABEL_SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")


def register(sub, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "infer", parents=[parent], help="segment a volume with an ONNX model (or a workspace case)",
        description="Segment a volume. File form: hila infer --image FILE --out FILE.seg.nrrd --model NAME|PATH. "
        "Workspace form: hila infer WORKSPACE CASE [--model VERSION] [--out FILE.seg.nrrd] (stores the prediction in the "
        "workspace; "
        "default: the current model). Models: the 'taps' preset (prostate T2 MRI; needs `pip install --no-deps "
        "lavlab-taps`), a starter model name, or an .onnx file with a model card.")
    p.add_argument("workspace", nargs="?", type=Path, help="workspace folder (workspace form)")
    p.add_argument("case", nargs="?", help="case id or name (workspace form)")
    p.add_argument("--image", type=Path, help="input volume (.nrrd .nii .nii.gz .mha) or DICOM series folder")
    p.add_argument("--out", type=Path, help="output: .seg.nrrd (Slicer segmentation) or a label map (.nii.gz .nrrd ...); "
                   "workspace form: also write the stored prediction (workspace labels) as a .seg.nrrd cut to its voxels")
    p.add_argument("--model", default=None, help="file form: preset name (taps), starter name or .onnx path; "
                   "workspace form: model version (default: current), or a catalog name or .onnx path")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation across the patient's left-right "
                   "axis (2x the compute; the card's tta_flips override it; uncertainty = disagreement)")
    p.add_argument("--threads", type=argtypes.threads, default=None, help="onnxruntime threads (default: all cores)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA when available")
    p.add_argument("--uncertainty", type=Path, default=None, help="also write the per-voxel uncertainty map (0..1) here")
    p.add_argument("--review-map", type=Path, default=None,
                   help="also write the likely-error map (per-voxel probability the label is wrong, 0..1) here; "
                   "the .seg.nrrd then holds a 'Review: likely error' segment in its own layer")
    p.add_argument("--second-opinion", action="store_true",
                   help="also redraw each predicted label with the box assistant (hila assist) from the prediction's "
                   "own per-slice rectangles and record its agreement as a quality feature (~1 s per slice on a CPU)")
    p.set_defaults(func=cmd_infer)


def _second_opinion(args):
    """The box assistant for ``--second-opinion`` (checked before any work: not installed is one line), else None."""
    if not args.second_opinion:
        return None
    from ..inference import boxassist
    return boxassist.shared_assistant()


def _check_out(path: Path, what: str, seg_ok: bool = True) -> None:
    name = path.name.lower()
    if not (name.endswith(_LABEL_SUFFIXES) and len(name) > 5):
        raise HilaError(f"{path}: {what} must end in {'.seg.nrrd, ' if seg_ok else ''}{', '.join(_LABEL_SUFFIXES)}")
    if path.is_dir():
        raise HilaError(f"{path}: is a folder, not a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise HilaError(f"{path}: cannot write: folder {parent} does not exist")


def _summary_line(summary: dict, out: str) -> str:
    parts = [f"{lab['name']}: {lab['voxels']} voxels, {lab['ml']:.1f} ml" for lab in summary["labels"]]
    w = summary["windows"]
    if not any(lab["voxels"] for lab in summary["labels"]):
        parts = ["empty result: the model found none of its labels in this image"]
    agree = (summary.get("quality_features") or {}).get("assistant_agreement")
    if agree is not None:  # --second-opinion
        parts.append(f"second opinion (box assistant) agrees {agree:.2f}")
    return (f"{'; '.join(parts)} | model {summary['model']} v{summary['model_version']}, {w} window{'s' * (w != 1)}, "
            f"{summary['seconds']:.1f} s (ONNX {summary['seconds_onnx']:.1f} s) -> {out}")


def cmd_infer(args) -> int:
    t0 = time.perf_counter()
    if args.threads is not None and args.threads < 1:
        raise HilaError(f"--threads must be 1 or more, got {args.threads}")
    if args.image is not None or (args.out is not None and args.workspace is None):
        if args.workspace is not None or args.case is not None:
            raise HilaError("give either --image/--out (file form) or WORKSPACE CASE (workspace form), not both")
        return _infer_file(args, t0)
    if args.workspace is None or args.case is None:
        raise HilaError("nothing to segment: use hila infer --image FILE --out FILE.seg.nrrd --model NAME, "
                        "or hila infer WORKSPACE CASE")
    return _infer_workspace(args, t0)


def _infer_file(args, t0: float) -> int:
    if args.image is None or args.out is None:
        raise HilaError("the file form needs both --image FILE and --out FILE.seg.nrrd")
    if not args.model:
        raise HilaError("--model is needed with --image (e.g. --model taps for axial T2 prostate MRI, a starter "
                        "model name, or a model .onnx file)")
    from ..ground.paths import check_outputs

    model_file = args.model if Path(args.model).exists() else None
    check_outputs({"--image": args.image, "--model": model_file},
                  {"--out": args.out, "--uncertainty": args.uncertainty, "--review-map": args.review_map})
    _check_out(args.out, "--out")
    _check_maps(args)
    from ..formats.imageio import check_format_holds, read_image  # heavy (SimpleITK): `hila --help` stays fast
    from ..inference.segmenter import Segmenter
    from ..quality.learned import add_quality_features

    image = read_image(args.image)
    for out in (args.out, args.uncertainty, args.review_map):  # every output on the image's grid, before any work
        if out is not None:
            check_format_holds(image, out)
    assistant = _second_opinion(args)
    seg = Segmenter(args.model, threads=args.threads, device=args.device)
    with progress_for(args, "hila infer") as progress:
        result = add_quality_features(seg.segment(image, tta=args.tta, progress=progress, where=str(args.image)), image,
                                      assistant, progress)
    if args.review_map is None:
        result.review_map = None  # the review segment only when asked for
    written = _write_maps(result, args)  # the maps first: one that cannot be written leaves no --out behind
    try:
        _write(result, args.out, None)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    summary = dict(result.summary)
    summary["seconds_total"] = round(time.perf_counter() - t0, 3)
    res = {"image": str(args.image), "out": str(args.out), **summary}
    if args.uncertainty is not None:
        res["uncertainty_file"] = str(args.uncertainty)
    if args.review_map is not None:
        res["review_map_file"] = str(args.review_map)
    emit(args, res, _summary_line(summary, str(args.out)))
    return 0


def _check_maps(args) -> None:
    """--uncertainty and --review-map name volume files in folders that exist (both forms)."""
    for path, opt, what in ((args.uncertainty, "--uncertainty", "uncertainty"), (args.review_map, "--review-map", "review")):
        if path is not None:
            _check_out(path, opt, seg_ok=False)
            if path.name.lower().endswith(".seg.nrrd"):
                raise HilaError(f"{path}: the {what} map is a volume; use .nrrd, .nii.gz or .mha")


def _write_maps(result, args) -> list:
    """Write --uncertainty/--review-map; returns the paths written (removed again if a later step fails)."""
    from ..formats.imageio import write_image  # heavy (SimpleITK): `hila --help` stays fast

    written = []
    try:
        if args.uncertainty is not None:
            write_image(result.uncertainty, args.uncertainty)
            written.append(Path(args.uncertainty))
        if args.review_map is not None:
            write_image(sitk_review(result), args.review_map)
            written.append(Path(args.review_map))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


def sitk_review(result):
    if result.review_map is None:
        raise HilaError(f"prediction of model {result.summary.get('model')} v{result.summary.get('model_version')}: "
                        "has no review map; nothing written")
    return result.review_map


def _write(result, out: Path, uncertainty_out) -> None:
    from ..formats.imageio import write_image  # heavy (SimpleITK): `hila --help` stays fast

    if out.name.lower().endswith(".seg.nrrd"):
        from ..formats.segfile import write_segmentation  # heavy (SimpleITK): `hila --help` stays fast

        write_segmentation(result.to_segmentation(review=result.review_map is not None), out)
    else:
        write_image(result.label, out)
    if uncertainty_out is not None:
        write_image(result.uncertainty, uncertainty_out)


def _infer_workspace(args, t0: float) -> int:
    from ..formats.imageio import check_format_holds  # heavy (SimpleITK): `hila --help` stays fast
    from ..quality.learned import add_quality_features
    from ..workspace import Workspace

    if args.image is not None:
        raise HilaError("the workspace form takes no --image; the case's own image is segmented")
    from ..ground.paths import check_outputs

    check_outputs({"WORKSPACE": args.workspace},
                  {"--out": args.out, "--uncertainty": args.uncertainty, "--review-map": args.review_map})
    if args.out is not None:
        _check_out(args.out, "--out")
        if not args.out.name.lower().endswith(".seg.nrrd"):
            raise HilaError(f"{args.out}: in the workspace form --out is the prediction as a .seg.nrrd")
    _check_maps(args)
    assistant = _second_opinion(args)
    with Workspace.open(args.workspace) as ws:
        case = ws.case(args.case)
        seg, version = _workspace_segmenter(ws, args)
        image = ws.case_image(case.case_id)
        with progress_for(args, "hila infer") as progress:
            result = add_quality_features(seg.segment(image, tta=args.tta, progress=progress,
                                                      where=f"case {case.case_id}"), image, assistant, progress)
        for out in (args.uncertainty, args.review_map):  # every output on the image's grid, before anything is stored
            if out is not None:
                check_format_holds(image, out)

        def outputs(label, summary) -> list:
            # The files first, the prediction last: one that cannot be written (a read-only folder) fails the command
            # before the workspace changes, so a retrying script does not add a prediction per try.
            written = _write_maps(result, args)
            if args.out is not None:
                from ..formats.segfile import write_segmentation  # heavy (SimpleITK): `hila --help` stays fast

                try:
                    review = result.review_map if args.review_map is not None else None
                    write_segmentation(ws.prediction_segmentation(label, result.provenance_tags(), review), args.out)
                except BaseException:
                    for p in written:
                        p.unlink(missing_ok=True)
                    raise
                written.append(Path(args.out))
            return written

        pred, _label, summary = ws.record_prediction(case.case_id, result, version, outputs)  # a PredictionSummary
    summary["seconds_total"] = round(time.perf_counter() - t0, 3)
    res = {"workspace": str(args.workspace), "case": case.case_id, "prediction_id": pred.prediction_id, **summary}
    if args.out is not None:
        res["out"] = str(args.out)
    emit(args, res, _summary_line(summary, f"{args.workspace} case {case.case_id}"))
    return 0


def _workspace_segmenter(ws, args):
    """(Segmenter, model version or None): ``--model`` is a workspace model version (default: the current one), or a
    catalog model name or .onnx file (a prediction from outside the registry, recorded without a version)."""
    from ..workspace.base import as_int

    if args.model is None:
        record = ws.current_model()
        if record is None:
            raise HilaError(f"{args.workspace}: no current model; add one (hila init --model, or train) or give --model VERSION")
        return record.segmenter(threads=args.threads, device=args.device), record.version
    if str(args.model).strip().isdigit():
        record = ws.model(as_int(args.model, "--model: model version"))
        return record.segmenter(threads=args.threads, device=args.device), record.version
    from ..inference.segmenter import Segmenter
    from ..models.catalog import get as catalog_entry

    if catalog_entry(args.model) is None and not Path(args.model).is_file():
        raise HilaError(f"--model {args.model!r}: neither a model version of {args.workspace}, a catalog model, "
                        "nor an .onnx file")
    return Segmenter(args.model, threads=args.threads, device=args.device), None
