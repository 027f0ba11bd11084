"""DICOMweb against a real Orthanc on 127.0.0.1 (started here with a temporary storage folder, stopped at
the end): the real pelvic CT and ProstateX series pushed to it, imported into two workspaces, a
correction submitted in one and synced into the other with identical voxels, SIGKILLs of either side
mid-sync losing and duplicating nothing; a refusing, a silent and a wrong-credentials server refused
in one line with nothing changed. Skipped only where Orthanc and its DICOMweb plugin are not installed
(`.ci/run` installs them from the distribution's packages)."""
from __future__ import annotations

import glob
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, shared
from orthanc import PASSWORD, USER, dicomweb_plugin, orthanc_binary, running_orthanc

pydicom = pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")
pytest.importorskip("dicomweb_client", reason="the optional dicom extra (dicomweb-client) is not installed")
if not orthanc_binary() or not dicomweb_plugin():
    pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)",
                allow_module_level=True)

from HILASegmentLib.dicom.dicomweb import Server  # noqa: E402
from HILASegmentLib.formats.imageio import read_image  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

HILA = ROOT / ".venv" / "bin" / "hila"
LABELS = "prostate,bladder,rectum"


def env_with(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HILA_DICOMWEB")}
    env.update(PYTHONPATH=str(ROOT / "HILASegment"), **extra)
    return env


CREDS = {"HILA_DICOMWEB_USER": USER, "HILA_DICOMWEB_PASSWORD": PASSWORD}


def hila(*args, env=None, **kw) -> subprocess.CompletedProcess:
    cmd = [str(HILA)] if HILA.exists() else [sys.executable, "-m", "HILASegmentLib"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=300,
                          env=env or env_with(**CREDS), **kw)


def result(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def one_line_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("hila: error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding the real pelvic CT series and the ProstateX T2 series; yields (url, ct study, mr study)."""
    folder = tmp_path_factory.mktemp("orthanc")
    ct = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    mr = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    with running_orthanc(folder) as url:
        os.environ.update(CREDS)
        try:
            server = Server(url)
            ct_files = sorted(glob.glob(str(ct / "CT*.dcm")))
            mr_files = sorted(p for p in glob.glob(str(mr / "*")) if Path(p).is_file())
            server.store([Path(p) for p in ct_files + mr_files])
        finally:
            for k in CREDS:
                os.environ.pop(k, None)
        study = lambda f: str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)  # noqa: E731
        yield url, study(ct_files[0]), study(mr_files[0])


def seg_count(url: str, study: str) -> int:
    os.environ.update(CREDS)
    try:
        server = Server(url)
        return sum(len(server.instances(study, s["uid"])) for s in server.series_of_study(study, modality="SEG"))
    finally:
        for k in CREDS:
            os.environ.pop(k, None)


def kill_when(cmd_args, watch: Path, pattern: str, env: dict) -> None:
    """Run ``hila`` with TMPDIR=watch and SIGKILL it as soon as a file matching ``pattern`` appears there."""
    watch.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(HILA)] + [str(a) for a in cmd_args], env=dict(env, TMPDIR=str(watch)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if list(watch.glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sync ended before it could be killed mid-way"


def labels_of(root: Path):
    with Workspace.open(root) as ws:
        case = ws.cases()[0].case_id
        return [(c.version, c.quality, sitk.GetArrayFromImage(sitk.ReadImage(str(c.path))))
                for c in ws.corrections(case)]


def test_two_workspaces_sync_through_orthanc(pacs, tmp_path):
    url, ct_study, mr_study = pacs
    rs = glob.glob(str(shared("pelvic_ct_dicom", "Pelvic-Ref002") / "RS*.dcm"))[0]
    a, b = tmp_path / "a", tmp_path / "b"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    env_a, env_b = env_with(**CREDS), env_with(HILA_NETRC=str(netrc))  # B reads its credentials from a file
    for root, env in ((a, env_a), (b, env_b)):
        assert hila("init", root, "--modality", "CT", "--labels", LABELS, env=env).returncode == 0
        out = result(hila("import", root, "--dicomweb", url, "--study", ct_study, "--json", env=env))
        assert out["case_id"] == "c0001" and not out["existing"]
    # the fetched series is the real CT, voxel for voxel
    with Workspace.open(a) as ws:
        img = ws.case_image("c0001")
        rec = ws.case_series("c0001")
    direct = read_image(shared("pelvic_ct_dicom", "Pelvic-Ref002"))
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(direct))
    assert rec["study_uid"] == ct_study
    # the ProstateX series too (oblique MRI)
    m = tmp_path / "m"
    assert hila("init", m, "--modality", "MR", "--labels", "prostate", env=env_a).returncode == 0
    mr = result(hila("import", m, "--dicomweb", url, "--study", mr_study, "--json", env=env_a))
    with Workspace.open(m) as ws:
        mr_img = ws.case_image(mr["case_id"])
    mr_direct = read_image(shared("prostate_mri", "dicom", "ProstateX-0000_t2"))
    assert np.array_equal(sitk.GetArrayFromImage(mr_img), sitk.GetArrayFromImage(mr_direct))
    assert np.allclose(mr_img.GetDirection(), mr_direct.GetDirection())

    # A corrects (the manual contours) and syncs; B syncs and has the same voxels
    assert hila("submit", a, "c0001", rs, env=env_a).returncode == 0
    assert len(result(hila("sync", a, "--dicomweb", url, "--json", env=env_a))["pushed"]) == 1
    pulled = result(hila("sync", b, "--dicomweb", url, "--json", env=env_b))["pulled"]
    assert len(pulled) == 1 and not pulled[0]["existing"]
    la, lb = labels_of(a), labels_of(b)
    assert len(lb) == 1 and lb[0][1] == "reviewed" and np.array_equal(la[0][2], lb[0][2])

    # A adds the DL contours (rough); a SIGKILL mid-push, then mid-pull on B's side
    assert hila("submit", a, "c0001", rs, "--contour-sets", "DL", env=env_a).returncode == 0
    kill_when(["sync", a, "--dicomweb", url], tmp_path / "tmp_a", "hila-stow-*/*.dcm", env_a)
    assert hila("submit", b, "c0001", rs, "--contour-sets", "MBS", env=env_b).returncode == 0
    result(hila("sync", a, "--dicomweb", url, "--json", env=env_a))
    kill_when(["sync", b, "--dicomweb", url], tmp_path / "tmp_b", "hila-wado-*/*.dcm", env_b)
    for _ in range(2):  # and again: nothing more arrives
        result(hila("sync", b, "--dicomweb", url, "--json", env=env_b))
        result(hila("sync", a, "--dicomweb", url, "--json", env=env_a))
    la, lb = labels_of(a), labels_of(b)
    # A: manual v1, DL v2, B's MBS v3; B: A's manual v1, its MBS v2, A's DL v3 -- nothing lost, nothing twice
    assert [q for _, q, _ in la] == ["reviewed", "rough", "rough"]
    assert [q for _, q, _ in lb] == ["reviewed", "rough", "rough"]
    assert np.array_equal(la[1][2], lb[2][2]) and np.array_equal(la[2][2], lb[1][2])
    assert not np.array_equal(la[1][2], la[2][2])
    assert seg_count(url, ct_study) == 3  # one SEG per correction stored, none twice
    for root, env in ((a, env_a), (b, env_b)):
        assert hila("check", root, env=env).returncode == 0
        con = sqlite3.connect(root / "hila.sqlite")
        rows = con.execute("SELECT role, count(*) FROM dicom_objects GROUP BY role ORDER BY role").fetchall()
        con.close()
        assert dict(rows)["pulled"] == (2 if root == b else 1) and dict(rows)["exported"] == (1 if root == b else 2)


def test_unreachable_silent_and_refusing_servers(pacs, tmp_path):
    url, ct_study, _ = pacs
    root = tmp_path / "w"
    assert hila("init", root, "--modality", "CT", "--labels", LABELS).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    one_line_error(hila("import", root, "--dicomweb", f"http://127.0.0.1:{closed}/dicom-web", "--study", ct_study),
                   "connection refused (3 tries)")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        one_line_error(hila("sync", root, "--dicomweb", f"http://127.0.0.1:{port}/dicom-web",
                            env=env_with(HILA_DICOMWEB_TIMEOUT="0.5", **CREDS)), "timed out (3 tries)")
        one_line_error(hila("import", root, "--dicomweb", f"http://127.0.0.1:{port}/dicom-web", "--study", ct_study,
                            env=env_with(HILA_DICOMWEB_TIMEOUT="0.5", **CREDS)), "timed out (3 tries)")
    one_line_error(hila("import", root, "--dicomweb", url, "--study", ct_study,
                        env=env_with(HILA_DICOMWEB_USER=USER, HILA_DICOMWEB_PASSWORD="wrong")),
                   "refused the credentials (HTTP 401)")
    one_line_error(hila("import", root, "--dicomweb", url.replace("http://", f"http://{USER}:{PASSWORD}@"),
                        "--study", ct_study), "credentials in the URL are refused")
    one_line_error(hila("import", root, "--dicomweb", url, "--study", "1.2.3.4.5"), "no usable image series")
    with Workspace.open(root) as ws:
        assert ws.cases() == [] and ws.corrections() == []
    assert hila("check", root).returncode == 0
    assert not list((root / "cases").iterdir())


def test_the_slicer_panels_actions_as_it_runs_them(pacs, tmp_path):
    """Import, Export shown case and Sync of the panel's PACS section: the exact child processes
    HILASegmentSlicerLib.pacs starts (credentials only in the environment), against the same Orthanc."""
    from HILASegmentSlicerLib import pacs as section

    url, _, mr_study = pacs
    root = tmp_path / "slicer-ws"
    assert hila("init", root, "--modality", "MR", "--labels", "prostate").returncode == 0
    env = env_with(**CREDS)

    def run(action):
        assert not any(secret in " ".join(action.args) for secret in CREDS.values())
        outcome = section.runner(action, env).start().wait(timeout=300)
        assert outcome.ok, outcome.error
        return section.result_message(action, outcome.result)

    message = run(section.import_action(root, url, mr_study))
    with Workspace.open(root) as ws:
        case = ws.cases()[0]
        image = ws.case_image(case.case_id)
        label = sitk.Cast(image > float(np.percentile(sitk.GetArrayViewFromImage(image), 99)), sitk.sitkUInt8)
        ws.submit(case.case_id, label, annotator="panel")
    assert message.startswith(f"Imported from the PACS: {case.case_id}") and "imported" in message
    assert run(section.export_action(root, url, case.case_id)) == f"PACS: stored 1 correction(s) as DICOM SEG on {url}"
    assert run(section.sync_action(root, url)) == f"PACS sync: stored 0 correction(s), imported 0 from {url}"
    assert seg_count(url, mr_study) == 1


def test_uids_that_are_paths_never_name_a_file_from_a_real_orthanc(pacs, tmp_path):
    """Issue 22 row P01 against a real PACS: the ProstateX series stored again under a new study, the last
    instance's SOPInstanceUID a path. Orthanc may refuse that instance itself; whatever it keeps, hila never
    writes outside its temporary folder, and a series holding such an instance is refused in one line with the
    workspace unchanged (Testing/test_trust_names.py does the same against a hostile server that always sends it)."""
    import warnings

    from HILASegmentLib.ground.errors import HilaError

    url = pacs[0]
    trap = tmp_path / "trap"
    (tmp_path / "tmp").mkdir()
    trap.mkdir()
    src = tmp_path / "hostile"
    src.mkdir()
    study, series = "1.2.826.0.1.3680043.2.1125.22.1", "1.2.826.0.1.3680043.2.1125.22.2"
    files = sorted(glob.glob(str(shared("prostate_mri", "dicom", "ProstateX-0000_t2") / "*.dcm")))
    with warnings.catch_warnings():  # (pydicom: a path is not a valid UI value — the point)
        warnings.simplefilter("ignore")
        for i, f in enumerate(files):
            d = pydicom.dcmread(f)
            d.StudyInstanceUID, d.SeriesInstanceUID = study, series
            d.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.22.3.{i + 1}"
            if i == len(files) - 1:  # last, so that the others are stored even if Orthanc refuses this one
                d.SOPInstanceUID = "../" * 20 + str(trap).lstrip("/") + "/PWNED"
            d.save_as(src / f"{i:02d}.dcm", enforce_file_format=True)
    os.environ.update(CREDS)
    try:
        try:
            Server(url).store(sorted(src.glob("*.dcm")))
        except HilaError:
            pass  # the PACS refused the hostile instance itself
    finally:
        for k in CREDS:
            os.environ.pop(k, None)
    root = tmp_path / "w"
    assert hila("init", root, "--modality", "MR", "--labels", "prostate").returncode == 0
    res = hila("import", root, "--dicomweb", url, "--study", study, env=env_with(TMPDIR=str(tmp_path / "tmp"), **CREDS))
    assert not list(tmp_path.rglob("PWNED*")), "a UID from the PACS named a file outside the temporary folder"
    assert not list((tmp_path / "tmp").iterdir())
    if res.returncode != 0:  # Orthanc kept the instance: hila refused the series
        one_line_error(res, "not a DICOM UID")
        with Workspace.open(root) as ws:
            assert ws.cases() == []
    else:  # Orthanc refused the instance: the rest is an ordinary series
        assert result(res)["cases"][0]["name"]
