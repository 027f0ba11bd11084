"""Each file is read once per operation and passed on as an object (issue 25, item 5), counted here, not claimed:
a submit reads the case's stored image once (for the modality check, the grid check and the pseudo-mask alike), and
the next operation on the same case of the same open workspace not at all (the read cache, keyed by the checksum the
ledger keeps; issue 25, third pass, item 3);
``hila infer`` streams the ONNX file once before onnxruntime loads it; the gate reads each gate case once for both
models; a training run writes the candidate ONNX once (no probe copy)."""
from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ws_worker import make_label, make_volume

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.workspace import Workspace, casestore
from HILASegmentLib.workspace.readcache import ImageCache


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
    with Workspace.open(ws.root) as fresh:       # nothing cached: the read a submit of a label file makes
        fresh.submit(case.case_id, f)
    assert len(counted_case_reads) == 1          # a label file: was 2


def test_a_submit_of_marks_reads_the_case_image_once(ws_case, counted_case_reads):
    ws, case, img = ws_case
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))
    box = [float(v) for v in np.concatenate([centre - 6.0, centre + 6.0])]
    c = ws.submit_marks(case.case_id, {"space": "LPS", "items": [{"label": "prostate", "box": box}]})
    assert c.quality == "weak" and sitk.GetArrayFromImage(ws.correction_label(c.case_id)).any()
    assert len(counted_case_reads) == 1          # was 3: the pseudo-mask, the modality check, the grid check


def test_the_next_operation_on_a_case_is_served_from_the_read_cache(ws_case, counted_case_reads, tmp_path):
    """A submit then a prediction of the same case read its stored image once between them (was once each); another
    case (another file, another checksum) is read, not served the first one's image."""
    ws, case, img = ws_case
    label = make_label(img)
    ws.submit(case.case_id, label)
    ws.add_prediction(case.case_id, label, None)
    assert counted_case_reads == [case.path]     # was [case.path, case.path]: one read per operation
    make_volume(tmp_path / "other.nrrd", seed=5)
    other = ws.import_volume(tmp_path / "other.nrrd")
    assert other.sha256 != case.sha256
    got = ws.case_image(other.case_id)
    assert counted_case_reads == [case.path, other.path]
    assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(sitk.ReadImage(str(other.path))))
    ws.submit(case.case_id, label)               # still cached (the cache holds a few images)
    assert counted_case_reads == [case.path, other.path]


def test_an_rtstruct_of_three_contour_sets_reads_the_real_ct_once(tmp_path, counted_case_reads):
    """The real pelvic CT with its RTSTRUCT (manual, DL and MBS sets: three corrections): the case's stored image is
    read once for the series and the three submits (was 4: the series, then one per submit)."""
    pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")
    from conftest import shared

    ct_dir = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    with Workspace.create(tmp_path / "ws", "CT", ["prostate", "bladder", "rectum"]) as ws:
        case = ws.import_series(ct_dir)
        done = ws.import_dicom_object(next(ct_dir.glob("RS*.dcm")), case_id=case.case_id, sets="all")
    assert [d["part"] for d in done] == ["DL", "MBS", "manual"] and not any(d["existing"] for d in done)
    assert counted_case_reads == [case.path]


def test_a_caller_changing_its_image_never_changes_the_cached_one(ws_case, counted_case_reads):
    """The cache hands out copies: voxels, geometry and metadata changed by one caller are not what the next gets."""
    ws, case, img = ws_case
    first = ws.case_image(case.case_id)
    want = sitk.GetArrayFromImage(first)
    first.SetPixel(0, 0, 0, 12345)
    first.SetOrigin((99.0, 99.0, 99.0))
    first.SetMetaData("0008|0060", "MR")
    again = ws.case_image(case.case_id)
    assert len(counted_case_reads) == 1
    assert np.array_equal(sitk.GetArrayViewFromImage(again), want)
    assert again.GetOrigin() == img.GetOrigin() and not again.HasMetaDataKey("0008|0060")


def test_a_cached_case_file_changed_outside_hila_is_read_again_and_reported(ws_case, counted_case_reads):
    """The cache never hides what became of the file: a removed case file is the same one line as without a cache,
    and a file put in its place is read again (``hila check`` says it differs from the ledger's checksum)."""
    ws, case, img = ws_case
    ws.case_image(case.case_id)
    saved = case.path.read_bytes()
    case.path.unlink()
    with pytest.raises(HilaError, match="is missing"):
        ws.case_image(case.case_id)
    case.path.write_bytes(saved)
    ws.case_image(case.case_id)
    assert counted_case_reads == [case.path, case.path]


def test_the_read_cache_is_bounded():
    """A few images at most, the least recently used leaving first; an image larger than the byte bound is not kept."""
    cache = ImageCache(max_entries=2, max_bytes=10_000)
    reads = []

    def reader(n):
        return lambda: (reads.append(n), sitk.Image(10, 10, 10, sitk.sitkUInt8))[1]  # 1000 bytes each

    path = Path(__file__)
    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get(key, path, reader(key))
    assert reads == ["a", "b", "c", "b"] and len(cache) == 2      # b left when c came (a was used after b)
    big = ImageCache(max_entries=2, max_bytes=500)
    big.get("a", path, reader("A"))
    big.get("a", path, reader("A"))
    assert reads[-2:] == ["A", "A"] and len(big) == 0


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
