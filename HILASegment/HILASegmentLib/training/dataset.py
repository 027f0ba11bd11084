"""Training cases from a workspace snapshot, on the model's grid, preprocessed once and cached as arrays.

Each case is resampled to the card's spacing and orientation and normalised with the very functions
the inference engine uses (so training sees exactly what the Segmenter will feed the network), padded
to at least one patch, and stored as ``.npz`` keyed by the files' content and the preprocessing
parameters, so the next round starts in seconds. Each case gets a sampling weight from its quality.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import read_image
from ..formats.labelio import read_label
from ..ground.errors import HilaError
from ..models.modelcard import ModelCard
from ..models.modelgrid import extract, model_input
from ..workspace.records import SnapshotItem

#: default sampling weight per correction quality (reviewed > rough > weak); ``--quality-weights`` overrides
QUALITY_WEIGHTS: Dict[str, float] = {"reviewed": 1.0, "rough": 0.5, "weak": 0.25}
#: a suspect correction (``training.suspects``) samples at this fraction of its quality's weight until re-reviewed
SUSPECT_FACTOR = 0.1
#: continual learning: a correction the parent model never trained on is sampled this many times as often as the
#: ones it did (every correction is replayed, so nothing is forgotten; the new ones are what the round is for)
NEW_FACTOR = 2.0
#: the label value a voxel takes where the loss ignores it (``ignore_band``); never a workspace label
IGNORE = 255
#: ``hila train --ignore-band``: band half-width in voxels (model grid) around each label's boundary that the
#: loss ignores, per quality: a rough boundary is uncertain by about a voxel; a weak (box/line) pseudo-mask
#: only in its core and clearly outside it
IGNORE_BAND: Dict[str, int] = {"rough": 1, "weak": 3}


@dataclass
class Preprocessing:
    """What puts an image on the model's grid: from the card (spacing x,y,z mm; normalisation dict)."""

    spacing: Sequence[float]
    normalization: dict
    patch_size: Sequence[int]
    modality: str = "CT"
    orientation: str = "RAS"
    foreground: Optional[object] = None    # the card's inference.foreground rule (None: modality default)
    margin_vox: int = 5
    crop_body: bool = True

    @classmethod
    def from_card(cls, card: ModelCard) -> "Preprocessing":
        inf = card.inference or {}
        return cls(spacing=list(card.spacing), normalization=dict(card.normalization),
                   patch_size=list(card.patch_size), modality=card.modality,
                   orientation=card.orientation, foreground=inf.get("foreground"),
                   margin_vox=int(inf.get("margin_vox", 5)))

    def key(self) -> str:
        return json.dumps({"spacing": [float(s) for s in self.spacing], "norm": self.normalization,
                           "patch": [int(p) for p in self.patch_size], "modality": self.modality,
                           "orientation": self.orientation, "fg": self.foreground, "margin": self.margin_vox,
                           "crop": self.crop_body, "v": 3}, sort_keys=True, default=str)


def ignore_band(label: np.ndarray, radius: int) -> np.ndarray:
    """A copy of ``label`` (1,X,Y,Z) with :data:`IGNORE` on every voxel within ``radius`` voxels of a label's
    boundary (between a label and the background or another label): what the loss does not count."""
    if radius <= 0:
        return label
    out = label.copy()
    arr = label[0]
    band = np.zeros(arr.shape, bool)
    for value in np.unique(arr):
        if value == 0 or value == IGNORE:
            continue
        m = sitk.GetImageFromArray((arr == value).astype(np.uint8))
        grown = sitk.GetArrayFromImage(sitk.BinaryDilate(m, [int(radius)] * 3))
        shrunk = sitk.GetArrayFromImage(sitk.BinaryErode(m, [int(radius)] * 3))
        band |= grown.astype(bool) & ~shrunk.astype(bool)
    out[0][band] = IGNORE
    return out


def quality_weight(quality: Optional[str], weights: Optional[Dict[str, float]] = None) -> float:
    w = dict(QUALITY_WEIGHTS)
    w.update(weights or {})
    return float(w.get(str(quality or "reviewed"), w["reviewed"]))


# --------------------------------------------------------------------------- grid + intensity

