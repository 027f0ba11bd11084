"""DICOM RTSTRUCT and SEG on the real pelvic CT: `hila convert` in and out, checked with reference readers
(slicerio, highdicom, pydicom) against the reference rasterisation of the same contours, round trips,
provenance, and the bad inputs (contour outside the image, unknown structure, SEG of another series)."""
from __future__ import annotations

import glob

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import shared
from test_cli_convert import assert_clean_failure, hila

pydicom = pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")
hd = pytest.importorskip("highdicom", reason="the optional dicom extra (highdicom) is not installed")

ORGANS = (("Prostata", 1), ("Vescica", 2), ("Retto", 3))


@pytest.fixture(scope="module")
def ct_dir():
    return shared("pelvic_ct_dicom", "Pelvic-Ref002")


@pytest.fixture(scope="module")
def rs_file(ct_dir):
    return glob.glob(str(ct_dir / "RS*.dcm"))[0]


@pytest.fixture(scope="module")
def manual():
    """The reference rasterisation of the manual contours, on a crop of the CT grid."""
    return sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")))


@pytest.fixture(scope="module")
def series(ct_dir):
    from HILASegmentLib.dicom import dicomref

    return dicomref.read_series(ct_dir)


def crop_of(mask_kji: np.ndarray, full: sitk.Image, crop: sitk.Image) -> np.ndarray:
    off = [int(round(v)) for v in full.TransformPhysicalPointToContinuousIndex(crop.GetOrigin())]
    shape = sitk.GetArrayViewFromImage(crop).shape
    return mask_kji[off[2]:off[2] + shape[0], off[1]:off[1] + shape[1], off[0]:off[0] + shape[2]]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def slicerio_mask(seg: dict, name: str) -> np.ndarray:
    """A segment's voxels read by slicerio, in (k, j, i) order."""
    s = next(x for x in seg["segments"] if x["name"] == name)
    vox = seg["voxels"]
    layer = vox[s.get("layer", 0)] if vox.ndim == 4 else vox
    return np.transpose(layer == s["labelValue"], (2, 1, 0))


def test_rtstruct_to_seg_nrrd_matches_reference_rasterisation(tmp_path, ct_dir, rs_file, manual, series):
    out = tmp_path / "rs.seg.nrrd"
    res = hila("convert", rs_file, out, "--reference", ct_dir)
    assert res.returncode == 0, res.stderr
    seg = slicerio.read_segmentation(str(out))
    names = [s["name"] for s in seg["segments"]]
    # the manual set, named as in the RTSTRUCT, on the series' grid (the body outline and auto-contours left out)
    assert sorted(names) == sorted(["Prostata", "Vescica", "Retto", "FemoreSinistro", "FemoreDestro"])
    assert seg["voxels"].shape[-3:] == series.image.GetSize()
    ref = sitk.GetArrayFromImage(manual)
    for name, value in ORGANS:
        d = dice(crop_of(slicerio_mask(seg, name), series.image, manual), ref == value)
        assert d >= 0.97, (name, d)


def test_all_structures_overlap_in_layers(tmp_path, ct_dir, rs_file, series):
    out = tmp_path / "all.seg.nrrd"
    res = hila("convert", rs_file, out, "--reference", ct_dir, "--structures", "all", "--json")
    assert res.returncode == 0, res.stderr
    ds = pydicom.dcmread(rs_file)
    seg = slicerio.read_segmentation(str(out))
    assert sorted(s["name"] for s in seg["segments"]) == sorted(str(r.ROIName) for r in ds.StructureSetROISequence)
    assert seg["voxels"].ndim == 4 and seg["voxels"].shape[0] > 1
    manual, dl, body = (slicerio_mask(seg, n) for n in ("Prostata", "Prostate_DL", "External"))
    assert np.any(manual & dl), "the manual and DL prostate overlap in the RTSTRUCT; both must keep their voxels"
    assert np.all(body[manual]), "the body outline contains the prostate"
    # one contour set alone
    res = hila("convert", rs_file, tmp_path / "dl.seg.nrrd", "--reference", ct_dir, "--structures", "DL")
    assert res.returncode == 0, res.stderr
    names = [s["name"] for s in slicerio.read_segmentation(str(tmp_path / "dl.seg.nrrd"))["segments"]]
    assert names and all(n.endswith("_DL") for n in names)


