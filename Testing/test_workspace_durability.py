"""Durability with real processes: concurrent submitters, and submitters killed with SIGKILL.

Each worker is a separate Python process (Testing/ws_worker.py) that prints one line after each
submission returned; what returned must be in the ledger, and ``check`` must be clean, whatever
moment the kill came at.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ws_worker import make_label, make_volume

from HILASegmentLib.workspace import Workspace

WORKER = Path(__file__).with_name("ws_worker.py")


@pytest.fixture(params=[False, True], ids=["wal", "shared-disk"])
def setup(tmp_path, request):
    ws = Workspace.create(tmp_path / "ws", "CT", ["prostate", "bladder", "rectum"], shared_disk=request.param)
    assert ws.ledger.journal_mode() == ("DELETE" if request.param else "WAL")
    img = make_volume(tmp_path / "vol.nrrd")
    case = ws.import_volume(tmp_path / "vol.nrrd")
    make_label(img, tmp_path / "label.nrrd")
    yield ws, case, tmp_path / "label.nrrd", img
    ws.close()


def _spawn(ws, case, label, count):
    return subprocess.Popen([sys.executable, str(WORKER), "submit", str(ws.root), case.case_id, str(label), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ok_lines(text):
    return [ln.split() for ln in text.splitlines() if ln.startswith("OK ")]


def _assert_all_present_and_readable(ws, oks, expected_label):
    rows = {c.correction_id: c for c in ws.corrections()}
    for _, cid, case_id, version, sha in oks:
        c = rows.get(int(cid))
        assert c is not None, f"submission {cid} returned success but is not in the ledger"
        assert (c.case_id, c.version, c.sha256) == (case_id, int(version), sha)
    for c in rows.values():  # none half-present: every row's file is complete and loads
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(c.path)))
        assert np.array_equal(arr, expected_label), f"correction {c.correction_id} differs from what was submitted"
    versions = sorted(c.version for c in rows.values())
    assert versions == list(range(1, len(versions) + 1))


def test_eight_processes_submit_25_each(setup):
    ws, case, label, img = setup
    procs = [_spawn(ws, case, label, 25) for _ in range(8)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    oks = [ok for out in outs for ok in _ok_lines(out)]
    assert len(oks) == 200
    assert len(ws.corrections()) == 200
    assert sorted(int(o[3]) for o in oks) == list(range(1, 201))  # every version given out once
    _assert_all_present_and_readable(ws, oks, sitk.GetArrayFromImage(make_label(img)))
    rep = ws.check()
    assert rep.ok and not rep.orphans and not rep.stale_temporaries, rep.summary()
    assert rep.rows_checked == 201


def _wait_ready(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(encoding="utf-8").startswith("READY"):
            return
        time.sleep(0.005)
    raise AssertionError(f"worker never became ready ({path})")


def test_sigkill_at_random_moments(setup, tmp_path):
    """55 submitters SIGKILLed at random moments (a few fresh processes, the rest forked from one
    pre-imported server to keep the test fast): check clean after each, nothing acknowledged lost."""
    ws, case, label, img = setup
    expected = sitk.GetArrayFromImage(make_label(img))
    rng = random.Random(1234)
    all_oks = []
    leftovers = kills = 0

    def after_kill(out_text):
        nonlocal kills, leftovers
        kills += 1
        all_oks.extend(_ok_lines(out_text))
        rep = ws.check()
        assert rep.ok, f"after kill {kills}: {rep.summary()}"
        leftovers = len(rep.orphans) + len(rep.stale_temporaries)
        _assert_all_present_and_readable(ws, all_oks, expected)

    for _ in range(5):  # fresh interpreters
        p = _spawn(ws, case, label, 10_000)
        assert p.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL
        after_kill(out)
    server = subprocess.Popen([sys.executable, str(WORKER), "forkserver", str(ws.root), case.case_id, str(label)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "READY"
        for i in range(50):
            out_file = tmp_path / f"child{i}.out"
            server.stdin.write(f"go {out_file}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            _wait_ready(out_file)
            time.sleep(rng.uniform(0.0, 0.2))  # a few submissions' worth: kills land in every phase
            os.kill(pid, signal.SIGKILL)
            server.stdin.write(f"reap {pid}\n")
            server.stdin.flush()
            status = int(server.stdout.readline().split()[1])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            after_kill(out_file.read_text(encoding="utf-8"))
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert kills >= 50 and len(all_oks) > 0
    rep = ws.check(repair=True)
    assert rep.ok
    rep = ws.check()
    assert rep.ok and not rep.orphans and not rep.stale_temporaries
    print(f"{kills} kills, {len(all_oks)} acknowledged submissions, {len(ws.corrections())} rows, "
          f"{leftovers} leftovers before repair")
