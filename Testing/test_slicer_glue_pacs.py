"""The panel's PACS section (HILASegmentSlicerLib.pacs) with stand-in widgets and the real engine:
the command lines it runs (checked against the real `hila` parser, no credential in them), URL/UID
errors as one line before anything runs, the buttons while a PACS job runs, and one real child
process against a port nobody listens on. No Slicer behaviour is claimed beyond these calls.
"""
from __future__ import annotations

import socket
import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT

from HILASegmentLib.cli import build_parser
from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.workspace import Workspace
from HILASegmentSlicerLib import pacs, panelstate, segments
from HILASegmentSlicerLib.jobs import JobBoard, JobError

URL = "http://pacs.example:8042/dicom-web"
STUDY, SERIES = "1.3.6.1.4.1.14519.5.2.1.7085.2036.1", "1.3.6.1.4.1.14519.5.2.1.7085.2036.2"
SECRETS = {"HILA_DICOMWEB_USER": "alice", "HILA_DICOMWEB_PASSWORD": "s3cret-pw"}


class Widget:  # the few QWidget/QLineEdit/QPushButton/QProgressBar members the section touches
    def __init__(self, text=""):
        self.enabled, self.text, self.value, self.visible, self.slots = True, text, 0, True, {}

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True

    def emit(self, signal):
        self.slots[signal]()


class Selector(Widget):  # qMRMLNodeComboBox
    def __init__(self):
        super().__init__()
        self.node = None

    def currentNode(self):
        return self.node


class Volume:  # the two vtkMRMLNode attribute calls shown_case makes
    def __init__(self, **attrs):
        self.attrs = attrs

    def GetAttribute(self, name):
        return self.attrs.get(name)


class Util:  # slicer.util.errorDisplay
    def __init__(self):
        self.errors = []

    def errorDisplay(self, text, **kw):
        self.errors.append(text)


class Child:  # a started process the test ends (ChildProcess protocol)
    def __init__(self, args, cwd, env, lines=()):
        self.args, self.env, self.pid, self.rc, self.signals = list(args), dict(env or {}), 4242, None, []
        self.stdout, self.stderr = list(lines), []

    def poll(self):
        return self.rc

    def wait(self, timeout=None):
        return self.rc

    def terminate_tree(self):
        self.rc = -15
        self.signals.append("TERM")

    def kill_tree(self):
        self.rc = -9
        self.signals.append("KILL")


class Factory:
    def __init__(self, lines=()):
        self.children, self.lines = [], lines

    def __call__(self, args, cwd=None, env=None):
        self.children.append(Child(args, cwd, env, self.lines))
        return self.children[-1]


WIDGETS = ("pacsUrlLineEdit", "pacsStudyLineEdit", "pacsSeriesLineEdit", "pacsImportButton", "pacsExportCaseButton",
           "pacsExportAllButton", "pacsSyncButton", "pacsCancelButton", "pacsProgressBar")


class Ui:
    def __init__(self):
        for name in WIDGETS:
            setattr(self, name, Widget())
        self.inputVolumeSelector = Selector()


@pytest.fixture
def ws(tmp_path):
    w = Workspace.create(tmp_path / "ws", "CT", ["prostate", "bladder"])
    yield w
    w.close()


def panel(ws, factory, ensure=True, saved=""):
    ui, util, board, settings, events = Ui(), Util(), JobBoard(), {pacs.SETTING: saved}, {"refresh": 0, "status": []}

    def start_job(job):  # the widget's startJob: a held slot is an error dialog, not a crash
        try:
            board.start(job)
        except JobError as exc:
            util.errorDisplay(str(exc))

    p = pacs.PacsPanel(ui, util, lambda: ws, start_job,
                       lambda tables=None: events.__setitem__("refresh", events["refresh"] + 1),
                       events["status"].append, lambda: ensure, lambda: dict(SECRETS, HOME="/home/alice"),
                       lambda k, d: settings.get(k, d), settings.__setitem__,
                       cancel=lambda: board.cancel("pacs"), factory=factory)
    return p, ui, util, board, settings, events


