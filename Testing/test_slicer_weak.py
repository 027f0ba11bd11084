"""Slicer's *Accept as weak* without Slicer: an ROI or two line markups (stand-ins with Slicer's world RAS
outputs) -> LPS marks in the volume's own space -> Workspace.submit_marks on the real small CT; the case
table's suspect column. Slicer semantics relied on are in HILASegmentSlicerLib/marks.py's docstring."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ws_worker import state

from HILASegmentLib.cli import main
from HILASegmentLib.ground import metrics
from HILASegmentLib.ground.errors import HilaError
from HILASegmentSlicerLib import cases, marks, panels, segments

DATA = Path(__file__).resolve().parent / "Data"


class Volume:
    def __init__(self, attrs, parent=None):
        self.attrs, self.parent = attrs, parent

    def GetAttribute(self, k):
        return self.attrs.get(k)

    def GetParentTransformNode(self):
        return self.parent


class ROI:
    """vtkMRMLMarkupsROINode with no parent transform, axis-aligned: GetSize() and GetObjectToNodeMatrix() (its centre)
    of world RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax)."""

    def __init__(self, bounds):
        b = np.asarray(bounds, float).reshape(3, 2)
        self.size, self.matrix = tuple(b[:, 1] - b[:, 0]), np.eye(4)
        self.matrix[:3, 3] = b.mean(1)

    def GetSize(self):
        return self.size

    def GetObjectToNodeMatrix(self):
        return self.matrix

    def GetParentTransformNode(self):
        return None

    def GetName(self):
        return "R"


class Line:
    def __init__(self, points_ras):
        self.points = np.asarray(points_ras, float).reshape(-1, 3)


class Util:
    """slicer.util.arrayFromMarkupsControlPoints: control points as rows (world=True: world RAS)."""

    @staticmethod
    def arrayFromMarkupsControlPoints(node, world=False):
        assert world, "marks must be read in world coordinates"
        return node.points.copy()

    @staticmethod
    def arrayFromVTKMatrix(matrix):
        return np.array(matrix, float)

    @staticmethod
    def arrayFromTransformMatrix(transformNode, toWorld=False):
        """slicer.util's: the node's 4x4 matrix (toWorld=True: to world, parent transforms included)."""
        assert toWorld, "the volume's local -> world matrix is needed"
        return transformNode.to_world.copy()


def _lps_box(lab: sitk.Image, value: int) -> np.ndarray:
    k, j, i = np.nonzero(sitk.GetArrayFromImage(lab) == value)
    pts = [lab.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
           for x in (i.min(), i.max()) for y in (j.min(), j.max()) for z in (k.min(), k.max())]
    return np.concatenate([np.min(pts, 0), np.max(pts, 0)])


def _ras_bounds(lps_box: np.ndarray, shift=(0.0, 0.0, 0.0)) -> list:
    ras = lps_box.reshape(2, 3) * [-1, -1, 1] + shift
    lo, hi = ras.min(0), ras.max(0)
    return [lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]]


@pytest.fixture
def small(tmp_path):
    from HILASegmentLib.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws", "CT", ["prostate", "bladder", "rectum"])
    case = ws.import_volume(DATA / "pelvic_ct_small.nrrd")
    vol = Volume({segments.CASE_ATTRIBUTE: case.case_id, segments.WORKSPACE_ATTRIBUTE: str(ws.root)})
    yield ws, case.case_id, vol, sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    ws.close()


def test_roi_accept_as_weak_is_the_cli_box_in_lps_and_overlaps_the_manual_prostate(small, tmp_path, capsys):
    ws, case, vol, lab = small
    box = _lps_box(lab, 1)
    picked = marks.marks_from_markups(Util, "prostate", roi=ROI(_ras_bounds(box)))
    assert picked["space"] == "LPS" and picked["items"][0]["box"] == pytest.approx(box.tolist())
    c = cases.accept_weak(ws, vol, picked, annotator="slicer", seconds=9.0)
    assert (c.quality, c.effort["source"]) == ("weak", "marks")
    assert c.effort["marks"]["items"][0]["box"] == pytest.approx(box.tolist())
    arr = sitk.GetArrayFromImage(ws.correction_label(case))
    assert metrics.dice(arr == 1, sitk.GetArrayFromImage(lab) == 1) >= 0.6
    # the same mask as `hila submit --box --ras` with the RAS corners a Slicer user reads off the ROI
    ras = np.asarray(_ras_bounds(box))[[0, 2, 4, 1, 3, 5]]
    assert main(["submit", str(ws.root), case, "--label", "prostate", "--ras", "--box=" + ",".join(map(str, ras))]) == 0
    capsys.readouterr()
    assert np.array_equal(sitk.GetArrayFromImage(ws.correction_label(case)), arr)


def test_two_lines_accept_as_weak_record_recist_marks(small):
    ws, case, vol, lab = small
    b = _lps_box(lab, 2)
    c = b.reshape(2, 3).mean(0)
    h = (b[3:] - b[:3]) / 2
    long_lps = np.array([[c[0] - h[0], c[1], c[2]], [c[0] + h[0], c[1], c[2]]])
    short_lps = np.array([[c[0], c[1] - h[1], c[2]], [c[0], c[1] + h[1], c[2]]])
    picked = marks.marks_from_markups(Util, "bladder", long_line=Line(long_lps * [-1, -1, 1]),
                                      short_line=Line(short_lps * [-1, -1, 1]))
    got = cases.accept_weak(ws, vol, picked)
    item = got.effort["marks"]["items"][0]
    assert item["label"] == "bladder" and np.allclose(item["lines"], [long_lps.ravel(), short_lps.ravel()])
    arr = sitk.GetArrayFromImage(ws.correction_label(case))
    assert metrics.dice(arr == 2, sitk.GetArrayFromImage(lab) == 2) >= 0.4  # lines: z extent = the short diameter


def test_bad_picks_refused_nothing_submitted(small, tmp_path):
    ws, case, vol, lab = small
    box = _lps_box(lab, 1)
    roi, line = ROI(_ras_bounds(box)), Line([[0, 0, 0], [10, 0, 0]])
    for kw, word in [(dict(roi=roi, long_line=line), "both"), ({}, "pick an ROI"), (dict(long_line=line), "pick an ROI"),
                     (dict(long_line=line, short_line=line), "same line"),
                     (dict(long_line=line, short_line=Line([[5, -5, 0]])), "place both ends")]:
        with pytest.raises(HilaError, match=word):
            marks.marks_from_markups(Util, "prostate", **kw)
    with pytest.raises(HilaError, match="label"):
        marks.marks_from_markups(Util, "", roi=roi)
    before = state(ws.root)
    good = marks.marks_from_markups(Util, "prostate", roi=roi)
    for volume, word in [(Volume({}), "not a workspace case"),
                         (Volume({segments.CASE_ATTRIBUTE: case, segments.WORKSPACE_ATTRIBUTE: str(tmp_path / "other")}),
                          "open that workspace")]:
        with pytest.raises(HilaError, match=word):
            cases.accept_weak(ws, volume, good)
    far = marks.marks_from_markups(Util, "prostate", roi=ROI([9000, 9001, 9000, 9001, 9000, 9001]))
    with pytest.raises(HilaError, match="outside"):
        cases.accept_weak(ws, vol, far)
    with pytest.raises(HilaError, match="liver"):
        cases.accept_weak(ws, vol, marks.marks_from_markups(Util, "liver", roi=roi))
    assert state(ws.root) == before


def test_case_table_shows_the_standing_suspect_flag_until_a_new_correction(small):
    ws, case, vol, lab = small
    ws.submit(case, lab, quality="reviewed", annotator="t")
    col = panels.CASE_COLUMNS.index("Suspect")
    assert panels.case_rows(ws)[0][col] == ""
    ws.flag_suspects([{"case_id": case, "correction_version": 1, "dice": {"prostate": 0.2},
                       "reason": "prostate Dice 0.200 vs peers' median 0.800 (cut 0.500)"}])
    shown = panels.case_rows(ws)[0][col]
    assert shown.startswith("suspect v1") and "prostate Dice 0.200" in shown
    status = json.dumps(ws.status().get("suspects"))
    assert case in status  # the table shows what hila status lists
    ws.submit(case, lab, quality="reviewed", annotator="t")  # re-reviewed: the flag no longer stands
    assert panels.case_rows(ws)[0][col] == ""
