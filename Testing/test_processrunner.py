"""The background process runner the Slicer widget polls: real child processes, and a fake one."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from HILASegmentSlicerLib.processrunner import ProcessRunner, engine_command, python_executable

POSIX = os.name == "posix"


def script(tmp_path: Path, name: str, body: str) -> list:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, "-u", str(p)]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a container's init may not reap orphans)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_lines_stream_while_the_child_runs(tmp_path):
    args = script(tmp_path, "talk.py", """
        import sys, time
        for i in range(3):
            print(f"line {i}", flush=True)
            time.sleep(0.3)
        print("to stderr", file=sys.stderr, flush=True)
        time.sleep(0.3)
    """)
    r = ProcessRunner(args).start()
    seen = []
    assert wait_until(lambda: seen.extend(r.poll()) or any(l.text == "line 0" for l in seen))
    assert not r.finished, "the first line must arrive before the child exits (streaming, not buffered)"
    out = r.wait(timeout=30, on_line=seen.append)
    assert out.ok and out.returncode == 0 and out.error is None
    texts = [(l.stream, l.text) for l in seen]
    assert [t for s, t in texts if s == "stdout"] == ["line 0", "line 1", "line 2"]
    assert ("stderr", "to stderr") in texts


def test_json_progress_lines_feed_fraction_message_and_result(tmp_path):
    args = script(tmp_path, "progress.py", """
        import json, time
        for i in range(1, 5):
            print(json.dumps({"event": "progress", "fraction": i / 4, "message": f"epoch {i}"}), flush=True)
            time.sleep(0.05)
        print("a plain log line", flush=True)
        print(json.dumps({"event": "result", "ok": True, "version": 3, "metrics": {"dice": 0.8}}), flush=True)
    """)
    r = ProcessRunner(args).start()
    fractions = []
    out = r.wait(timeout=30, on_line=lambda l: fractions.append(r.fraction) if l.record else None)
    assert out.ok
    assert r.fraction == 1.0 and r.message == "epoch 4"
    assert out.result["version"] == 3 and out.result["metrics"]["dice"] == 0.8
    assert fractions == sorted(f for f in fractions if f is not None)  # monotone


def test_a_crashing_child_reports_its_error_line(tmp_path):
    args = script(tmp_path, "crash.py", """
        print('{"event": "progress", "fraction": 0.1, "message": "loading"}', flush=True)
        raise ValueError("case 7: label grid differs from image grid")
    """)
    out = ProcessRunner(args).start().wait(timeout=30)
    assert not out.ok and out.returncode == 1 and not out.cancelled
    assert out.error == "ValueError: case 7: label grid differs from image grid"


def test_hila_error_line_and_json_error_event_win(tmp_path):
    args = script(tmp_path, "hilaerr.py", """
        import sys
        print("hila: error: /tmp/x.nrrd: not a readable image", file=sys.stderr)
        print("some later noise", file=sys.stderr)
        sys.exit(2)
    """)
    out = ProcessRunner(args).start().wait(timeout=30)
    assert out.returncode == 2 and out.error == "/tmp/x.nrrd: not a readable image"
    args = script(tmp_path, "jsonerr.py", """
        import sys
        print('{"event": "error", "ok": false, "error": "workspace is locked"}', flush=True)
        sys.exit(2)
    """)
    out = ProcessRunner(args).start().wait(timeout=30)
    assert out.error == "workspace is locked"


def test_silent_nonzero_exit_says_the_code(tmp_path):
    out = ProcessRunner(script(tmp_path, "quiet.py", "import sys; sys.exit(5)")).start().wait(timeout=30)
    assert out.returncode == 5 and out.error == "exited with code 5"


def test_missing_program_raises_at_start(tmp_path):
    with pytest.raises(OSError):
        ProcessRunner([str(tmp_path / "no-such-program")]).start()


@pytest.mark.skipif(not POSIX, reason="process groups are POSIX here")
def test_cancel_kills_grandchildren_too(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    args = script(tmp_path, "parent.py", f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)"])
        open({str(pidfile)!r}, "w").write(str(g.pid))
        print("started", flush=True)
        while True:
            time.sleep(0.1)
    """)
    r = ProcessRunner(args, grace_seconds=2.0).start()
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text(encoding="utf-8").strip() != "", 20)
    gpid = int(pidfile.read_text(encoding="utf-8"))
    assert alive(gpid) and alive(r.process.pid)
    r.cancel()  # that it returns at once is test_cancel_returns_before_the_child_has_stopped's job
    out = r.wait(timeout=20)
    assert out.cancelled and not out.ok and out.error == "cancelled"
    assert wait_until(lambda: not alive(gpid), 10), "grandchild survived cancel"


