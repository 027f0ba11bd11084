"""One exception type for every user-facing failure, so the CLI and the Slicer glue can show one line."""


class HilaError(Exception):
    """A problem the user can act on (bad file, wrong grid, unknown case...).

    The message is one line and names the file or object and the problem; the CLI prints it
    as ``hila: error: <message>`` with no traceback and exits non-zero.
    """

    exit_code = 2


class CancelledError(HilaError):
    """Raised when the user (or a signal) asked a long step to stop."""

    exit_code = 130
