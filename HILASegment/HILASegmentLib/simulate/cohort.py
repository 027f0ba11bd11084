"""Cohorts: a manifest CSV (case,image,reference) or a folder of label maps (synthetic), and `--labels` merging."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.errors import HilaError
from ..ground.paths import name_component

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class CohortCase:
    case: str
    reference: Path
    image: Optional[Path] = None     # None: synthesised from the reference


def parse_label_spec(spec: str) -> List[Tuple[str, List[int]]]:
    """``prostate=1+2,bladder=3`` -> [("prostate", [1, 2]), ("bladder", [3])]; a bare name means its position."""
    out: List[Tuple[str, List[int]]] = []
    for i, part in enumerate(p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        name, eq, vals = part.partition("=")
        try:
            values = [int(v) for v in vals.split("+")] if eq else [i + 1]
        except ValueError:
            raise HilaError(f"--labels {spec!r}: {part!r} is not NAME=V[+V...]") from None
        if not name.strip() or any(v <= 0 for v in values):
            raise HilaError(f"--labels {spec!r}: {part!r} needs a name and positive values")
        out.append((name.strip(), values))
    if not out:
        raise HilaError("--labels: give at least one NAME=V[+V...]")
    return out


def merge_labels(arr: np.ndarray, spec: List[Tuple[str, List[int]]]) -> np.ndarray:
    """Original label values -> 1..n in the order of ``spec``; values not named become background."""
    out = np.zeros(arr.shape, np.uint8)
    for i, (_name, values) in enumerate(spec, start=1):
        out[np.isin(arr, values)] = i
    return out


def _is_label_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(LABEL_SUFFIXES)


def _case_name(p: Path) -> str:
    n = p.name
    for s in LABEL_SUFFIXES:
        if n.lower().endswith(s):
            return n[: -len(s)]
    return n


def from_shapes(folder: Path) -> List[CohortCase]:
    folder = Path(folder)
    if not folder.is_dir():
        raise HilaError(f"{folder}: shapes folder not found")
    files = sorted(p for p in folder.iterdir() if _is_label_file(p))
    if not files:
        raise HilaError(f"{folder}: no label maps ({', '.join(LABEL_SUFFIXES)}) in the shapes folder")
    return [CohortCase(_case_name(p), p) for p in files]


def _grid(path: Path):
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError:
        raise HilaError(f"{path}: not a readable image") from None
    return r.GetSize(), r.GetSpacing(), r.GetOrigin(), r.GetDirection()


def from_manifest(csv_path: Path) -> List[CohortCase]:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise HilaError(f"{csv_path}: manifest not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        rows = list(csv.DictReader(f))
    if not rows:
        raise HilaError(f"{csv_path}: manifest has no rows (columns: case,image,reference)")
    missing = {"case", "image", "reference"} - set(rows[0])
    if missing:
        raise HilaError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    out: List[CohortCase] = []
    lines: Dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        img, ref = csv_path.parent / row["image"], csv_path.parent / row["reference"]
        for p in (img, ref):
            if not p.is_file():
                raise HilaError(f"{csv_path}: line {i}: {p} not found")
        gi, gr = _grid(img), _grid(ref)
        if gi[0] != gr[0] or not (np.allclose(gi[1], gr[1], atol=1e-4) and np.allclose(gi[2], gr[2], atol=1e-3)
                                  and np.allclose(gi[3], gr[3], atol=1e-4)):
            raise HilaError(f"{csv_path}: line {i}: reference {ref.name} is on another grid than image {img.name}")
        name = name_component((row["case"] or "").strip(), f"case{i - 1}")  # it names files in RUN/cases
        if name in lines:
            raise HilaError(f"{csv_path}: line {i}: case {row['case']!r} has the same file name ({name}) as line "
                            f"{lines[name]}; give each case its own name")
        lines[name] = i
        out.append(CohortCase(name, ref, img))
    return out


def check_label_values(cases: List[CohortCase], spec: List[Tuple[str, List[int]]]) -> Dict[int, int]:
    """Every value named in ``--labels`` must occur in some case; returns value -> cases containing it."""
    seen: Dict[int, int] = {}
    for c in cases:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(c.reference)))
        for v in np.unique(arr):
            seen[int(v)] = seen.get(int(v), 0) + 1
    for name, values in spec:
        for v in values:
            if v not in seen:
                raise HilaError(f"--labels: value {v} ({name}) occurs in no case of the cohort")
    return seen
