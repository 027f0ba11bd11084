"""`hila init | import | submit | status | check | export | models | rank`, with and without --json,
every bad input compared before/after (ledger rows and files), and the real-CT build script."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import shared
from tiny_models import card_json
from ws_worker import make_label, make_volume, state

from HILASegmentLib.cli import main
from HILASegmentLib.workspace import SCHEMA_VERSION, Workspace

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def result(out: str) -> dict:
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    return [ln for ln in lines if ln.get("event") in ("result", "error")][-1]


@pytest.fixture
def wsdir(tmp_path, capsys):
    ws = tmp_path / "ws"
    rc, out, err = run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate,bladder,rectum")
    assert rc == 0, err
    assert "prostate" in out
    return ws


@pytest.fixture
def imported(wsdir, tmp_path, capsys):
    img = make_volume(tmp_path / "vol.nrrd")
    rc, out, err = run(capsys, "import", wsdir, tmp_path / "vol.nrrd", "--json")
    assert rc == 0, err
    return wsdir, result(out)["case_id"], img


def test_init_json_and_errors(tmp_path, capsys):
    rc, out, _ = run(capsys, "init", tmp_path / "w", "--modality", "MR", "--labels", "prostate", "--json")
    r = result(out)
    assert rc == 0 and r["modality"] == "MR" and r["labels"][0]["name"] == "prostate" and r["model"] is None
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x", encoding="utf-8")
    cases = [(busy, ["--modality", "CT", "--labels", "a"], "not empty"),
             (tmp_path / "w", ["--modality", "CT", "--labels", "a"], "already"),
             (tmp_path / "n1", ["--modality", "US", "--labels", "a"], "modality"),
             (tmp_path / "n2", ["--modality", "CT", "--labels", ",,"], "labels")]
    for folder, extra, msg in cases:
        before = state(folder)
        rc, out, err = run(capsys, "init", folder, *extra)
        assert rc == 2 and err.startswith("hila: error:") and msg in err and len(err.strip().splitlines()) == 1, err
        assert state(folder) == before


def test_init_with_model(tmp_path, capsys):
    """`--model PATH` copies the ONNX in as version 1, current."""
    import onnx
    from onnx import TensorProto, helper

    from HILASegmentLib.models import modelcard as mc

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None, None])])
    raw = tmp_path / "raw.onnx"
    onnx.save(helper.make_model(graph), str(raw))
    card = mc.ModelCard.from_json(json.dumps({
        "name": "tiny", "version": 1, "modality": "CT", "labels": [{"value": 1, "name": "bladder", "color": [1, 1, 0]}],
        "spacing": [1, 1, 3], "patch_size": [16, 16, 16], "normalization": {"kind": "ct_window", "level": 40, "width": 400},
        "activation": "sigmoid", "licence": "test"}))
    mc.write_card(raw, card, tmp_path / "tiny.onnx")
    rc, out, err = run(capsys, "init", tmp_path / "w", "--modality", "CT", "--model", tmp_path / "tiny.onnx", "--json")
    assert rc == 0, err
    r = result(out)
    assert r["model"]["version"] == 1 and [l["name"] for l in r["labels"]] == ["bladder"]
    with Workspace.open(tmp_path / "w") as ws:
        m = ws.current_model()
        assert m.version == 1 and m.status == "current" and m.path.read_bytes() == (tmp_path / "tiny.onnx").read_bytes()
    rc, _, err = run(capsys, "init", tmp_path / "w2", "--modality", "MR", "--model", tmp_path / "tiny.onnx")
    assert rc == 2 and "CT model" in err and not (tmp_path / "w2").exists()


def test_import_duplicate_and_progress(imported, tmp_path, capsys):
    ws, cid, img = imported
    rc, out, _ = run(capsys, "import", ws, tmp_path / "vol.nrrd", "--json")
    r = result(out)
    assert rc == 0 and r["case_id"] == cid and r["existing"] is True
    assert any(json.loads(ln).get("event") == "progress" for ln in out.splitlines())
    make_volume(tmp_path / "b.nrrd", seed=2)
    make_volume(tmp_path / "c.nrrd", seed=3)
    rc, out, _ = run(capsys, "import", ws, tmp_path / "b.nrrd", tmp_path / "c.nrrd")
    assert rc == 0 and "c0002" in out and "c0003" in out and "imported" in out


def test_import_dicom_folder(tmp_path, capsys):
    folder = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    wsdir = tmp_path / "mr"  # an MR series goes into an MR workspace (a CT one refuses it)
    assert run(capsys, "init", wsdir, "--modality", "MR", "--labels", "prostate")[0] == 0
    rc, out, err = run(capsys, "import", wsdir, folder, "--json")
    assert rc == 0, err
    r = result(out)
    assert r["cases"][0]["name"] == "ProstateX-0000_t2"
    with Workspace.open(wsdir) as ws:
        assert ws.case_image(r["case_id"]).GetSize()[2] == 19


def test_submit_status_rank_export_check(imported, tmp_path, capsys):
    ws, cid, img = imported
    make_label(img, tmp_path / "l.nii.gz")
    rc, out, err = run(capsys, "submit", ws, cid, tmp_path / "l.nii.gz", "--quality", "rough", "--annotator", "dr a",
                       "--seconds", "30")
    assert rc == 0, err
    assert "correction v1 (rough)" in out
    rc, out, _ = run(capsys, "submit", ws, cid, tmp_path / "l.nii.gz", "--json")
    r = result(out)
    assert r["version"] == 2 and r["quality"] == "reviewed" and r["correction"]["effort"]["voxels_changed"] == 0
    rc, out, _ = run(capsys, "status", ws, "--json")
    st = result(out)
    assert st["corrections"]["by_quality"] == {"reviewed": 1, "rough": 1, "weak": 0}
    assert st["cases"]["by_state"]["reviewed"] == 1 and st["effort"]["all"]["seconds_total"] == 30.0
    rc, out, _ = run(capsys, "status", ws)
    assert rc == 0 and "corrections: 2" in out
    rc, out, _ = run(capsys, "rank", ws, "--json")
    assert rc == 0 and result(out)["cases"] == []
    rc, out, _ = run(capsys, "export", ws, tmp_path / "exp", "--json")
    r = result(out)
    assert rc == 0 and r["cases"] == 1 and (tmp_path / "exp" / "manifest.json").is_file()
    rc, out, _ = run(capsys, "check", ws)
    assert rc == 0 and out.strip().startswith("check ok")
    rc, out, _ = run(capsys, "check", ws, "--json")
    assert rc == 0 and result(out)["ok"] is True


def test_check_exit_code_on_damage(imported, tmp_path, capsys):
    ws, cid, img = imported
    with Workspace.open(ws) as w:
        path = w.case(cid).path
    path.unlink()
    rc, out, _ = run(capsys, "check", ws)
    assert rc == 1 and out.strip().splitlines()[-1].startswith("check FAILED") and "missing" in out
    rc, out, _ = run(capsys, "check", ws, "--json")
    assert rc == 1 and result(out)["ok"] is False


def test_models_commands(wsdir, tmp_path, capsys):
    for i in (1, 2):
        (tmp_path / f"m{i}.onnx").write_bytes(b"model%d" % i)
    with Workspace.open(wsdir) as w:
        w.add_model(tmp_path / "m1.onnx", card_json("one", metrics={"dice": 0.7}), status="current")
        w.add_model(tmp_path / "m2.onnx", card_json("two"), parent=1)
    rc, out, _ = run(capsys, "models", wsdir)
    assert rc == 0 and "v1 current" in out and "v2 candidate" in out
    rc, out, _ = run(capsys, "models", wsdir, "promote", "2", "--json")
    assert rc == 0 and result(out)["current"] == 2
    rc, out, _ = run(capsys, "models", wsdir, "rollback")
    assert rc == 0 and "v1" in out
    before = state(wsdir)
    for bad in (["promote"], ["promote", "7"], ["rollback"], ["list", "3"]):
        rc, out, err = run(capsys, "models", wsdir, *bad)
        assert rc == 2 and err.startswith("hila: error:"), (bad, err)
    assert state(wsdir) == before


def test_bad_input_changes_nothing(imported, tmp_path, capsys):
    ws, cid, img = imported
    run(capsys, "submit", ws, cid, make_label(img, tmp_path / "good.nrrd") and tmp_path / "good.nrrd")
    other = make_volume(tmp_path / "other.nrrd", size=(30, 32, 24))
    make_label(other, tmp_path / "other_grid.nii.gz")
    make_label(img, tmp_path / "empty.nrrd", boxes={1: (0, 0, 0, 0, 0, 0)})
    make_label(img, tmp_path / "unknown.nrrd", boxes={9: (0, 4, 0, 4, 0, 4)})
    make_label(img, tmp_path / "extra.nrrd", boxes={1: (6, 14, 8, 20, 8, 20), 7: (0, 4, 0, 4, 0, 4)})
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 broken gzip")
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    bad = [
        (["submit", ws, cid, tmp_path / "other_grid.nii.gz"], "grid"),
        (["submit", ws, cid, tmp_path / "empty.nrrd"], "empty"),
        (["submit", ws, cid, tmp_path / "unknown.nrrd"], "unknown label value"),
        (["submit", ws, cid, tmp_path / "extra.nrrd", "--strict"], "unknown label value"),
        (["submit", ws, cid, tmp_path / "corrupt.nii.gz"], "corrupt"),
        (["submit", ws, cid, tmp_path / "notes.txt"], "unsupported"),
        (["submit", ws, cid, tmp_path / "missing.nrrd"], "no such file"),
        (["submit", ws, "c0042", tmp_path / "good.nrrd"], "unknown case"),
        (["submit", ws, cid, tmp_path / "good.nrrd", "--seconds", "-1"], "seconds"),
        (["import", ws, tmp_path / "corrupt.nii.gz"], "corrupt"),
        (["import", ws, tmp_path / "missing.nrrd"], "no such file"),
        (["export", ws, tmp_path], "not an empty folder"),
    ]
    for args, msg in bad:
        before = state(ws)
        rc, out, err = run(capsys, *args)
        assert rc == 2, (args, out, err)
        assert err.startswith("hila: error:") and msg in err and len(err.strip().splitlines()) == 1, (args, err)
        assert state(ws) == before, args
        rc, out, err = run(capsys, *args, "--json")
        assert rc == 2 and result(out) == {"event": "error", "ok": False, "error": err.split("hila: error: ", 1)[1].strip()}


def test_not_a_workspace_and_newer_schema(imported, tmp_path, capsys):
    ws, cid, img = imported
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("a", encoding="utf-8")
    for cmd in (["status"], ["check"], ["rank"], ["models"], ["submit", cid, tmp_path / "vol.nrrd"],
                ["import", tmp_path / "vol.nrrd"], ["export", tmp_path / "e1"]):
        before = state(plain)
        rc, _, err = run(capsys, cmd[0], plain, *cmd[1:])
        assert rc == 2 and "not a HILASegment workspace" in err, (cmd, err)
        assert state(plain) == before
    con = sqlite3.connect(ws / "hila.sqlite")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.close()
    make_label(img, tmp_path / "l.nrrd")
    for cmd in (["status"], ["check", "--repair"], ["submit", cid, tmp_path / "l.nrrd"], ["import", tmp_path / "vol.nrrd"],
                ["models", "rollback"]):
        before = state(ws)
        rc, _, err = run(capsys, cmd[0], ws, *cmd[1:])
        assert rc == 2 and "newer" in err, (cmd, err)
        assert state(ws) == before, cmd


def test_cli_processes_concurrent_and_killed(imported, tmp_path):
    """The real `hila` entry point as separate processes: 3 at once, then a few SIGKILLed mid-submit."""
    import random
    import signal
    import time

    ws, cid, img = imported
    make_label(img, tmp_path / "l.nrrd")
    cmd = [sys.executable, "-m", "HILASegmentLib", "submit", str(ws), cid, str(tmp_path / "l.nrrd")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT)) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    with Workspace.open(ws) as w:
        assert sorted(c.version for c in w.corrections()) == [1, 2, 3]
    rng = random.Random(7)
    for _ in range(4):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
        time.sleep(rng.uniform(0.3, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        c = subprocess.run([sys.executable, "-m", "HILASegmentLib", "check", str(ws)], capture_output=True, text=True,
                           cwd=str(ROOT))
        assert c.returncode == 0, c.stdout + c.stderr


def test_real_ct_build_script(tmp_path):
    """Testing/build_ct_workspace.py on the three real pelvic CTs: status, export and check agree with what was done."""
    data = shared("pelvic_ct")
    for c in ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005"):
        shared("pelvic_ct", c, "labels_dl.nii.gz")
    p = subprocess.run([sys.executable, str(ROOT / "Testing" / "build_ct_workspace.py"), str(tmp_path / "out"),
                        "--data", str(data)], capture_output=True, text=True, cwd=str(ROOT))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "status, export and check agree" in p.stdout
    man = json.loads((tmp_path / "out" / "export" / "manifest.json").read_text(encoding="utf-8"))
    assert [(e["correction_version"], e["quality"]) for e in man["cases"]] == [(1, "reviewed"), (1, "rough"), (2, "reviewed")]
    seg = sitk.ReadImage(str(tmp_path / "out" / "export" / man["cases"][0]["label"]))
    assert seg.GetSize() == (119, 172, 52)
