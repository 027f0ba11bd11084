"""Names are never paths (issue 22, class 1): a name from outside — a case name, a UID a PACS sends, an
annotator — becomes a file name or a DICOM value only through ``paths.name_component`` / ``paths.dicom_value``.

A hostile DICOMweb server on loopback (stdlib http.server, in this process) answers with SOPInstanceUIDs
that are paths: ``hila import --dicomweb`` is refused in one line, writes nothing outside its temporary
folder and leaves the workspace as it was. ``--name ../../evil`` is refused; a workspace whose ledger already
holds such a name exports inside OUT only; CR/LF in ``--annotator`` never reaches a SEG or RTSTRUCT.
"""
from __future__ import annotations

import glob
import http.server
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from ws_worker import make_label, make_volume, state

from HILASegmentLib.cli import main
from HILASegmentLib.ground.paths import dicom_value, name_component

HOSTILE_NAMES = ["../../evil", "/etc/passwd", "..", ".", "", "a/b\\c", ".hidden", "x\r\ny", "\x00", "é" * 300,
                 "../" * 40 + "tmp/PWNED", "C:\\Windows\\x", "~/x", "-rf", "con"]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


def files_under(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_name_component_keeps_every_outside_name_inside_its_folder(tmp_path):
    for name in HOSTILE_NAMES:
        comp = name_component(name)
        assert comp and comp not in (".", "..") and not comp.startswith((".", "-")), (name, comp)
        assert "/" not in comp and "\\" not in comp and len(comp) <= 100, (name, comp)
        assert (tmp_path / comp).resolve().parent == tmp_path.resolve(), (name, comp)
        value = dicom_value(name, "PN")
        assert not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value) and "\\" not in value, (name, value)
        assert len(value) <= 64
    assert name_component("Pelvic-Ref002") == "Pelvic-Ref002"  # an ordinary name stays as it is


# ---------------------------------------------------------------------------------------------
# a hostile PACS
# ---------------------------------------------------------------------------------------------