def parsed(args):
    """The arguments as the real `hila` parser reads them (a renamed option fails here, not in Slicer)."""
    return build_parser().parse_args(args)


def test_command_lines_are_the_real_cli_and_carry_no_credentials(ws):
    imp = pacs.import_action(ws.root, URL, f" {STUDY} ", SERIES)
    assert imp.args == ["import", str(ws.root), "--dicomweb", URL, "--study", STUDY, "--series", SERIES, "--json"]
    a = parsed(imp.args)
    assert (a.command, a.dicomweb, a.study, a.series, a.json, a.paths) == ("import", URL, STUDY, SERIES, True, [])
    assert pacs.import_action(ws.root, URL, STUDY, "  ").args == ["import", str(ws.root), "--dicomweb", URL,
                                                                   "--study", STUDY, "--json"]
    one = pacs.export_action(ws.root, URL, "c0001")
    a = parsed(one.args)
    assert (a.command, a.dicomweb, a.case, a.directory, a.format) == ("export", URL, ["c0001"], None, None)
    a = parsed(pacs.export_action(ws.root, URL).args)
    assert a.case is None and a.dicomweb == URL
    a = parsed(pacs.sync_action(ws.root, URL).args)
    assert (a.command, a.dicomweb, str(a.workspace)) == ("sync", URL, str(ws.root))

    factory = Factory()
    for action in (imp, one, pacs.sync_action(ws.root, URL)):
        pacs.runner(action, dict(SECRETS), factory).start()
    for child in factory.children:
        assert not any(s in arg for arg in child.args for s in SECRETS.values()), child.args
        assert child.args[1:4] == ["-u", "-m", "HILASegmentLib"]
        # the child inherits the credentials through its environment, as the CLI documents
        assert {k: child.env[k] for k in SECRETS} == SECRETS
        assert str(ROOT / "HILASegment") in child.env["PYTHONPATH"].split(__import__("os").pathsep)
    assert [c.args[4:] for c in factory.children] == [imp.args, one.args, ["sync", str(ws.root), "--dicomweb", URL,
                                                                           "--json"]]


@pytest.mark.parametrize("url, study, series, fragment", [
    ("", STUDY, None, "(empty): not an http(s) DICOMweb URL"),
    ("pacs:8042/dicom-web", STUDY, None, "not an http(s) DICOMweb URL"),
    ("http://pacs:port/dicom-web", STUDY, None, "not an http(s) DICOMweb URL"),
    ("http://alice:s3cret-pw@pacs/dicom-web", STUDY, None, "credentials in the URL are refused"),
    (URL, "", None, "(empty): not a DICOM study UID"),
    (URL, "1.2.840.01", None, "not a DICOM study UID"),
    (URL, "1." + "2" * 70, None, "not a DICOM study UID"),
    (URL, STUDY, "ProstateX-0000", "not a DICOM series UID"),
])
def test_url_and_uid_errors_are_one_line(ws, url, study, series, fragment):
    with pytest.raises(HilaError) as info:
        pacs.import_action(ws.root, url, study, series)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg and "s3cret" not in msg


def test_the_url_setting_never_stores_a_password():
    assert pacs.url_setting("  ") == ("", None)
    assert pacs.url_setting(f" {URL} ") == (URL, None)
    value, error = pacs.url_setting("https://alice:s3cret-pw@pacs/dicom-web")
    assert value is None and "credentials in the URL are refused" in error and "s3cret" not in error


