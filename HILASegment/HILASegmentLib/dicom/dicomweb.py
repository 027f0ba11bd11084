"""A DICOMweb server (a PACS such as Orthanc) as the shared store: QIDO-RS to find, WADO-RS to fetch,
STOW-RS to store, through dicomweb-client (the IDC/highdicom authors' client; it speaks the multipart
formats every PACS answers with, so we do not).

Credentials come only from the environment (``HILA_DICOMWEB_USER`` / ``HILA_DICOMWEB_PASSWORD``) or a
netrc-style file (``HILA_NETRC``, else ``~/.netrc``), never from the command line (a URL with
``user:password@`` is refused) and never into the ledger. A server that refuses or times out is
tried a bounded number of times (``ATTEMPTS``, with a short back-off), then reported in one line;
wrong credentials are reported at once.

Every request has one overall deadline (``HILA_DICOMWEB_TIMEOUT`` seconds, default 120): the socket
timeouts of requests bound each wait for a byte, not the answer, so a server that sends a byte every
2 s held hila forever. Everything the server sends is outside input: an answer of the wrong shape is
one line, and a UID is checked before it names a file (a SOPInstanceUID of ``../../x`` made hila write
outside its temporary folder).
"""
from __future__ import annotations

import netrc
import os
import re
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from ..ground import envvars
from ..ground.errors import HilaError
from ..ground.packages import missing_package_message
from ..ground.paths import name_component

T = TypeVar("T")
ATTEMPTS = 3
BACKOFF_S = 0.5
IMAGE_MODALITIES_EXCLUDED = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "RTDOSE", "REG"}


