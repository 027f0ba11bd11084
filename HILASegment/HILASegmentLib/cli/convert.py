"""`hila convert IN OUT`: any supported image or segmentation in, any supported format out.

What is read and written is decided by the file names and contents: a ``.seg.nrrd`` (recognised by
its segment keys, not only its name) is a Slicer segmentation, a DICOM folder is a series, a DICOM
RTSTRUCT or SEG file (recognised by its Modality) a segmentation of the ``--reference`` series,
other volume files are images or label maps. Output ``*.seg.nrrd`` makes a Slicer segmentation (from
a label map, with ``--names``), ``--format seg|rtstruct`` (or ``*.dcm``) a DICOM object referencing
the ``--reference`` series, other volume suffixes a plain image or label map. Nothing is written on
error: outputs appear atomically, by rename, only once complete.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Mapping, Union

from ..dicom import exportformats  # the export format registry (light: names, writers import inside)
from ..ground.errors import HilaError


def register(sub, parent) -> None:
    p = sub.add_parser(
        "convert", parents=[parent],
        help="convert images and segmentations (.seg.nrrd, .nrrd, .nii[.gz], .mha/.mhd, DICOM folder)",
        description="Convert between volume formats (.nrrd .nii .nii.gz .mha .mhd, DICOM series folder in), "
                    "and between label maps and Slicer segmentations (.seg.nrrd), keeping the exact geometry.",
        epilog="examples: hila convert dicom/ProstateX-0000_t2 t2.nrrd | "
               "hila convert labels.nii.gz labels.seg.nrrd --names 1=prostate,2=bladder | "
               "hila convert case.seg.nrrd case_labels.nii.gz",
    )
    p.add_argument("input", metavar="IN", help="volume file, DICOM series folder, label map or .seg.nrrd")
    p.add_argument("output", metavar="OUT", help="output file: .seg.nrrd, .nrrd, .nii, .nii.gz, .mha or .mhd")
    p.add_argument("--names", metavar="SPEC",
                   help="segment names for label values: '1=prostate,2=bladder', or a Slicer colour table / "
                        "JSON file (label map -> .seg.nrrd)")
    p.add_argument("--reference", metavar="IMAGE",
                   help="the image the labels belong to: the label map must lie on its grid, and the output "
                        "gets exactly the image's geometry; for DICOM SEG/RTSTRUCT in or out, the image series' "
                        "DICOM folder (a label map may lie on a crop of its grid)")
    p.add_argument("--format", choices=list(exportformats.EXPORT_FORMATS), dest="dicom_format",
                   help="write a DICOM object: " + exportformats.help_text())
    p.add_argument("--structures", metavar="WHICH",
                   help="RTSTRUCT input: 'manual' (default: structures without an auto-contour suffix such as "
                        "_DL/_MBS, not the body outline), 'all' (overlapping ones in extra layers), a contour set "
                        "('DL', 'MBS') or structure names 'Prostata,Vescica'")
    p.add_argument("--annotator", metavar="NAME", help="DICOM output: who made the segmentation (provenance)")
    p.add_argument("--quality", choices=("reviewed", "rough", "weak"), help="DICOM output: label quality (provenance)")
    p.set_defaults(func=run)


def _kind_of_output(path: str) -> str:
    from ..formats.imageio import VOLUME_SUFFIXES, volume_suffix

    name = Path(path).name.lower()
    if name.endswith(".seg.nrrd"):
        return "segmentation"
    if volume_suffix(path) is None:
        raise HilaError(f"{path}: unsupported output type; use .seg.nrrd or one of {', '.join(VOLUME_SUFFIXES)}")
    return "image"


def _read_dicom_object(src_p: Path, modality: str, series, structures: str | None):
    """A DICOM RTSTRUCT or SEG as a Segmentation on the series' grid."""
    from ..dicom import dicomseg, rtstruct

    if modality == "RTSTRUCT":
        return rtstruct.to_segmentation(src_p, series, structures)
    return dicomseg.to_segmentation(src_p, series)[0]


