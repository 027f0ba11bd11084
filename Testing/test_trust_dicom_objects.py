"""DICOM objects never silently change a reviewed correction; `convert` and `submit` decide alike (issue 22,
class 3; red team 2026-12-07 G01-G05, S05, S09-S11).

The SEGs are made with highdicom from the real pelvic CT series (Pelvic-Ref002) and its manual contours,
the RTSTRUCTs by mutating the real planning-system RTSTRUCT with pydicom. Each object either keeps every
segment as it is (a .seg.nrrd with overlapping layers) or is refused with one line naming the segment or
structure, by `convert` and by `submit` alike, with nothing written or recorded.
"""
from __future__ import annotations

import glob
import json
import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from test_trust_inputs import refused, run
from ws_worker import state

pydicom = pytest.importorskip("pydicom", reason="could not import 'pydicom' (the optional dicom extra)")
hd = pytest.importorskip("highdicom", reason="could not import 'highdicom' (the optional dicom extra)")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The CT series alone in its folder, a DICOM workspace of it (case id), and the mutated objects."""
    from pydicom.sr.codedict import codes

    root = tmp_path_factory.mktemp("objects")
    src_dir = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    ct = root / "ct"
    ct.mkdir()
    for f in glob.glob(str(src_dir / "CT*.dcm")):
        shutil.copy(f, ct)
    rs_in = glob.glob(str(src_dir / "RS*.dcm"))[0]
    manual = sitk.ReadImage(str(shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = sorted((pydicom.dcmread(f) for f in glob.glob(str(ct / "*.dcm"))),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    for d in src:
        for k in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDate", "StudyTime"):
            if k not in d:
                setattr(d, k, "")
    ref = sitk.Image(int(src[0].Columns), int(src[0].Rows), len(src), sitk.sitkUInt8)
    ref.SetOrigin([float(v) for v in src[0].ImagePositionPatient])
    ref.SetSpacing([float(src[0].PixelSpacing[1]), float(src[0].PixelSpacing[0]),
                    float(src[1].ImagePositionPatient[2]) - float(src[0].ImagePositionPatient[2])])
    L = sitk.GetArrayFromImage(sitk.Resample(manual, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    z = np.flatnonzero(L.any(axis=(1, 2)))
    z = slice(z[0], z[-1] + 1)

    def seg(name, masks, labels, kind=hd.seg.SegmentationTypeValues.BINARY):
        desc = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=n,
                                          segmented_property_category=codes.SCT.Organ,
                                          segmented_property_type=codes.SCT.Organ, algorithm_type="MANUAL")
                for i, n in enumerate(labels)]
        extra = {"max_fractional_value": 255} if kind == hd.seg.SegmentationTypeValues.FRACTIONAL else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd.seg.Segmentation(source_images=src[z], pixel_array=np.stack([m[z] for m in masks], -1),
                                segmentation_type=kind, segment_descriptions=desc, series_instance_uid=hd.UID(),
                                series_number=901, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
                                manufacturer_model_name="test", software_versions="1", device_serial_number="1",
                                **extra).save_as(str(root / name))
        return root / name

    P, B, R = L == 1, L == 2, L == 3
    objs = {
        "overlap": seg("seg_overlap.dcm", [P, B | P, R], ["prostate", "bladder", "rectum"]),
        "dup": seg("seg_dup.dcm", [P, B, R], ["prostate", "Prostate", "rectum"]),
        "frac": seg("seg_frac.dcm", [P * 0.4, B * 1.0, R * 1.0], ["prostate", "bladder", "rectum"],
                    hd.seg.SegmentationTypeValues.FRACTIONAL),
        "frac_whole": seg("seg_frac_whole.dcm", [P * 1.0, B * 1.0, R * 1.0], ["prostate", "bladder", "rectum"],
                          hd.seg.SegmentationTypeValues.FRACTIONAL),
    }

    def rtstruct(name, change):
        rs = pydicom.dcmread(rs_in)
        change(rs)
        rs.save_as(str(root / name))
        objs[name.split(".")[0]] = root / name

    def prostate(rs):
        num = [int(r.ROINumber) for r in rs.StructureSetROISequence if str(r.ROIName) == "Prostata"][0]
        return [c for c in rs.ROIContourSequence if int(c.ReferencedROINumber) == num][0]

    def dupname(rs):
        for r in rs.StructureSetROISequence:
            if str(r.ROIName) == "Vescica":
                r.ROIName = "PROSTATA"

    def bad3(rs):
        c = prostate(rs).ContourSequence[5]
        c.ContourData = list(c.ContourData)[:-2]

    def dangling(rs):
        prostate(rs).ReferencedROINumber = 77

    def same_number(rs):
        rois = list(rs.StructureSetROISequence)
        rois[7].ROINumber = rois[5].ROINumber  # Vescica takes Prostata's number

    def contoured_twice(rs):
        import copy

        rs.ROIContourSequence.append(copy.deepcopy(prostate(rs)))

    def points_miscounted(rs):
        c = prostate(rs).ContourSequence[5]
        c.ContourData = list(c.ContourData)[:-3]  # one point short: a multiple of 3, but not the stated count

    rtstruct("rs_same_number.dcm", same_number)
    rtstruct("rs_contoured_twice.dcm", contoured_twice)
    rtstruct("rs_points_miscounted.dcm", points_miscounted)
    rtstruct("rs_dupname.dcm", dupname)
    rtstruct("rs_bad3.dcm", bad3)
    rtstruct("rs_dangling.dcm", dangling)
    objs["rs"], objs["ct"], objs["L"], objs["ref"] = rs_in, ct, L, ref

    ws = root / "ws"
    assert run_cli("init", ws, "--modality", "CT", "--labels", "prostate,bladder,rectum")[0] == 0
    rc, out, err = run_cli("import", ws, ct, "--json")
    assert rc == 0, err
    objs["ws"], objs["case"] = ws, json.loads(out.strip().splitlines()[-1])["cases"][0]["case_id"]
    return objs


def run_cli(*args):
    """The CLI in this process, outside a test's capsys (for the module fixture)."""
    import contextlib
    import io

    from HILASegmentLib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def _convert_and_submit_refuse(capsys, tmp_path, made, obj, expect):
    """convert (to a .seg.nrrd, which could hold anything) and submit both refuse ``obj`` with one line saying ``expect``."""
    lines = [refused(capsys, tmp_path, "convert", obj, tmp_path / "x.seg.nrrd", "--reference", made["ct"], expect=expect)]
    lines.append(refused(capsys, made["ws"], "submit", made["ws"], made["case"], obj, expect=expect, snapshot=state))
    assert all(str(obj) in ln for ln in lines), lines
    return lines


