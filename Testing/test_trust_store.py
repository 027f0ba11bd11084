"""The workspace's own files when someone else touched them (issue 22, class 4; red team 2026-12-07 rows W03 W04
W06 W07 W09 W19 W21 R06c R07c R12a-c): an older ledger, a read-only copy whose last commit is in its WAL, links in
the store, ledger rows naming files outside the workspace, another user's umask, a full disk, a nested workspace,
a prediction file removed or damaged. Each is either handled exactly or refused in one line with nothing changed;
a file outside the workspace is reported as such and never read."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from ws_worker import state

from HILASegmentLib.cli import main

FIXTURES = Path(__file__).resolve().parent / "Data"
CT = FIXTURES / "pelvic_ct_small.nrrd"
LABELS = FIXTURES / "pelvic_ct_small_labels.nii.gz"
HILA = [sys.executable, "-m", "HILASegmentLib"]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, ws, *args, expect=""):
    """The command exits non-zero with one line on stderr containing ``expect``; ``ws`` is unchanged."""
    before = state(ws)
    rc, out, err = run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    assert state(ws) == before, "a refused command changed the workspace"
    return lines[0]


def proc(*args, env=None, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "HILASegment"),
                                   **(env or {})), **kw)


@pytest.fixture
def ws(tmp_path, capsys):
    """The bundled small pelvic CT as c0001 (predicted by the shipped CT model, corrected with its manual labels) and
    the same CT moved 50 mm as c0002 (imported only)."""
    w = tmp_path / "ws"
    assert run(capsys, "init", w, "--modality", "CT", "--labels", "prostate,bladder,rectum",
               "--model", "pelvic_ct_unet")[0] == 0
    moved = sitk.ReadImage(str(CT))
    moved.SetOrigin(tuple(o + 50.0 for o in moved.GetOrigin()))
    sitk.WriteImage(moved, str(tmp_path / "moved.nrrd"))
    lab = sitk.ReadImage(str(LABELS))
    lab.CopyInformation(moved)
    sitk.WriteImage(lab, str(tmp_path / "moved_labels.nrrd"))
    for args in (["import", w, CT, tmp_path / "moved.nrrd"], ["infer", w, "c0001"], ["submit", w, "c0001", LABELS]):
        rc, out, err = run(capsys, *args)
        assert rc == 0, err
    return w


def _ledger(w):
    return sqlite3.connect(str(w / "hila.sqlite"))


def _version(w):
    con = _ledger(w)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


def _read_only_view(src: Path, view: Path, script: str) -> str:
    """Run ``script`` (sh, with @WS for the folder) on ``src`` made read-only: as root a read-only bind mount in a
    private mount namespace (root ignores file modes), else a copy with its write bits cleared."""
    view.mkdir()
    if os.geteuid() == 0:
        body = f"mount --bind '{src}' '{view}' && mount -o remount,ro,bind '{view}' && {{\n" + \
            script.replace("@WS", str(view)) + "\n}"
        p = proc("unshare", "-m", "sh", "-c", body)
    else:
        view.rmdir()
        shutil.copytree(src, view)
        subprocess.run(["chmod", "-R", "a-w", str(view)], check=True)
        p = proc("sh", "-c", script.replace("@WS", str(view)))
    return p.stdout + p.stderr


def _bytes(root: Path) -> dict:
    """Every file under ``root`` (the ledger's included) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sh(*args) -> str:
    return " ".join(f"'{a}'" for a in [*HILA, *args]) + '; echo "rc=$?"'


def _rcs(out: str):
    return [int(x.split("=")[1]) for x in out.split() if x.startswith("rc=")]


# -- W04: a ledger of an older schema -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["status", "check", "rank", "models"])
def test_w04_a_reading_command_upgrades_an_older_ledger_where_it_can_write(ws, capsys, command):
    con = _ledger(ws)
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    rc, out, err = run(capsys, command, ws)
    assert rc == 0 and "Traceback" not in err, out + err
    assert _version(ws) == 4
    rc, out, err = run(capsys, "check", ws)
    assert rc == 0, out + err


def test_w04_an_older_ledger_on_a_read_only_folder_is_one_line_saying_what_to_do(ws, tmp_path):
    con = _ledger(ws)
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    out = _read_only_view(ws, tmp_path / "ro", "\n".join([_sh("status", "@WS"), _sh("check", "@WS")]))
    assert _rcs(out) == [2, 2] and "Traceback" not in out, out
    assert out.count("cannot be upgraded here, the folder is read-only") == 2, out
    assert _version(ws) == 3


# -- W03: a read-only copy whose last commit is in hila.sqlite-wal, without -shm ------------------------------------

def test_w03_a_read_only_copy_reads_the_commits_in_its_wal(ws, tmp_path, capsys):
    held = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "c = sqlite3.connect(sys.argv[1]); c.execute('select count(*) from sqlite_master')"
                               ".fetchall(); open(sys.argv[2], 'w').close(); time.sleep(600)",
                               str(ws / "hila.sqlite"), str(held)])
    try:
        for _ in range(600):
            if held.exists():
                break
            import time
            time.sleep(0.05)
        rc, out, err = run(capsys, "submit", ws, "c0002", tmp_path / "moved_labels.nrrd")
        assert rc == 0, err
        copy = tmp_path / "copy"
        shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("hila.sqlite-shm"))
    finally:
        holder.kill()
        holder.wait()
    assert (copy / "hila.sqlite-wal").stat().st_size > 0, "the submit was checkpointed: nothing to test"
    before = _bytes(copy)  # (not ws_worker.state: its reader would make the -shm this copy lacks)
    out = _read_only_view(copy, tmp_path / "ro", "\n".join([
        _sh("export", "@WS", tmp_path / "out"), _sh("check", "@WS"), _sh("status", "@WS", "--json"),
        _sh("submit", "@WS", "c0002", LABELS)]))
    assert _rcs(out)[:3] == [0, 0, 0] and _rcs(out)[3] != 0 and "Traceback" not in out, out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(c["case_id"] for c in manifest["cases"]) == ["c0001", "c0002"], manifest
    assert "check ok" in out and "uncommitted" not in out, out
    status = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    assert status["corrections"]["total"] == 2, status
    assert _bytes(copy) == before and not (copy / "hila.sqlite-shm").exists()


