"""Warm start by distillation: a fresh own network first learns a pretrained teacher's predictions on the
workspace's own images, then the corrections.

Why: fine-tuning the imported 19.9 M-parameter TAPS network costs 21-36 s per CPU step (README, Training), the own
network at its planned grid well under a second. The teacher's predictions on every imported case cost no
radiologist time, so the fresh network starts from the teacher's anatomy and the corrections, trained after it,
teach the site's own convention. The teacher is the workspace's current model when it has no own checkpoint
(an imported preset such as ``taps``) and segments the workspace's labels in its modality.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..formats.imageio import write_image
from ..ground.errors import HilaError
from ..inference.segmenter import Segmenter
from . import dataset as ds

#: the share of a round's optimisation time spent on the teacher's labels before the corrections
SHARE = 0.5


@dataclass
class Teacher:
    """The model a fresh network distils: its registry record and the map of its label values to the workspace's."""

    record: object
    values: Dict[int, int]

    @property
    def version(self) -> int:
        return int(self.record.version)


def teacher_of(current, settings) -> Teacher:
    """``current`` as a teacher for a workspace with ``settings``; HilaError naming the mismatch when its card does
    not fit (another modality, or a workspace label it does not segment)."""
    card = current.card
    if str(card.modality or "").upper() != str(settings.modality).upper():
        raise HilaError(f"model v{current.version} ({card.name}): made for {card.modality}, the workspace is "
                        f"{settings.modality}; it cannot teach this workspace's network")
    by_name = {lab.name.lower(): int(lab.value) for lab in card.labels}
    missing = [lab.name for lab in settings.labels if lab.name.lower() not in by_name]
    if missing:
        raise HilaError(f"model v{current.version} ({card.name}): segments {', '.join(by_name) or 'nothing'}, not "
                        f"the workspace's {', '.join(missing)}; it cannot teach this workspace's network")
    return Teacher(current, {by_name[lab.name.lower()]: int(lab.value) for lab in settings.labels})


def teacher_cases(ws, teacher: Teacher, prep: ds.Preprocessing, n_labels: int, cache_dir: Path,
                  threads: Optional[int] = None, should_stop: Callable[[], bool] = lambda: False,
                  progress: Optional[Callable[[float, str], None]] = None,
                  case_ids: Optional[Sequence[str]] = None) -> List[dict]:
    """Training arrays of every imported case (or ``case_ids``) labelled by the teacher, as the trainer's cases.

    The teacher's label maps are kept under ``cache_dir`` per teacher version and case content, so a later round
    reads them instead of segmenting again. A case the teacher leaves empty is left out."""
    folder = Path(cache_dir) / f"teacher_v{teacher.version}"
    folder.mkdir(parents=True, exist_ok=True)
    cases = [c for c in ws.cases() if case_ids is None or c.case_id in set(case_ids)]
    seg: Optional[Segmenter] = None
    out = []
    for i, case in enumerate(cases):
        if should_stop():
            break
        if progress:
            progress(i / max(1, len(cases)), f"teacher v{teacher.version} on {case.case_id}")
        label_path = folder / f"{case.content_hash[:24]}.nii.gz"
        image_path = Path(ws.root) / case.path
        if not label_path.exists():
            if seg is None:
                seg = Segmenter(teacher.record.path, threads=threads, device="cpu", card=teacher.record.card)
            res = seg.segment(ws.case_image(case.case_id), where=str(image_path))
            pred = sitk.GetArrayViewFromImage(res.label)
            lut = np.zeros(256, np.uint8)
            for tv, wv in teacher.values.items():
                lut[tv] = wv
            lab = sitk.GetImageFromArray(lut[pred])
            lab.CopyInformation(res.label)
            write_image(lab, label_path)  # atomic: a killed round leaves no half-written label
        arrays = ds.load_case(image_path, label_path, prep, n_labels, cache_dir)
        if not arrays["fg_indices"].size:
            continue
        arrays.update(case_id=f"teacher:{case.case_id}", correction_version=0, new=False, quality="teacher",
                      suspect=False, weight=1.0, image_path=str(image_path), label_path=str(label_path))
        out.append(arrays)
    if progress:
        progress(1.0, "teacher labels ready")
    return out