def test_label_to_seg_round_trip_identical(tmp_path, ct_dir, manual, series):
    out = tmp_path / "seg.dcm"
    label_file = shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")
    res = hila("convert", label_file, out, "--format", "seg", "--reference", ct_dir,
               "--names", "1=prostate,2=bladder,3=rectum", "--annotator", "Rossi^Anna", "--quality", "reviewed")
    assert res.returncode == 0, res.stderr
    seg = hd.seg.segread(str(out))
    assert [str(d.SegmentLabel) for d in seg.SegmentSequence] == ["prostate", "bladder", "rectum"]
    assert str(seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning) == "Prostate"
    assert str(seg.ContentCreatorName) == "Rossi^Anna" and "reviewed" in str(seg.ContentDescription)
    assert str(seg.SegmentSequence[0].SegmentAlgorithmType) == "MANUAL"
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs and refs <= set(series.sop_uids)
    # highdicom's own reading, frame by frame, against the label map placed on the full grid
    full = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, np.uint8)
    ref = sitk.GetArrayFromImage(manual)
    off = [int(round(v)) for v in series.image.TransformPhysicalPointToContinuousIndex(manual.GetOrigin())]
    full[off[2]:off[2] + ref.shape[0], off[1]:off[1] + ref.shape[1], off[0]:off[0] + ref.shape[2]] = ref
    uids = sorted({u for _, _, u in seg.get_source_image_uids()})
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    k_of = series.slice_of()
    for uid, frame in zip(uids, frames):
        assert np.array_equal(frame, full[k_of[uid]])
    assert sum(np.count_nonzero(f) for f in frames) == np.count_nonzero(full)
    # and hila reading it back onto the series grid
    res = hila("convert", out, tmp_path / "back.nii.gz", "--reference", ct_dir)
    assert res.returncode == 0, res.stderr
    back = sitk.ReadImage(str(tmp_path / "back.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(back), full)
    assert back.GetSize() == series.image.GetSize()
    assert np.allclose(back.GetOrigin(), series.image.GetOrigin())


def test_label_to_rtstruct_round_trip(tmp_path, ct_dir, manual, series):
    out = tmp_path / "rs.dcm"
    label_file = shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")
    res = hila("convert", label_file, out, "--format", "rtstruct", "--reference", ct_dir,
               "--names", "1=prostate,2=bladder,3=rectum", "--annotator", "Rossi^Anna")
    assert res.returncode == 0, res.stderr
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and [str(r.ROIName) for r in ds.StructureSetROISequence] == \
        ["prostate", "bladder", "rectum"]
    assert str(ds.RTROIObservationsSequence[0].ROIInterpreter) == "Rossi^Anna"
    assert ds.StructureSetROISequence[0].ROIGenerationAlgorithm == "MANUAL"
    uids = set(series.sop_uids)
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            assert c.ContourImageSequence[0].ReferencedSOPInstanceUID in uids
            assert int(c.NumberOfContourPoints) * 3 == len(c.ContourData)
    res = hila("convert", out, tmp_path / "back.seg.nrrd", "--reference", ct_dir, "--structures", "all")
    assert res.returncode == 0, res.stderr
    seg = slicerio.read_segmentation(str(tmp_path / "back.seg.nrrd"))
    ref = sitk.GetArrayFromImage(manual)
    for name, value in (("prostate", 1), ("bladder", 2), ("rectum", 3)):
        assert dice(crop_of(slicerio_mask(seg, name), series.image, manual), ref == value) >= 0.98


def test_prediction_provenance(tmp_path, series):
    from HILASegmentLib.dicom import dicomref, dicomseg

    label = sitk.Image(series.image.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(series.image)
    label[250:260, 250:260, 80:83] = 1
    prov = dicomref.Provenance(kind="prediction", model_version="7", case="c1")
    dicomseg.write_seg(dicomref.masks_from_label(label, {1: "prostate"}), series, tmp_path / "p.dcm", prov)
    seg = hd.seg.segread(str(tmp_path / "p.dcm"))
    desc = seg.SegmentSequence[0]
    assert str(desc.SegmentAlgorithmType) == "AUTOMATIC"
    assert str(desc.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion) == "7"
    back, names, got = dicomseg.read_seg(tmp_path / "p.dcm", series)
    assert got.kind == "prediction" and got.model_version == "7" and got.case == "c1"
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label))


def test_contour_outside_image_refused(tmp_path, ct_dir, rs_file):
    ds = pydicom.dcmread(rs_file)
    roi = next(r for r in ds.StructureSetROISequence if r.ROIName == "Vescica").ROINumber
    rc = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == roi)
    pts = np.asarray(rc.ContourSequence[0].ContourData, float).reshape(-1, 3)
    pts[:, 0] += 400.0  # 400 mm to the patient's left: beyond the 512 mm field of view
    rc.ContourSequence[0].ContourData = [f"{v:.3f}" for v in pts.ravel()]
    bad = tmp_path / "bad_rs.dcm"
    ds.save_as(bad)
    out = tmp_path / "out.seg.nrrd"
    line = assert_clean_failure(hila("convert", bad, out, "--reference", ct_dir), "Vescica", "outside the image")
    assert str(bad) in line and not out.exists()
    assert list(tmp_path.iterdir()) == [bad]


