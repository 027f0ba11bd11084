"""The panel's PACS section: import a study from, store corrections on, and sync with the configured
DICOMweb server, by running the real ``hila import | export | sync --dicomweb`` as background jobs.

Why child processes and not engine calls on the GUI thread: a study download or a STOW of many SEGs
takes minutes, and a server that does not answer is retried (``dicomweb.ATTEMPTS``); the job slot
gives progress, Cancel (the child's tree is killed; the engine never half-imports, and a killed sync
loses and duplicates nothing) and a one-line error, as for Segment and Train.

Credentials never reach the command line, the settings or the ledger: the child inherits the
environment Slicer started from (``HILA_DICOMWEB_USER`` / ``HILA_DICOMWEB_PASSWORD``) or reads the
netrc file (``HILA_NETRC``, else ``~/.netrc``), as the CLI documents; a URL with ``user:password@`` is
refused before anything runs, and is never saved. The saved setting is the URL alone.

:class:`PacsPanel` gets the panel's widgets and hooks passed in (nothing here imports slicer or qt),
so its rules run under pytest with stand-ins.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from HILASegmentLib.cli.dicomio import describe, export_summary, sync_summary
from HILASegmentLib.dicom.dicomweb import check_uid, check_url
from HILASegmentLib.ground.errors import HilaError

from . import segments
from .jobs import Job
from .processrunner import ProcessRunner, engine_command, popen_factory

__all__ = ["SETTING", "PacsAction", "import_action", "export_action", "sync_action", "url_setting", "shown_case",
           "button_states", "result_message", "runner", "PacsPanel"]

#: The QSettings key (under the module's prefix) of the configured DICOMweb server.
SETTING = "dicomwebURL"


@dataclass(frozen=True)
class PacsAction:
    """One ``hila`` run against the server: its arguments (never a credential) and how it is shown."""

    kind: str           # "import" | "export" | "sync"
    workspace: str
    url: str
    args: List[str]
    label: str          # "import of study 1.2.3": the job's description reads "PACS import of study 1.2.3"


def import_action(workspace: Any, url: str, study: str, series: Optional[str] = None) -> PacsAction:
    """``hila import WS --dicomweb URL --study UID [--series UID] --json``; URL and UIDs checked first (HilaError)."""
    url, study = check_url(url), check_uid(study, "study UID")
    series = check_uid(series, "series UID") if (series or "").strip() else None
    args = ["import", str(workspace), "--dicomweb", url, "--study", study] + (["--series", series] if series else [])
    return PacsAction("import", str(workspace), url, args + ["--json"],
                      f"import of study {study}" + (f" (series {series})" if series else ""))


def export_action(workspace: Any, url: str, case_id: Optional[str] = None) -> PacsAction:
    """``hila export WS --dicomweb URL [--case CASE] --json``: the case's latest correction, or every DICOM
    case's (those that came from the PACS are not sent back)."""
    url = check_url(url)
    args = ["export", str(workspace), "--dicomweb", url] + (["--case", case_id] if case_id else [])
    return PacsAction("export", str(workspace), url, args + ["--json"],
                      f"export of case {case_id}" if case_id else "export of all accepted cases")


def sync_action(workspace: Any, url: str) -> PacsAction:
    """``hila sync WS --dicomweb URL --json``: push this workspace's new corrections, pull the others'."""
    url = check_url(url)
    return PacsAction("sync", str(workspace), url, ["sync", str(workspace), "--dicomweb", url, "--json"], "sync")


