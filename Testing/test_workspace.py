"""The workspace API: ledger, immutable files, versions, snapshots, models, check/repair, bad input."""
from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_models import card_json
from ws_worker import make_label, make_volume, state

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.workspace import SCHEMA_VERSION, Workspace

LABELS = ["prostate", "bladder", "rectum"]


@pytest.fixture
def ws(tmp_path):
    w = Workspace.create(tmp_path / "ws", "CT", LABELS)
    yield w
    w.close()


@pytest.fixture
def vol(tmp_path):
    img = make_volume(tmp_path / "vol.nrrd")
    return tmp_path / "vol.nrrd", img


@pytest.fixture
def case(ws, vol):
    return ws.import_volume(vol[0])


def lab(img, **boxes):
    return make_label(img, boxes={int(k[1:]): v for k, v in boxes.items()} or None)


# ----------------------------------------------------------------------------------------------
# creating, opening, schema
# ----------------------------------------------------------------------------------------------

def test_create_layout_and_settings(ws):
    assert (ws.root / "hila.sqlite").is_file()
    for d in ("cases", "predictions", "corrections", "models"):
        assert (ws.root / d).is_dir()
    s = ws.settings
    assert s.modality == "CT"
    assert [(l.value, l.name) for l in s.labels] == [(1, "prostate"), (2, "bladder"), (3, "rectum")]
    assert all(len(l.color) == 3 and all(0 <= c <= 1 for c in l.color) for l in s.labels)
    con = ws.ledger.con
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert ws.current_model() is None
    assert ws.events()[-1]["kind"] == "init"


def test_reopen_sees_everything(ws, vol):
    c = ws.import_volume(vol[0])
    ws.submit(c.case_id, lab(vol[1]))
    ws.close()
    w2 = Workspace.open(ws.root)
    assert [x.case_id for x in w2.cases()] == [c.case_id]
    assert len(w2.corrections()) == 1
    w2.close()


@pytest.mark.parametrize("modality,labels,msg", [
    ("PET", "a,b", "modality"), ("", "a", "modality"), ("CT", "", "labels"), ("CT", "a,,b", "labels"),
    ("CT", "a,A", "duplicate"), ("MR", "pro$tate", "label name"),
])
def test_create_bad_arguments(tmp_path, modality, labels, msg):
    with pytest.raises(HilaError, match=msg):
        Workspace.create(tmp_path / "w", modality, labels)
    assert not (tmp_path / "w").exists()


def test_create_refuses_nonempty_folder_and_existing_workspace(tmp_path, ws):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    before = state(other)
    with pytest.raises(HilaError, match="not empty"):
        Workspace.create(other, "CT", LABELS)
    assert state(other) == before
    before = state(ws.root)
    with pytest.raises(HilaError, match="already a HILASegment workspace"):
        Workspace.create(ws.root, "CT", LABELS)
    assert state(ws.root) == before


def test_create_after_an_interrupted_init(tmp_path):
    """A folder left by a killed `init` (its folders and a temporary ledger, no workspace yet) can be initialised."""
    root = tmp_path / "w"
    for d in ("cases", "predictions", "corrections", "models", "tmp"):
        (root / d).mkdir(parents=True)
    (root / ".hila.sqlite.init-1234abcd").write_bytes(b"partial")
    with pytest.raises(HilaError, match="not a HILASegment workspace"):
        Workspace.open(root)
    with Workspace.create(root, "CT", LABELS) as w:
        assert not list(root.glob(".hila.sqlite.init-*")) and w.check().ok
    other = tmp_path / "o"
    (other / "corrections" / "c0001").mkdir(parents=True)
    with pytest.raises(HilaError, match="not empty"):
        Workspace.create(other, "CT", LABELS)
    assert (other / "corrections" / "c0001").is_dir()


def test_create_in_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with Workspace.create(tmp_path / "empty", "mr", ["prostate"]) as w:
        assert w.settings.modality == "MR"


def test_open_not_a_workspace(tmp_path):
    with pytest.raises(HilaError, match="not a HILASegment workspace"):
        Workspace.open(tmp_path)
    with pytest.raises(HilaError, match="not a HILASegment workspace"):
        Workspace.open(tmp_path / "missing")
    (tmp_path / "hila.sqlite").write_bytes(b"not a database at all" * 10)
    with pytest.raises(HilaError, match="not an SQLite database"):
        Workspace.open(tmp_path)


