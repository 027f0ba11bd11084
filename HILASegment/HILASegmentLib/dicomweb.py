"""A DICOMweb server (a PACS such as Orthanc) as the shared store: QIDO-RS to find, WADO-RS to fetch,
STOW-RS to store, through dicomweb-client (the IDC/highdicom authors' client; it speaks the multipart
formats every PACS answers with, so we do not).

Credentials come only from the environment (``HILA_DICOMWEB_USER`` / ``HILA_DICOMWEB_PASSWORD``) or a
netrc-style file (``HILA_NETRC``, else ``~/.netrc``), never from the command line (a URL with
``user:password@`` is refused) and never into the ledger. A server that refuses or times out is
tried a bounded number of times (``ATTEMPTS``, with a short back-off), then reported in one line;
wrong credentials are reported at once.
"""
from __future__ import annotations

import netrc
import os
import re
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from .dependencies import missing_package_message
from .errors import HilaError

T = TypeVar("T")
ATTEMPTS = 3
BACKOFF_S = 0.5
#: (connect, read) timeout in seconds for each request; ``HILA_DICOMWEB_TIMEOUT`` sets both.
TIMEOUT_S = float(os.environ.get("HILA_DICOMWEB_TIMEOUT", "30"))
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
        session = requests.Session()
        session.trust_env = False  # no ~/.netrc or proxy picked up behind our back: credentials() decides
        auth = credentials(url)
        if auth:
            session.auth = auth
        self._requests = requests
        self.client = DICOMwebClient(self.url, session=session, timeout=(min(TIMEOUT_S, 10.0), TIMEOUT_S))
        # The client's own retrying (5 attempts, exponential waits, on any exception) would take minutes on a
        # dead server; the bounded retry is ours (:meth:`call`).
        self.client.set_http_retry_params(retry=False)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request with bounded retries on refusal/timeout; one-line HilaError when it fails."""
        requests = self._requests
        last = ""
        for attempt in range(ATTEMPTS):
            try:
                return fn()
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
            if attempt + 1 < ATTEMPTS:
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise HilaError(f"{self.url}: {what}: {last} ({ATTEMPTS} tries)")

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
        return [{"uid": _value(s, "0020000E"), "modality": _value(s, "00080060") or "",
                 "description": _value(s, "0008103E") or "", "instances": _value(s, "00201209")} for s in found]

    def instances(self, study_uid: str, series_uid: str) -> List[str]:
        found = self.call(f"listing series {series_uid}", lambda: self.client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid))
        return [_value(i, "00080018") for i in found]

    # -- WADO / STOW -----------------------------------------------------------------------------
    def fetch_series(self, study_uid: str, series_uid: str, folder: Path) -> List[Path]:
        """Every instance of a series saved as files in ``folder`` (WADO-RS)."""
        datasets = self.call(f"fetching series {series_uid}",
                             lambda: self.client.retrieve_series(study_uid, series_uid))
        return [_save(ds, folder) for ds in datasets]

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str, folder: Path) -> Path:
        ds = self.call(f"fetching instance {sop_uid}",
                       lambda: self.client.retrieve_instance(study_uid, series_uid, sop_uid))
        return _save(ds, folder)

    def store(self, paths: List[Path]) -> None:
        """STOW-RS the files (the same SOP instance again is stored once by the server)."""
        import pydicom  # optional `dicom` extra

        for p in paths:
            ds = pydicom.dcmread(p)
            self.call(f"storing {Path(p).name}", lambda ds=ds: self.client.store_instances([ds]))


def _value(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def _save(ds, folder: Path) -> Path:
    path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
