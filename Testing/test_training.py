"""The bundled trainer: real (tiny) runs end to end, cancellation, devices, gate, promotion and rollback.

Synthetic pelvis-like CTs (a body, a bladder and a rectum with gas, in Hounsfield units) keep the
runs to a few steps on 32x32x16 patches, so the file runs in about a minute on 2 cores and needs no
shared data. The leave-one-out check on the real CTs is ``test_training_loo.py`` (slow), with the figures
per fold in ``scripts/make_starter_models.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"), OMP_NUM_THREADS="1")

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from HILASegmentLib.errors import CancelledError, HilaError  # noqa: E402
from HILASegmentLib.modelcard import read_card  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

TINY = dict(patch_size=[32, 32, 16], spacing=[3.0, 3.0, 3.0], channels=[8, 16, 32, 64], steps=3, max_minutes=5,
            threads=1, val_every_steps=2)


def synthetic_ct(seed: int, size=(48, 48, 20)):
    """(CT image, label image): body ellipse, bladder (1) anterior, rectum (2) posterior with gas; 2x2x3 mm."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij")
    cx, cy = size[0] / 2 + rng.uniform(-2, 2), size[1] / 2 + rng.uniform(-2, 2)
    body = ((x - cx) / 20.0) ** 2 + ((y - cy) / 17.0) ** 2 < 1
    ct = np.full(z.shape, -1000.0)
    ct[body] = -90.0                                              # fat
    bl = ((x - cx) / 7.0) ** 2 + ((y - cy + 7) / 6.0) ** 2 + ((z - 11) / 5.0) ** 2 < 1
    re = ((x - cx) / 4.0) ** 2 + ((y - cy - 7) / 4.0) ** 2 < 1
    ct[bl] = 10.0
    ct[re] = 40.0
    ct[re & ((x - cx) ** 2 + (y - cy - 7) ** 2 < 2)] = -800.0    # gas in the rectum
    ct += rng.normal(0, 15, ct.shape) * body
    lab = np.zeros(z.shape, np.uint8)
    lab[bl] = 1
    lab[re] = 2
    img = sitk.GetImageFromArray(ct.astype(np.int16))
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-48.0, -48.0, 0.0))
    li = sitk.GetImageFromArray(lab)
    li.CopyInformation(img)
    return img, li


@pytest.fixture
def tiny_ws(tmp_path):
    """A CT workspace with 3 synthetic cases, 2 of them corrected; no model."""
    ws = Workspace.create(tmp_path / "ws", "CT", ["bladder", "rectum"])
    ids, labels = [], {}
    for i in range(3):
        img, lab = synthetic_ct(i)
        p = tmp_path / f"ct{i}.nii.gz"
        sitk.WriteImage(img, str(p))
        case = ws.import_volume(p)
        ids.append(case.case_id)
        labels[case.case_id] = lab
    for cid in ids[:2]:
        ws.submit(cid, labels[cid], quality="reviewed")
    ws.labels_for_test = labels  # type: ignore[attr-defined]
    ws.ids_for_test = ids  # type: ignore[attr-defined]
    return ws


def opts(**kw):
    from HILASegmentLib.training.run import TrainOptions

    d = dict(TINY)
    d.update(kw)
    return TrainOptions(**d)


def ledger_rows(ws):
    return {"models": [(m.version, m.status, str(m.path)) for m in ws.models()],
            "runs": [(r.run_id, r.status, r.model_version) for r in ws.training_runs()]}


# ------------------------------------------------------------------------------------------------ runs

