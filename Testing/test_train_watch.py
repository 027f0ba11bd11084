"""``hila train WS --watch`` in real processes: it trains on a new correction, and SIGTERM ends it cleanly.

Also: the planner's configuration per device (and its refusals), and that a round continues from the
current model (continual training), on tiny synthetic CT workspaces.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"), OMP_NUM_THREADS="1")

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from tiny_models import synthetic_ct, synthetic_workspace  # noqa: E402

from HILASegmentLib.ground.errors import HilaError  # noqa: E402
from HILASegmentLib.workspace import Workspace  # noqa: E402

TINY = ["--patch", "32,32,16", "--spacing", "3,3,3", "--channels", "8,16,32,64", "--threads", "1"]


class Watcher:
    """A ``hila train --watch --json`` child whose JSON lines are read as they come."""

    def __init__(self, ws: Path, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "HILASegmentLib", "train", str(ws), "--watch", "--json",
                                      "--poll", "0.2", "--promote", "always", *TINY, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        self.events = []

    def wait_for(self, pred, timeout: float = 240.0) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            line = self.proc.stdout.readline()
            if not line:
                break
            ev = json.loads(line)
            self.events.append(ev)
            if pred(ev):
                return ev
        raise AssertionError(f"no such event; got {self.events[-5:]}; stderr {self.proc.stderr.read()[-500:]}")

    def stop(self) -> tuple:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=120)
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        return self.proc.returncode, self.events + lines, err


def test_watch_trains_on_new_correction_and_stops_on_sigterm(tmp_path):
    ws, ids, labs = synthetic_workspace(tmp_path, range(3), corrected=2)
    w = Watcher(ws.root, "--steps", "3")
    try:
        first = w.wait_for(lambda e: e.get("event") == "round")
        assert first["model_version"] == 1 and first["steps"] == 3
        sitk.WriteImage(labs[ids[2]], str(tmp_path / "lab2.nii.gz"))
        sub = subprocess.run([sys.executable, "-m", "HILASegmentLib", "submit", str(ws.root), ids[2],
                              str(tmp_path / "lab2.nii.gz")], env=ENV, capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
        second = w.wait_for(lambda e: e.get("event") == "round")
        assert second["model_version"] == 2
        assert second["init"] == "finetune v1"  # continues from the current model
        assert {t["case_id"] for t in second["training_set"]} == set(ids)
    finally:
        rc, events, err = w.stop()
    assert rc == 0, err
    result = events[-1]
    assert result["event"] == "result" and result["stopped"] == "signal" and result["rounds"] == 2
    again = Workspace.open(ws.root)
    assert [r.status for r in again.training_runs()] == ["done", "done"]
    assert again.check().ok


def test_sigterm_mid_round_cancels_it_and_registers_nothing(tmp_path):
    ws, ids, labs = synthetic_workspace(tmp_path, range(3), corrected=2)
    w = Watcher(ws.root, "--steps", "100000", "--max-minutes", "30")
    try:
        w.wait_for(lambda e: e.get("event") == "progress" and e.get("phase") == "train" and (e.get("step") or 0) >= 2)
    finally:
        rc, events, err = w.stop()
    assert rc == 0, err
    assert events[-1]["stopped"] == "signal" and events[-1]["rounds"] == 0
    again = Workspace.open(ws.root)
    assert [r.status for r in again.training_runs()] == ["cancelled"]
    assert again.models() == [] and again.check().ok


def test_watch_refused_while_another_trainer_holds_the_lock(tmp_path):
    ws, ids, labs = synthetic_workspace(tmp_path, range(3), corrected=2)
    ws.start_training_run()  # this (live) test process holds the lock
    p = subprocess.run([sys.executable, "-m", "HILASegmentLib", "train", str(ws.root), "--watch", *TINY],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    err = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and "another trainer" in err[0] and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------ the plan


def test_planner_chooses_configuration_by_device():
    from HILASegmentLib.training import plan

    fp = {"cases": 2, "median_spacing": [0.5, 0.5, 3.0], "median_image_mm": [160.0, 160.0, 72.0],
          "image_sizes_mm": [[160.0, 160.0, 72.0]] * 2, "label_extent_mm": [[50.0, 45.0, 40.0]] * 2}
    cpu = plan.plan("MR", fp, 8, *([None] * 2), *plan.choose_configuration("cpu"))
    gpu = plan.plan("MR", fp, 8, *([None] * 2), *plan.choose_configuration("cuda:0"))
    assert cpu["configuration"] == "3d_lowres" and cpu["spacing"] == [2.0, 2.0, 3.0] and cpu["batch_size"] == 4
    assert gpu["configuration"] == "3d_fullres" and gpu["spacing"] == [1.0, 1.0, 3.0]
    assert "bench_recipe" in cpu["why"]
    two = plan.plan("MR", fp, 8, None, None, *plan.choose_configuration("cpu", "2d"))
    assert two["patch_size"][2] == plan.CONFIGURATIONS["2d"]["slices"]
    assert plan.architecture("2.5d", {"name": "UNet", "channels": [8, 16]})["context"] == 1


def test_planner_refuses_what_the_data_cannot_support():
    from HILASegmentLib.training import plan

    flat = {"cases": 1, "median_spacing": [1.0, 1.0, 3.0], "median_image_mm": [100.0, 100.0, 3.0],
            "image_sizes_mm": [[100.0, 100.0, 3.0]], "label_extent_mm": [[30.0, 30.0, 3.0]]}
    with pytest.raises(HilaError, match="single slice"):
        plan.plan("MR", flat, 8, configuration="3d_lowres")
    assert plan.plan("MR", flat, 8, configuration="2d")["configuration"] == "2d"
    fp = dict(flat, median_image_mm=[100.0, 100.0, 60.0], image_sizes_mm=[[100.0, 100.0, 60.0]])
    with pytest.raises(HilaError, match="larger than every image"):
        plan.plan("MR", fp, 8, patch=[256, 64, 16], configuration="3d_lowres")
    with pytest.raises(HilaError, match="--config"):
        plan.choose_configuration("cpu", "4d")


def test_config_recorded_in_card_and_refused_before_a_run_row(tmp_path):
    ws, ids, labs = synthetic_workspace(tmp_path, range(3), corrected=2)
    p = subprocess.run([sys.executable, "-m", "HILASegmentLib", "train", str(ws.root), "--steps", "2", "--json",
                        "--config", "2d", "--spacing", "3,3,3", "--channels", "8,16,32", "--threads", "1"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    card = Workspace.open(ws.root).models()[0].card.to_dict()
    recipe = card["training"]["recipe"]
    assert recipe["configuration"] == "2d" and card["architecture"]["name"] == "SliceUNet"
    img, _ = synthetic_ct(9, size=(40, 40, 1))
    sitk.WriteImage(img, str(tmp_path / "flat.nii.gz"))
    ws2 = Workspace.create(tmp_path / "ws2", "CT", ["bladder", "rectum"])
    cid = ws2.import_volume(tmp_path / "flat.nii.gz").case_id
    lab = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    lab.CopyInformation(img)
    lab[10:20, 10:20, 0] = 1
    ws2.submit(cid, lab, quality="reviewed")
    p = subprocess.run([sys.executable, "-m", "HILASegmentLib", "train", str(ws2.root), "--steps", "2",
                        "--config", "3d_lowres", "--threads", "1"], env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "single slice" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert Workspace.open(ws2.root).training_runs() == []
