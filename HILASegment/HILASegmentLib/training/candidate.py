"""Where a round's weights start (:func:`initial_network`) and what the candidate's card says (:func:`candidate_card`).

Kept apart from the run so the run reads as its steps, and so the card is built as a
:class:`~HILASegmentLib.models.modelcard.ModelCard` (validated like any other card) rather than a loose dict.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..ground.errors import HilaError
from ..models.cardsections import CheckpointChoice, Metrics, TrainingRecord, training_set_entries
from ..models.modelcard import LabelInfo, ModelCard, read_card
from ..workspace.records import SnapshotItem
from . import architectures, budget, calibrate, distill
from . import network as nw
from . import plan as planner
from .dataset import IGNORE_BAND, QUALITY_WEIGHTS
from .gate import without_choices


@dataclass
class Start:
    """What a round starts from: the weights, their architecture and the card the candidate inherits its grid from."""

    init: str                      # "scratch" | "finetune vN" | "imported vN (...)"
    base: ModelCard                # the grid, normalisation, activation (inference, roi...): the parent's card, or
                                   # for a fresh model one holding the planned grid
    arch: dict
    net: object
    sigmoid: bool = False
    plan: Optional[dict] = None    # the planned recipe (fresh models only)
    optimizer: Optional[dict] = None  # the parent round's optimiser state (fine-tuning its checkpoint)
    origin: Optional[object] = None   # the model whose weights it continues (a ModelRecord), None for a fresh one
    teacher: Optional[object] = None  # the preset a warm start comes from (distill.Teacher: its record and label map):
                                      # distilled into the fresh network, or its threshold calibrated
    own: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        family = architectures.ARCHITECTURES.get(self.arch.get("name"))
        self.own = family is not None and family.own


def line_head(ws, current, gateable: Optional[Callable[[object], bool]] = None):
    """The newest model of the current model's line: a candidate the gate kept back still holds the steps it
    trained, so the next round continues from it rather than throwing them away (the gate still decides what
    users get). A line runs through candidates only, and any model retired after the current one (a rollback:
    the user rejected what came after it) ends every line before it. ``gateable(head)``: whether continuing
    ``head`` still leaves enough corrections to gate with; when it would not (a head that trained on every
    correction, with one new correction a round) the round starts from the current model again, so the gate can
    promote."""
    if current is None:
        return None
    models = {m.version: m for m in ws.models()}
    rejected = max((v for v, m in models.items() if v > current.version and m.status == "retired"), default=0)
    for m in sorted(models.values(), key=lambda m: m.version, reverse=True):
        if m.version <= max(current.version, rejected):
            break
        v, link = m.version, m
        while link is not None and link.status == "candidate" and link.parent not in (None, v):
            v = link.parent
            if v == current.version:
                usable = m.checkpoint_path is not None and Path(m.checkpoint_path).exists()
                return m if usable and (gateable is None or gateable(m)) else current
            link = models.get(v)
    return current


def _label_names(card: ModelCard) -> List[str]:
    return [n.lower() for n in card.label_names()]


def initial_network(ws, current, opts, snapshot: Sequence[SnapshotItem], gateable: Optional[Callable[[object], bool]] = None) -> Start:
    """Fine-tune the current model's checkpoint (``--init auto``), convert an imported ONNX model
    (``--init imported``), or start a fresh U-Net on a recipe planned from the corrections."""
    settings = ws.settings
    names = [lab.name.lower() for lab in settings.labels]
    if current is not None and opts.init == "auto":  # (a model with no checkpoint of its own falls through)
        current = line_head(ws, current, gateable)
        cur_card = current.card
        if current.checkpoint_path is not None and Path(current.checkpoint_path).exists() \
                and _label_names(cur_card) == names:
            arch0 = cur_card.architecture or {}
            family = architectures.ARCHITECTURES.get(arch0.get("name"))  # a converted one rebuilds from its ONNX
            onnx_src = ws.model(int(arch0["onnx_from_version"])).path if family is not None and not family.own else None
            fits(ws, snapshot, arch0 or {}, cur_card, opts)  # before the checkpoint is loaded
            net, arch, opt_state = nw.load_checkpoint(current.checkpoint_path, onnx_path=onnx_src, with_optimizer=True)
            if not planner.CONTINUE_OPTIMIZER.get(cur_card.modality, False):
                opt_state = None
            return Start(f"finetune v{current.version}", cur_card, arch, net, cur_card.activation == "sigmoid",
                         optimizer=opt_state, origin=current)
    if opts.init == "imported":
        if current is None:
            raise HilaError(f"{ws.root}: --init imported needs a current (imported) model to fine-tune")
        cur_card = read_card(current.path)
        if _label_names(cur_card) != names:
            raise HilaError(f"model v{current.version}: its labels differ from the workspace's; "
                            "cannot fine-tune it on these corrections")
        fits(ws, snapshot, {}, cur_card, opts)
        net = nw.convert_onnx(current.path)
        diff = nw.check_conversion(net, current.path, shape=(1, 1, *[int(p) for p in cur_card.patch_size]))
        arch = {"name": "onnx2torch", "onnx_from_version": current.version, "conversion_max_abs_diff": diff,
                "source_architecture": cur_card.architecture}
        return Start(f"imported v{current.version} (onnx2torch, conversion max abs diff {diff:.2g})", cur_card,
                     arch, net, cur_card.activation == "sigmoid")
    how, teacher = warm_start(current, settings, opts.init, getattr(opts, "warm_start", "auto"))
    if how == "calibrate":
        card = current.card
        return Start(f"calibrate v{current.version} ({card.name}): its threshold fitted to the corrections", card,
                     dict(card.architecture or {}), None, True, teacher=teacher)
    configuration, why = planner.choose_configuration(opts.device, getattr(opts, "config", None))
    base_arch = nw.default_architecture(settings.modality, len(names))
    if opts.channels:
        base_arch["channels"] = [int(c) for c in opts.channels]
        base_arch["strides"] = [2] * (len(base_arch["channels"]) - 1)
    arch = planner.architecture(configuration, base_arch, getattr(opts, "arch", None))
    div = architectures.get(arch["name"]).divisor(arch)
    slice_net = architectures.get(arch["name"]).per_slice
    if opts.patch_size and any(int(p) % div for p in (opts.patch_size[:2] if slice_net else opts.patch_size)):
        raise HilaError(f"--patch {list(opts.patch_size)}: each size must be a multiple of {div} for this network")
    fp = planner.fingerprint(snapshot, len(names))
    rec = planner.plan(settings.modality, fp, div, spacing=opts.spacing, patch=opts.patch_size,
                       configuration=configuration, why=why)
    base = planned_base(settings, rec)
    fits(ws, snapshot, arch, base, opts, spacing=opts.spacing, batch=rec["batch_size"])  # before the network is built: 4096 channels allocate gigabytes at once
    init = "scratch" if teacher is None else \
        f"distill v{teacher.version} ({teacher.record.card.name}), then the corrections"
    return Start(init, base, arch, nw.build_network(arch), False, plan=rec, teacher=teacher)


def warm_start(current, settings, init: str, warm: str = "auto") -> Tuple[Optional[str], Optional[distill.Teacher]]:
    """How a round starts from a pretrained model with no checkpoint of its own: ``("calibrate", teacher)`` (its
    threshold fitted to the corrections, :mod:`.calibrate`), ``("distill", teacher)`` (a fresh own network learns its
    predictions first, :mod:`.distill`) or ``(None, None)`` (the corrections alone).

    ``--init calibrate|distill`` insist (HilaError naming a card that does not fit). ``auto`` warms up from a current
    model of another family (an imported preset such as TAPS, which cannot be fine-tuned in CPU minutes) whose card
    fits, as ``warm`` says: ``auto`` or ``calibrate``: calibrate a sigmoid model with a threshold, else nothing;
    ``distill``: distil it; ``none``: never. Distillation is never the default: on the convention-shift cohort it was
    no better than the corrections alone (README)."""
    if init in ("distill", "calibrate"):
        if current is None:
            raise HilaError(f"--init {init} needs a current model to start from (hila init --model, e.g. taps)")
        teacher = distill.teacher_of(current, settings)
        if init == "calibrate" and not calibrate.calibratable(current.card):
            raise HilaError(f"model v{current.version} ({current.card.name}): not a sigmoid model with a threshold; "
                            "--init calibrate has nothing to fit")
        return init, teacher
    if init != "auto" or current is None or warm == "none":
        return None, None
    family = architectures.ARCHITECTURES.get((current.card.architecture or {}).get("name"))
    if family is not None and family.own:
        return None, None
    try:
        teacher = distill.teacher_of(current, settings)
    except HilaError:
        return None, None
    if warm == "distill":
        return "distill", teacher
    return ("calibrate", teacher) if calibrate.calibratable(current.card) else (None, None)


def planned_base(settings, rec: dict) -> ModelCard:
    """What a fresh model starts from: a card holding the planned grid (``plan.plan``'s spacing, patch size,
    normalisation) with the workspace's modality and labels; :func:`candidate_card` builds the real card on it."""
    return ModelCard(name="planned grid", labels=_labels(settings), spacing=tuple(float(s) for s in rec["spacing"]),
                     patch_size=tuple(int(p) for p in rec["patch_size"]), normalization=dict(rec["normalization"]),
                     modality=settings.modality, orientation="RAS", activation="softmax")