def test_round_trip_train_export_parity_register_promote_rollback(tiny_ws):
    from HILASegmentLib.training.run import train_workspace

    ws = tiny_ws
    events = []
    r1 = train_workspace(ws, opts(), progress=lambda f, m, **k: events.append(dict(k, fraction=f)))
    # first model: no held-out set with 2 corrections, validated on the training cases, promoted (no current)
    assert r1["model_version"] == 1 and r1["promoted"] and not r1["held_out"]
    assert r1["validation"]["set"].startswith("training")
    assert {e.get("phase") for e in events} >= {"prepare", "train", "validate", "done"}
    train_ev = [e for e in events if e.get("phase") == "train"]
    assert train_ev and all(k in train_ev[0] for k in ("epoch", "step", "loss", "val_dice", "seconds_left"))
    m1 = ws.model(1)
    assert m1.status == "current" and m1.checkpoint_path is not None and m1.checkpoint_path.exists()
    card = read_card(m1.path).to_dict()
    par = card["metrics"]["parity"]
    assert 0.0 <= par["max_abs_diff"] <= par["tolerance"] and par["label_agreement"] > 0.99
    assert [l["name"] for l in card["labels"]] == ["bladder", "rectum"]
    assert card["architecture"]["name"] == "UNet" and card["architecture"]["channels"] == [8, 16, 32, 64]
    # the card lists exactly the corrections it was trained on
    snap = {(s.case_id, s.correction_version) for s in ws.snapshot()}
    assert {(t["case_id"], t["correction_version"]) for t in card["training_set"]} == snap
    assert ws.training_runs()[-1].status == "done" and ws.training_runs()[-1].model_version == 1

    # second round: a 3rd correction and a new version of case 1 -> held-out set, fine-tune from v1's checkpoint
    ids, labels = ws.ids_for_test, ws.labels_for_test
    ws.submit(ids[2], labels[ids[2]], quality="rough")
    ws.submit(ids[0], labels[ids[0]], quality="reviewed")
    r2 = train_workspace(ws, opts(promote="always"))
    assert r2["init"] == "finetune v1" and r2["held_out"] and r2["promoted"]
    card2 = read_card(ws.model(2).path).to_dict()
    assert card2["parent_version"] == 1 and card2["metrics"]["parent_validation"]["version"] == 1
    assert {(t["case_id"], t["correction_version"]) for t in card2["training_set"]} == \
        {(ids[0], 2), (ids[1], 1), (ids[2], 1)}
    # the gate compared both models on the same held-out corrections
    v, pv = card2["metrics"]["validation"], card2["metrics"]["parent_validation"]
    assert v["set"] == "held_out" and [c["case_id"] for c in v["cases"]] == [c["case_id"] for c in pv["cases"]]
    assert ws.current_model().version == 2
    assert ws.rollback().version == 1 and ws.current_model().version == 1

    # --promote never keeps a candidate; auto follows the held-out comparison
    r3 = train_workspace(ws, opts(promote="never"))
    assert not r3["promoted"] and ws.model(r3["model_version"]).status == "candidate"
    assert ws.current_model().version == 1
    assert ws.check().ok


def test_gate_rule():
    from HILASegmentLib.training.gate import decide

    cand, cur = {"mean_dice": 0.7}, {"mean_dice": 0.6}
    assert decide("auto", cand, cur, True, True)[0]
    assert decide("auto", {"mean_dice": 0.6}, cur, True, True)[0]          # at least as good
    assert not decide("auto", {"mean_dice": 0.5}, cur, True, True)[0]
    assert not decide("auto", cand, cur, False, True)[0]                    # no held-out set, a current model
    assert decide("auto", cand, None, False, False)[0]                      # nothing to lose
    assert not decide("auto", cand, None, True, True)[0]                    # current could not be validated
    assert not decide("auto", {"mean_dice": 0.0}, None, False, False)[0]
    assert decide("always", {"mean_dice": 0.0}, cur, True, True)[0]
    assert not decide("never", cand, cur, True, True)[0]
    with pytest.raises(HilaError):
        decide("sometimes", cand, cur, True, True)