def test_unknown_structure_refused(tmp_path, ct_dir, rs_file):
    out = tmp_path / "out.seg.nrrd"
    assert_clean_failure(hila("convert", rs_file, out, "--reference", ct_dir, "--structures", "Prostata,Liver"),
                         "no structure named 'Liver'")
    assert not out.exists()


def test_seg_of_another_series_refused(tmp_path, ct_dir):
    seg_file = tmp_path / "seg.dcm"
    label_file = shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")
    assert hila("convert", label_file, seg_file, "--format", "seg", "--reference", ct_dir).returncode == 0
    mri = shared("prostate_mri", "dicom", "ProstateX-0000_t2")
    out = tmp_path / "out.nii.gz"
    assert_clean_failure(hila("convert", seg_file, out, "--reference", mri), "references series")
    assert not out.exists()
    # a label map on another grid (the MRI's) cannot become a SEG of this series
    other = shared("prostate_mri", "ProstateX-0000_t2_s4_taps.nii.gz")
    assert_clean_failure(hila("convert", other, tmp_path / "x.dcm", "--format", "seg", "--reference", ct_dir),
                         "not on the grid of the series")
    assert not (tmp_path / "x.dcm").exists()


def test_dicom_output_needs_format_and_reference(tmp_path, ct_dir):
    label_file = shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")
    assert_clean_failure(hila("convert", label_file, tmp_path / "x.dcm", "--reference", ct_dir), "--format")
    assert_clean_failure(hila("convert", label_file, tmp_path / "x.dcm", "--format", "rtstruct"), "--reference")
    assert not (tmp_path / "x.dcm").exists()


def test_seg_codes_come_from_the_one_terminology_table(tmp_path, ct_dir):
    """The DICOM SEG's property category/type/modifier are the codes the .seg.nrrd TerminologyEntry carries
    (terminology.TERMS), femoral heads with their laterality, a name the table lacks under the local 99HILA code."""
    from HILASegmentLib.formats import terminology

    out = tmp_path / "seg.dcm"
    label_file = shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")
    res = hila("convert", label_file, out, "--format", "seg", "--reference", ct_dir,
               "--names", "1=Prostata,2=FemoreSinistro,3=my structure")  # names chosen for their codes only
    assert res.returncode == 0, res.stderr
    seg = hd.seg.segread(str(out))
    for d in seg.SegmentSequence:
        term = terminology.resolve(str(d.SegmentLabel))
        category, kind = d.SegmentedPropertyCategoryCodeSequence[0], d.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue, category.CodeMeaning) == term.category
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == term.type
        modifiers = kind.get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [(m.CodingSchemeDesignator, m.CodeValue) for m in modifiers] == ([term.modifier[:2]] if any(term.modifier) else [])
    by_label = {str(d.SegmentLabel): d for d in seg.SegmentSequence}
    assert by_label["FemoreSinistro"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "2812003"
    assert by_label["my structure"].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99HILA"