# -- W06 W07 W09: links and rows that lead outside the workspace ------------------------------------------------------

def test_w06_a_symlinked_store_folder_is_reported_and_never_written_through(ws, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(ws, other)
    rc, out, err = run(capsys, "submit", other, "c0002", tmp_path / "moved_labels.nrrd")
    assert rc == 0, err
    os.symlink("../../other/corrections/c0002", ws / "corrections" / "c0002")
    rc, out, err = run(capsys, "check", ws)
    assert rc == 1 and "corrections/c0002 is a symbolic link" in out, out + err
    before_other = state(other)
    refused(capsys, ws, "submit", ws, "c0002", tmp_path / "moved_labels.nrrd", expect="symbolic link")
    assert state(other) == before_other
    rc, out, err = run(capsys, "check", ws, "--repair")
    assert (ws / "corrections" / "c0002").is_symlink() and state(other) == before_other


@pytest.mark.parametrize("linked", ["cases", "tmp", "predictions/c0002"])
def test_w06_any_linked_store_folder_is_reported_and_refuses_writes(ws, tmp_path, capsys, linked):
    elsewhere = tmp_path / "elsewhere"
    if (ws / linked).exists():
        shutil.move(str(ws / linked), str(elsewhere))
    else:
        elsewhere.mkdir()
    os.symlink(elsewhere, ws / linked)
    rc, out, err = run(capsys, "check", ws, "--repair")
    assert rc == 1 and f"{linked} is a symbolic link" in out and (ws / linked).is_symlink(), out + err
    moved = tmp_path / "moved.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(CT)) + 7, str(moved))
    before = sorted(p.name for p in elsewhere.rglob("*"))
    what = ["infer", ws, "c0002"] if linked.startswith("predictions") else ["import", ws, moved]
    refused(capsys, ws, *what, expect="symbolic link")
    assert sorted(p.name for p in elsewhere.rglob("*")) == before


def test_w06_a_ledger_that_is_a_link_is_refused(ws, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(ws, other)
    (ws / "hila.sqlite").unlink()
    os.symlink(other / "hila.sqlite", ws / "hila.sqlite")
    for command in ("status", "check"):
        rc, out, err = run(capsys, command, ws)
        assert rc == 2 and "a symbolic link" in err and len(err.strip().splitlines()) == 1, err


def test_w07_a_store_file_replaced_by_a_link_outside_is_reported_as_outside(ws, tmp_path, capsys):
    (stored,) = list((ws / "cases").glob("c0001-*"))
    outside = tmp_path / "elsewhere.nrrd"
    shutil.copyfile(stored, outside)
    stored.unlink()
    os.symlink(outside, stored)
    rc, out, err = run(capsys, "check", ws)
    assert rc == 1 and f"cases/{stored.name} is outside the workspace" in out, out + err
    refused(capsys, ws, "infer", ws, "c0001", expect="outside the workspace")


@pytest.mark.parametrize("table,value", [("cases", "../secret.nrrd"), ("corrections", "ABS")])
def test_w09_a_ledger_row_naming_a_file_outside_is_reported_and_never_read(ws, tmp_path, capsys, table, value):
    secret = tmp_path / "secret.nrrd"
    shutil.copyfile(CT if table == "cases" else LABELS, secret)
    value = str(secret) if value == "ABS" else value
    con = _ledger(ws)
    con.execute(f"DROP TRIGGER {table}_no_update")
    key = "case_id" if table == "cases" else "correction_id"
    con.execute(f"UPDATE {table} SET file = ? WHERE {key} = ?", (value, "c0001" if table == "cases" else 1))
    con.commit()
    con.close()
    rc, out, err = run(capsys, "check", ws, "--repair")
    assert rc == 1 and f"file {value} is outside the workspace" in out and "has changed" not in out, out + err
    assert secret.exists()
    refused(capsys, ws, "export", ws, tmp_path / "out", "--all", expect="outside the workspace")
    assert not (tmp_path / "out").exists()
    refused(capsys, ws, "train", ws, "--steps", "1", expect="outside the workspace")  # training reads the snapshot


# -- W19: another user's umask in a shared workspace ----------------------------------------------------------------

def test_w19_store_files_are_as_readable_as_the_workspace_folder_whatever_the_umask(ws, tmp_path, capsys):
    os.chmod(ws, 0o755)
    old = os.umask(0o077)
    try:
        rc, out, err = run(capsys, "submit", ws, "c0002", tmp_path / "moved_labels.nrrd")
    finally:
        os.umask(old)
    assert rc == 0, err
    (folder,) = [p for p in (ws / "corrections").iterdir() if p.name == "c0002"]
    (stored,) = list(folder.iterdir())
    assert stat_mode(folder) == 0o755 and stat_mode(stored) & 0o044 == 0o044, (oct(stat_mode(folder)),
                                                                               oct(stat_mode(stored)))


def stat_mode(p: Path) -> int:
    return os.stat(p).st_mode & 0o777


def test_w19_check_lists_a_file_this_user_cannot_read_instead_of_aborting(ws, capsys, monkeypatch):
    """(Root reads every file, so the other user's EACCES is made where Python meets it.)"""
    (stored,) = list((ws / "corrections").rglob("*.nrrd"))
    real_stat = Path.stat

    def denied(self, *a, **kw):
        if self.name == stored.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", denied)
    rc, out, err = run(capsys, "check", ws)
    assert rc == 1 and "Traceback" not in err and "cannot be read by this user (Permission denied)" in out, out + err


# -- W21: a full disk ----------------------------------------------------------------------------------------------

def test_w21_export_onto_a_full_disk_says_the_disk_is_full(ws, tmp_path, capsys, monkeypatch):
    """A real full disk where this can be arranged (root: a 64 kB tmpfs, filled, in a private mount namespace), else
    the image writer failing as ITK does on a full disk with no space left."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        disk = tmp_path / "disk"
        disk.mkdir()
        body = (f"mount -t tmpfs -o size=64k tmpfs '{disk}' && dd if=/dev/zero of='{disk}/fill' bs=4k 2>/dev/null; "
                + _sh("export", ws, disk / "exp") + "; " + _sh("convert", LABELS, disk / "x.seg.nrrd") + "; "
                + _sh("convert", CT, disk / "x.nii.gz") + "; ls -A '" + str(disk) + "'")
        p = proc("unshare", "-m", "sh", "-c", body)
        out = p.stdout + p.stderr
        assert _rcs(out) == [2, 2, 2] and out.lower().count("no space left") == 3 and "Traceback" not in out, out
        assert p.stdout.strip().splitlines()[-1] == "fill", out
        return
    from HILASegmentLib.formats import imageio

    def full(img, path, *a):
        raise RuntimeError(f"Unable to determine ImageIO reader for \"{path}\"")

    monkeypatch.setattr(imageio.sitk, "WriteImage", full)
    monkeypatch.setattr(imageio.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 20, 1 << 20, 0))
    rc, out, err = run(capsys, "export", ws, tmp_path / "exp")
    assert rc == 2 and "no space left" in err.lower() and "Traceback" not in err, err


# -- R12: a workspace inside another's store ----------------------------------------------------------------------

@pytest.mark.parametrize("inner", ["cases/inner2", "corrections/inner", "lost+found/inner", "predictions/a/b/c",
                                   "elsewhere/inside"])
def test_r12ab_init_inside_another_workspace_is_refused(ws, capsys, inner):
    refused(capsys, ws, "init", ws / inner, "--modality", "CT", "--labels", "a", expect="is inside the workspace")
    assert not (ws / inner).exists()


@pytest.mark.parametrize("where", ["corrections/inner", "cases/deep/inner", "tmp/inner"])
def test_r12c_check_repair_never_dismantles_a_nested_workspace(ws, tmp_path, capsys, where):
    inner = tmp_path / "inner"
    assert run(capsys, "init", inner, "--modality", "CT", "--labels", "a")[0] == 0
    assert run(capsys, "import", inner, CT)[0] == 0
    (ws / where).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(inner), str(ws / where))
    rc, out, err = run(capsys, "check", ws)
    assert rc == 1 and f"{where} is another workspace nested inside" in out, out + err
    before = state(ws / where)
    rc, out, err = run(capsys, "check", ws, "--repair")
    assert state(ws / where) == before and "inner" not in "".join(
        p.as_posix() for p in (ws / "lost+found").rglob("*")), out
    rc, out, err = run(capsys, "status", ws / where)
    assert rc == 0, err


# -- R06c R07c: a missing or damaged prediction file -----------------------------------------------------------------

@pytest.mark.parametrize("damage", ["removed", "truncated"])
def test_r06c_r07c_submit_over_a_missing_or_damaged_prediction_is_one_line(ws, tmp_path, capsys, damage):
    (pred,) = list((ws / "predictions").rglob("*.nrrd"))
    if damage == "removed":
        pred.unlink()
    else:
        os.chmod(pred, 0o644)
        pred.write_bytes(pred.read_bytes()[:200])
    line = refused(capsys, ws, "submit", ws, "c0001", LABELS, expect="case c0001 prediction 1: its stored file")
    assert ("is missing" if damage == "removed" else "is damaged") in line, line


def test_every_stored_image_read_goes_through_the_checked_reader():
    """The class, not the row: no module of the workspace reads a stored file with SimpleITK directly."""
    root = Path(__file__).resolve().parents[1] / "HILASegment" / "HILASegmentLib" / "workspace"
    offenders = [f"{p.name}:{i}" for p in root.glob("*.py") for i, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if "sitk.ReadImage(" in ln]
    assert not offenders, offenders
