"""The network has deadlines, and what a server sends is outside input (issue 22, class 6).

Servers on loopback (stdlib http.server): one that sends its headers and then a byte every second (the
socket timeout is per read, so hila waited forever); ones that answer with the wrong JSON shape, without
the tags a QIDO answer has, or with something that is not DICOM. Each is one ``hila: error:`` line after
the bounded tries the README promises, with the workspace unchanged. The subprocess timeouts below only
stop a hung hila from hanging the suite; nothing here measures speed.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT
from ws_worker import state

from HILASegmentLib.cli import main

pytest.importorskip("dicomweb_client", reason="the optional dicom extra (dicomweb-client) is not installed")
STUDY = "1.2.826.0.1.3680043.2.1125.1"


class Server:
    """``answer(handler, path_parts)`` answers each GET on 127.0.0.1; counts the requests."""

    def __init__(self, answer):
        srv = self
        self.requests = 0
        self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                srv.requests += 1
                answer(self, [x for x in self.path.split("?")[0].split("/") if x])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, body: bytes, ctype="application/dicom+json", status=200):
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def ws(tmp_path, capsys):
    root = tmp_path / "ws"
    assert main(["init", str(root), "--modality", "MR", "--labels", "prostate"]) == 0
    capsys.readouterr()
    return root


def test_a_server_that_drips_a_byte_a_second_meets_a_deadline(ws):
    """P02: headers, then one byte every second, forever: hila gives up after its tries, in one line."""
    def drip(handler, parts):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", "1000000")
        handler.end_headers()
        try:
            while not srv.stop.is_set():
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(1.0)
        except OSError:
            pass

    srv = Server(drip)
    before = state(ws)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"), HILA_DICOMWEB_TIMEOUT="2")
        res = subprocess.run([sys.executable, "-m", "HILASegmentLib", "import", str(ws), "--dicomweb", srv.url,
                              "--study", STUDY], capture_output=True, text=True, env=env, timeout=240)
    finally:
        srv.close()
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "no complete answer within 2 s" in lines[0] and "3 tries" in lines[0], lines[0]
    assert srv.requests == 3  # the bounded tries the README promises, no more
    assert state(ws) == before


@pytest.mark.parametrize("kind", ["object", "list of strings", "no series uid", "value not a list", "not json",
                                  "series uid a path", "not dicom"])
def test_a_malformed_answer_is_one_line(ws, capsys, kind):
    def answer(handler, parts):
        if parts[-1:] == ["series"]:  # QIDO: the study's series
            series = {"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}, "00080060": {"vr": "CS", "Value": ["MR"]}}
            body = {"object": {"series": []}, "list of strings": ["1.2.3"],
                    "no series uid": [{"00080060": {"vr": "CS", "Value": ["MR"]}}],
                    "value not a list": [{"0020000E": {"vr": "UI", "Value": "1.2.3.4"}}],
                    "series uid a path": [dict(series, **{"0020000E": {"vr": "UI", "Value": ["../../x"]}})],
                    }.get(kind, [series])
            return send(handler, b"{not json" if kind == "not json" else json.dumps(body).encode())
        if kind == "not dicom":  # WADO-RS: a multipart answer whose part is no DICOM file
            b = b"xx"
            body = b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\nhello, not DICOM\r\n--" + b + b"--"
            return send(handler, body, 'multipart/related; type="application/dicom"; boundary=xx')
        send(handler, b"", status=404)

    srv = Server(answer)
    before = state(ws)
    try:
        rc = main(["import", str(ws), "--dicomweb", srv.url, "--study", STUDY])
    finally:
        srv.close()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("hila: error: "), (kind, err)
    assert state(ws) == before
