"""Bad situations in a workspace (issue 10): a volume of the wrong modality, a stored file removed or damaged
outside hila, a ledger whose pages are corrupt. Each is one line, exit 2, and nothing changes; a lost
store file comes back by importing the same volume again."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import test_trust_inputs as trust_inputs
from ws_worker import make_label, state

from HILASegmentLib.cli import main


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, ws, *args, expect=""):
    return trust_inputs.refused(capsys, ws, *args, expect=expect, snapshot=state)


def volume(path, kind):
    """A CT (air at -1000 HU) or MR (intensities >= 0) volume with a bright box."""
    arr = np.full((20, 32, 32), -1000 if kind == "CT" else 0, np.int16)
    arr[4:16, 6:26, 6:26] = 40 if kind == "CT" else 300
    arr[8:12, 12:20, 12:20] += 200
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(path))
    return img


@pytest.fixture
def ctws(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate,bladder,rectum",
               "--model", "pelvic_ct_unet")[0] == 0
    img = volume(tmp_path / "ct.nrrd", "CT")
    assert run(capsys, "import", ws, tmp_path / "ct.nrrd")[0] == 0
    make_label(img, tmp_path / "lab.nrrd", boxes={1: (8, 12, 12, 20, 12, 20)})
    assert run(capsys, "submit", ws, "c0001", tmp_path / "lab.nrrd")[0] == 0
    return ws


def test_modality_is_checked_at_import_and_submit_with_an_override(ctws, tmp_path, capsys):
    mr = volume(tmp_path / "mr.nrrd", "MR")
    refused(capsys, ctws, "import", ctws, tmp_path / "mr.nrrd", expect="looks like MR")
    rc, out, err = run(capsys, "import", ctws, tmp_path / "mr.nrrd", "--modality-override", "--json")
    assert rc == 0, err
    make_label(mr, tmp_path / "mrlab.nrrd", boxes={1: (8, 12, 12, 20, 12, 20)})
    line = refused(capsys, ctws, "submit", ctws, "c0002", tmp_path / "mrlab.nrrd", expect="case c0002: looks like MR")
    assert "--modality-override" in line and "workspace is CT" in line
    rc, _, err = run(capsys, "submit", ctws, "c0002", tmp_path / "mrlab.nrrd", "--modality-override")
    assert rc == 0, err
    # the other way round: a CT volume in an MR workspace
    mrws = tmp_path / "mrws"
    assert run(capsys, "init", mrws, "--modality", "MR", "--labels", "prostate")[0] == 0
    refused(capsys, mrws, "import", mrws, tmp_path / "ct.nrrd", expect="looks like CT (air below -200 HU)")


def test_a_stored_image_removed_outside_hila_is_one_line_and_reimport_restores_it(ctws, tmp_path, capsys):
    (stored,) = list((ctws / "cases").iterdir())
    original = stored.read_bytes()
    stored.unlink()
    for args in (["infer", ctws, "c0001"], ["submit", ctws, "c0001", tmp_path / "lab.nrrd"],
                 ["submit", ctws, "c0001", "--label", "prostate", "--box=2,2,2,8,8,8"]):
        refused(capsys, ctws, *args, expect="its stored image")
    rc, out, err = run(capsys, "import", ctws, tmp_path / "ct.nrrd")
    assert rc == 0, err
    assert stored.read_bytes() == original
    rc, out, err = run(capsys, "check", ctws)
    assert rc == 0, out + err
    rc, out, err = run(capsys, "submit", ctws, "c0001", tmp_path / "lab.nrrd")
    assert rc == 0, err


def test_a_damaged_stored_image_is_one_line(ctws, tmp_path, capsys):
    (stored,) = list((ctws / "cases").iterdir())
    os.chmod(stored, 0o644)
    stored.write_bytes(stored.read_bytes()[:200])
    refused(capsys, ctws, "submit", ctws, "c0001", tmp_path / "lab.nrrd", expect="its stored image is damaged")


def _corrupt(ws):
    path = ws / "hila.sqlite"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("command", ["status", "check", "rank", "models", "export", "import", "submit", "infer",
                                     "train"])
def test_every_command_on_a_corrupt_ledger_says_so(ctws, tmp_path, capsys, command):
    for i in range(6):  # enough rows that the damage lands on table pages, not only free space
        volume(tmp_path / f"v{i}.nrrd", "CT")
        sitk.WriteImage(sitk.ReadImage(str(tmp_path / f"v{i}.nrrd")) + i + 1, str(tmp_path / f"v{i}.nrrd"))
        assert run(capsys, "import", ctws, tmp_path / f"v{i}.nrrd")[0] == 0
    _corrupt(ctws)
    args = {"status": [], "check": [], "rank": [], "models": [], "export": [tmp_path / "out"],
            "import": [tmp_path / "ct.nrrd"], "submit": ["c0001", tmp_path / "lab.nrrd"], "infer": ["c0001"],
            "train": ["--max-minutes", "1"]}[command]
    refused(capsys, ctws, command, ctws, *args, expect="the ledger is corrupt")
    assert not (tmp_path / "out").exists()


def test_check_repair_on_a_healthy_workspace_moves_nothing(ctws, capsys):
    before = state(ctws)
    rc, out, err = run(capsys, "check", ctws, "--repair")
    assert rc == 0 and state(ctws) == before, out + err


def test_a_full_disk_during_import_is_one_line_and_records_nothing(tmp_path, capsys, monkeypatch):
    """A real full disk where this can be arranged (root: a 600 kB tmpfs in a private mount namespace), else the
    store's writer failing with ENOSPC: one line naming the workspace and the free space, nothing recorded."""
    import subprocess
    import sys

    from conftest import shared

    ct = shared("pelvic_ct", "Pelvic-Ref002", "ct.nii.gz")  # 2 MB of voxels: does not fit
    if os.geteuid() == 0:
        disk = tmp_path / "disk"
        disk.mkdir()
        hila = f"'{sys.executable}' -m HILASegmentLib"
        body = (f"mount -t tmpfs -o size=600k tmpfs '{disk}' && {hila} init '{disk}/ws' --modality CT --labels prostate"
                f" >/dev/null && {hila} import '{disk}/ws' '{ct}'; echo \"rc=$?\"; "
                f"{hila} check '{disk}/ws' --json | tail -1")
        proc = subprocess.run(["unshare", "-m", "sh", "-c", body], capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert "rc=2" in out and "no space left on its disk" in out and "Traceback" not in out, out
        assert '"rows_checked": 0' in out and '"ok": true' in out, out  # no case row, no stray file
        return
    from HILASegmentLib.workspace import files as files_mod

    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate")[0] == 0

    def full(path):
        raise OSError(28, "No space left on device", str(path))

    real_stage = files_mod.FileStore.stage
    monkeypatch.setattr(files_mod.FileStore, "stage", lambda self, write, suffix: real_stage(self, full, suffix))
    refused(capsys, ws, "import", ws, ct, expect="no space left on its disk")


def test_export_of_a_truncated_store_file_is_one_line_and_writes_nothing(ctws, tmp_path, capsys):
    (stored,) = list((ctws / "corrections").rglob("*.nrrd"))
    os.chmod(stored, 0o644)
    stored.write_bytes(stored.read_bytes()[:300])
    refused(capsys, ctws, "export", ctws, tmp_path / "out", expect="correction v1: its stored file cannot be read")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "a partial export was left behind"


def test_export_keeps_a_sheared_case_exactly(tmp_path, capsys):
    from HILASegmentLib.formats.gridcheck import image_corners

    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate")[0] == 0
    img = volume(tmp_path / "ct.nrrd", "CT")
    img.SetDirection((1, 0.3, 0, 0, 0.954, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "sheared.nrrd"))
    assert run(capsys, "import", ws, tmp_path / "sheared.nrrd")[0] == 0
    rc, out, err = run(capsys, "export", ws, tmp_path / "out", "--all")
    assert rc == 0, err
    (written,) = list((tmp_path / "out" / "images").iterdir())
    assert written.name.endswith(".nrrd")
    assert np.abs(image_corners(sitk.ReadImage(str(written))) - image_corners(img)).max() < 1e-6


def test_check_repair_reports_only_what_it_moved(ctws, capsys, monkeypatch):
    from HILASegmentLib.workspace import files as files_mod

    for name in ("stray-a.txt", "stray-b.txt"):
        (ctws / "cases" / name).write_text("not hila's", encoding="utf-8")
    real_rename = os.rename

    def stuck(src, dst):
        if str(src).endswith("stray-b.txt"):
            raise PermissionError(13, "Permission denied", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(files_mod.os, "rename", stuck)
    rc, out, err = run(capsys, "check", ctws, "--repair", "--json")
    import json

    res = json.loads(out.splitlines()[-1])
    assert [r.split(" -> ")[0] for r in res["repaired"]] == ["cases/stray-a.txt"]
    assert any("could not move cases/stray-b.txt" in w for w in res["warnings"])
    assert (ctws / "cases" / "stray-b.txt").exists() and not (ctws / "cases" / "stray-a.txt").exists()
    assert rc == 1  # the foreign file that stayed is still a problem
    rc, out, err = run(capsys, "check", ctws)
    assert "stray-b.txt" in out and "repaired" not in out


def test_reading_commands_work_on_a_read_only_workspace(ctws, tmp_path):
    """status, check, rank, models, export read a workspace they cannot write (a read-only disk); a writing command
    says the folder is read-only. Root ignores file modes, so as root the folder is bind-mounted read-only in a
    private mount namespace (unshare); as another user its modes are cleared."""
    import subprocess
    import sys

    hila = [sys.executable, "-m", "HILASegmentLib"]
    cmds = [["status"], ["check"], ["rank"], ["models"], ["export", "@", str(tmp_path / "exported")],
            ["import", str(tmp_path / "ct.nrrd")], ["check", "--repair"]]
    lines = []
    for c in cmds:
        argv = hila + [c[0], "@WS"] + [a for a in c[1:] if a != "@"]
        lines.append(" ".join(f"'{a}'" for a in argv) + "; echo \"rc=$?\"")
    script = "\n".join(lines)
    view = tmp_path / "ro"
    view.mkdir()
    if os.geteuid() == 0:
        body = f"mount --bind '{ctws}' '{view}' && mount -o remount,ro,bind '{view}' && " + "{\n" + \
            script.replace("@WS", str(view)) + "\n}"
        proc = subprocess.run(["unshare", "-m", "sh", "-c", body], capture_output=True, text=True, timeout=300)
    else:
        view.rmdir()
        shutil.copytree(ctws, view)
        subprocess.run(["chmod", "-R", "a-w", str(view)], check=True)
        proc = subprocess.run(["sh", "-c", script.replace("@WS", str(view))], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    rcs = [int(x.split("=")[1]) for x in out.split() if x.startswith("rc=")]
    assert rcs == [0, 0, 0, 0, 0, 2, 2], out
    assert "check ok" in out and (tmp_path / "exported" / "manifest.json").is_file()
    assert out.count("the workspace folder is read-only here") == 2 and "Traceback" not in out, out


def test_overlapping_segments_in_a_submitted_seg_nrrd_are_refused_naming_where(tmp_path, capsys):
    """Slicer's own two-layer file: the sphere overlaps the tissue; one label per voxel cannot say both."""
    from conftest import shared

    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "tissue,overlapping sphere")[0] == 0
    assert run(capsys, "import", ws, shared("slicer_seg", "CTChest4.nrrd"))[0] == 0
    line = refused(capsys, ws, "submit", ws, "c0001", shared("slicer_seg", "SegmentationOverlapping.seg.nrrd"),
                   expect="segments 'tissue' and 'overlapping sphere' overlap in")
    assert "IJK (" in line and "LPS (" in line
    # the same file with only one of the two as a workspace label is fine: nothing is lost
    ws2 = tmp_path / "ws2"
    assert run(capsys, "init", ws2, "--modality", "CT", "--labels", "overlapping sphere")[0] == 0
    assert run(capsys, "import", ws2, shared("slicer_seg", "CTChest4.nrrd"))[0] == 0
    rc, out, err = run(capsys, "submit", ws2, "c0001", shared("slicer_seg", "SegmentationOverlapping.seg.nrrd"))
    assert rc == 0, err
