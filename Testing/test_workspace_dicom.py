"""Workspaces and DICOM on the real pelvic CT: a series folder imports as a case that keeps its UIDs,
its RTSTRUCT's three contour sets as three corrections (manual reviewed, DL and MBS rough), corrections
go out as SEG/RTSTRUCT and come back into another workspace identical, and the ledger migrates."""
from __future__ import annotations

import glob
import json
import shutil
import sqlite3

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from test_cli_convert import assert_clean_failure, hila

pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")
pytest.importorskip("highdicom", reason="the optional dicom extra (highdicom) is not installed")

from HILASegmentLib.workspace import Workspace  # noqa: E402

LABELS = "prostate,bladder,rectum"


@pytest.fixture(scope="module")
def ct_dir():
    return shared("pelvic_ct_dicom", "Pelvic-Ref002")


@pytest.fixture(scope="module")
def ws_all(tmp_path_factory, ct_dir):
    """A workspace that imported the DICOM folder with every contour set (through the CLI)."""
    root = tmp_path_factory.mktemp("wsdicom") / "ws"
    assert hila("init", root, "--modality", "CT", "--labels", LABELS).returncode == 0
    res = hila("import", root, ct_dir, "--contour-sets", "all", "--json")
    assert res.returncode == 0, res.stderr
    return root, json.loads(res.stdout.strip().splitlines()[-1])


def test_contour_sets_import_as_three_label_sets(ws_all, ct_dir):
    root, out = ws_all
    corrs = out["cases"][0]["corrections"]
    assert [(c["part"], c["quality"]) for c in corrs] == [("DL", "rough"), ("MBS", "rough"), ("manual", "reviewed")]
    manual = sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")))
    ref = sitk.GetArrayFromImage(manual)
    dl_ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref002", "labels_dl.nii.gz"))))
    with Workspace.open(root) as ws:
        case = ws.cases()[0]
        series = ws.series(case.case_id)
        full = ws.case_image(case.case_id)
        off = [int(round(v)) for v in full.TransformPhysicalPointToContinuousIndex(manual.GetOrigin())]
        crop = tuple(slice(o, o + n) for o, n in zip(off[::-1], ref.shape))
        latest = sitk.GetArrayFromImage(ws.correction_label(case.case_id))[crop]
        dl = sitk.GetArrayFromImage(ws.correction_label(case.case_id, 1))[crop]
        for v in (1, 2, 3):  # the reviewed set is the latest version and is the reference rasterisation
            d = 2 * np.sum((latest == v) & (ref == v)) / (np.sum(latest == v) + np.sum(ref == v))
            assert d >= 0.97, (v, d)
            d = 2 * np.sum((dl == v) & (dl_ref == v)) / (np.sum(dl == v) + np.sum(dl_ref == v))
            assert d >= 0.97, ("DL", v, d)
        # the ledger keeps the series' UIDs and each object it imported
        rec = ws.case_series(case.case_id)
        assert rec["series_uid"] == series.series_uid and len(rec["slices"]) == full.GetSize()[2]
        objs = ws.dicom_objects(case.case_id)
        rs = glob.glob(str(ct_dir / "RS*.dcm"))[0]
        import pydicom
        sop = str(pydicom.dcmread(rs, stop_before_pixels=True).SOPInstanceUID)
        assert sorted(o["part"] for o in objs if o["role"] == "imported") == ["DL", "MBS", "manual"]
        assert all(o["sop_uid"] == sop for o in objs)
    # importing the RTSTRUCT again adds nothing
    res = hila("import", root, rs, "--contour-sets", "all", "--json")
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(c["existing"] for c in again["cases"][0]["corrections"])
    with Workspace.open(root) as ws:
        assert len(ws.corrections()) == 3


def test_seg_export_round_trip_into_another_workspace(ws_all, ct_dir, tmp_path):
    root, _ = ws_all
    out = tmp_path / "out"
    res = hila("export", root, out, "--format", "seg", "--json")
    assert res.returncode == 0, res.stderr
    files = json.loads(res.stdout.strip().splitlines()[-1])["files"]
    assert len(files) == 1
    seg_file = files[0]["file"]
    import highdicom as hd
    seg = hd.seg.segread(seg_file)
    assert "v=3" in str(seg.ContentDescription) and "q=reviewed" in str(seg.ContentDescription)
    # exporting again gives the same instance (idempotent by UID)
    res = hila("export", root, tmp_path / "again", "--format", "seg", "--json")
    again = json.loads(res.stdout.strip().splitlines()[-1])["files"][0]
    assert again["sop_uid"] == files[0]["sop_uid"] == str(seg.SOPInstanceUID)
    # a second workspace: the series without structures, then the SEG as a correction
    other = tmp_path / "ws2"
    assert hila("init", other, "--modality", "CT", "--labels", LABELS).returncode == 0
    res = hila("import", other, ct_dir, "--contour-sets", "none")
    assert res.returncode == 0, res.stderr
    res = hila("submit", other, "Pelvic-Ref002", seg_file, "--json")
    assert res.returncode == 0, res.stderr
    with Workspace.open(root) as a, Workspace.open(other) as b:
        ca, cb = a.cases()[0].case_id, b.cases()[0].case_id
        va = sitk.GetArrayFromImage(a.correction_label(ca))
        vb = sitk.GetArrayFromImage(b.correction_label(cb))
        assert np.array_equal(va, vb)
        c = b.corrections(cb)[-1]
        assert c.quality == "reviewed" and c.version == 1
    # and as an RTSTRUCT: Dice >= 0.98 per label (here exact: contours follow voxel edges)
    res = hila("export", root, tmp_path / "rs", "--format", "rtstruct", "--json")
    rs_file = json.loads(res.stdout.strip().splitlines()[-1])["files"][0]["file"]
    res = hila("submit", other, "Pelvic-Ref002", rs_file, "--json")
    assert res.returncode == 0, res.stderr
    with Workspace.open(other) as b:
        cb = b.cases()[0].case_id
        vr = sitk.GetArrayFromImage(b.correction_label(cb))
    for v in (1, 2, 3):
        assert 2 * np.sum((vr == v) & (va == v)) / (np.sum(vr == v) + np.sum(va == v)) >= 0.98