def _write_dicom_object(fmt: str, src_p: Path, seg, table: dict, series, dst: str, provenance) -> dict:
    """Write ``seg`` (or the label map at ``src_p``) as a DICOM SEG or RTSTRUCT of ``series``."""
    from ..dicom import dicomref
    from ..formats import labelio, segfile

    if seg is None and segfile.is_seg_nrrd(src_p):
        seg = segfile.read_segmentation(src_p, table or None)
    if seg is not None:
        masks = dicomref.masks_from_segmentation(seg, series, src_p)
    else:
        label = dicomref.onto_series(labelio.read_label(src_p), series, src_p)
        masks = dicomref.masks_from_label(label, table)
    form = exportformats.get(fmt)
    form.write(masks, series, dst, provenance)
    kept = [m for m in masks if m[1].any()]
    what = form.title
    return {"result": {"segments": [m[0] for m in kept], "format": fmt, "series_uid": series.series_uid},
            "summary": f"wrote {dst}: {what} of {len(kept)} segment(s) referencing series {series.series_uid}"}


def convert(src: str, dst: str, names=None, reference: str | None = None, fmt: str | None = None,
            structures: str | None = None, provenance=None) -> dict:
    """Convert ``src`` to ``dst`` (see the module doc); returns a JSON-able description of what was written."""
    from ..dicom import dicomref
    from ..formats import imageio, labelio, segfile
    from ..formats.segmentation import OVERLAP_REMEDY
    from ..ground.paths import check_outputs, check_readable

    if fmt is None and dst.lower().endswith(".dcm"):
        raise HilaError(f"{dst}: say which DICOM object to write: "
                        + " or ".join(f"--format {n}" for n in exportformats.EXPORT_FORMATS))
    out_kind = "dicom" if fmt else _kind_of_output(dst)
    src_p = Path(src)
    check_readable(src_p)
    check_outputs({"IN": src, "--reference": reference, "--names": names if names and Path(names).is_file() else None},
                  {"OUT": dst})
    modality = dicomref.object_modality(src_p) if src_p.is_file() else None
    dicom_object = modality in ("RTSTRUCT", "SEG")
    if structures and modality != "RTSTRUCT":
        raise HilaError(f"{src}: --structures applies to an RTSTRUCT input")
    series = None
    if dicom_object or out_kind == "dicom":
        if not reference:
            raise HilaError(f"{src if dicom_object else dst}: DICOM SEG and RTSTRUCT need --reference, the image "
                            "series' DICOM folder")
        series = dicomref.read_series(reference)
        ref = series.image
    else:
        ref = imageio.read_image(reference) if reference else None
    table = parse_names(names) if names else {}
    preloaded = _read_dicom_object(src_p, modality, series, structures) if dicom_object else None
    if preloaded is not None:
        in_kind = modality.lower()
    else:
        in_kind = "segmentation" if segfile.is_seg_nrrd(src_p) else ("dicom" if src_p.is_dir() else "image")

    if out_kind == "dicom":
        done = _write_dicom_object(fmt, src_p, preloaded, table, series, dst, provenance)
        done["result"].update({"input": str(src), "input_kind": in_kind, "output": str(dst), "output_kind": fmt})
        return done
    if out_kind == "segmentation":
        if preloaded is not None:
            seg = preloaded
        elif in_kind == "segmentation":
            seg = segfile.read_segmentation(src_p, table or None)
            if ref is not None:
                diff = imageio.grid_difference(seg.grid, ref)
                if diff:
                    raise HilaError(f"{src}: segmentation is not on the grid of {reference} ({diff})")
        else:
            label = labelio.read_label(src_p, ref)
            if ref is not None:
                label.CopyInformation(ref)  # within tolerance: take the image's exact geometry
            seg = segfile.Segmentation.from_label_image(label, [(v, n, None) for v, n in sorted(table.items())])
            seg.source = str(src_p)
        segfile.write_segmentation(seg, dst)
        grid = seg.grid
        result = {"segments": [{"id": s.id, "name": s.name, "label_value": s.label_value, "layer": s.layer}
                               for s in seg.segments], "layers": len(seg.layers)}
        summary = f"wrote {dst}: Slicer segmentation, {len(seg.segments)} segment(s) in {len(seg.layers)} layer(s)"
    else:
        if preloaded is not None or in_kind == "segmentation":
            seg = preloaded or segfile.read_segmentation(src_p)
            overlap = seg.overlap_error(str(src), OVERLAP_REMEDY["label map"])
            if overlap:  # the later segment would win: part of an organ silently gone
                raise overlap
            img = seg.to_label_image(reference=ref)
            if ref is not None:
                diff = imageio.grid_difference(img, ref)
                if diff:
                    raise HilaError(f"{src}: segmentation is not on the grid of {reference} ({diff})")
                img.CopyInformation(ref)
            values = seg.label_values()
            result = {"segments": [{"id": s.id, "name": s.name, "label_value": values[s.id]} for s in seg.segments]}
            summary = f"wrote {dst}: label map of {len(seg.segments)} segment(s)"
        else:
            if table:
                raise HilaError("--names applies when a label map is converted to a .seg.nrrd")
            img = labelio.read_label(src_p, ref) if ref is not None else imageio.read_image(src_p)
            if ref is not None:
                img.CopyInformation(ref)
            result = {}
            summary = f"wrote {dst}: {img.GetPixelIDTypeAsString()} image"
        imageio.write_image(img, dst)
        grid = img
    result.update({
        "input": str(src), "input_kind": in_kind, "output": str(dst), "output_kind": out_kind,
        "size": list(grid.GetSize()), "spacing": list(grid.GetSpacing()), "origin": list(grid.GetOrigin()),
        "direction": list(grid.GetDirection()),
    })
    size = "x".join(str(s) for s in grid.GetSize())
    return {"result": result, "summary": f"{summary}, {size} voxels"}