def test_newer_schema_is_refused_and_nothing_changes(ws, vol):
    c = ws.import_volume(vol[0])
    ws.close()
    con = sqlite3.connect(ws.root / "hila.sqlite")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    before = state(ws.root)
    with pytest.raises(HilaError, match="newer"):
        Workspace.open(ws.root)
    assert state(ws.root) == before
    assert not (ws.root / "hila.sqlite-wal").exists() or (ws.root / "hila.sqlite-wal").stat().st_size == 0
    del c


def test_migration_from_older_version_runs_in_one_transaction(tmp_path, monkeypatch):
    """A ledger at version N-1 is upgraded on open; a failing migration leaves it at N-1."""
    from HILASegmentLib.workspace import ledger as L

    with Workspace.create(tmp_path / "w", "CT", ["a"]) as w:
        pass

    def to_2(con):
        con.execute("ALTER TABLE cases ADD COLUMN note TEXT")

    def broken(con):
        con.execute("ALTER TABLE cases ADD COLUMN other TEXT")
        raise RuntimeError("migration failed half way")

    old, nxt = L.SCHEMA_VERSION, L.SCHEMA_VERSION + 1
    monkeypatch.setattr(L, "SCHEMA_VERSION", nxt)
    monkeypatch.setitem(L.MIGRATIONS, nxt, broken)
    with pytest.raises(RuntimeError):
        Workspace.open(w.root)
    con = sqlite3.connect(w.root / "hila.sqlite")
    assert con.execute("PRAGMA user_version").fetchone()[0] == old
    assert "other" not in [r[1] for r in con.execute("PRAGMA table_info(cases)")]
    con.close()
    monkeypatch.setitem(L.MIGRATIONS, nxt, to_2)
    with Workspace.open(w.root) as w2:
        assert w2.ledger.schema_version() == nxt
        assert "note" in [r[1] for r in w2.ledger.con.execute("PRAGMA table_info(cases)")]


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------

def test_import_stores_exact_voxels_and_geometry(ws, vol):
    c = ws.import_volume(vol[0])
    assert c.case_id == "c0001" and not c.existing
    img = ws.case_image(c.case_id)
    assert img.GetSize() == vol[1].GetSize() and img.GetOrigin() == vol[1].GetOrigin()
    assert img.GetSpacing() == vol[1].GetSpacing() and img.GetDirection() == vol[1].GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(vol[1]))
    assert ws.case(c.name).case_id == c.case_id  # by name too


def test_import_duplicate_detected_by_content(ws, vol, tmp_path):
    c1 = ws.import_volume(vol[0])
    sitk.WriteImage(vol[1], str(tmp_path / "same.nii.gz"))  # other format, same voxels and geometry
    before = state(ws.root)
    c2 = ws.import_volume(tmp_path / "same.nii.gz")
    assert c2.existing and c2.case_id == c1.case_id
    assert state(ws.root) == before
    other = make_volume(tmp_path / "other.nrrd", seed=1)
    c3 = ws.import_volume(tmp_path / "other.nrrd")
    assert not c3.existing and c3.case_id == "c0002"
    del other


