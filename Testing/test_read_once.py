"""Each file is read once per operation and passed on as an object (issue 25, item 5), counted here, not claimed:
a submit reads the case's stored image once (for the modality check, the grid check and the pseudo-mask alike);
``hila infer`` streams the ONNX file once before onnxruntime loads it; the gate reads each gate case once for both
models; a training run writes the candidate ONNX once (no probe copy)."""
from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ws_worker import make_label, make_volume

from HILASegmentLib.workspace import Workspace, casestore


@pytest.fixture
def counted_case_reads(monkeypatch):
    """Calls that read a case's stored image (``casestore`` is the one place that reads them)."""
    reads = []
    real = casestore.read_stored

    def counting(root, path, *a, **k):
        reads.append(Path(path))
        return real(root, path, *a, **k)

    monkeypatch.setattr(casestore, "read_stored", counting)
    return reads


@pytest.fixture
def ws_case(tmp_path):
    ws = Workspace.create(tmp_path / "ws", "CT", ["prostate", "bladder"])
    img = make_volume(tmp_path / "vol.nrrd")
    case = ws.import_volume(tmp_path / "vol.nrrd")
    yield ws, case, img
    ws.close()


def test_a_submit_reads_the_case_image_once(ws_case, counted_case_reads, tmp_path):
    ws, case, img = ws_case
    label = make_label(img)
    ws.submit(case.case_id, label)
    assert len(counted_case_reads) == 1          # was 2: the modality check, then the grid check
    counted_case_reads.clear()
    f = tmp_path / "label.nrrd"
    sitk.WriteImage(label, str(f), True)
    ws.submit(case.case_id, f)
    assert len(counted_case_reads) == 1          # a label file: was 2


def test_a_submit_of_marks_reads_the_case_image_once(ws_case, counted_case_reads):
    ws, case, img = ws_case
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))
    box = [float(v) for v in np.concatenate([centre - 6.0, centre + 6.0])]
    c = ws.submit_marks(case.case_id, {"space": "LPS", "items": [{"label": "prostate", "box": box}]})
    assert c.quality == "weak" and sitk.GetArrayFromImage(ws.correction_label(c.case_id)).any()
    assert len(counted_case_reads) == 1          # was 3: the pseudo-mask, the modality check, the grid check


def test_hila_infer_streams_the_onnx_file_once(tmp_path, monkeypatch, capsys):
    """Finding the model's card and checking its checksum share one stream of the file (onnxruntime's own load
    is the only other read)."""
    from tiny_models import phantom, rotation, tiny_model

    from HILASegmentLib.cli import main

    model = tiny_model(tmp_path)
    img, _ = phantom((40, 36, 12), (0.9, 0.9, 2.5), rotation([1, 0, 0], 10))
    sitk.WriteImage(img, str(tmp_path / "img.nrrd"), True)
    opened = []
    real = builtins.open

    def counting(file, mode="r", *a, **k):
        if Path(str(file)) == model and "r" in mode:
            opened.append(mode)
        return real(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", counting)
    rc = main(["infer", "--image", str(tmp_path / "img.nrrd"), "--out", str(tmp_path / "o.seg.nrrd"),
               "--model", str(model)])
    assert rc == 0, capsys.readouterr().err
    assert len(opened) == 1                      # was 2: read_card's stream, then the Segmenter's checksum stream


def test_a_training_run_reads_each_gate_case_once_and_writes_the_candidate_once(tmp_path, monkeypatch):
    """The gate scores candidate and current model in one pass over the gate cases (each image read once, not
    once per model), with the candidate's card passed along: the candidate ONNX is written once, where it is
    registered (no probe copy to read its card back from)."""
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from tiny_models import synthetic_workspace

    from HILASegmentLib.training import gate, onnxexport
    from HILASegmentLib.training.run import TrainOptions, train_workspace

    tiny = dict(patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64], steps=2, max_minutes=5,
                threads=1)
    ws, ids, labels = synthetic_workspace(tmp_path, range(10, 15), corrected=2)
    train_workspace(ws, TrainOptions(**tiny))
    for cid in ids[2:]:
        ws.submit(cid, labels[cid])
    reads, written = [], []
    real_read, real_embed = gate.read_image, onnxexport.embed_card
    monkeypatch.setattr(gate, "read_image", lambda p, *a, **k: (reads.append(str(p)), real_read(p, *a, **k))[1])
    monkeypatch.setattr(onnxexport, "embed_card", lambda i, c, o: (written.append(Path(o).name), real_embed(i, c, o))[1])
    r2 = train_workspace(ws, TrainOptions(**tiny))
    card = ws.model(r2["model_version"]).card
    gate_ids = [g["case_id"] for g in card.training.gate_set]
    assert r2["held_out"] and len(gate_ids) == 2 and card.metrics.parent_validation.cases
    gate_images = [str(ws.case(c).path) for c in gate_ids]
    assert sorted(r for r in reads if r in gate_images) == sorted(gate_images)   # was each twice
    assert written == [f"model_v{r2['model_version']}.onnx"]                     # was probe.onnx, then this