@pytest.mark.skipif(not POSIX, reason="signals")
def test_cancel_escalates_to_kill_when_sigterm_is_ignored(tmp_path):
    args = script(tmp_path, "stubborn.py", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """)
    r = ProcessRunner(args, grace_seconds=0.5).start()
    assert wait_until(lambda: any(l.text == "ready" for l in r.poll()), 20)
    r.cancel()
    out = r.wait(timeout=20)
    assert out.cancelled and out.returncode == -9


# -- the injectable process interface -------------------------------------------------------
class FakeChild:
    def __init__(self, out_lines, err_lines, rc=0):
        self.pid = 4242
        self.stdout = iter([l + "\n" for l in out_lines])
        self.stderr = iter([l + "\n" for l in err_lines])
        self.rc = rc
        self.calls = []
        self.dead = False

    def poll(self):
        return self.rc if self.dead or self.rc is not None else None

    def wait(self, timeout=None):
        self.calls.append(("wait", timeout))
        return self.rc

    def terminate_tree(self):
        self.calls.append("terminate")

    def kill_tree(self):
        self.calls.append("kill")


def test_fake_process_factory_gets_args_and_env():
    made = {}

    def factory(args, cwd, env):
        made.update(args=args, cwd=cwd, env=env)
        return FakeChild([json.dumps({"event": "progress", "fraction": 0.5, "message": "half"}),
                          json.dumps({"event": "result", "ok": True, "n": 1}), "{not json"],
                         ["warning: x"], rc=0)

    r = ProcessRunner(["trainer", "ws", "--json"], cwd="/w", env={"A": "1"}, factory=factory).start()
    out = r.wait(timeout=5)
    assert made == {"args": ["trainer", "ws", "--json"], "cwd": "/w", "env": {"A": "1"}}
    assert out.ok and out.result["n"] == 1 and r.fraction == 0.5 and r.message == "half"
    assert r.stderr_tail == ["warning: x"]


def test_fake_cancel_terminates_then_kills_after_grace():
    child = FakeChild([], [], rc=None)
    child.stdout = iter([])
    child.stderr = iter([])
    r = ProcessRunner(["x"], factory=lambda a, c, e: child, grace_seconds=0.25).start()
    r.poll()
    assert r.running
    r.cancel(block=True)
    assert child.calls == ["terminate", ("wait", 0.25), "kill"]
    child.dead, child.rc = True, -15
    out = r.wait(timeout=5)
    assert out.cancelled and out.error == "cancelled"
    r.cancel()  # a second cancel after the end is harmless
    assert child.calls.count("kill") == 1


def test_cancel_returns_before_the_child_has_stopped():
    """Cancel on the GUI thread must not wait out the grace period: the wait (and the kill after it) run on
    another thread. The fake child's wait blocks until released, so a blocking cancel() could not return
    before the kill, and the kill is seen only after the release."""
    release = threading.Event()

    class SlowChild(FakeChild):
        def wait(self, timeout=None):
            self.calls.append(("wait on the caller's thread", threading.current_thread() is threading.main_thread()))
            release.wait(60)
            return self.rc

    child = SlowChild([], [], rc=None)
    r = ProcessRunner(["x"], factory=lambda a, c, e: child, grace_seconds=0.25).start()
    r.cancel()
    assert child.calls[0] == "terminate" and "kill" not in child.calls, child.calls
    release.set()
    assert wait_until(lambda: "kill" in child.calls, 30)
    assert ("wait on the caller's thread", False) in child.calls


def test_json_parsing_only_takes_objects():
    r = ProcessRunner(["x"], factory=lambda a, c, e: FakeChild(["[1, 2]", "{\"event\": \"progress\", \"fraction\": \"bad\"}", "3"], []))
    out = r.start().wait(timeout=5)
    assert out.ok and r.fraction is None and r.result is None


def test_engine_command_runs_this_engine_unbuffered():
    argv, env = engine_command("HILASegmentLib", ["--version"], python=sys.executable)
    assert argv[:4] == [sys.executable, "-u", "-m", "HILASegmentLib"]
    assert env["PYTHONUNBUFFERED"] == "1"
    lib_parent = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert (lib_parent / "HILASegmentLib" / "__init__.py").exists()  # the engine beside this glue library
    assert (lib_parent / "HILASegmentSlicerLib" / "processrunner.py").exists()
    out = ProcessRunner(argv, env=env).start()
    lines = []
    res = out.wait(timeout=60, on_line=lines.append)
    assert res.ok and any("hila" in l.text for l in lines)
    assert python_executable()  # plain Python here, PythonSlicer inside Slicer


@pytest.mark.parametrize("layout", ["linux", "windows", "macos"])
def test_python_executable_finds_pythonslicer_beside_the_slicer_executable(tmp_path, monkeypatch, layout):
    root = tmp_path / "Slicer-5.8.1"
    exe, ps = {"linux": (root / "bin" / "SlicerApp-real", root / "bin" / "PythonSlicer"),
               "windows": (root / "Slicer.exe", root / "bin" / "PythonSlicer.exe"),
               "macos": (root / "Contents" / "MacOS" / "Slicer", root / "Contents" / "bin" / "PythonSlicer")}[layout]
    for p in (exe, ps):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("", encoding="utf-8")
    monkeypatch.setattr(sys, "executable", str(exe))
    assert python_executable() == str(ps)


# -- the real trainer ------------------------------------------------------------------------
def _train_available() -> bool:
    from HILASegmentLib.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return "train" in sub.choices


def _two_case_workspace(tmp_path):
    import SimpleITK as sitk

    from HILASegmentLib.workspace import Workspace

    root = Path(__file__).resolve().parents[1]
    tiny = root / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"
    mri = root / "Testing" / "Data" / "prostate_mri_oblique_small.nrrd"
    label = sitk.Cast(sitk.ReadImage(str(root / "Testing" / "Data" / "prostate_mri_oblique_small_taps.nii.gz")) > 0, sitk.sitkUInt8)
    ws = Workspace.create(tmp_path / "ws", "MR", ["prostate"], model=str(tiny))
    flipped = tmp_path / "second.nrrd"
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(mri)), [True, False, False]), str(flipped))
    for path, lab in ((mri, label), (flipped, sitk.Flip(label, [True, False, False]))):
        case = ws.import_volume(path)
        ws.submit(case.case_id, lab, quality="reviewed", annotator="test", seconds=5.0)
    return ws


def test_train_button_child_streams_json_progress_to_a_candidate(tmp_path):
    """The Train button's child with the glue's options (+ --steps to keep the test short), polled like the QTimer does."""
    assert _train_available(), "`hila train` must be a command (its module failed to import?)"
    from HILASegmentSlicerLib import panels
    ws = _two_case_workspace(tmp_path)
    before = [m.version for m in ws.models()]
    argv, env = engine_command("HILASegmentLib", ["train", str(ws.root), "--json", "--max-minutes", "1", "--promote", "never",
                                                  "--device", "cpu", "--steps", "4"], python=sys.executable)
    runner = ProcessRunner(argv, env=env).start()
    fractions = []
    while not runner.finished:  # the widget's onPoll, every 200 ms
        for line in runner.poll():
            if line.record and line.record.get("event") == "progress" and line.record.get("fraction") is not None:
                fractions.append(line.record["fraction"])
        time.sleep(0.2)
    out = runner.outcome()
    assert out.ok, out.error
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0 and runner.fraction == 1.0
    new = [m.version for m in ws.models() if m.version not in before]
    assert new == [out.result["model_version"]] and out.result["promoted"] is False
    assert ws.current_model().version == before[-1]  # --promote never: the user decides
    text = panels.compare_text(ws, new[0])
    assert text.startswith(f"Candidate v{new[0]}: Dice ") and "gate:" in text
    ws.close()


def test_cancel_mid_training_leaves_the_workspace_consistent(tmp_path):
    """The Train button's child (`python -m HILASegmentLib train WS --json`), cancelled after its first progress."""
    assert _train_available(), "`hila train` must be a command (its module failed to import?)"
    from HILASegmentLib.workspace import Workspace
    ws = _two_case_workspace(tmp_path)
    models_before = [m.version for m in ws.models()]
    ws.close()

    argv, env = engine_command("HILASegmentLib", ["train", str(tmp_path / "ws"), "--json", "--max-minutes", "3", "--device", "cpu"],
                               python=sys.executable)
    runner = ProcessRunner(argv, env=env, grace_seconds=10.0).start()
    progress = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not runner.finished:
        progress += [l.record for l in runner.poll() if l.record and l.record.get("event") == "progress"]
        if len(progress) >= 2:
            break
        time.sleep(0.1)
    assert len(progress) >= 2, f"no JSON progress from the trainer; stderr: {runner.stderr_tail[-5:]}"
    assert all(0.0 <= (p["fraction"] or 0.0) <= 1.0 and isinstance(p.get("message", ""), str) for p in progress)
    runner.cancel()
    out = runner.wait(timeout=60)
    assert out.cancelled and not out.ok

    ws = Workspace.open(tmp_path / "ws")
    report = ws.check()
    assert report.ok, report.summary()
    assert [m.version for m in ws.models()] == models_before, "a cancelled run must not register a model"
    ws.close()
    import subprocess
    check = subprocess.run([sys.executable, "-m", "HILASegmentLib", "check", str(tmp_path / "ws")],
                           capture_output=True, text=True, timeout=120, env=env)
    assert check.returncode == 0, check.stdout + check.stderr  # `hila check` clean


def test_sequence_runner_runs_in_order_stops_at_the_first_failure_and_cancels(tmp_path):
    """The background pip install on Slicer 5.8/5.10: commands in order, progress per command, Cancel."""
    from HILASegmentSlicerLib.processrunner import SequenceRunner

    log = tmp_path / "log"
    step = lambda n, rc=0: [sys.executable, "-c", f"open({str(log)!r}, 'a').write('{n}'); print('step {n}'); raise SystemExit({rc})"]
    out = SequenceRunner([step(1), step(2), step(3)]).start().wait(timeout=60)
    assert out.ok and log.read_text() == "123"
    log.unlink()
    seq = SequenceRunner([step(1), step(2, rc=3), step(3)]).start()
    out = seq.wait(timeout=60)
    assert not out.ok and out.returncode == 3 and log.read_text() == "12" and seq.fraction == 1.0
    seq = SequenceRunner([[sys.executable, "-c", "import time; time.sleep(60)"], step(9)]).start()
    seq.cancel()
    out = seq.wait(timeout=30)
    assert out.cancelled and not out.ok and "9" not in log.read_text()


def test_sequence_runner_an_optional_last_step_may_fail_and_each_result_is_kept(tmp_path):
    """Accept's job: the submit, then the compressed copy; a copy that fails leaves the sequence done (the submit
    stood) with its error kept beside the submit's JSON result; a required step's failure still ends it."""
    import json as _json

    from HILASegmentSlicerLib.processrunner import SequenceRunner

    ok = [sys.executable, "-c", "import json; print(json.dumps({'event': 'result', 'version': 3}))"]
    bad = [sys.executable, "-c", "import sys; print('hila: error: disk full', file=sys.stderr); sys.exit(2)"]
    seq = SequenceRunner([ok, bad], optional=[False, True]).start()
    out = seq.wait(timeout=60)
    assert out.ok and seq.results[0]["version"] == 3 and seq.errors[0] is None and "disk full" in seq.errors[1]
    seq = SequenceRunner([bad, ok], optional=[False, True]).start()
    out = seq.wait(timeout=60)
    assert not out.ok and len(seq.results) == 1 and _json.dumps(seq.errors)
    # Cancel while the copy runs: the submit stood, so the job is not "cancelled" (Accept again would submit twice)
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    seq = SequenceRunner([ok, slow], optional=[False, True]).start()
    while seq.index < 1:
        seq.poll()
        time.sleep(0.05)
    seq.cancel()
    out = seq.wait(timeout=60)
    assert out.ok and seq.results[0]["version"] == 3 and seq.errors[1] == "cancelled"


def test_json_progress_thins_a_run_of_steps_but_writes_every_new_phase():
    import io

    from HILASegmentLib.ground.progress import JsonLinesProgress

    out = io.StringIO()
    prog = JsonLinesProgress(out, min_interval=60.0)  # nothing of one kind twice within a minute
    for i in range(1, 6):
        prog(0.1 * i, f"step {i} loss {1.0 / i:.3f}")
    prog(0.7, "exporting ONNX")
    prog(0.8, "round 1: evaluating")
    prog(0.81, "round 1: evaluating")
    prog(1.0, "done")
    got = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert got == ["step 1 loss 1.000", "exporting ONNX", "round 1: evaluating", "done"]