def recipe_batch(start: Start) -> int:
    """Patches per step of the start's recipe: the plan's for a fresh model, the parent's loop for a fine-tune."""
    return int(_recipe(start).get("batch_size", 2))


def recipe_data_path(start: Start) -> str:
    """The start's data path (``arrays`` or ``monai``): the plan's for a fresh model, the parent's for a fine-tune."""
    return str(_recipe(start).get("data_path", "monai" if not start.plan else "arrays"))


def _recipe(start: Start) -> dict:
    if start.plan:
        return start.plan
    return start.base.training_loop()


def fits(ws, snapshot: Sequence[SnapshotItem], arch: dict, base: ModelCard, opts, spacing: Optional[List[float]] = None,
         batch: Optional[int] = None) -> float:
    """Refuse a round whose network (``arch``: channels; none for an imported model) and cases on the model grid
    (``base``: spacing, patch size; ``spacing`` as the user gave it, before the plan rounds it) do not fit in
    memory, before anything is built or recorded."""
    patch = [int(p) for p in base.patch_size]
    spacing = [float(s) for s in (spacing or base.spacing)]
    if len(patch) != 3 or len(spacing) != 3:
        return 0.0
    batch = int(opts.batch_size or batch or base.training_loop().get("batch_size") or 2)
    chans = arch.get("channels")
    options = (f"hila train (patch {'x'.join(map(str, patch))}, batch {batch}"
               + (f", channels {','.join(map(str, chans))}" if chans else "")
               + f", spacing {','.join(f'{s:g}' for s in spacing)} mm)")
    grids = [(it.case_id, ws.case(it.case_id).grid) for it in snapshot]
    device = "cuda" if str(opts.device) in ("cuda", "auto") else "cpu"
    return budget.check_round(arch, patch, spacing, batch, grids, device, options)