def url_setting(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(value to save, error): an empty field clears the setting; an invalid URL is not saved (one with a
    password in it must never reach the settings file) and its one-line error is returned."""
    if not (text or "").strip():
        return "", None
    try:
        return check_url(text), None
    except HilaError as exc:
        return None, str(exc)


def shown_case(volume: Any, ws: Any) -> Optional[str]:
    """The shown volume's case id when it is a case of the open workspace (else None: nothing to export)."""
    if volume is None or ws is None:
        return None
    case_id = volume.GetAttribute(segments.CASE_ATTRIBUTE)
    home = volume.GetAttribute(segments.WORKSPACE_ATTRIBUTE)
    return case_id if case_id and home and Path(home) == Path(ws.root) else None


def button_states(has_workspace: bool, case_id: Optional[str], running: bool) -> Dict[str, bool]:
    """``{ui widget name: enabled}`` for the PACS section: one PACS job at a time (Cancel live only then);
    the case loop, Segment and Train are not touched (a study download must not stop the radiologist)."""
    idle = has_workspace and not running
    return {
        "pacsUrlLineEdit": not running,
        "pacsImportButton": idle,
        "pacsExportCaseButton": idle and bool(case_id),
        "pacsExportAllButton": idle,
        "pacsSyncButton": idle,
        "pacsCancelButton": running,
    }


def result_message(action: PacsAction, result: Optional[dict]) -> str:
    """One line for the status bar from the command's JSON result (the CLI's own summaries)."""
    result = result or {}
    try:
        if action.kind == "import":
            return "Imported from the PACS: " + "; ".join(describe(c) for c in result["cases"])
        if action.kind == "export":
            return "PACS: " + export_summary(result)
        return "PACS sync: " + sync_summary(result, action.url)
    except (KeyError, TypeError):  # an older engine's result: say it finished, not what it did
        return f"PACS {action.label} finished."


def runner(action: PacsAction, env: Optional[Dict[str, str]] = None, factory: Callable = popen_factory) -> ProcessRunner:
    """An unstarted runner for the action: ``python -m HILASegmentLib ARGS`` with ``env`` (inside Slicer
    ``slicer.util.startupEnvironment()``, which carries the user's HILA_DICOMWEB_* / HILA_NETRC / HOME)."""
    argv, child_env = engine_command("HILASegmentLib", action.args, env=env)
    return ProcessRunner(argv, env=child_env, factory=factory)


class PacsPanel:
    """The PACS section's behaviour. ``ui``: the panel's widgets; ``util``: slicer.util; the hooks are the
    widget's own (its job slots, status line, table refresh, consent install, settings)."""

    def __init__(self, ui: Any, util: Any, workspace: Callable[[], Any], start_job: Callable[[Job], None],
                 refresh: Callable[..., None], status: Callable[[str], None], ensure_packages: Callable[[], bool],
                 environment: Callable[[], Dict[str, str]], get_setting: Callable[[str, str], str],
                 set_setting: Callable[[str, str], None], cancel: Callable[[], None] = lambda: None,
                 factory: Callable = popen_factory):
        self.ui, self.util, self.workspace, self.start_job = ui, util, workspace, start_job
        self.refresh, self.status, self.ensure_packages, self.environment = refresh, status, ensure_packages, environment
        self.set_setting, self.factory = set_setting, factory
        ui.pacsProgressBar.hide()
        ui.pacsUrlLineEdit.text = get_setting(SETTING, "")
        ui.pacsUrlLineEdit.connect("editingFinished()", self.url_edited)
        ui.pacsImportButton.connect("clicked()", self.import_study)
        ui.pacsExportCaseButton.connect("clicked()", lambda: self.export(shown_only=True))
        ui.pacsExportAllButton.connect("clicked()", lambda: self.export(shown_only=False))
        ui.pacsSyncButton.connect("clicked()", self.sync)
        ui.pacsCancelButton.connect("clicked()", cancel)

    def url_edited(self) -> None:
        value, error = url_setting(self.ui.pacsUrlLineEdit.text)
        if error:
            self.status("PACS URL not saved: " + error)
        else:
            self.set_setting(SETTING, value)

    def update_buttons(self, volume: Any, running: bool) -> None:
        for name, enabled in button_states(self.workspace() is not None, shown_case(volume, self.workspace()),
                                           running).items():
            getattr(self.ui, name).enabled = enabled

    def import_study(self) -> None:
        self._start(lambda ws, url: import_action(ws.root, url, self.ui.pacsStudyLineEdit.text,
                                                  self.ui.pacsSeriesLineEdit.text))

    def export(self, shown_only: bool, volume: Any = None) -> None:
        volume = volume if volume is not None else self.ui.inputVolumeSelector.currentNode()

        def make(ws: Any, url: str) -> PacsAction:
            case_id = shown_case(volume, ws) if shown_only else None
            if shown_only and case_id is None:  # never "all cases" for a click meant for one
                raise HilaError("the shown volume is not a case of the open workspace: open a case, or Export all")
            return export_action(ws.root, url, case_id)
        self._start(make)

    def sync(self) -> None:
        self._start(lambda ws, url: sync_action(ws.root, url))

    def _start(self, make: Callable[[Any, str], PacsAction]) -> Optional[Job]:
        """Check the input (one-line error, nothing started), the packages (consent install), then start the job."""
        ws = self.workspace()
        if ws is None:
            return None
        try:
            action = make(ws, self.ui.pacsUrlLineEdit.text)
        except HilaError as exc:
            self.util.errorDisplay(str(exc))
            return None
        if not self.ensure_packages():
            return None
        self.set_setting(SETTING, action.url)  # checked: no credentials in it
        job = Job("pacs", runner(action, self.environment(), self.factory), label=action.label,
                  context={"pacs": action})
        self.start_job(job)
        return job

    def finish(self, job: Job, outcome: Any) -> None:
        """After a successful run: refresh the case table (when the panel still shows that workspace) and say what
        was done. (Failures and Cancel are the widget's generic job handling: the one-line error.)"""
        action = job.context["pacs"]
        ws = self.workspace()
        if ws is not None and Path(ws.root) == Path(action.workspace):
            self.refresh(job.tables_read)  # read by the job's worker (None: read now)
        self.status(result_message(action, outcome.result))
