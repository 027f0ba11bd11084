"""Run a long engine job (training, inference) as a child process the GUI can watch and cancel.

The Slicer widget must never block: it starts the job here, a reader thread per stream moves
the child's output lines into a queue, and a QTimer calls :meth:`ProcessRunner.poll` to pick
them up. JSON lines (``{"event": "progress" | "result" | "error", ...}``, as written by the
CLI's ``--json``) are parsed, so the widget only reads ``fraction``/``message``/``result``.
Cancel kills the whole process tree: the child starts in its own session (POSIX) or process
group (Windows), so grandchildren (data-loader workers, ...) die with it.

The process itself comes from an injectable factory, so tests (and other hosts) can fake it.
No Qt, no Slicer: this module is plain Python. Length (~540 lines): one job, watching child
processes; :class:`SequenceRunner` (a background pip install on Slicer 5.8/5.10, Segment, Import, Accept) is a few
steps in a row and shares the runner's whole contract, so it stays beside it; :class:`ThreadRunner` is a step that
runs in this process on a worker thread (writing what the GUI thread copied out of the scene), watched the same way.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, List, Optional, Protocol, Sequence, Union

__all__ = [
    "ChildProcess", "PopenChild", "popen_factory", "OutputLine", "RunOutcome", "ProcessRunner",
    "python_executable", "engine_command", "SequenceRunner", "ThreadRunner",
]


class ChildProcess(Protocol):
    """What the runner needs from a started process (``subprocess.Popen`` wrapped by :class:`PopenChild`)."""

    pid: int
    stdout: Optional[Iterable[str]]
    stderr: Optional[Iterable[str]]

    def poll(self) -> Optional[int]: ...

    def wait(self, timeout: Optional[float] = None) -> int: ...

    def terminate_tree(self) -> None: ...

    def kill_tree(self) -> None: ...


ProcessFactory = Callable[[Sequence[str], Optional[str], Optional[Dict[str, str]]], ChildProcess]


class PopenChild:
    """A real child process in its own session/process group, so the whole tree can be signalled."""

    def __init__(self, args: Sequence[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None):
        kwargs: dict = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8", errors="replace", bufsize=1, cwd=cwd, env=env)
        if os.name == "nt":  # pragma: no cover - exercised on Windows only
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # pid == pgid: killpg reaches grandchildren too
        self.popen = subprocess.Popen(list(args), **kwargs)
        self.pid = self.popen.pid
        self.stdout = self.popen.stdout
        self.stderr = self.popen.stderr

    def poll(self) -> Optional[int]:
        return self.popen.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.popen.wait(timeout)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # the group outlives its leader while grandchildren run
        except (ProcessLookupError, PermissionError):
            pass

    def terminate_tree(self) -> None:
        if os.name == "nt":  # pragma: no cover
            subprocess.run(["taskkill", "/T", "/PID", str(self.pid)], capture_output=True)
        else:
            self._signal_group(signal.SIGTERM)

    def kill_tree(self) -> None:
        if os.name == "nt":  # pragma: no cover
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.pid)], capture_output=True)
        else:
            self._signal_group(signal.SIGKILL)


def popen_factory(args: Sequence[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> ChildProcess:
    """The default factory: a real :class:`PopenChild`."""
    return PopenChild(args, cwd, env)


@dataclass
class OutputLine:
    """One line of the child's output; ``record`` is the parsed JSON object when the line is one."""

    stream: str  # "stdout" | "stderr"
    text: str
    record: Optional[dict] = None


@dataclass
class RunOutcome:
    """How a finished run ended, in the terms the GUI shows."""

    returncode: Optional[int]
    cancelled: bool
    ok: bool
    error: Optional[str]
    result: Optional[dict] = None
    seconds: float = 0.0


_EOF = object()


@dataclass
class _State:
    fraction: Optional[float] = None
    message: str = ""
    result: Optional[dict] = None
    json_error: Optional[str] = None
    stderr_tail: Deque[str] = field(default_factory=lambda: collections.deque(maxlen=50))