class HostilePacs:
    """QIDO/WADO-RS of one series (``datasets``) on 127.0.0.1, its SOPInstanceUIDs as they are (paths included)."""

    def __init__(self, datasets):
        from pydicom.filebase import DicomBytesIO

        self.study, self.series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        self.sops = [str(d.SOPInstanceUID) for d in datasets]
        blobs = []
        for d in datasets:
            buf = DicomBytesIO()
            with warnings.catch_warnings():  # (pydicom: a UID that is a path is not a valid UI value — the point)
                warnings.simplefilter("ignore")
                d.save_as(buf, enforce_file_format=True)
            blobs.append(buf.getvalue())
        pacs, boundary = self, b"hostileboundary"
        body = b"".join(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + b + b"\r\n" for b in blobs)
        body += b"--" + boundary + b"--"

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def send(self, data: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                p = [x for x in self.path.split("?")[0].split("/") if x]
                js = lambda o: self.send(json.dumps(o).encode(), "application/dicom+json")  # noqa: E731
                if p[-1:] == ["studies"]:
                    return js([{"0020000D": {"vr": "UI", "Value": [pacs.study]}}])
                if p[-3:] == ["studies", pacs.study, "series"]:
                    return js([{"0020000E": {"vr": "UI", "Value": [pacs.series]}, "00080060": {"vr": "CS", "Value": ["MR"]},
                                "00201209": {"vr": "IS", "Value": [len(blobs)]}}])
                if p[-4:] == ["studies", pacs.study, "series", pacs.series]:
                    return self.send(body, 'multipart/related; type="application/dicom"; boundary=' + boundary.decode())
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mr_datasets():
    pydicom = pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")
    pytest.importorskip("dicomweb_client", reason="the optional dicom extra (dicomweb-client) is not installed")
    folder = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    if not folder.is_dir():
        pytest.skip(f"real data not available: {folder}")
    return [pydicom.dcmread(f) for f in sorted(glob.glob(str(folder / "*.dcm")))]


def test_pacs_uids_that_are_paths_never_name_a_file(mr_datasets, tmp_path, capsys, monkeypatch):
    """P01: SOPInstanceUIDs '../../../<trap>/PWNED' and '/<trap>/PWNED' from the server."""
    trap = tmp_path / "trap"
    trap.mkdir()
    with warnings.catch_warnings():  # (pydicom: not a valid UI value — the point)
        warnings.simplefilter("ignore")
        mr_datasets[0].SOPInstanceUID = "../" * 40 + str(trap).lstrip("/") + "/PWNED_BY_PACS"
        mr_datasets[-1].SOPInstanceUID = str(trap) + "/PWNED_ABSOLUTE"
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    ws = tmp_path / "ws"
    assert main(["init", str(ws), "--modality", "MR", "--labels", "prostate"]) == 0
    capsys.readouterr()
    before = state(ws)
    pacs = HostilePacs(mr_datasets)
    try:
        rc, out, err = run(capsys, "import", ws, "--dicomweb", pacs.url, "--study", pacs.study)
    finally:
        pacs.close()
    assert not list(tmp_path.rglob("PWNED*")), "the server's UID named a file outside the temporary folder"
    assert rc == 2 and len(err) == 1 and "not a DICOM UID" in err[0], (rc, err)
    assert state(ws) == before, "a refused import changed the workspace"
    assert not files_under(tmp_path / "tmp")  # its temporary folder is gone too


def test_a_hostile_uid_from_a_listing_is_left_out_not_fetched(mr_datasets, tmp_path):
    """sync/pull: an instance listed with a path for a UID is never fetched and never names a file."""
    from HILASegmentLib.dicom.dicomweb import check_uid
    from HILASegmentLib.ground.errors import HilaError
    from HILASegmentLib.workspace.sync import _pull_objects

    class Listing:
        url = "http://127.0.0.1:1/dicom-web"

        def instances(self, study, series):
            return ["../../../evil", None, "1.2.3.4"]

        def fetch_instance(self, study, series, sop, folder):
            check_uid(sop)
            raise HilaError("fetched")  # only a real UID gets this far

    class Ws:
        def known_sop_uids(self):
            return {"1.2.3.4"}

        def corrections(self):
            return []

    skipped: list = []
    assert _pull_objects(Ws(), Listing(), "1.2", [{"uid": "1.2.5"}], None, skipped=skipped) == []
    assert [s["sop_uid"] for s in skipped] == ["../../../evil", "None"]


# ---------------------------------------------------------------------------------------------
# case names and annotators
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def ct_ws(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    vol = tmp_path / "in" / "ct.nrrd"
    make_volume(vol)
    ws = tmp_path / "ws"
    assert main(["init", str(ws), "--modality", "CT", "--labels", "bladder"]) == 0
    capsys.readouterr()
    return ws, vol


def test_a_case_name_that_is_a_path_is_refused(ct_ws, capsys):
    """A01 (import): --name ../../evil, /abs, a hidden name, CR/LF."""
    ws, vol = ct_ws
    for name in ("../../evil", "/tmp/evil", ".hidden", "a\nb", "a\\b"):
        before = state(ws)
        rc, _, err = run(capsys, "import", ws, vol, "--name", name)
        assert rc == 2 and len(err) == 1 and "not a path" in err[0], (name, err)
        assert state(ws) == before


def test_export_writes_only_inside_out_whatever_the_ledger_names_a_case(ct_ws, tmp_path, capsys, monkeypatch):
    """A01 (export): a ledger that already holds '../../evil' (an older hila accepted it) exports inside OUT."""
    from HILASegmentLib.workspace import casestore

    ws, vol = ct_ws
    (tmp_path / "in2").mkdir()
    vol2 = tmp_path / "in2" / "ct.nrrd"
    make_volume(vol2, seed=3)
    with monkeypatch.context() as m:
        m.setattr(casestore, "check_case_name", lambda name: name)  # as an older hila did
        assert main(["import", str(ws), str(vol), "--name", "../../evil"]) == 0
        assert main(["import", str(ws), str(vol2), "--name", "../../../evil"]) == 0  # the same once made safe
    for cid, v in (("c0001", vol), ("c0002", vol2)):
        make_label(sitk.ReadImage(str(v)), tmp_path / f"{cid}.nrrd", boxes={1: (6, 14, 8, 20, 8, 20)})
        assert main(["submit", str(ws), cid, str(tmp_path / f"{cid}.nrrd")]) == 0
    capsys.readouterr()
    d = tmp_path / "exp"
    (d / "x").mkdir(parents=True)
    rc, out, err = run(capsys, "export", ws, d / "x" / "out")
    assert rc == 0, err
    assert {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and "x/out/" not in str(p.relative_to(d))} == set()
    images = sorted(p.name for p in (d / "x" / "out" / "images").iterdir())
    labels = sorted(p.name for p in (d / "x" / "out" / "labels").iterdir())
    assert len(images) == 2 and len(labels) == 4, (images, labels)  # each case its own files
    manifest = json.loads((d / "x" / "out" / "manifest.json").read_text())
    assert {e["name"] for e in manifest["cases"]} == {"../../evil", "../../../evil"}  # the names, as recorded


def test_control_characters_in_an_annotator_never_reach_a_dicom(tmp_path, capsys):
    """A04: CR/LF in --annotator; the SEG's ContentCreatorName, descriptions and the RTSTRUCT's names stay valid."""
    pydicom = pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")
    pytest.importorskip("highdicom", reason="could not import 'highdicom'")
    folder = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    if not folder.is_dir():
        pytest.skip(f"real data not available: {folder}")
    ws = tmp_path / "ws"
    assert main(["init", str(ws), "--modality", "MR", "--labels", "prostate"]) == 0
    assert main(["import", str(ws), str(folder), "--name", "P0"]) == 0
    capsys.readouterr()
    from HILASegmentLib.workspace import Workspace

    with Workspace.open(ws) as w:
        img = w.case_image("c0001")
    arr = np.zeros(sitk.GetArrayFromImage(img).shape, np.uint8)
    arr[8:12, 150:250, 150:250] = 1
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    sitk.WriteImage(lab, str(tmp_path / "lab.nrrd"))
    evil = "Rossi^Anna\r\nX-Injected: 1\\2\x1b[31m"
    assert main(["submit", str(ws), "c0001", str(tmp_path / "lab.nrrd"), "--annotator", evil]) == 0
    for fmt, fields in (("seg", ("ContentCreatorName", "SeriesDescription", "ContentDescription")),
                        ("rtstruct", ("OperatorsName", "SeriesDescription", "StructureSetLabel"))):
        out = tmp_path / f"out_{fmt}"
        assert main(["export", str(ws), str(out), "--format", fmt]) == 0
        (f,) = list(out.glob("*.dcm"))
        ds = pydicom.dcmread(f)
        values = [str(ds.get(k, "")) for k in fields]
        if fmt == "rtstruct":
            values += [str(o.get("ROIInterpreter", "")) for o in ds.RTROIObservationsSequence]
        for v in values:
            assert not any(ord(ch) < 32 for ch in v) and "\\" not in v, (fmt, v)
        assert "Rossi" in str(ds.get(fields[0]))  # the name is kept, made valid
