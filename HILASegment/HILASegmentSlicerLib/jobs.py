"""Background jobs bound to their case: one slot per kind, so segmenting never waits for training.

A radiologist segments, corrects, accepts and moves on while a training run takes its 20 minutes;
so Segment, Train, Install, PACS (a DICOMweb import, export or sync), Import (files, folders, a volume node),
Accept (the submit and the workspace's compressed copy) and Fix with box (the box assistant on a worker thread) are
separate slots, each holding at most one job. A segment job
carries the case and the volume it was started for: its result goes to *that* volume's
segmentation, whatever the panel shows when it arrives (the A/B race: segment A, open B, A's
result must not become B's correction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .processrunner import ThreadRunner

__all__ = ["JobKind", "KINDS", "bind_kinds", "Job", "JobBoard", "JobError"]


@dataclass(frozen=True)
class JobKind:
    """One kind of background job: its progress text, the panel's progress bar, its finish handler, and whether its
    end changes what the panel's tables show (then the job reads the ledger for them, not the GUI thread)."""

    label: str   # the progress text: "Segmenting <what> (case <id>)..."
    bar: str     # the progress bar in the .ui
    finish: str  # the panel's handler of a finished job, "<section>.<method>"
    tables: bool = True


#: THE table of job kinds (one slot each).
KINDS: Dict[str, JobKind] = {
    "segment": JobKind("Segmenting", "segmentProgressBar", "segment.finish"),
    "train": JobKind("Training", "progressBar", "models.finish"),
    "install": JobKind("Installing", "installProgressBar", "installs.finish", tables=False),
    "pacs": JobKind("PACS", "pacsProgressBar", "pacs.finish"),
    "import": JobKind("Importing", "importProgressBar", "cases.finish_import"),
    "accept": JobKind("Accepting", "acceptProgressBar", "segment.finish_accept"),
    "fixbox": JobKind("Fixing with the box", "fixBoxProgressBar", "fixbox.finish", tables=False),
}


def bind_kinds(panel: Any, ui: Any) -> Dict[str, Tuple[Any, Callable[[Any, Any], None]]]:
    """kind -> (its progress bar, its finish handler) of this panel, from :data:`KINDS`."""
    def handler(path: str) -> Callable[[Any, Any], None]:
        section, method = path.split(".")
        return getattr(getattr(panel, section), method)
    return {kind: (getattr(ui, k.bar), handler(k.finish)) for kind, k in KINDS.items()}


class JobError(RuntimeError):
    """A job cannot start (its slot is taken); the message says which job holds it."""


@dataclass
class Job:
    """One background run (a :class:`HILASegmentSlicerLib.processrunner.ProcessRunner`) and what it is for.

    ``tables``: what reads the panel's tables from the ledger once the run has ended (``panels.read_tables`` of the
    workspace), run by the job on a worker thread; its result is ``tables_read`` for the finish handler to draw."""

    kind: str
    runner: Any
    case_id: Optional[str] = None
    volume_id: Optional[str] = None
    label: str = ""
    context: Dict[str, Any] = field(default_factory=dict)
    tables: Optional[Callable[[], Any]] = None
    tables_read: Any = None
    reader: Any = None

    def describe(self) -> str:
        case = f" (case {self.case_id})" if self.case_id else ""
        return KINDS[self.kind].label + (f" {self.label}" if self.label else "") + case


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
        """(job, its new output lines, finished?) for every job; finished jobs leave their slot. A job whose run ended
        and that has ``tables`` to read first reads them on a worker thread (``tables_read``), then finishes."""
        out = []
        for kind in list(self._jobs):
            job = self._jobs[kind]
            lines = job.runner.poll() if job.reader is None else []
            if job.runner.finished and job.tables is not None and job.reader is None:
                job.reader = ThreadRunner(lambda cancelled, read=job.tables: {"tables": read()}, "tables").start()
            done = bool(job.runner.finished) and (job.reader is None or job.reader.finished)
            if done:
                job.tables_read = (job.reader.outcome().result or {}).get("tables") if job.reader is not None else None
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
