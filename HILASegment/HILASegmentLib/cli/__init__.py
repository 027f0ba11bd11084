"""`hila`: the command line of the HILASegment engine.

Each sub-command lives in a small module of this package with ``register(subparsers)``; a
command handler returns a JSON-able dict (printed as JSON with ``--json``) and a one-line
human summary. Heavy imports happen inside handlers so ``hila --help`` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from typing import List, NoReturn, Optional

from .. import __version__
from ..ground import envvars
from ..ground.errors import HilaError
from ..ground.packages import missing_package_message
from ..ground.progress import BarProgress, JsonLinesProgress, json_line

# Modules (in this package) that register sub-commands, in help order.
COMMAND_MODULES = ["convert", "infer", "assist", "workspace", "dicomio", "train", "simulate"]


class HilaArgumentParser(argparse.ArgumentParser):
    """argparse with the house's one-line errors: ``hila: error: COMMAND: problem`` (no usage block), exit 2."""

    last_error = ""
    #: argparse takes "-12.5,3,40,..." (a box whose first coordinate is negative) for an option and refuses
    #: ``--box -12.5,...``; a comma list of numbers is a value (no option of hila starts with a digit)
    _NUMBERS = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+([eE][-+]?\d+)?(,\s*-?[\d.]+([eE][-+]?\d+)?)+;?")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self._NUMBERS

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        HilaArgumentParser.last_error = f"{where}{message.splitlines()[0] if message else 'bad arguments'} (see --help)"
        print(f"hila: error: {HilaArgumentParser.last_error}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def common_parent() -> argparse.ArgumentParser:
    """Options every sub-command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="machine-readable output: JSON progress lines and a JSON result on stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    """Every sub-command's parser. A command module that fails to import is an error here, never a
    command that silently disappears from ``hila``."""
    parser = HilaArgumentParser(
        prog="hila",
        description="HILASegment: human-in-the-loop segmentation of prostate MRI and pelvic CT "
        "(ONNX inference, a durable correction ledger, a bundled trainer).",
    )
    parser.add_argument("--version", action="version", version=f"hila {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=HilaArgumentParser)
    parent = common_parent()
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        mod.register(sub, parent)
    return parser


def emit(args: argparse.Namespace, result: dict, summary: str) -> None:
    """Print a command's result: JSON (one line, ``"event": "result"``) or its one-line summary."""
    if getattr(args, "json", False):
        out = {"event": "result", "ok": True}
        out.update(result)
        print(json_line(out), flush=True)
    elif summary:
        print(summary, flush=True)


def make_progress(args: argparse.Namespace, desc: str = ""):
    """A progress callable for this invocation: JSON lines with --json, else a tqdm bar on a terminal."""
    if getattr(args, "json", False):
        return JsonLinesProgress()
    return BarProgress(desc)


@contextlib.contextmanager
def progress_for(args: argparse.Namespace, desc: str = ""):
    """:func:`make_progress`, closed (the bar finished) however the block ends."""
    prog = make_progress(args, desc)
    try:
        yield prog
    finally:
        prog.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a bad argument (2, its one line already printed)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
        if code and "--json" in (sys.argv[1:] if argv is None else [str(a) for a in argv]):
            print(json_line({"event": "error", "ok": False, "error": HilaArgumentParser.last_error}), flush=True)
        return code
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        envvars.check_all()  # a bad HILA_* variable is one line before any work, not a traceback halfway
        rc = args.func(args)
        sys.stdout.flush()  # a reader that went away (`| head`) is noticed here, not at the interpreter's exit
        return int(rc or 0)
    except BrokenPipeError:
        return _stdout_closed()
    except HilaError as exc:
        return _fail(args, str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, exc.exit_code)
    except OSError as exc:  # the disk, not the input: full, read-only, no permission, a symlink loop
        return _fail(args, f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror
                     else str(exc).splitlines()[0], 2)
    except ImportError as exc:  # an optional extra (dicom, train) not installed: which package, how to get it
        msg = missing_package_message(exc.name or "", f"hila {args.command}")
        if msg is None:
            raise  # not an optional package: a bug, keep its traceback
        return _fail(args, msg, 2)
    except KeyboardInterrupt:
        print("hila: error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("hila: error: out of memory", file=sys.stderr)
        return 3


def _fail(args: argparse.Namespace, msg: str, code: int) -> int:
    """The one-line error (and its JSON event with --json); returns the exit code."""
    if getattr(args, "json", False):
        try:
            print(json_line({"event": "error", "ok": False, "error": msg}), flush=True)
        except BrokenPipeError:
            _stdout_closed()
    print(f"hila: error: {msg}", file=sys.stderr, flush=True)
    return code


def _stdout_closed() -> int:
    """The reader of stdout went away (``hila status WS | head -1``): end quietly, as a program killed by
    SIGPIPE does (exit 141), with stdout pointed at /dev/null so the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (a test's buffer)
        pass
    return 128 + 13


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