def to_model_grid(image: sitk.Image, label: Optional[sitk.Image], prep: Preprocessing,
                  where: str = "training image") -> tuple:
    """(image (1,X,Y,Z) float32, label (1,X,Y,Z) uint8 or None) exactly as the Segmenter prepares an image.

    :func:`~HILASegmentLib.models.modelgrid.model_input` is the one definition of the network's input (grid, linear
    resampling, normalisation, body box) for both paths; here it is cut to the body box as the Segmenter runs
    it (the part of the box outside the grid is zero-padded, as the Segmenter's windows are), and the label
    goes onto the same grid (nearest neighbour). An image with no body is refused, as inference refuses it.
    """
    mi, lab = model_input(image, prep.spacing, prep.orientation, prep.normalization, prep.modality, prep.foreground,
                          prep.margin_vox, where, label=label, require_body=prep.crop_body)
    norm = mi.norm
    if prep.crop_body:
        norm = extract(norm, mi.body)
        lab = None if lab is None else extract(lab, mi.body)
    x = np.ascontiguousarray(norm[None], dtype=np.float32)
    y = None if lab is None else np.ascontiguousarray(lab[None], dtype=np.uint8)
    return x, y


def pad_to(x: np.ndarray, y: np.ndarray, patch: Sequence[int]) -> tuple:
    """Pad (1,X,Y,Z) arrays symmetrically to at least the patch size with zeros, as inference pads windows."""
    pads = [(0, 0)] + [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for s, p in zip(x.shape[1:], patch)]
    if not any(a or b for a, b in pads):
        return x, y
    return np.pad(x, pads), np.pad(y, pads)


# --------------------------------------------------------------------------- cases + cache

def _file_key(path: Path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def load_case(image_path: Path, label_path: Path, prep: Preprocessing, n_labels: int,
              cache_dir: Optional[Path] = None, label_map: Optional[Dict[int, int]] = None) -> dict:
    """One case as arrays on the model grid (+ crop indices); cached in ``cache_dir`` when given.

    Label values above ``n_labels`` (structures the workspace does not segment) become background;
    ``label_map`` renumbers values first (e.g. a foreign label map's numbering).
    """
    key = hashlib.sha256((prep.key() + _file_key(image_path) + _file_key(label_path) + str(n_labels)
                          + json.dumps(label_map or {}, sort_keys=True)).encode()).hexdigest()[:24]
    cached = Path(cache_dir) / f"{key}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        try:
            with np.load(cached) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
            pass
    image = read_image(image_path)
    label = read_label(label_path)
    x, y = to_model_grid(image, label, prep)
    if label_map:
        lut = np.arange(256, dtype=np.uint8)
        for a, b in label_map.items():
            lut[int(a)] = int(b)
        y = lut[y]
    y[y > n_labels] = 0
    x, y = pad_to(x, y, prep.patch_size)
    flat = y[0].ravel()
    case = {"image": x, "label": y,
            "fg_indices": np.flatnonzero(flat > 0).astype(np.int64),
            "bg_indices": np.flatnonzero(flat == 0).astype(np.int64)}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **case)
        os.replace(tmp, cached)
    return case


def cases_from_snapshot(items: Sequence[SnapshotItem], prep: Preprocessing, n_labels: int, cache_dir: Optional[Path] = None,
                        quality_weights: Optional[Dict[str, float]] = None,
                        progress: Optional[Callable] = None, suspects: Optional[set] = None,
                        bands: Optional[Dict[str, int]] = None, seen: Optional[set] = None) -> List[dict]:
    """Arrays for every snapshot item (latest correction per case), each tagged with id, version, weight.

    ``suspects``: (case_id, correction_version) pairs flagged suspect; their weight is multiplied by
    :data:`SUSPECT_FACTOR` (kept, not dropped: a flag is a doubt, not a verdict). ``bands``: per quality,
    the half-width of the boundary band the loss ignores (:func:`ignore_band`; empty: every voxel counts).
    ``seen``: (case_id, correction_version) pairs the parent model trained on; the others weigh :data:`NEW_FACTOR`
    times more (None: no parent, all equal)."""
    out = []
    for i, it in enumerate(items):
        if progress:
            progress(i / max(1, len(items)), f"preparing case {it.case_id}")
        case = load_case(Path(it.image_path), Path(it.label_path), prep, n_labels, cache_dir)
        if not case["fg_indices"].size:
            raise HilaError(f"correction {it.case_id} v{it.correction_version}: no labelled voxel left on the model grid")
        suspect = (str(it.case_id), int(it.correction_version)) in (suspects or set())
        quality = str(it.quality or "reviewed")
        radius = int((bands or {}).get(quality, 0))
        if radius:
            case = dict(case, label=ignore_band(case["label"], radius))
        new = seen is not None and (str(it.case_id), int(it.correction_version)) not in seen
        case.update(case_id=it.case_id, correction_version=int(it.correction_version), new=new,
                    quality=quality, suspect=suspect,
                    weight=quality_weight(quality, quality_weights) * (SUSPECT_FACTOR if suspect else 1.0)
                    * (NEW_FACTOR if new else 1.0),
                    image_path=str(it.image_path), label_path=str(it.label_path))
        out.append(case)
    if progress:
        progress(1.0, "cases ready")
    return out
