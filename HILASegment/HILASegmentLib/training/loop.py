"""The optimisation loop: quality-weighted patch sampling, Dice+CE, AdamW, AMP on GPU, a time/step budget.

It knows nothing about workspaces or files: it takes cases as arrays already on the model's grid
(see :mod:`.dataset`) and a network, and returns the trained network's loss history. Stopping is
cooperative: ``should_stop()`` is polled every step (the run sets it on SIGTERM/SIGINT).

The run keeps the *last* weights, as nnU-Net does: no checkpoint is chosen on validation data, so no
correction is spent on choosing and the gate (:mod:`.gate`) scores the candidate on corrections nothing
was selected on. Measured by scripts/bench_gate.py (``--part checkpoint``, 4 small synthetic runs): the
checkpoint a held-out correction would choose scored 0.0003 Dice *below* the last weights on fresh cases.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, MaskedDiceLoss
from torch import nn

from .dataset import IGNORE
from .transforms import ArrayPatchSampler, batch_affine, train_transforms


@dataclass
class LoopConfig:
    """Hyper-parameters of one training run (recorded in the card)."""

    patch_size: Sequence[int] = (96, 96, 48)
    batch_size: int = 2
    samples_per_case: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_steps: int = 100000
    max_seconds: float = 300.0
    warmup_steps: int = 10
    device: str = "cpu"
    amp: bool = True                  # mixed precision: float16 on CUDA, bfloat16 on a CPU with native bf16 (cpu_bf16)
    seed: int = 0
    processes: int = 1                # data-parallel processes (hila train --nproc): patches per step x this
    freeze: str = ""                  # "" | "encoder": train only the decoder half of the parameters
    data_path: str = "arrays"         # "arrays" (numpy crops + one batched affine) | "monai" (dict transforms)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["patch_size"] = [int(p) for p in self.patch_size]
        return d


@dataclass
class LoopResult:
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    final_loss: Optional[float] = None
    stopped: str = "max_steps"          # budget | max_steps | cancelled
    optimizer: Optional[dict] = None    # the optimiser's final state (saved with the weights: the next round continues it)
    resumed_optimizer: bool = False
    precision: str = "float32"          # what the forward pass ran in (float16 / bfloat16 under autocast)
    history: List[dict] = field(default_factory=list)
    trainable_parameters: int = 0
    distill: Optional[dict] = None      # a distilled start's teacher phase (training.run), recorded in the card


def freeze_encoder(net: nn.Module) -> int:
    """Freeze the first half of the parameter tensors (the encoder side of a U-Net in definition order).

    A cheap way to fine-tune a big imported model on CPU: gradients flow only through the decoder.
    Returns the number of trainable parameters left.
    """
    params = list(net.named_parameters())
    for _, p in params[: len(params) // 2]:
        p.requires_grad_(False)
    return int(sum(p.numel() for _, p in params if p.requires_grad))


def cpu_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX). Measured on the 2-core AMD EPYC (Zen 4) this
    project is developed on, a 3d_lowres step (batch 4, 48x56x32) takes 0.11-0.14 s under bfloat16 autocast against
    0.17 s in float32 in this loop (the network alone: 0.095 vs 0.155 s), 1.2-1.5x the steps per CPU minute at the
    same loss; without native support bf16 is emulated and slower, so it is not used there."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(p()) for p in probes if p is not None)
    except RuntimeError:  # pragma: no cover - a torch build without the probes' backend
        return False


def _lr_at(cfg: LoopConfig, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay over the run's budget (time or steps, whichever ends first)."""
    frac = min(1.0, max(elapsed / max(cfg.max_seconds, 1e-9), step / max(cfg.max_steps, 1)))
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def masked_dice_ce(out: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """Dice + cross-entropy counted only where ``keep`` (B,1,...) is 1: MONAI's MaskedDiceLoss and a
    voxel-wise CE averaged over the kept voxels (the same pair DiceCELoss sums, with the band left out)."""
    if sigmoid:
        dice = MaskedDiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(out, y, mask=keep)
        ce = F.binary_cross_entropy_with_logits(out, y, reduction="none") * keep
        return dice + ce.sum() / (keep.sum() * out.shape[1]).clamp_min(1.0)
    dice = MaskedDiceLoss(to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5)(out, y, mask=keep)
    ce = F.cross_entropy(out, y[:, 0], reduction="none") * keep[:, 0]
    return dice + ce.sum() / keep.sum().clamp_min(1.0)


def train_loop(net: nn.Module, train_cases: Sequence[dict], n_classes: int, cfg: LoopConfig,
               progress: Optional[Callable] = None, should_stop: Callable[[], bool] = lambda: False,
               sigmoid_single: bool = False, on_step: Optional[Callable[[int, nn.Module], None]] = None,
               group=None, optimizer_state: Optional[dict] = None) -> LoopResult:
    """Train ``net`` in place until the budget, ``max_steps`` or ``should_stop()``; the last weights are the result.

    ``train_cases``: dicts with ``image`` (1,X,Y,Z) float32, ``label`` (1,X,Y,Z) uint8, ``weight``
    (sampling weight) and optional ``fg_indices``/``bg_indices`` (precomputed crop centres).
    ``on_step(step, net)`` is called after every step (benchmarks look at the weights mid-run).
    ``group`` (:class:`.ddp.Group`): one of several data-parallel processes (its own patches, gradients
    averaged, every stop agreed by all, the loss reported as the mean over processes).
    ``optimizer_state``: the previous round's AdamW state (continual learning: moments continue, not restart);
    ignored when it does not fit the trainable parameters (e.g. a frozen encoder now, not then).
    """
    t0 = time.monotonic()
    rng = np.random.default_rng(cfg.seed + 7919 * (group.rank if group is not None else 0))
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    net.to(device)
    if cfg.freeze == "encoder":
        trainable = freeze_encoder(net)
    else:
        trainable = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    resumed = False
    if optimizer_state:
        try:
            opt.load_state_dict(optimizer_state)
            for st in opt.state.values():  # moments onto the device the parameters are on
                for k, v in st.items():
                    if torch.is_tensor(v) and k != "step":
                        st[k] = v.to(device)
            resumed = True
        except (ValueError, KeyError, RuntimeError):
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = bool(cfg.amp and device.type == "cuda")
    amp_dtype = torch.float16 if use_amp else torch.bfloat16 if (cfg.amp and device.type == "cpu" and cpu_bf16()) \
        else None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)  # bfloat16 keeps float32's range: no loss scaling
    if sigmoid_single:
        loss_fn = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    else:
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5)
    if cfg.data_path not in ("arrays", "monai"):
        raise ValueError(f"data_path {cfg.data_path!r}: use arrays or monai")
    xf = train_transforms(cfg.patch_size, samples_per_case=cfg.samples_per_case) if cfg.data_path == "monai" else None
    sampler = ArrayPatchSampler(cfg.patch_size, samples_per_case=cfg.samples_per_case)
    weights = np.array([float(c.get("weight", 1.0)) for c in train_cases], dtype=float)
    weights = weights / weights.sum()
    model = group.wrap(net) if group is not None else net
    cases_per_step = max(1, cfg.batch_size // cfg.samples_per_case)
    steps_per_epoch = max(1, math.ceil(len(train_cases) / cases_per_step))

    res = LoopResult(trainable_parameters=trainable, resumed_optimizer=resumed,
                     precision=str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32")
    losses: List[float] = []
    step = 0
    while True:
        elapsed = time.monotonic() - t0
        stop = "cancelled" if should_stop() else "max_steps" if step >= cfg.max_steps else \
            "budget" if elapsed >= cfg.max_seconds else None
        if group is not None and group.agree(stop is not None) and stop is None:
            stop = "budget"  # another process's reason: all stop at the same step
        if stop is not None:
            res.stopped = stop
            break
        # -- one step: draw cases by quality weight, crop/augment, forward/backward
        net.train()
        batch_img, batch_lab = [], []
        for ci in rng.choice(len(train_cases), size=cases_per_step, p=weights):
            case = train_cases[int(ci)]
            if xf is None:
                for xi, yi in sampler(case, rng):
                    batch_img.append(xi)
                    batch_lab.append(yi)
                continue
            d = {k: case[k] for k in ("image", "label", "fg_indices", "bg_indices") if k in case}
            xf.set_random_state(seed=int(rng.integers(2**31)))
            for s in xf(d):
                batch_img.append(s["image"])
                batch_lab.append(s["label"])
        x = torch.stack([torch.as_tensor(b) for b in batch_img]).float().to(device)
        y = torch.stack([torch.as_tensor(b) for b in batch_lab]).to(device)
        if xf is None:
            x, y = batch_affine(x, y, rng)
        keep = (y != IGNORE).float() if bool((y == IGNORE).any()) else None  # --ignore-band: boundary voxels out
        if keep is not None:
            y = torch.where(y == IGNORE, torch.zeros_like(y), y)
        if sigmoid_single:  # multi-label sigmoid nets: one target channel per label, no background
            y = torch.cat([(y == c).float() for c in range(1, n_classes)], dim=1)
        else:
            y = y.long()
        lr = _lr_at(cfg, step, time.monotonic() - t0)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            loss = loss_fn(out.float(), y) if keep is None else masked_dice_ce(out.float(), y, keep, sigmoid_single)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        losses.append(float(loss.detach()) if group is None else group.mean(float(loss.detach())))
        res.final_loss = float(np.mean(losses[-10:]))
        elapsed = time.monotonic() - t0
        if step % 10 == 0:
            res.history.append({"step": step, "seconds": round(elapsed, 1), "loss": round(res.final_loss, 4)})
        if on_step is not None:
            on_step(step, net)
        if progress:
            frac = min(1.0, max(elapsed / max(cfg.max_seconds, 1e-9), step / max(cfg.max_steps, 1)))
            progress(frac, f"step {step} loss {res.final_loss:.3f}", phase="train", epoch=step // steps_per_epoch,
                     step=step, loss=round(res.final_loss, 4), val_dice=None,
                     seconds_left=round(max(0.0, cfg.max_seconds - elapsed), 1))
    res.steps = step
    res.epochs = round(step / steps_per_epoch, 2)
    res.seconds = round(time.monotonic() - t0, 2)
    res.seconds_per_step = round(res.seconds / max(step, 1), 4)
    res.optimizer = opt.state_dict()
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    return res