def test_dicom_objects_of_other_series_refused(ws_all, ct_dir, tmp_path):
    root, _ = ws_all
    other = tmp_path / "mr"
    assert hila("init", other, "--modality", "MR", "--labels", "prostate").returncode == 0
    assert hila("import", other, shared("prostate_mri", "dicom", "ProstateX-0000_t2")).returncode == 0
    rs = glob.glob(str(ct_dir / "RS*.dcm"))[0]
    before = sqlite3.connect(other / "hila.sqlite").execute("SELECT count(*) FROM corrections").fetchone()[0]
    assert_clean_failure(hila("import", other, rs), "which no case of")
    assert_clean_failure(hila("submit", other, "c0001", rs), "not case c0001's")
    assert sqlite3.connect(other / "hila.sqlite").execute("SELECT count(*) FROM corrections").fetchone()[0] == before
    # an unknown contour set
    assert_clean_failure(hila("import", root, rs, "--contour-sets", "ATLAS"), "no contour set 'ATLAS'")


def test_version_1_ledger_migrates(tmp_path, monkeypatch):
    """A ledger written before DICOM support (schema 1) opens, gains the DICOM tables, keeps its rows."""
    from HILASegmentLib.workspace import ledger as L

    monkeypatch.setattr(L, "SCHEMA_VERSION", 1)
    with Workspace.create(tmp_path / "w", "CT", ["prostate"]) as w:
        img = sitk.Image(8, 8, 4, sitk.sitkInt16)
        sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
        w.import_volume(tmp_path / "v.nrrd")
    monkeypatch.undo()
    con = sqlite3.connect(tmp_path / "w" / "hila.sqlite")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()
    with Workspace.open(tmp_path / "w") as w:
        assert w.ledger.schema_version() == L.SCHEMA_VERSION >= 2
        assert len(w.cases()) == 1 and w.dicom_objects() == []
        assert w.case_series(w.cases()[0].case_id) is None


def test_export_dicom_refuses_non_dicom_case(tmp_path):
    root = tmp_path / "w"
    with Workspace.create(root, "CT", ["prostate"]) as w:
        img = sitk.Image(8, 8, 4, sitk.sitkInt16)
        sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
        c = w.import_volume(tmp_path / "v.nrrd")
        lab = sitk.Image(8, 8, 4, sitk.sitkUInt8)
        lab.CopyInformation(img)
        lab[2:5, 2:5, 1:3] = 1
        w.submit(c.case_id, lab)
    assert_clean_failure(hila("export", root, tmp_path / "o", "--format", "seg", "--case", c.case_id),
                         "not imported from a DICOM series")
    assert not (tmp_path / "o").exists()
    shutil.rmtree(root)


def test_rtstruct_with_contour_outside_changes_nothing(ws_all, ct_dir, tmp_path):
    """A bad contour in one set (MBS) refuses the whole import, also the good sets (DL, manual)."""
    import pydicom

    root, _ = ws_all
    rs = glob.glob(str(ct_dir / "RS*.dcm"))[0]
    ds = pydicom.dcmread(rs)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a new object, not one already imported
    roi = next(r for r in ds.StructureSetROISequence if r.ROIName == "Bladder_MBS").ROINumber
    rc = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == roi)
    pts = np.asarray(rc.ContourSequence[0].ContourData, float).reshape(-1, 3)
    pts[:, 1] += 600.0
    rc.ContourSequence[0].ContourData = [f"{v:.3f}" for v in pts.ravel()]
    bad = tmp_path / "bad_rs.dcm"
    ds.save_as(bad)
    with Workspace.open(root) as ws:
        before = (len(ws.corrections()), len(ws.dicom_objects()))
    assert_clean_failure(hila("import", root, bad, "--contour-sets", "all"), "Bladder_MBS", "outside the image")
    with Workspace.open(root) as ws:
        assert (len(ws.corrections()), len(ws.dicom_objects())) == before


def test_prediction_exported_as_ai_output(ws_all, tmp_path):
    import highdicom as hd

    root, _ = ws_all
    with Workspace.open(root) as ws:
        case = ws.cases()[0].case_id
        dl = ws.correction_label(case, 1)  # the DL contours stand in for a model's output
        ws.add_prediction(case, dl, model_version=7)
    res = hila("export", root, tmp_path / "p", "--format", "seg", "--prediction", "--json")
    assert res.returncode == 0, res.stderr
    f = json.loads(res.stdout.strip().splitlines()[-1])["files"][0]["file"]
    seg = hd.seg.segread(f)
    desc = seg.SegmentSequence[0]
    assert str(desc.SegmentAlgorithmType) == "AUTOMATIC"
    assert str(desc.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion) == "7"
    assert "k=prediction" in str(seg.ContentDescription)