def run(args: argparse.Namespace) -> int:
    from ..dicom.dicomref import Provenance
    from . import emit

    provenance = Provenance(annotator=args.annotator, quality=args.quality)
    done = convert(args.input, args.output, names=args.names, reference=args.reference, fmt=args.dicom_format,
                   structures=args.structures, provenance=provenance)
    emit(args, done["result"], done["summary"])
    return 0


def parse_names(spec: Union[str, Mapping[int, str], None]) -> Dict[int, str]:
    """A name table from ``'1=prostate,2=bladder'``, a Slicer colour table file (``value name r g b a``
    lines), a JSON file (``{"1": "prostate"}``) or a mapping."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {int(k): str(v) for k, v in spec.items()}
    text = str(spec).strip()
    p = Path(text)
    if text and p.is_file():
        body = p.read_text(encoding="utf-8", errors="replace")
        if p.suffix.lower() == ".json":
            try:
                obj = json.loads(body)
                return {int(k): str(v) for k, v in obj.items()}
            except (ValueError, AttributeError) as exc:
                raise HilaError(f"{p}: not a JSON object of value -> name ({exc})") from None
        names: Dict[int, str] = {}
        for ln in body.splitlines():
            ln = ln.strip()
            if not ln or ln.startswith("#"):
                continue
            parts = ln.split()
            try:
                v = int(parts[0])
            except ValueError:
                raise HilaError(f"{p}: line {ln[:40]!r} does not start with a label value") from None
            if v != 0 and len(parts) > 1:
                names[v] = parts[1]
        return names
    names = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "=" not in item:
            raise HilaError(f"names: {item!r} is not VALUE=NAME (e.g. 1=prostate,2=bladder)")
        v, name = item.split("=", 1)
        try:
            value = int(v)
        except ValueError:
            raise HilaError(f"names: {v!r} in {item!r} is not an integer label value") from None
        if value < 1 or not name.strip():
            raise HilaError(f"names: {item!r} needs a value of 1 or more and a name")
        if value in names:
            raise HilaError(f"names: label value {value} is named twice")
        names[value] = name.strip()
    return names
