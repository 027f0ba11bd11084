"""A second opinion for predicted quality: the box assistant redraws each predicted label, slice by slice, from the
prediction's own bounding rectangle on that slice, and its Dice with the prediction becomes one more feature
(``assistant_agreement``). Why: where the model and an independent, promptable model disagree about the same
structure in the same box, the prediction is more likely wrong. Whether it helps the predicted Dice is measured in
the quality work; here it is computed and recorded (``hila infer --second-opinion``)."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..ground.metrics import dice
from ..inference import boxassist

#: pixels the prediction's bounding rectangle is grown by on each side (the assistant needs a little context)
GROW = 2


def assistant_agreement(label: np.ndarray, image: sitk.Image, labels: Sequence[Tuple[int, str]],
                        assistant: "boxassist.Assistant",
                        progress: Optional[Callable[[float, str], None]] = None) -> Dict[str, float]:
    """Per predicted label (name -> Dice): the assistant's mask from the prediction's per-slice rectangles against
    the prediction itself. Labels the prediction left empty are not scored (nothing to prompt with)."""
    present = [(v, n) for v, n in labels if np.any(label == v)]
    if not present:
        return {}
    ks = np.nonzero(np.isin(label, [v for v, _ in present]).any(axis=(1, 2)))[0]
    arr = sitk.GetArrayViewFromImage(image)
    norm = boxassist.normalised(arr, boxassist.guess_modality(image), int(ks.min()), int(ks.max()))
    whole = (0, 0, label.shape[2] - 1, label.shape[1] - 1)
    work = sum(int((label == v).any(axis=(1, 2)).sum()) for v, _ in present)
    done, out = 0, {}
    for v, name in present:
        pred = label == v
        second = np.zeros_like(pred)
        for k in np.nonzero(pred.any(axis=(1, 2)))[0]:
            rect = boxassist.grown_rect(pred[k], whole, pred[k].shape, grow=GROW)
            second[k] = assistant.segment_slice(norm[k], rect)
            done += 1
            if progress:
                progress(done / work, f"second opinion: {name}, slice {k}")
        out[name] = round(float(dice(second, pred)), 4)
    return out