def candidate_card(start: Start, settings, version: int, current, snapshot: Sequence[SnapshotItem], cfg, res, par: dict,
                   opts, device: str) -> ModelCard:
    """The new version's card: the start's grid/normalisation, the workspace's labels, the exact training set.

    The gate's figures (``metrics.validation``, ``parent_validation``, ``gate``) and the timings are added by the run
    once both models have been scored; ``training`` records the recipe, the loop and the
    corrections that trained, chose the checkpoint (none: the last weights) and gated.
    """
    base, arch = start.base, start.arch
    patch = [int(p) for p in base.patch_size]
    family = architectures.ARCHITECTURES.get(arch.get("name"))
    div = family.divisor(arch) if family is not None else 16
    # own nets: windows of the training patch size (instance-norm statistics as in training)
    inference = {"overlap": 0.5, "mode": "gaussian", "margin_vox": 5, "size_divisor": div,
                 "max_window_voxels": int(np.prod(patch))} if start.own else dict(base.inference or {})
    training = TrainingRecord(
        init=start.init, loop=cfg.to_dict(), steps=res.steps, epochs=res.epochs,
        optimizer_continued=bool(getattr(res, "resumed_optimizer", False)),
        precision=getattr(res, "precision", "float32"),
        seconds_per_step=res.seconds_per_step, stopped=res.stopped, final_loss=res.final_loss,
        loss_history=res.history[-20:], trainable_parameters=res.trainable_parameters,
        device=device, threads=int(opts.threads or os.cpu_count() or 1),
        quality_weights=dict(QUALITY_WEIGHTS, **(opts.quality_weights or {})),
        ignore_band=dict(IGNORE_BAND) if opts.ignore_band else None,
        checkpoint=CheckpointChoice(rule="last weights (no checkpoint chosen on validation data)", chosen_on=[]),
        recipe=start.plan or {"inherited_from": start.init}, distill=getattr(res, "distill", None))
    return ModelCard(
        name=f"hila-{settings.modality.lower()}-{'unet' if start.own else 'finetuned'}",
        version=int(version),
        parent_version=start.origin.version if start.origin is not None else (current.version if current else None),
        description=(f"Trained by the HILASegment trainer on {len(snapshot)} correction(s) of this workspace "
                     f"({start.init}); {settings.modality}, labels {', '.join(lab.name for lab in settings.labels)}."),
        modality=settings.modality,
        labels=_labels(settings),
        spacing=tuple(float(s) for s in base.spacing),
        orientation=base.orientation,
        patch_size=tuple(patch),
        in_channels=1,
        activation=base.activation,
        normalization=dict(base.normalization),
        # a step the gate chose for the base's weights is chosen again for these (gate.without_choices)
        postprocess={"largest_component": True} if start.own else without_choices(base.postprocess),
        inference=inference,
        roi={} if start.own else dict(base.roi or {}),
        architecture=dict(arch, parameters=nw.count_parameters(start.net)),
        training_set=training_set_entries(snapshot),
        metrics=Metrics(parity=par),
        licence="same as the workspace's data; weights trained by HILASegment (Apache-2.0 code)",
        training=training,
    ).validate(f"candidate card v{version}")


def _labels(settings) -> List[LabelInfo]:
    """The workspace's labels as a card lists them (colours to the card's 4 decimals)."""
    return [LabelInfo(lab.value, lab.name, tuple(round(float(c), 4) for c in lab.color)) for lab in settings.labels]