def test_import_bad_files_change_nothing(ws, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    before = state(ws.root)
    for p in (bad, tmp_path / "missing.nrrd", tmp_path):
        with pytest.raises(HilaError):
            ws.import_volume(p)
    assert state(ws.root) == before


# ----------------------------------------------------------------------------------------------
# predictions and corrections
# ----------------------------------------------------------------------------------------------

def test_submit_versions_are_immutable_and_readable(ws, case, vol):
    l1 = lab(vol[1])
    l2 = lab(vol[1], v1=(6, 14, 8, 20, 8, 22), v3=(20, 22, 0, 4, 0, 4))
    c1 = ws.submit(case.case_id, l1, quality="rough", annotator="ann", seconds=12.5)
    c2 = ws.submit(case.case_id, l2, quality="reviewed")
    assert (c1.version, c2.version) == (1, 2)
    assert c1.path != c2.path and c1.path.is_file() and c2.path.is_file()
    assert np.array_equal(sitk.GetArrayFromImage(ws.correction_label(case.case_id, 1)), sitk.GetArrayFromImage(l1))
    assert np.array_equal(sitk.GetArrayFromImage(ws.correction_label(case.case_id)), sitk.GetArrayFromImage(l2))
    assert c1.annotator == "ann" and c1.seconds == 12.5
    # no prediction: v1 was drawn from scratch, v2 is measured against v1
    assert c1.effort["against"] == "nothing"
    assert c2.effort["against"] == "correction v1"
    assert c2.effort["voxels_changed"] == 8 * 12 * 2 + 2 * 4 * 4 + 3 * 8 * 8  # grown, added, bladder removed
    # the ledger refuses to rewrite or delete a correction
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        ws.ledger.con.execute("UPDATE corrections SET quality = 'weak'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        ws.ledger.con.execute("DELETE FROM corrections")


def test_effort_against_prediction(ws, case, vol):
    pred = lab(vol[1])
    p = ws.add_prediction(case.case_id, pred, model_version=1, uncertainty={"mean_uncertainty": 0.3})
    corrected = lab(vol[1], v1=(6, 14, 8, 20, 8, 14), v2=(2, 5, 2, 10, 2, 10))
    c = ws.submit(case.case_id, corrected)
    e = c.effort
    assert c.based_on == p.prediction_id and e["against"] == f"prediction {p.prediction_id}"
    assert e["voxels_changed"] == 8 * 12 * 6
    assert e["dice"]["bladder"] == 1.0
    assert e["dice"]["prostate"] == pytest.approx(2 * 8 * 12 * 6 / (8 * 12 * 12 + 8 * 12 * 6), abs=1e-6)
    assert e["dice"]["rectum"] == 1.0  # absent from both
    st = ws.status()
    assert st["effort"]["v1"]["corrections"] == 1
    assert st["effort"]["v1"]["dice_vs_prediction_mean"]["prostate"] == pytest.approx(e["dice"]["prostate"], abs=1e-4)


def test_submit_seg_nrrd_matched_by_name(ws, case, vol, tmp_path):
    from HILASegmentLib.formats import segfile

    arr = np.zeros(sitk.GetArrayViewFromImage(vol[1]).shape, np.uint8)
    arr[6:14, 8:20, 8:20] = 1   # will be named "Rectum"
    arr[2:5, 2:10, 2:10] = 2    # "Femur" (not a workspace label)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(vol[1])
    seg = segfile.Segmentation.from_label_image(img, [(1, "Rectum", (1, 0, 0)), (2, "Femur", (0, 1, 0))])
    segfile.write_segmentation(seg, tmp_path / "c.seg.nrrd")
    c = ws.submit(case.case_id, tmp_path / "c.seg.nrrd")
    got = sitk.GetArrayFromImage(ws.correction_label(case.case_id))
    assert set(np.unique(got)) == {0, 3}
    assert int((got == 3).sum()) == 8 * 12 * 12
    assert c.effort["source"].endswith("c.seg.nrrd")
    seg2 = segfile.Segmentation.from_label_image(img, [(1, "Liver", (1, 0, 0)), (2, "Femur", (0, 1, 0))])
    segfile.write_segmentation(seg2, tmp_path / "none.seg.nrrd")
    before = state(ws.root)
    with pytest.raises(HilaError, match="no segment named like a workspace label"):
        ws.submit(case.case_id, tmp_path / "none.seg.nrrd")
    assert state(ws.root) == before


def test_extra_label_values_dropped_or_refused_when_strict(ws, case, vol):
    l = lab(vol[1], v1=(6, 14, 8, 20, 8, 20), v5=(0, 2, 0, 2, 0, 2))
    before = state(ws.root)
    with pytest.raises(HilaError, match="unknown label value.*5"):
        ws.submit(case.case_id, l, strict=True)
    assert state(ws.root) == before
    c = ws.submit(case.case_id, l)
    assert c.effort["ignored_values"] == {"5": 8}
    assert set(np.unique(sitk.GetArrayFromImage(ws.correction_label(case.case_id)))) == {0, 1}


def _bad_labels(vol, tmp_path):
    img = vol[1]
    other_grid = make_label(make_volume(tmp_path / "o.nrrd", spacing=(1.0, 1.0, 3.0)))
    shifted = lab(img)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    empty = make_label(img, boxes={1: (0, 0, 0, 0, 0, 0)})
    unknown = make_label(img, boxes={7: (0, 4, 0, 4, 0, 4), 9: (5, 8, 5, 8, 5, 8)})
    fractional = sitk.Cast(lab(img), sitk.sitkFloat32) * 0.5
    negative = sitk.Cast(lab(img), sitk.sitkInt16) * -1
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 32 32 24\nencoding: gzip\n\nnot gzip")
    return [("another grid", other_grid, "grid"), ("shifted origin", shifted, "grid"),
            ("empty", empty, "empty"), ("unknown values", unknown, "unknown label value"),
            ("fractional", fractional, "not a label map"), ("negative", negative, "negative"),
            ("corrupt file", corrupt, "corrupt"), ("missing file", tmp_path / "nope.nii.gz", "no such file")]


def test_bad_submissions_change_nothing(ws, case, vol, tmp_path):
    ws.submit(case.case_id, lab(vol[1]))
    for what, label, msg in _bad_labels(vol, tmp_path):
        before = state(ws.root)
        with pytest.raises(HilaError, match=msg):
            ws.submit(case.case_id, label)
        assert state(ws.root) == before, what
    before = state(ws.root)
    with pytest.raises(HilaError, match="unknown case"):
        ws.submit("c9999", lab(vol[1]))
    with pytest.raises(HilaError, match="quality"):
        ws.submit(case.case_id, lab(vol[1]), quality="great")
    with pytest.raises(HilaError, match="seconds"):
        ws.submit(case.case_id, lab(vol[1]), seconds=-3)
    with pytest.raises(HilaError, match="based-on"):
        ws.submit(case.case_id, lab(vol[1]), based_on=12345)
    assert state(ws.root) == before


@pytest.mark.parametrize("write", ["submit", "add_prediction", "import_volume", "add_model"])
def test_failed_commit_leaves_no_file(ws, case, vol, tmp_path, monkeypatch, write):
    """If the ledger insert fails after the file was placed, the file is taken back (every writer goes
    through the one stage-place-insert-undo helper)."""
    make_volume(tmp_path / "other.nrrd", seed=7)
    (tmp_path / "m.onnx").write_bytes(b"not really a model, but bytes to store")
    calls = {
        "submit": lambda: ws.submit(case.case_id, lab(vol[1])),
        "add_prediction": lambda: ws.add_prediction(case.case_id, lab(vol[1]), None),
        "import_volume": lambda: ws.import_volume(tmp_path / "other.nrrd"),
        "add_model": lambda: ws.add_model(tmp_path / "m.onnx", card_json("m")),
    }
    before = state(ws.root)

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(ws.core, "event", boom)  # the event log of the parts' shared core
    with pytest.raises(RuntimeError):
        calls[write]()
    files = lambda st: (st[0], {k: v for k, v in st[1].items() if v != "dir"})  # noqa: E731 (an empty case folder may stay)
    assert files(state(ws.root)) == files(before)
    assert ws.check().ok and not ws.check().orphans and not ws.check().stale_temporaries


# ----------------------------------------------------------------------------------------------
# snapshots and training runs
# ----------------------------------------------------------------------------------------------

def test_training_run_keeps_its_snapshot(ws, vol, tmp_path):
    c1 = ws.import_volume(vol[0])
    make_volume(tmp_path / "b.nrrd", seed=3)
    c2 = ws.import_volume(tmp_path / "b.nrrd")
    ws.submit(c1.case_id, lab(vol[1]), quality="reviewed")
    ws.submit(c2.case_id, lab(vol[1]), quality="rough")
    snap = ws.snapshot()
    assert [(s.case_id, s.correction_version, s.quality) for s in snap] == [("c0001", 1, "reviewed"), ("c0002", 1, "rough")]
    run = ws.start_training_run(snap)
    ws.submit(c1.case_id, lab(vol[1], v2=(0, 3, 0, 3, 0, 3)), quality="reviewed")  # arrives during training
    r = ws.training_run(run)
    assert r.status == "running"
    assert [(s.case_id, s.correction_version) for s in r.snapshot] == [("c0001", 1), ("c0002", 1)]
    assert all(s.label_path.is_file() and s.image_path.is_file() for s in r.snapshot)
    assert [(s.case_id, s.correction_version) for s in ws.snapshot()] == [("c0001", 2), ("c0002", 1)]
    assert [s.case_id for s in ws.snapshot(qualities=["reviewed"])] == ["c0001"]
    ws.finish_training_run(run, "done", {"dice": 0.8}, log="ok")
    r = ws.training_run(run)
    assert r.status == "done" and r.metrics == {"dice": 0.8} and r.finished_at
    with pytest.raises(HilaError, match="already done"):
        ws.finish_training_run(run, "failed", {})
    with pytest.raises(HilaError, match="status"):
        ws.finish_training_run(ws.start_training_run([]), "running", {})


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

def _fake_model(tmp_path, name, payload=b"onnx"):
    p = tmp_path / f"{name}.onnx"
    p.write_bytes(payload + name.encode())
    ck = tmp_path / f"{name}.pt"
    ck.write_bytes(b"torch" + name.encode())
    return p, ck


def test_models_add_promote_rollback(ws, tmp_path):
    m1, k1 = _fake_model(tmp_path, "m1")
    r1 = ws.add_model(m1, card_json("m1", metrics={"dice": 0.7}), status="current", checkpoint_path=k1)
    assert r1.version == 1 and r1.status == "current" and r1.checkpoint_path.read_bytes() == k1.read_bytes()
    m2, _ = _fake_model(tmp_path, "m2")
    r2 = ws.add_model(m2, card_json("m2"), parent=1)
    assert (r2.version, r2.status, r2.parent) == (2, "candidate", 1)
    assert ws.current_model().version == 1
    ws.promote(2)
    assert [m.status for m in ws.models()] == ["retired", "current"]
    back = ws.rollback()
    assert back.version == 1 and [m.status for m in ws.models()] == ["current", "retired"]
    with pytest.raises(HilaError, match="nothing to roll back"):
        ws.rollback()
    m3, _ = _fake_model(tmp_path, "m3")
    ws.add_model(m3, card_json("m3"), parent=1, status="current")
    assert ws.current_model().version == 3
    assert ws.rollback().version == 1
    # files are copies, immutable, never overwritten
    m1.write_bytes(b"changed")
    assert ws.model(1).path.read_bytes() == b"onnxm1"
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        ws.ledger.con.execute("UPDATE models SET file = 'x' WHERE version = 1")
    before = state(ws.root)
    for bad in (lambda: ws.promote(9), lambda: ws.promote("x"), lambda: ws.add_model(tmp_path / "no.onnx", card_json("x")),
                lambda: ws.add_model(m2, card_json("x"), parent=42), lambda: ws.add_model(m2, card_json("x"), status="best"),
                lambda: ws.add_model(m2, {"name": "no grid, no labels"})):  # a card is checked when it is added
        with pytest.raises(HilaError):
            bad()
    assert state(ws.root) == before
    assert ws.check().ok


# ----------------------------------------------------------------------------------------------
# check and repair
# ----------------------------------------------------------------------------------------------

def test_check_clean_and_detects_damage(ws, case, vol):
    c = ws.submit(case.case_id, lab(vol[1]))
    rep = ws.check()
    assert rep.ok and rep.rows_checked == 2 and rep.files_checked == 2, rep.summary()
    # a changed file is damage
    data = c.path.read_bytes()
    os.chmod(c.path, 0o644)
    c.path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    rep = ws.check()
    assert not rep.ok and "has changed" in rep.summary()
    # a missing file is damage; repair does not hide it
    c.path.unlink()
    rep = ws.check(repair=True)
    assert not rep.ok and "missing" in rep.summary()


def test_check_orphans_temporaries_and_repair(ws, case, vol):
    ws.submit(case.case_id, lab(vol[1]))
    # a writer killed between placing its file and committing its row; and one killed while staging
    orphan = ws.root / "corrections" / case.case_id / "v0002-0123456789ab.nrrd"
    orphan.write_bytes(b"x")
    stale = ws.root / "tmp" / "deadbeef0000.tmp"
    stale.mkdir()
    (stale / ".lock").write_text("", encoding="utf-8")
    (stale / "payload.nrrd").write_bytes(b"half")
    rep = ws.check()
    assert rep.ok, rep.summary()
    assert rep.orphans == [f"corrections/{case.case_id}/v0002-0123456789ab.nrrd"]
    assert rep.stale_temporaries == ["tmp/deadbeef0000.tmp"]
    # a foreign file in a managed folder is reported as a problem until repaired
    (ws.root / "cases" / "notes.txt").write_text("hello", encoding="utf-8")
    assert not ws.check().ok
    rows_before = state(ws.root)[0]
    rep = ws.check(repair=True)
    assert len(rep.repaired) == 3
    lost = list((ws.root / "lost+found").rglob("*"))
    assert any(p.name == "v0002-0123456789ab.nrrd" for p in lost) and any(p.name == "notes.txt" for p in lost)
    rep = ws.check()
    assert rep.ok and not rep.orphans and not rep.stale_temporaries and not rep.foreign
    after = state(ws.root)[0]
    assert after["corrections"] == rows_before["corrections"]  # repair never touches a correction


def test_check_leaves_a_live_writers_temporary_alone(ws):
    import fcntl
    live = ws.root / "tmp" / "aaaaaaaaaaaa.tmp"
    live.mkdir()
    fh = open(live / ".lock", "w", encoding="utf-8")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        rep = ws.check(repair=True)
        assert rep.ok and rep.busy_temporaries == ["tmp/aaaaaaaaaaaa.tmp"] and live.is_dir()
    finally:
        fh.close()


# ----------------------------------------------------------------------------------------------
# status, rank, export
# ----------------------------------------------------------------------------------------------

def test_status_and_rank(ws, vol, tmp_path):
    ids = []
    for seed in range(5):
        make_volume(tmp_path / f"v{seed}.nrrd", seed=10 + seed)
        ids.append(ws.import_volume(tmp_path / f"v{seed}.nrrd").case_id)
    ref = vol[1]
    ws.add_prediction(ids[0], lab(ref), 1, {"mean_uncertainty": 0.1})
    ws.add_prediction(ids[1], lab(ref), 1, {"mean_uncertainty": 0.4})
    ws.add_prediction(ids[2], lab(ref), 1, {"predicted_dice": 0.5})  # need 0.5: first
    ws.add_prediction(ids[3], lab(ref), 1, {"mean_uncertainty": 0.9})
    ws.submit(ids[3], lab(ref), quality="reviewed")                   # reviewed: not ranked
    ws.submit(ids[1], lab(ref), quality="rough")                      # rough: still ranked
    ranked = ws.rank()
    assert [r["case_id"] for r in ranked] == [ids[2], ids[1], ids[0], ids[4]]
    assert ranked[-1]["predicted"] is False and ranked[0]["review_need"] == 0.5
    st = ws.status()
    assert st["cases"]["by_state"] == {"new": 1, "predicted": 2, "weak": 0, "rough": 1, "reviewed": 1}
    assert st["corrections"]["by_quality"] == {"reviewed": 1, "rough": 1, "weak": 0}
    assert st["predictions"] == 4


def test_export(ws, vol, tmp_path):
    from HILASegmentLib.formats import segfile

    c = ws.import_volume(vol[0])
    make_volume(tmp_path / "b.nrrd", seed=5)
    ws.import_volume(tmp_path / "b.nrrd")
    ws.submit(c.case_id, lab(vol[1]), quality="rough")
    ws.submit(c.case_id, lab(vol[1], v3=(1, 9, 1, 9, 1, 9)), quality="reviewed")
    res = ws.export(tmp_path / "out")
    assert res["cases"] == 1 and res["labels"] == 1 and res["segmentations"] == 1
    man = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    e = man["cases"][0]
    assert e["correction_version"] == 2 and e["quality"] == "reviewed" and e["case_id"] == c.case_id
    got = sitk.ReadImage(str(tmp_path / "out" / e["label"]))
    assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(lab(vol[1], v3=(1, 9, 1, 9, 1, 9))))
    seg = segfile.read_segmentation(tmp_path / "out" / e["segmentation"])
    assert "rectum" in seg.names
    img = sitk.ReadImage(str(tmp_path / "out" / e["image"]))
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(vol[1]))
    assert ws.export(tmp_path / "all", include_unlabelled=True)["cases"] == 2
    with pytest.raises(HilaError, match="not an empty folder"):
        ws.export(tmp_path / "out")