def test_buttons_while_a_pacs_job_runs_and_after(ws, tmp_path):
    result = '{"event": "result", "ok": true, "pushed": [{"case_id": "c0001"}], "pulled": []}'
    factory = Factory(lines=['{"event": "progress", "fraction": 0.5, "message": "storing"}', result])
    p, ui, util, board, settings, events = panel(ws, factory)
    shown = Volume(**{segments.CASE_ATTRIBUTE: "c0001", segments.WORKSPACE_ATTRIBUTE: str(ws.root)})
    ui.inputVolumeSelector.node = shown
    p.update_buttons(shown, board.busy("pacs"))
    assert (ui.pacsImportButton.enabled, ui.pacsExportCaseButton.enabled, ui.pacsSyncButton.enabled,
            ui.pacsCancelButton.enabled, ui.pacsProgressBar.visible) == (True, True, True, False, False)

    ui.pacsUrlLineEdit.text = URL
    ui.pacsSyncButton.emit("clicked()")
    assert board.busy("pacs") and len(factory.children) == 1 and settings[pacs.SETTING] == URL
    assert board.get("pacs").describe() == "PACS sync"
    p.update_buttons(shown, board.busy("pacs"))
    assert {n: getattr(ui, n).enabled for n in pacs.button_states(True, "c0001", True)} == {
        "pacsUrlLineEdit": False, "pacsImportButton": False, "pacsExportCaseButton": False,
        "pacsExportAllButton": False, "pacsSyncButton": False, "pacsCancelButton": True}
    ui.pacsStudyLineEdit.text = STUDY
    ui.pacsImportButton.emit("clicked()")  # a click that reaches it anyway: refused by the slot, one child only
    assert len(factory.children) == 1 and "still running" in util.errors[-1]
    # the case loop is not the PACS section's business: its rules name none of the panel's other controls
    assert not set(pacs.button_states(True, "c0001", True)) & set(panelstate.button_states(
        panelstate.PanelState(has_workspace=True, has_volume=True)))

    factory.children[0].rc = 0
    done = []
    for _ in range(200):
        done += [(job, ok) for job, _, ok in board.poll() if ok]
        if done:
            break
        __import__("time").sleep(0.01)
    job = done[0][0]
    assert job.runner.fraction == 0.5
    p.finish(job, job.runner.outcome())
    assert events["refresh"] == 1
    assert events["status"][-1] == f"PACS sync: stored 1 correction(s), imported 0 from {URL}"
    p.update_buttons(shown, board.busy("pacs"))
    assert ui.pacsSyncButton.enabled and not ui.pacsCancelButton.enabled


def test_export_shown_case_only_for_a_case_of_this_workspace(ws, tmp_path):
    factory = Factory()
    p, ui, util, board, settings, events = panel(ws, factory, saved=URL)
    assert ui.pacsUrlLineEdit.text == URL  # restored from the setting
    other = Volume(**{segments.CASE_ATTRIBUTE: "c0001", segments.WORKSPACE_ATTRIBUTE: str(tmp_path / "other")})
    for volume in (None, Volume(), other):
        assert pacs.shown_case(volume, ws) is None
        p.update_buttons(volume, False)
        assert not ui.pacsExportCaseButton.enabled and ui.pacsExportAllButton.enabled
    ui.inputVolumeSelector.node = other
    ui.pacsExportCaseButton.emit("clicked()")  # a click meant for one case never exports them all
    assert not factory.children and "not a case of the open workspace" in util.errors[-1]
    mine = Volume(**{segments.CASE_ATTRIBUTE: "c0007", segments.WORKSPACE_ATTRIBUTE: str(ws.root)})
    ui.inputVolumeSelector.node = mine
    ui.pacsExportCaseButton.emit("clicked()")
    assert factory.children[0].args[4:] == ["export", str(ws.root), "--dicomweb", URL, "--case", "c0007", "--json"]
    assert board.get("pacs").describe() == "PACS export of case c0007"


