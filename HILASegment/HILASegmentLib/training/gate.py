"""Validation through the inference engine, and the rule that decides whether a candidate becomes current.

A model is validated exactly as users get it: ``inference.Segmenter`` on the case's original image,
the label map on the original grid, Dice per workspace label against the correction. Labels are
matched by name, so an imported model with fewer labels (TAPS: prostate only) scores 0 on the
labels it cannot produce.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import HilaError

POLICIES = ("auto", "never", "always")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def evaluate_model(model_path: Path, cases: Sequence[dict], labels: Sequence[Tuple[int, str]],
                   threads: Optional[int] = None, progress: Optional[Callable] = None,
                   should_stop: Callable[[], bool] = lambda: False, card: Optional[dict] = None) -> dict:
    """Dice per workspace label of ``model_path`` on ``cases`` (dicts with case_id, image_path, label_path).

    ``card``: the registry's card for files that carry none inside (an imported model such as TAPS).
    """
    from ..imageio import read_image
    from ..inference import Segmenter
    from ..labelio import read_label

    t0 = time.monotonic()
    if card is not None:
        from ..modelcard import ModelCard

        seg = Segmenter(model_path, threads=threads, device="cpu", card=ModelCard.from_dict(card, f"{model_path} (registry card)"))
    else:
        seg = Segmenter(model_path, threads=threads, device="cpu")
    by_name = {lab.name.lower(): lab.value for lab in seg.card.labels}
    per_case: List[dict] = []
    for i, c in enumerate(cases):
        if should_stop():
            break
        if progress:
            progress(i / max(1, len(cases)), f"validating on {c['case_id']}")
        img = read_image(c["image_path"])
        ref = sitk.GetArrayFromImage(read_label(c["label_path"]))
        res = seg.segment(img, where=str(c["image_path"]))
        pred = sitk.GetArrayFromImage(res.label)
        d = {}
        for value, name in labels:
            mv = by_name.get(name.lower())
            d[name] = round(dice(pred == mv, ref == value), 4) if mv is not None else 0.0
        per_case.append({"case_id": c["case_id"], "correction_version": c.get("correction_version"),
                         "dice": d, "seconds": round(res.seconds, 2)})
    names = [n for _, n in labels]
    mean = {n: round(float(np.mean([pc["dice"][n] for pc in per_case])), 4) for n in names} if per_case else {}
    return {"model": str(model_path), "dice": mean,
            "mean_dice": round(float(np.mean(list(mean.values()))), 4) if mean else None,
            "cases": per_case, "seconds": round(time.monotonic() - t0, 2),
            "labels_missing": [n for n in names if n.lower() not in by_name]}


def decide(policy: str, candidate: dict, current: Optional[dict], held_out: bool, has_current: bool) -> Tuple[bool, str]:
    """(promote?, why). ``auto``: promote when at least as good as the current model on held-out corrections.

    Without a held-out set (fewer than 3 corrections) the candidate was validated on its own training
    cases, which says little: ``auto`` then promotes only when there is no current model (a model that
    segments something beats none); otherwise the candidate waits for ``hila models promote``.
    """
    if policy not in POLICIES:
        raise HilaError(f"--promote {policy!r}: use auto, never or always")
    cm = candidate.get("mean_dice")
    if policy == "never":
        return False, "promotion disabled (--promote never)"
    if policy == "always":
        return True, "promoted unconditionally (--promote always)"
    if cm is None:
        return False, "candidate could not be validated"
    if not has_current:
        if cm > 0:
            return True, f"no current model; candidate mean Dice {cm:.3f} on the {'held-out' if held_out else 'training'} corrections"
        return False, "no current model, but the candidate segments nothing (mean Dice 0)"
    if not held_out:
        return False, ("fewer than 3 corrections: no held-out set, candidate validated on its own training cases only; "
                       "kept as candidate (promote it with `hila models WS promote V`)")
    pm = None if current is None else current.get("mean_dice")
    if pm is None:
        return False, "current model could not be validated on these corrections; kept as candidate"
    if cm >= pm:
        return True, f"candidate mean Dice {cm:.3f} >= current {pm:.3f} on the same held-out corrections"
    return False, f"candidate mean Dice {cm:.3f} < current {pm:.3f} on the same held-out corrections"
