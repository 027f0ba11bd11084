"""A fresh model's recipe planned from the corrections themselves (nnU-Net's "dataset fingerprint" idea).

nnU-Net (Isensee et al., Nat Methods 2021) derives spacing and patch size from a fingerprint of the
data instead of fixed numbers. Here the fingerprint is the corrections' median voxel spacing and the
extent of their labelled structures, and the plan is:

* **spacing**: per axis the coarser of the median spacing (never resample finer than the data) and
  the modality's floor (CT 3 mm: loses < 3 % Dice on the pelvic organs and keeps a 2-core CPU at
  ~500 steps in 5 minutes; MR 1x1x3 mm: the prostate needs in-plane detail);
* **patch**: the structures' extent (the largest case's, per axis) plus :data:`CONTEXT_MM` of
  surroundings on each side, on that spacing, rounded up to what the network's strides divide, no
  larger than the median image, and scaled down to the modality's voxel budget when bigger.

The *configuration* (nnU-Net plans ``2d``, ``3d_lowres`` and ``3d_fullres`` and keeps what wins) is
chosen from the device: :data:`CONFIGURATIONS` says what each one is, :data:`DEVICE_CHOICE` which one
each device gets and why — the measurement behind it is ``scripts/bench_recipe.py`` (README, "Learning on
a CPU"). Explicit ``--config``/``--spacing``/``--patch`` override the plan (tests, benchmarks); the card
records the fingerprint, the configuration, the plan and what overrode it.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..formats.labelio import read_label
from ..ground.errors import HilaError
from . import architectures

#: surroundings (mm) a patch shows on each side of the labelled structures
CONTEXT_MM = 24.0
#: the finest spacing (mm) a fresh model of each modality uses, and the voxel budget of one patch (3d_fullres)
FLOOR_SPACING = {"CT": [3.0, 3.0, 3.0], "MR": [1.0, 1.0, 3.0]}
PATCH_BUDGET = {"CT": 64 * 64 * 48, "MR": 96 * 96 * 24}

#: What each configuration is: the finest grid (mm), the voxel budget of one patch, patches per step, the
#: network family (``UNet`` 3-D; ``SliceUNet`` a 2-D U-Net per axial slice, ``context`` neighbours as channels)
#: and, for the slice nets, the slices one patch holds.
CONFIGURATIONS = {
    "3d_fullres": {"floor": FLOOR_SPACING, "budget": PATCH_BUDGET, "batch": 2, "arch": "UNet"},
    # CT: the 3 mm grid already is the coarse one, and the CT recipe stays the one the real-CT leave-one-out test
    # holds (batch 2, MONAI transforms): batch 4 on cached arrays lost the bladder there (0.48 -> 0.31-0.37, one run
    # each); MR: 2x2x3 mm, batch 4, cached arrays, as scripts/bench_recipe.py measured
    "3d_lowres": {"floor": {"CT": [3.0, 3.0, 3.0], "MR": [2.0, 2.0, 3.0]},
                  "budget": {"CT": 64 * 64 * 48, "MR": 64 * 64 * 24}, "batch": {"CT": 2, "MR": 4},
                  "data_path": {"CT": "monai", "MR": "arrays"}, "arch": "UNet"},
    "2d": {"floor": FLOOR_SPACING, "budget": {"CT": 128 * 128 * 8, "MR": 128 * 128 * 8}, "batch": 2,
           "arch": "SliceUNet", "context": 0, "slices": 8},
    "2.5d": {"floor": FLOOR_SPACING, "budget": {"CT": 128 * 128 * 8, "MR": 128 * 128 * 8}, "batch": 2,
             "arch": "SliceUNet", "context": 1, "slices": 8},
}
#: Whether a continual round continues the parent's AdamW state, per modality: MR, as the loop was measured (README);
#: CT not, since the real-CT leave-one-out test (Testing/test_training_loo.py) fell short with it (0.587 vs the
#: parent's 0.590; one run) and passes without
CONTINUE_OPTIMIZER = {"MR": True, "CT": False}
#: The peak learning rate of a round that continues a model, per modality (a fresh one starts at 3e-3). MR 2e-3: the
#: acceptance loop (seed 7, 5 rounds, bf16) ended at test Dice 0.746 with it against 0.730 with 1e-3 (one run each;
#: 3e-3 gave 0.687 vs 0.640 in an earlier, loaded pair); CT 1e-3: 3e-3 cost the real-CT leave-one-out's bladder
#: 0.48 -> 0.25 (Testing/test_training_loo.py)
FINETUNE_LR = {"MR": 2e-3, "CT": 1e-3}


def finetune_lr(modality) -> float:
    """:data:`FINETUNE_LR` for ``modality`` (1e-3, the cautious one, for anything else)."""
    return float(FINETUNE_LR.get(str(modality), 1e-3))

#: Which configuration each device trains, and why (scripts/bench_recipe.py, 2 CPU cores, synthetic prostate cohort:
#: the coarse 3-D grid reached the highest test Dice after 100, 200 and 400 steps at every training-set size measured,
#: e.g. 0.742 vs 0.574 (3d_fullres), 0.499 (2d) at N=5, 400 steps; a GPU affords the full grid).
DEVICE_CHOICE = {
    "cpu": ("3d_lowres", "cpu: 3d_lowres had the highest test Dice at every step count in scripts/bench_recipe.py"),
    "cuda": ("3d_fullres", "cuda: a GPU affords the full-resolution grid (nnU-Net's default)"),
}


def ct_window() -> dict:
    """Soft-tissue window for pelvic CT: -200..300 HU -> 0..1 (air, fat and bone saturate)."""
    return {"kind": "ct_window", "level": 50.0, "width": 500.0, "out_range": [0.0, 1.0]}


def normalization(modality: str) -> dict:
    return ct_window() if modality == "CT" else {"kind": "zscore", "nonzero": True}


def fingerprint(items: Sequence, n_labels: int = 255) -> dict:
    """Median spacing, median image extent and per-case label extent (mm) of snapshot items.

    ``items``: objects with ``image_path`` and ``label_path`` (a workspace snapshot). Only image
    headers are read; label maps are read to measure the bounding box of every voxel labelled
    1..``n_labels`` (the structures the workspace segments; others become background in training).
    """
    spacings, sizes_mm, extents = [], [], []
    for it in items:
        r = sitk.ImageFileReader()
        r.SetFileName(str(it.image_path))
        r.ReadImageInformation()
        sp = np.array(r.GetSpacing(), float)
        spacings.append(sp)
        sizes_mm.append(np.array(r.GetSize(), float) * sp)
        lab = read_label(it.label_path)
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.Cast((lab > 0) & (lab <= n_labels), sitk.sitkUInt8))
        if stats.HasLabel(1):
            box = stats.GetBoundingBox(1)
            extents.append((np.array(box[3:6], float) * np.array(lab.GetSpacing(), float)).round(1).tolist())
    return {"cases": len(spacings),
            "median_spacing": np.median(spacings, 0).round(3).tolist() if spacings else None,
            "median_image_mm": np.median(sizes_mm, 0).round(1).tolist() if sizes_mm else None,
            "image_sizes_mm": [s.round(1).tolist() for s in sizes_mm],
            "label_extent_mm": extents}


def choose_configuration(device: str, config: Optional[str] = None) -> tuple:
    """(configuration name, why): ``config`` when given (``auto``/None: by device, :data:`DEVICE_CHOICE`)."""
    if config and config != "auto":
        if config not in CONFIGURATIONS:
            raise HilaError(f"--config {config!r}: use auto or one of {', '.join(CONFIGURATIONS)}")
        return config, f"asked for (--config {config})"
    return DEVICE_CHOICE["cuda" if str(device).startswith("cuda") else "cpu"]


def plan(modality: str, fp: dict, divisor: int, spacing: Optional[Sequence[float]] = None,
         patch: Optional[Sequence[int]] = None, configuration: str = "3d_fullres", why: str = "") -> dict:
    """``{"configuration", "why", "spacing", "patch_size", "batch_size", "normalization", "fingerprint", "rule"}``
    for a fresh model.

    ``spacing``/``patch``: explicit overrides (kept as given; ``rule`` says which were overridden). A patch the
    data cannot support (larger than every image; several slices for a 2-D net on one-slice images) is refused.
    """
    conf = CONFIGURATIONS[configuration]
    mod = modality if modality in conf["floor"] else "MR"
    floor = np.array(conf["floor"][mod], float)
    med = np.array(fp.get("median_spacing") or floor, float)
    sp = np.array(spacing, float) if spacing else np.maximum(floor, med)
    budget = int(conf["budget"][mod])
    slice_net = architectures.get(conf["arch"]).per_slice
    if patch:
        ps: List[int] = [int(p) for p in patch]
    else:
        ext = np.max(np.array(fp["label_extent_mm"], float), 0) if fp.get("label_extent_mm") else None
        want = (ext + 2 * CONTEXT_MM) / sp if ext is not None else np.full(3, 48.0)
        if fp.get("median_image_mm"):
            want = np.minimum(want, np.array(fp["median_image_mm"], float) / sp)
        if slice_net:  # a 2-D net sees one slice at a time: a patch is a stack of whole-structure slices
            want[2] = conf["slices"]
            shrink = min(1.0, (budget / float(np.prod(np.maximum(want, divisor)))) ** (1 / 2))
            ps = [max(divisor, int(math.ceil(w * shrink / divisor)) * divisor) for w in want[:2]] + [int(want[2])]
        else:
            shrink = min(1.0, (budget / float(np.prod(np.maximum(want, divisor)))) ** (1 / 3))
            ps = [max(divisor, int(math.ceil(w * shrink / divisor)) * divisor) for w in want]
        while int(np.prod(ps)) > budget and max(ps[:2 if slice_net else 3]) > divisor:  # rounding up may overshoot
            i = int(np.argmax(ps[:2 if slice_net else 3]))
            ps[i] -= divisor
    _check_supported(configuration, fp, sp, ps, slice_net, explicit_patch=bool(patch))
    rule = ("spacing: coarser of median spacing and the %s floor %s; patch: label extent + %g mm context each "
            "side, within the median image and %d voxels" % (configuration, floor.tolist(), CONTEXT_MM, budget))
    overridden = [k for k, v in (("spacing", spacing), ("patch_size", patch)) if v]
    if overridden:
        rule += "; overridden: " + ", ".join(overridden)
    return {"configuration": configuration, "why": why, "spacing": [round(float(s), 4) for s in sp],
            "patch_size": ps, "batch_size": int(_by_modality(conf["batch"], mod)),
            "data_path": str(_by_modality(conf.get("data_path", "arrays"), mod)),
            "normalization": normalization(modality), "fingerprint": fp, "rule": rule}


def _by_modality(value, modality: str):
    """A configuration setting that is either one value or one per modality."""
    return value.get(modality, value.get("MR")) if isinstance(value, dict) else value


def architecture(configuration: str, base_arch: dict, name: Optional[str] = None) -> dict:
    """The network dict of a fresh model of ``configuration`` (``base_arch``: the modality's 3-D U-Net; ``name``:
    ``--arch``, else the configuration's own family), as the architecture registry makes it."""
    return family(configuration, name).fresh(base_arch, CONFIGURATIONS[configuration])  # type: ignore[misc]


def family(configuration: str, name: Optional[str] = None) -> architectures.Architecture:
    """The registry's architecture for a fresh model of ``configuration``; ``--arch NAME`` must fit its patches
    (a per-slice network for 2d/2.5d, a 3-D one for 3d_*)."""
    own = architectures.get(CONFIGURATIONS[configuration]["arch"])
    chosen = architectures.get(name) if name else own
    if chosen.fresh is None or chosen.per_slice != own.per_slice:
        raise HilaError(f"--arch {name}: use one of "
                        f"{', '.join(a for a in architectures.choices() if architectures.get(a).per_slice == own.per_slice)}"
                        f" with --config {configuration}")
    return chosen


def _check_supported(configuration: str, fp: dict, sp: np.ndarray, ps: Sequence[int], slice_net: bool,
                     explicit_patch: bool) -> None:
    """Refuse a recipe the corrections cannot support, before any run row is written: a 3-D network on images
    of one slice, or a patch given larger than every image (planned patches are fitted to the images)."""
    sizes = fp.get("image_sizes_mm") or ([fp["median_image_mm"]] if fp.get("median_image_mm") else [])
    if not sizes:
        return
    vox = np.array(sizes, float) / sp  # per case, on the model grid
    if not slice_net and np.all(vox[:, 2] < 1.5):
        raise HilaError(f"configuration {configuration}: every image is a single slice on the {sp.tolist()} mm grid; "
                        "a 3-D network needs volumes (use --config 2d)")
    big = [i for i in range(2 if slice_net else 3) if np.all(vox[:, i] < ps[i])] if explicit_patch else []
    if big:
        raise HilaError(f"--patch {list(ps)}: larger than every image along {'/'.join('xyz'[i] for i in big)} "
                        f"(the largest is {np.max(vox, 0).round(1).tolist()} voxels at {sp.tolist()} mm)")