class ProcessRunner:
    """Start a child, stream its lines, poll from a GUI timer, cancel its whole tree.

    Typical use (what the Slicer widget does)::

        runner = ProcessRunner(engine_command("HILASegmentLib", ["train", ws, "--json"]))
        runner.start()
        # every 200 ms from a QTimer:
        for line in runner.poll(): log(line.text)
        bar.value = runner.fraction;  if runner.finished: show(runner.outcome())
    """

    def __init__(self, args: Sequence[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 factory: ProcessFactory = popen_factory, grace_seconds: float = 5.0):
        self.args = [str(a) for a in args]
        self.cwd = cwd
        self.env = env
        self.factory = factory
        self.grace_seconds = grace_seconds
        self.process: Optional[ChildProcess] = None
        self.cancelled = False
        self._queue: "queue.Queue[object]" = queue.Queue()
        self._readers: List[threading.Thread] = []
        self._open_streams = 0
        self._state = _State()
        self._returncode: Optional[int] = None
        self._started_at = 0.0
        self._ended_at: Optional[float] = None
        self._killer: Optional[threading.Thread] = None

    # -- starting -------------------------------------------------------------------------
    def start(self) -> "ProcessRunner":
        """Start the child and its reader threads; raises OSError when the program cannot start."""
        if self.process is not None:
            raise RuntimeError("this runner was already started")
        self._started_at = time.monotonic()
        self.process = self.factory(self.args, self.cwd, self.env)
        for name in ("stdout", "stderr"):
            stream = getattr(self.process, name, None)
            if stream is None:
                continue
            self._open_streams += 1
            t = threading.Thread(target=self._read, args=(name, stream), name=f"hila-{name}-reader", daemon=True)
            t.start()
            self._readers.append(t)
        return self

    def _read(self, name: str, stream: Iterable[str]) -> None:
        try:
            for raw in stream:
                self._queue.put((name, raw.rstrip("\r\n")))
        except (ValueError, OSError):  # stream closed under us
            pass
        finally:
            self._queue.put(_EOF)

    # -- watching -------------------------------------------------------------------------
    def poll(self) -> List[OutputLine]:
        """New output lines since the last call (never blocks); updates progress, result and error."""
        lines: List[OutputLine] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._open_streams -= 1
                continue
            name, text = item  # type: ignore[misc]
            line = OutputLine(name, text, _parse_json(text))
            self._absorb(line)
            lines.append(line)
        if self.process is not None and self._returncode is None:
            rc = self.process.poll()
            if rc is not None and self._open_streams <= 0:
                self._returncode = rc
                self._ended_at = time.monotonic()
        return lines

    def _absorb(self, line: OutputLine) -> None:
        st = self._state
        rec = line.record
        if rec is not None:
            event = rec.get("event")
            if event == "progress":
                if rec.get("fraction") is not None:
                    try:
                        st.fraction = max(0.0, min(1.0, float(rec["fraction"])))
                    except (TypeError, ValueError):
                        pass
                st.message = str(rec.get("message") or st.message)
            elif event == "result":
                st.result = rec
            elif event == "error":
                st.json_error = str(rec.get("error") or rec.get("message") or "error")
        elif line.stream == "stderr" and line.text.strip():
            st.stderr_tail.append(line.text.strip())

    @property
    def started(self) -> bool:
        return self.process is not None

    @property
    def finished(self) -> bool:
        """True once the child exited and all its output was read (call :meth:`poll` to advance)."""
        return self._returncode is not None

    @property
    def running(self) -> bool:
        return self.started and not self.finished

    @property
    def returncode(self) -> Optional[int]:
        return self._returncode

    @property
    def fraction(self) -> Optional[float]:
        return self._state.fraction

    @property
    def message(self) -> str:
        return self._state.message

    @property
    def result(self) -> Optional[dict]:
        return self._state.result

    @property
    def stderr_tail(self) -> List[str]:
        return list(self._state.stderr_tail)

    def last_error(self) -> Optional[str]:
        """The most telling error line: the JSON error event, else the last stderr line that looks like one."""
        if self._state.json_error:
            return self._state.json_error
        tail = self.stderr_tail
        for text in reversed(tail):
            if text.startswith("hila: error:"):
                return text[len("hila: error:"):].strip()
        for text in reversed(tail):  # a Python traceback ends with "SomeError: message"
            head = text.split(":", 1)[0]
            if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
                return text
        return tail[-1] if tail else None

    def outcome(self) -> RunOutcome:
        """The run's end state; only meaningful once :attr:`finished`."""
        rc = self._returncode
        ok = rc == 0 and not self.cancelled
        error: Optional[str] = None
        if self.cancelled:
            error = "cancelled"
        elif rc is None:
            error = None
        elif rc != 0:
            error = self.last_error()
            if rc < 0:
                sig = _signal_name(-rc)
                error = f"killed by {sig}" + (f" ({error})" if error else "")
            elif not error:
                error = f"exited with code {rc}"
        seconds = ((self._ended_at or time.monotonic()) - self._started_at) if self._started_at else 0.0
        return RunOutcome(rc, self.cancelled, ok, error, self._state.result, seconds)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05,
             on_line: Optional[Callable[[OutputLine], None]] = None) -> RunOutcome:
        """Block until the run finishes (for scripts and tests; the GUI polls instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for line in self.poll():
                if on_line:
                    on_line(line)
            if self.finished:
                return self.outcome()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.args[0]} still running after {timeout} s")
            time.sleep(interval)

    # -- cancelling -----------------------------------------------------------------------
    def cancel(self, grace_seconds: Optional[float] = None, block: bool = False) -> None:
        """Ask the whole tree to stop (SIGTERM), then kill it (SIGKILL) after the grace period.

        Returns at once unless ``block``; the escalation runs on a small thread so the GUI stays live.
        """
        if self.process is None or self.finished:
            return
        self.cancelled = True
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        proc = self.process
        proc.terminate_tree()

        def escalate() -> None:
            try:
                proc.wait(timeout=grace)
            except Exception:  # subprocess.TimeoutExpired or a fake's equivalent
                pass
            proc.kill_tree()  # also reaches grandchildren that ignored SIGTERM after the leader left

        if block:
            escalate()
        else:
            self._killer = threading.Thread(target=escalate, name="hila-cancel", daemon=True)
            self._killer.start()


def _parse_json(text: str) -> Optional[dict]:
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return None
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def python_executable() -> str:
    """The Python to run engine jobs with: Slicer's ``PythonSlicer`` when there is one, else this interpreter.

    Inside Slicer ``sys.executable`` is the application itself, not a plain Python, so look for
    PythonSlicer beside it first.
    """
    exe = Path(sys.executable)
    for folder in (exe.parent, exe.parent / "bin", exe.parent.parent / "bin"):  # Linux, Windows, macOS layouts
        for cand in (folder / "PythonSlicer", folder / "PythonSlicer.exe"):
            if cand.is_file():
                return str(cand)
    found = shutil.which("PythonSlicer")
    if found:
        return found
    return sys.executable


def engine_command(module: str, args: Sequence[str], python: Optional[str] = None,
                   env: Optional[Dict[str, str]] = None) -> tuple:
    """``(argv, env)`` that run ``python -m <module> <args>`` with this engine importable and unbuffered.

    The module folder (the parent of ``HILASegmentLib``) goes first on PYTHONPATH, so the child runs
    exactly the engine the GUI loaded, installed as a Slicer module or checked out from source.
    ``env`` is the base environment (default: this process's); inside Slicer pass
    ``slicer.util.startupEnvironment()``, as PythonSlicer sets up its own paths from there.
    """
    lib_parent = str(Path(__file__).resolve().parents[1])
    child_env = dict(os.environ if env is None else env)
    old = child_env.get("PYTHONPATH", "")
    child_env["PYTHONPATH"] = lib_parent + (os.pathsep + old if old else "")
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.setdefault("PYTHONIOENCODING", "utf-8")
    argv = [python or python_executable(), "-u", "-m", module] + [str(a) for a in args]
    return argv, child_env


class ThreadRunner:
    """One step of a job run in this process on a worker thread, watched and cancelled like a :class:`ProcessRunner`.

    What the GUI thread hands it is plain data it copied out of the scene (numpy arrays, names, a matrix), never an
    MRML node: ``fn(cancelled)`` merges and writes it (disk I/O, compression) off the GUI thread and returns a dict
    or None (its result). ``cancelled`` is a ``threading.Event`` the step may look at between writes; a cancelled
    step's result is dropped. An exception is the step's error line (its message, whitespace folded). With
    ``reports`` the step is called ``fn(cancelled, report)`` and ``report(fraction, message)`` is its progress (the
    panel's bar reads :attr:`fraction`)."""

    def __init__(self, fn: Callable[..., Optional[dict]], name: str = "worker", reports: bool = False) -> None:
        self.fn = fn
        self.args = [name]
        self.reports = reports
        self._fraction: Optional[float] = None
        self._message = ""
        self.cancelled = False
        self._event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[dict] = None
        self._error: Optional[str] = None
        self._done = threading.Event()
        self._started_at = 0.0
        self._ended_at: Optional[float] = None

    def start(self) -> "ThreadRunner":
        if self._thread is not None:
            raise RuntimeError("this runner was already started")
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"hila-{self.args[0]}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if not self._event.is_set():
                self._result = self.fn(self._event, self.report) if self.reports else self.fn(self._event)
        except Exception as exc:  # the step's error, shown as one line
            self._error = " ".join(str(exc).split()) or type(exc).__name__
        finally:
            self._ended_at = time.monotonic()
            self._done.set()

    def poll(self) -> List[OutputLine]:
        return []

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def report(self, fraction: float, message: str = "") -> None:
        """The step's progress (called on the worker thread; read by the GUI's poll)."""
        self._fraction, self._message = float(fraction), str(message)

    @property
    def fraction(self) -> Optional[float]:
        return 1.0 if self.finished else self._fraction

    @property
    def message(self) -> str:
        return self._message

    @property
    def result(self) -> Optional[dict]:
        return self._result

    @property
    def stderr_tail(self) -> List[str]:
        return [self._error] if self._error else []

    def cancel(self) -> None:
        self.cancelled = True
        self._event.set()

    def outcome(self) -> RunOutcome:
        ok = self.finished and self._error is None and not self.cancelled
        error = "cancelled" if self.cancelled else self._error
        seconds = ((self._ended_at or time.monotonic()) - self._started_at) if self._started_at else 0.0
        return RunOutcome(0 if ok else 1, self.cancelled, ok, error, self._result if ok else None, seconds)

    def wait(self, timeout: Optional[float] = None) -> RunOutcome:
        """Block until the step ends (scripts and tests; the GUI polls instead)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.args[0]} still running after {timeout} s")
        return self.outcome()


Step = Union[Sequence[str], Callable[[threading.Event], Optional[dict]]]


class SequenceRunner:
    """Several steps run one after another, watched and cancelled like one :class:`ProcessRunner`.

    What the Slicer module's background ``pip install`` needs on Slicer 5.8/5.10 (no
    non-blocking installer there): the plan's commands in order, a fraction per finished
    command, the last output line as the message, Cancel that kills the running one and
    starts no more, and the first failure ending the sequence. A step is a command (a child process) or a
    callable (a :class:`ThreadRunner` step: Segment, Import and Accept write what the GUI thread copied out first).
    """

    def __init__(self, commands: Sequence[Step], env: Optional[Dict[str, str]] = None,
                 factory: ProcessFactory = popen_factory, optional: Sequence[bool] = ()):
        self.commands = [c if callable(c) else list(c) for c in commands]
        #: per command: may it fail without ending the sequence (Accept's copy after its submit)?
        self.optional = list(optional) + [False] * (len(self.commands) - len(optional))
        #: each finished command's JSON result and error (None where it had none), in order
        self.results: List[Optional[dict]] = []
        self.errors: List[Optional[str]] = []
        self.env = env
        self.factory = factory
        self.index = -1
        self.current: Optional[Union[ProcessRunner, ThreadRunner]] = None
        self.cancelled = False
        self._outcome: Optional[RunOutcome] = None
        self._message = ""
        self._started_at = 0.0

    def _next(self) -> None:
        self.index += 1
        step = self.commands[self.index]
        self.current = (ThreadRunner(step, getattr(step, "__name__", "worker")) if callable(step)
                        else ProcessRunner(step, env=self.env, factory=self.factory)).start()

    def start(self) -> "SequenceRunner":
        if not self.commands:
            raise ValueError("no commands to run")
        self._started_at = time.monotonic()
        self._next()
        return self

    def poll(self) -> List[OutputLine]:
        if self._outcome is not None or self.current is None:
            return []
        lines = self.current.poll()
        for line in lines:
            if line.text.strip():
                self._message = line.text.strip()[:200]
        if self.current.finished:
            out = self.current.outcome()
            self.results.append(out.result)
            self.errors.append(None if out.ok else (out.error or "failed"))
            if not out.ok and self.optional[self.index] and self.index + 1 >= len(self.commands):
                # the optional last step failed or was cancelled: the steps before it stood (Accept's submit is in
                # the ledger), so the sequence did its work and says what happened to the last step
                if out.cancelled:
                    self.errors[-1] = "cancelled"
                out = RunOutcome(0, False, True, None)
                out.seconds = time.monotonic() - self._started_at
                self._outcome = out
            elif not out.ok and self.optional[self.index] and not out.cancelled:
                self._next()
            elif not out.ok or self.index + 1 >= len(self.commands):
                out.seconds = time.monotonic() - self._started_at
                self._outcome = out
            else:
                self._next()
        return lines

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    @property
    def fraction(self) -> Optional[float]:
        if self._outcome is not None:
            return 1.0
        if not self.commands:
            return None
        within = (self.current.fraction or 0.0) if self.current is not None and not self.current.finished else 0.0
        return (max(0, self.index) + within) / len(self.commands)

    @property
    def message(self) -> str:
        return self._message

    @property
    def stderr_tail(self) -> List[str]:
        return self.current.stderr_tail if self.current is not None else []

    def cancel(self) -> None:
        self.cancelled = True
        if self.current is not None:
            self.current.cancel()

    def outcome(self) -> RunOutcome:
        return self._outcome or RunOutcome(None, self.cancelled, False, None)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> RunOutcome:
        """Block until every command ran or one failed (scripts and tests; the GUI polls instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                step = self.commands[self.index]
                raise TimeoutError(f"{getattr(step, '__name__', None) or step[0]} still running after {timeout} s")
            time.sleep(interval)
        return self.outcome()
