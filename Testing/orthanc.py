"""A real Orthanc (with its DICOMweb plugin) for the tests: on 127.0.0.1, free ports, a temporary
storage folder, basic authentication; stopped at the end whatever happens (and, through
PR_SET_PDEATHSIG, even when the test process itself is killed)."""
from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
USER, PASSWORD = "hila", "s3cret-test"


def orthanc_binary() -> Optional[str]:
    return shutil.which("Orthanc") or (str(Path("/usr/sbin/Orthanc")) if Path("/usr/sbin/Orthanc").exists() else None)


def dicomweb_plugin() -> Optional[Path]:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@contextlib.contextmanager
def running_orthanc(folder: Path) -> Iterator[str]:
    """Start Orthanc storing into ``folder``; yields the DICOMweb root URL; stops it on exit."""
    port = free_port()
    config = {
        "Name": "hila-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpTimeout": 60, "StableAge": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([orthanc_binary(), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)
    try:
        url = f"http://127.0.0.1:{port}"
        auth = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        auth.add_password(None, url, USER, PASSWORD)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(auth))
        deadline = time.monotonic() + 30
        while True:
            try:
                opener.open(f"{url}/system", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"{url}/dicom-web"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
