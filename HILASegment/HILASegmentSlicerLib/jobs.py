"""Background jobs bound to their case: one slot per kind, so segmenting never waits for training.

A radiologist segments, corrects, accepts and moves on while a training run takes its 20 minutes;
so Segment, Train, Install, PACS (a DICOMweb import, export or sync), Import (files, folders, a volume node)
and Accept (the submit and the workspace's compressed copy) are separate slots, each holding at most one job. A segment job
carries the case and the volume it was started for: its result goes to *that* volume's
segmentation, whatever the panel shows when it arrives (the A/B race: segment A, open B, A's
result must not become B's correction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["KINDS", "Job", "JobBoard", "JobError"]

KINDS = ("segment", "train", "install", "pacs", "import", "accept")


class JobError(RuntimeError):
    """A job cannot start (its slot is taken); the message says which job holds it."""


@dataclass
class Job:
    """One background run (a :class:`HILASegmentSlicerLib.processrunner.ProcessRunner`) and what it is for."""

    kind: str
    runner: Any
    case_id: Optional[str] = None
    volume_id: Optional[str] = None
    label: str = ""
    context: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        what = {"segment": "Segmenting", "train": "Training", "install": "Installing", "pacs": "PACS", "import": "Importing",
                "accept": "Accepting"}[self.kind]
        return what + (f" {self.label}" if self.label else "") + (f" (case {self.case_id})" if self.case_id else "")


class JobBoard:
    """The running jobs, one per kind; polled by the widget's QTimer."""

    def __init__(self) -> None:
        self._jobs: Dict[str, Job] = {}

    def start(self, job: Job) -> Job:
        """Start ``job.runner`` in its slot; refuses (JobError) while a job of the same kind runs."""
        if job.kind not in KINDS:
            raise ValueError(f"unknown job kind {job.kind!r}")
        held = self._jobs.get(job.kind)
        if held is not None:
            raise JobError(f"{held.describe()} is still running; wait for it or cancel it first")
        job.runner.start()
        self._jobs[job.kind] = job
        return job

    def get(self, kind: str) -> Optional[Job]:
        return self._jobs.get(kind)

    def busy(self, kind: str) -> bool:
        return kind in self._jobs

    @property
    def running(self) -> bool:
        return bool(self._jobs)

    def segmenting(self, volume_id: Optional[str]) -> bool:
        """Is a segment job running for this volume (the shown case)?"""
        job = self._jobs.get("segment")
        return job is not None and volume_id is not None and job.volume_id == volume_id

    def poll(self) -> List[Tuple[Job, list, bool]]:
        """(job, its new output lines, finished?) for every job; finished jobs leave their slot."""
        out = []
        for kind in list(self._jobs):
            job = self._jobs[kind]
            lines = job.runner.poll()
            done = bool(job.runner.finished)
            if done:
                del self._jobs[kind]
            out.append((job, lines, done))
        return out

    def cancel(self, kind: str) -> bool:
        job = self._jobs.get(kind)
        if job is None:
            return False
        job.runner.cancel()
        return True

    def cancel_all(self) -> None:
        for kind in list(self._jobs):
            self.cancel(kind)
