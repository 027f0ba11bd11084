"""What the GUI thread does for Accept, Segment and Import on real MRML nodes, and what it leaves to the job: the
segments' layers are copied out of the scene at their own extent, and merging, writing and compressing happen in the
job (its worker thread, then the child). A volume that is no case keeps its copy in the workspace; without a
workspace Accept says so in one line and writes nothing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_mrml_bad_input import child_result
from tier import FIXTURES, read_only_folder, slicer_core

slicer = slicer_core()
import vtk  # noqa: E402
from realscene import load_volume, read_segmentation  # noqa: E402

from HILASegmentLib.ground.colors import label_color  # noqa: E402
from HILASegmentLib.ground.errors import HilaError  # noqa: E402
from HILASegmentSlicerLib import cases, segments  # noqa: E402

MRI = FIXTURES / "prostate_mri_oblique_small.nrrd"


def _user_block(segNode, volume, name, box):
    block = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    block[box] = 1
    segNode.GetSegmentation().AddEmptySegment(name, name)
    slicer.util.updateSegmentBinaryLabelmapFromArray(block, segNode, name, volume)
    return block > 0


def test_accept_copies_only_the_labels_layers_at_their_extent_and_the_job_writes_the_label(rs, logic, tmp_path):
    """The GUI thread's part of Accept copies the layers of the segments that stand for the workspace's labels, at
    their own extent (not the volume's), and writes nothing; the job's worker merges and writes the label map, the
    child submits it: the ledger holds exactly the segments' voxels, a user's other segment left out."""
    out, ws, masks = child_result(tmp_path)
    volume = load_volume(MRI, "mri")
    logic.tagCase(ws, volume, ws.import_volume(MRI).case_id)
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    logic.loadResult(str(out), segNode, volume, logic.segmentEditorNode())
    _user_block(segNode, volume, "my note", (slice(0, 3), slice(0, 20), slice(0, 20)))
    runner, context = logic.startAccept(ws, volume, segNode, annotator="t")
    try:
        assert callable(runner.commands[0]) and os.listdir(context["folder"]) == []  # nothing written here
        _, export = cases.prepare_accept(ws, slicer.util, volume, segNode, logic.ijkToRas(volume), vtk.mutable)
        extents = [segNode.GetBinaryLabelmapInternalRepresentation(i).GetExtent() for i in ("hila_1", "hila_2")]
        assert [p.array.shape for p in export.parts] == [(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
                                                         for e in extents]  # "my note"'s layer is not copied
        assert all(p.array.size < slicer.util.arrayFromVolume(volume).size for p in export.parts)
        outcome = runner.start().wait(timeout=300)
        assert outcome.ok, outcome.error
    finally:
        logic.cleanupJob(context)
    (correction,) = ws.corrections(volume.GetAttribute(segments.CASE_ATTRIBUTE))
    stored = sitk.GetArrayFromImage(ws.correction_label(correction.case_id))
    assert np.array_equal(stored == 1, masks["prostate"]) and np.array_equal(stored == 2, masks["bladder"])
    assert set(np.unique(stored)) == {0, 1, 2}
    ws.close()


def test_accept_of_a_volume_that_is_no_case_keeps_its_copy_in_the_workspace(rs, logic, tmp_path, monkeypatch):
    """A volume of a read-only user folder, no case of the open workspace: the GUI thread copies the layers, the job
    writes the compressed copy into the workspace (read back by Slicer's storage node: names, colours, voxels),
    never beside the source file nor into the home folder. Without a workspace: one line, nothing written."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    source = tmp_path / "user_data"
    source.mkdir()
    (source / "t2.nrrd").write_bytes(MRI.read_bytes())
    untouched = read_only_folder(source)
    _, ws, _ = child_result(tmp_path)
    volume = load_volume(source / "t2.nrrd", "t2")
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    prostate = _user_block(segNode, volume, "prostate", (slice(4, 9), slice(10, 30), slice(12, 28)))
    mine = _user_block(segNode, volume, "my note", (slice(6, 8), slice(0, 12), slice(0, 12)))  # overlaps nothing
    my_colour = (0.2, 0.6, 0.9)  # the user's own colour for a name outside the colour table
    segNode.GetSegmentation().GetSegment("my note").SetColor(*my_colour)
    segNode.GetSegmentation().GetSegment("prostate").SetColor(0.5, 0.5, 0.5)  # not the table's colour
    with pytest.raises(HilaError, match="open or create one") as info:
        logic.startAccept(None, volume, segNode)
    assert "\n" not in str(info.value) and list(home.iterdir()) == []
    runner, context = logic.startAccept(ws, volume, segNode)
    try:
        assert callable(runner.commands[0]) and os.listdir(context["folder"]) == []
        assert not Path(context["pending"]).exists()
        outcome = logic.accept(ws, volume, segNode)
    finally:
        logic.cleanupJob(context)
    assert outcome.saved, outcome.save_error
    copy = Path(outcome.saved)
    assert outcome.version is None and outcome.save_error is None and ws.root in copy.parents, outcome
    untouched()
    assert list(home.iterdir()) == []
    back = read_segmentation(copy, "copy")
    for name, mask, colour in (("prostate", prostate, label_color("prostate")), ("my note", mine, my_colour)):
        segId = back.GetSegmentation().GetSegmentIdBySegmentName(name)
        assert np.allclose(back.GetSegmentation().GetSegment(segId).GetColor(), colour, atol=1e-4), name
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(back, segId, volume) > 0, mask), name
    ws.close()


def test_importing_a_volume_node_writes_it_in_the_job(rs, logic, tmp_path):
    """Import of the shown volume node: its voxels are copied here, the job writes and imports them; a later edit of
    the node does not leak into the case."""
    _, ws, _ = child_result(tmp_path)
    volume = load_volume(MRI, "mri")
    original = np.array(slicer.util.arrayFromVolume(volume))
    runner, context = logic.startImportVolumeNode(ws, volume)
    try:
        assert callable(runner.commands[0]) and os.listdir(context["folder"]) == []
        slicer.util.arrayFromVolume(volume)[:] = 0  # the user edits the node while the job runs
        outcome = runner.start().wait(timeout=300)
        assert outcome.ok, outcome.error
    finally:
        logic.cleanupJob(context)
    (case,) = ws.cases()
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case.path))), original)
    ws.close()