def test_g03_g04_overlapping_seg_keeps_every_segment_or_is_refused(made, tmp_path, capsys):
    """An overlapping BINARY SEG: the label map lost the prostate under the bladder, and submit recorded a
    reviewed correction with an empty prostate. Now: a .seg.nrrd keeps both whole (layers); a label map and a
    reviewed correction are refused naming the two segments."""
    from HILASegmentLib.dicom import dicomref
    from HILASegmentLib.formats import segfile

    assert run(capsys, "convert", made["overlap"], tmp_path / "x.seg.nrrd", "--reference", made["ct"])[0] == 0
    seg = segfile.read_segmentation(tmp_path / "x.seg.nrrd")
    series = dicomref.read_series(made["ct"])
    got = {s.name: sitk.GetArrayFromImage(dicomref.onto_series(seg.mask(s.id), series, s.name)) != 0
           for s in seg.segments}
    manual = sitk.GetImageFromArray(made["L"])
    manual.CopyInformation(made["ref"])
    L = sitk.GetArrayFromImage(sitk.Resample(manual, series.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    assert len({s.layer for s in seg.segments}) == 2  # the bladder over the prostate: a second layer
    assert np.array_equal(got["prostate"], L == 1) and np.array_equal(got["bladder"], (L == 1) | (L == 2))
    assert np.array_equal(got["rectum"], L == 3)
    expect = "segments 'prostate' and 'bladder' overlap in"
    refused(capsys, tmp_path, "convert", made["overlap"], tmp_path / "x.nrrd", "--reference", made["ct"],
            expect=expect)
    refused(capsys, made["ws"], "submit", made["ws"], made["case"], made["overlap"], expect=expect, snapshot=state)


def test_g05_seg_segments_of_one_name_in_any_case_are_refused(made, tmp_path, capsys):
    _convert_and_submit_refuse(capsys, tmp_path, made, made["dup"], "two segments are named 'prostate' and 'Prostate'")


def test_g01_g02_fractional_seg_is_refused_naming_the_segment(made, tmp_path, capsys):
    _convert_and_submit_refuse(capsys, tmp_path, made, made["frac"],
                               "a FRACTIONAL SEG whose segment 'prostate' holds fractions between 0 and 1")


def test_a_fractional_seg_of_whole_values_reads_exactly(made, tmp_path, capsys):
    assert run(capsys, "convert", made["frac_whole"], tmp_path / "x.nrrd", "--reference", made["ct"])[0] == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "x.nrrd")))
    assert np.array_equal(got, made["L"])


def test_s05_contour_data_not_in_threes_is_refused(made, tmp_path, capsys):
    _convert_and_submit_refuse(capsys, tmp_path, made, made["rs_bad3"],
                               "structure 'Prostata' has a contour (item 6 of its ContourSequence) whose ContourData "
                               "holds 454 numbers, not a multiple of 3")


def test_s09_contours_of_an_undefined_roi_are_refused(made, tmp_path, capsys):
    _convert_and_submit_refuse(capsys, tmp_path, made, made["rs_dangling"],
                               "refers to ROI number 77, which the StructureSetROISequence does not define")


def test_s10_s11_rtstruct_rois_of_one_name_are_refused(made, tmp_path, capsys):
    _convert_and_submit_refuse(capsys, tmp_path, made, made["rs_dupname"],
                               "two structures are named 'Prostata' and 'PROSTATA'")


def test_overlapping_auto_contours_are_recorded_rough_with_a_note(made, tmp_path, capsys):
    """The real planning system's MBS auto-contours overlap (bladder and prostate, 58 voxels): as a rough set
    they are recorded (the later structure kept there) and the output says so; nothing is silent."""
    ws = tmp_path / "ws"
    shutil.copytree(made["ws"], ws)
    rc, out, err = run(capsys, "submit", ws, made["case"], made["rs"], "--contour-sets", "MBS")
    assert rc == 0, err
    assert "(rough) [segments 'Bladder_MBS' and 'Prostate_MBS' overlap in 58 voxel(s), the later one kept there]" in out


@pytest.mark.parametrize("obj,expect", [
    ("rs_same_number", "structures 'Prostata' and 'Vescica' have the same ROI number"),
    ("rs_contoured_twice", "two ROIContourSequence items refer to ROI number"),
    ("rs_points_miscounted", "whose NumberOfContourPoints says"),
])
def test_more_damaged_rtstructs_are_refused_naming_the_structure(made, tmp_path, capsys, obj, expect):
    """More of the same class: an ROI number used twice (one structure was silently dropped), one ROI
    contoured in two items (even-odd filling made the copies holes), a point count that disagrees."""
    _convert_and_submit_refuse(capsys, tmp_path, made, made[obj], expect)