def test_quality_weights_and_split():
    from HILASegmentLib.training.dataset import quality_weight, split_cases

    assert quality_weight("reviewed") > quality_weight("rough") > quality_weight("weak") > 0
    assert quality_weight("rough", {"rough": 0.9}) == 0.9
    cases = [{"case_id": f"c{i}"} for i in range(2)]
    assert split_cases(cases) == (cases, [])
    tr, va = split_cases([{"case_id": f"c{i}"} for i in range(10)])
    assert len(va) == 2 and len(tr) == 8 and not {c["case_id"] for c in tr} & {c["case_id"] for c in va}


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_changes_nothing(tiny_ws, tmp_path):
    from HILASegmentLib.training.run import train_workspace

    ws = tiny_ws
    before = ledger_rows(ws)
    with pytest.raises(HilaError, match="not a HILASegment workspace"):
        train_workspace(tmp_path / "nowhere", opts())
    with pytest.raises(HilaError, match="max-minutes"):
        train_workspace(ws, opts(max_minutes=0))
    with pytest.raises(HilaError, match="promote"):
        train_workspace(ws, opts(promote="maybe"))
    with pytest.raises(HilaError, match="multiple of 8"):
        train_workspace(ws, opts(patch_size=[30, 30, 16]))
    with pytest.raises(HilaError, match="imported"):
        train_workspace(ws, opts(init="imported"))
    empty = Workspace.create(tmp_path / "empty", "CT", ["bladder"])
    with pytest.raises(HilaError, match="no corrections"):
        train_workspace(empty, opts())
    assert ledger_rows(ws) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_absent_is_one_line_error(tiny_ws):
    p = subprocess.run([PY, "-m", "HILASegmentLib", "train", str(tiny_ws.root), "--device", "cuda"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2
    err = [l for l in p.stderr.splitlines() if l.startswith("hila: error:")]
    assert len(err) == 1 and "cuda" in err[0].lower()
    assert tiny_ws.training_runs() == []


def test_help_does_not_import_torch():
    code = ("import sys; from HILASegmentLib.cli import build_parser; p = build_parser(); "
            "p.parse_args(['train', 'x']); print(any(m in sys.modules for m in ('torch', 'monai', 'onnx')))")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


# ------------------------------------------------------------------------------------------------ cancel

def test_sigterm_cancels_cleanly(tiny_ws):
    ws = tiny_ws
    before = ledger_rows(ws)
    files_before = sorted(p.name for p in (ws.root / "models").iterdir()) if (ws.root / "models").exists() else []
    proc = subprocess.Popen([PY, "-m", "HILASegmentLib.training", str(ws.root), "--json", "--max-minutes", "5",
                             "--patch", "32,32,16", "--channels", "8,16,32,64", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stdout:
            rec = json.loads(line)
            if rec.get("phase") == "train":
                break
        else:
            pytest.fail(f"no training progress: {proc.stderr.read()[-500:]}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == CancelledError.exit_code, err[-500:]
    assert "cancelled" in err
    after = ledger_rows(ws)
    assert after["models"] == before["models"]
    assert [r[1] for r in after["runs"]] == ["cancelled"] and after["runs"][0][2] is None
    files_after = sorted(p.name for p in (ws.root / "models").iterdir()) if (ws.root / "models").exists() else []
    assert files_after == files_before
    rep = ws.check()
    assert rep.ok and not rep.orphans and not rep.stale_temporaries, rep.summary()


# ------------------------------------------------------------------------------------------------ onnx import

def test_onnx2torch_import_matches_onnx(tmp_path):
    from HILASegmentLib.training import export, network

    arch = network.default_architecture("CT", 2)
    arch["channels"] = [8, 16, 32]
    arch["strides"] = [2, 2]
    net = network.build_network(arch)
    onnx_path = export.export_onnx(net, tmp_path / "m.onnx", [32, 32, 16])
    conv = network.convert_onnx(onnx_path)
    diff = network.check_conversion(conv, onnx_path, shape=(1, 1, 32, 32, 16))
    assert diff < 1e-3
    # the converted module trains (gradients flow) and round-trips through a checkpoint
    x = torch.randn(1, 1, 32, 32, 16)
    conv(x).sum().backward()
    assert any(p.grad is not None for p in conv.parameters())
    ck = network.save_checkpoint(net, arch, tmp_path / "m.pt")
    net2, arch2 = network.load_checkpoint(ck)
    assert arch2 == arch
    with pytest.raises(HilaError, match="not a readable"):
        network.load_checkpoint(onnx_path)