def credentials(url: str) -> Optional[Tuple[str, str]]:
    """(user, password) for ``url`` from the environment or a netrc-style file, or None."""
    user, password = os.environ.get("HILA_DICOMWEB_USER"), os.environ.get("HILA_DICOMWEB_PASSWORD")
    if user:
        return user, password or ""
    path = Path(os.environ.get("HILA_NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(urlsplit(url).hostname or "")
    except (netrc.NetrcParseError, OSError) as exc:
        raise HilaError(f"{path}: cannot read the credentials file ({exc})") from None
    return (entry[0], entry[2] or "") if entry else None


def check_url(url: str) -> str:
    """``url`` when it is an http(s) DICOMweb root without credentials in it; else a one-line HilaError
    (a password in a URL ends up in shell histories, process lists and logs)."""
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise HilaError(f"{url}: not an http(s) DICOMweb URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HilaError(f"{url or '(empty)'}: not an http(s) DICOMweb URL (e.g. http://pacs:8042/dicom-web)")
    if parts.username or parts.password:
        raise HilaError(f"{parts.hostname}: credentials in the URL are refused; use HILA_DICOMWEB_USER/"
                        "HILA_DICOMWEB_PASSWORD or a netrc file (HILA_NETRC)")
    return url


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def check_uid(uid: str, what: str = "UID") -> str:
    """``uid`` when it is a DICOM UID (PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters);
    else a one-line HilaError, before any request carries it to the server."""
    uid = (uid or "").strip()
    if not _UID.fullmatch(uid) or len(uid) > 64:
        raise HilaError(f"{uid or '(empty)'}: not a DICOM {what} (digits and dots, at most 64 characters, "
                        "e.g. 1.2.840.113619.2.55.3)")
    return uid


class Server:
    """One DICOMweb endpoint (``url``: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``)."""

    def __init__(self, url: str):
        url = check_url(url)
        try:
            import requests  # optional `dicom` extra (comes with dicomweb-client)
            from dicomweb_client.api import DICOMwebClient  # optional `dicom` extra
        except ImportError as exc:
            raise HilaError(missing_package_message(exc.name or "dicomweb_client", "DICOMweb")
                            or f"DICOMweb: {exc}") from None
        self.url = url.rstrip("/")
        #: the overall deadline of one request (connecting, waiting and reading the whole answer), in seconds
        self.deadline_s = envvars.seconds("HILA_DICOMWEB_TIMEOUT")
        self._answers: list = []  # the answers being read, so that an overdue one can be cut off
        session = requests.Session()
        session.hooks["response"].append(lambda r, *a, **k: self._answers.append(r))
        session.trust_env = False  # no ~/.netrc or proxy picked up behind our back: credentials() decides
        auth = credentials(url)
        if auth:
            session.auth = auth
        self._requests = requests
        from pydicom.errors import InvalidDicomError  # (comes with dicomweb-client)

        self._not_dicom = InvalidDicomError
        self.client = DICOMwebClient(self.url, session=session, timeout=(min(self.deadline_s, 10.0), self.deadline_s))
        # The client's own retrying (5 attempts, exponential waits, on any exception) would take minutes on a
        # dead server; the bounded retry is ours (:meth:`call`).
        self.client.set_http_retry_params(retry=False)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request with bounded retries on refusal/timeout, each within :attr:`deadline_s`; one-line
        HilaError when it fails or the answer is malformed."""
        requests = self._requests
        last = ""
        for attempt in range(ATTEMPTS):
            try:
                return self._within(fn)
            except _Overdue:
                last = f"no complete answer within {self.deadline_s:g} s (HILA_DICOMWEB_TIMEOUT)"
            except requests.exceptions.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else "?"
                if code in (401, 403):
                    raise HilaError(f"{self.url}: {what}: the server refused the credentials (HTTP {code}); set "
                                    "HILA_DICOMWEB_USER/HILA_DICOMWEB_PASSWORD or HILA_NETRC") from None
                if code not in (408, 429, 500, 502, 503, 504):
                    raise HilaError(f"{self.url}: {what}: HTTP {code}") from None
                last = f"HTTP {code}"
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "connection refused"
            except requests.exceptions.RequestException as exc:
                raise HilaError(f"{self.url}: {what}: {_one_line(exc)}") from None
            except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, self._not_dicom) as exc:
                # dicomweb-client or pydicom choking on the answer (not JSON, wrong multipart, not DICOM)
                raise HilaError(f"{self.url}: {what}: the server's answer is malformed ({_one_line(exc)})") from None
            if attempt + 1 < ATTEMPTS:
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise HilaError(f"{self.url}: {what}: {last} ({ATTEMPTS} tries)")

    def _within(self, fn: Callable[[], T]) -> T:
        """``fn()`` if it finishes within the deadline; else the answers being read are cut off and _Overdue."""
        box: dict = {}
        self._answers.clear()

        def run() -> None:
            try:
                with warnings.catch_warnings():  # pydicom's complaints about what a server sent are not ours to print
                    warnings.simplefilter("ignore")
                    box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="hila-dicomweb", daemon=True)
        worker.start()
        # a grace second past the deadline: a server silent for the whole deadline is the socket's timeout
        # ("timed out"); one that keeps sending without ever finishing is this deadline's
        worker.join(self.deadline_s + 1.0)
        if worker.is_alive():
            for r in list(self._answers):
                _cut(r)
            worker.join(2.0)  # the cut socket ends the read; a daemon thread never holds up the exit
            raise _Overdue()
        if "error" in box:
            raise box["error"]
        return box["value"]

    # -- QIDO ------------------------------------------------------------------------------------
    def check(self) -> None:
        """One cheap query, so that a wrong URL or credentials are reported even when nothing is to do."""
        self.call("connecting", lambda: self.client.search_for_studies(limit=1))

    def series_of_study(self, study_uid: str, modality: Optional[str] = None) -> List[dict]:
        """The series of a study as ``{uid, modality, description, instances}`` (QIDO-RS)."""
        filters = {"Modality": modality} if modality else None
        found = self.call(f"searching study {study_uid}", lambda: self.client.search_for_series(
            study_instance_uid=study_uid, search_filters=filters,
            fields=["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"]))
        what = f"searching study {study_uid}"
        return [{"uid": check_uid(_value(s, "0020000E", what), f"series UID (from {self.url})"),
                 "modality": str(_value(s, "00080060", what) or ""),
                 "description": str(_value(s, "0008103E", what) or ""),
                 "instances": _value(s, "00201209", what)} for s in _items(found, self.url, what)]

    def instances(self, study_uid: str, series_uid: str) -> List[Optional[str]]:
        """The SOP instance UIDs of a series (QIDO-RS), as the server sent them (None: missing); check each
        with :func:`check_uid` before it names anything."""
        what = f"listing series {series_uid}"
        found = self.call(what, lambda: self.client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid))
        return [_value(i, "00080018", what) for i in _items(found, self.url, what)]

    # -- WADO / STOW -----------------------------------------------------------------------------
    def fetch_series(self, study_uid: str, series_uid: str, folder: Path) -> List[Path]:
        """Every instance of a series saved as files in ``folder`` (WADO-RS)."""
        what = f"fetching series {series_uid}"
        datasets = self.call(what, lambda: self.client.retrieve_series(study_uid, series_uid))
        return [_save(ds, folder, self.url, what) for ds in datasets]

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str, folder: Path) -> Path:
        sop_uid = check_uid(sop_uid, "SOP instance UID")
        what = f"fetching instance {sop_uid}"
        ds = self.call(what, lambda: self.client.retrieve_instance(study_uid, series_uid, sop_uid))
        return _save(ds, folder, self.url, what)

    def store(self, paths: List[Path]) -> None:
        """STOW-RS the files (the same SOP instance again is stored once by the server)."""
        import pydicom  # optional `dicom` extra

        for p in paths:
            ds = pydicom.dcmread(p)
            self.call(f"storing {Path(p).name}", lambda ds=ds: self.client.store_instances([ds]))


class _Overdue(Exception):
    """A request still unanswered at its deadline."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] or exc.__class__.__name__)


def _cut(response) -> None:
    """Shut down the socket an answer is being read from (the reading thread then fails at once)."""
    raw = getattr(response, "raw", None)
    for get in (lambda: raw._connection.sock, lambda: raw._fp.fp.raw._sock):
        try:
            sock = get()
        except AttributeError:
            continue
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return


def _items(found, url: str, what: str) -> list:
    """A QIDO answer: a list of DICOM JSON objects, else one line."""
    if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
        raise HilaError(f"{url}: {what}: the server's answer is malformed (not a list of DICOM JSON objects)")
    return found


def _value(item: dict, tag: str, what: str = "an answer"):
    """The first value of ``tag`` in a DICOM JSON object (None when absent); one line when it is malformed."""
    entry = item.get(tag, {})
    v = entry.get("Value") if isinstance(entry, dict) else None
    if v is not None and not isinstance(v, list):
        raise HilaError(f"{what}: the server's answer is malformed (tag {tag}: Value is not a list)")
    return v[0] if v else None


def _save(ds, folder: Path, url: str, what: str) -> Path:
    """An instance the server sent, as a file in ``folder`` named by its SOPInstanceUID (checked to be a UID:
    the server's text never becomes a path)."""
    with warnings.catch_warnings():  # (pydicom warns about a UID too long while reading it)
        warnings.simplefilter("ignore")
        uid = str(getattr(ds, "SOPInstanceUID", "") or "")
    try:
        check_uid(uid, "SOP instance UID")
    except HilaError:
        raise HilaError(f"{url}: {what}: the server sent an instance whose SOPInstanceUID {uid[:80]!r} is not a "
                        "DICOM UID; nothing was imported") from None
    path = Path(folder) / f"{name_component(uid)}.dcm"
    if path.exists():
        raise HilaError(f"{url}: {what}: the server sent SOP instance {uid} twice; nothing was imported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path