def test_bad_input_or_no_packages_start_nothing_and_save_nothing(ws):
    factory = Factory()
    p, ui, util, board, settings, events = panel(ws, factory, saved=URL)
    ui.pacsUrlLineEdit.text = "http://alice:s3cret-pw@pacs/dicom-web"
    ui.pacsUrlLineEdit.emit("editingFinished()")
    ui.pacsStudyLineEdit.text = STUDY
    ui.pacsImportButton.emit("clicked()")
    assert settings[pacs.SETTING] == URL and "credentials in the URL are refused" in util.errors[-1]
    assert "PACS URL not saved" in events["status"][-1] and "s3cret" not in events["status"][-1]
    ui.pacsUrlLineEdit.text, ui.pacsStudyLineEdit.text = URL, "1.2.abc"
    ui.pacsImportButton.emit("clicked()")
    assert "not a DICOM study UID" in util.errors[-1]
    assert not factory.children and not board.busy("pacs")
    p2, ui2, util2, board2, settings2, _ = panel(ws, factory, ensure=False)  # the user declined the install
    ui2.pacsUrlLineEdit.text = URL
    ui2.pacsSyncButton.emit("clicked()")
    assert not factory.children and not board2.busy("pacs") and settings2[pacs.SETTING] == ""


def test_result_messages_are_the_clis_summaries():
    imp = pacs.PacsAction("import", "/ws", URL, [], f"import of study {STUDY}")
    entry = {"case_id": "c0003", "name": "Pelvic-Ref002", "existing": False, "source": f"{URL} {SERIES}",
             "corrections": [{"part": "manual", "existing": False, "version": 1, "quality": "reviewed"}]}
    assert pacs.result_message(imp, {"cases": [entry]}) == (
        f"Imported from the PACS: c0003 Pelvic-Ref002: imported; manual -> correction v1 (reviewed) ({URL} {SERIES})")
    exp = pacs.PacsAction("export", "/ws", URL, [], "export of all accepted cases")
    assert pacs.result_message(exp, {"dicomweb": URL, "stored": [{}, {}]}) == f"PACS: stored 2 correction(s) as DICOM SEG on {URL}"
    assert pacs.result_message(exp, None) == "PACS export of all accepted cases finished."


def test_a_real_child_against_a_closed_port_gives_the_one_line_error(ws):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HILA_DICOMWEB")}
    outcome = pacs.runner(pacs.import_action(ws.root, f"http://127.0.0.1:{port}/dicom-web", STUDY),
                          dict(env, **SECRETS)).start().wait(timeout=120)
    assert not outcome.ok and outcome.error == f"http://127.0.0.1:{port}/dicom-web: searching study {STUDY}: " \
                                               "connection refused (3 tries)"
    assert ws.cases() == []


def test_every_pacs_control_is_a_widget_in_the_ui():
    tree = ET.parse(ROOT / "HILASegment" / "Resources" / "UI" / "HILASegment.ui")
    names = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    assert set(pacs.button_states(True, None, False)) | set(WIDGETS) <= set(names)
    assert names["pacsCollapsibleButton"] == "ctkCollapsibleButton"
    top = [w.get("name") for w in tree.getroot().find("widget").find("layout").iter("widget")
           if w.get("class") == "ctkCollapsibleButton"]
    assert top[-1] == "pacsCollapsibleButton"  # its own section, the last one


def test_cancel_stops_the_pacs_child_and_frees_the_slot(ws):
    factory = Factory()
    p, ui, util, board, settings, events = panel(ws, factory, saved=URL)
    ui.pacsSyncButton.emit("clicked()")
    assert board.busy("pacs")
    ui.pacsCancelButton.emit("clicked()")
    assert factory.children[0].signals[:1] == ["TERM"]  # the child's whole tree was signalled
    done = []
    for _ in range(200):
        done += [job for job, _, ok in board.poll() if ok]
        if done:
            break
        __import__("time").sleep(0.01)
    outcome = done[0].runner.outcome()
    assert outcome.cancelled and not outcome.ok and not board.busy("pacs")
    p.update_buttons(None, board.busy("pacs"))
    assert ui.pacsSyncButton.enabled and not ui.pacsCancelButton.enabled
