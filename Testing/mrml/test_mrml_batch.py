"""Batch mode (scripts/hila_slicer_batch.py) beside slicer-core: plain Python that can `import slicer` is still not
Slicer (no ``slicer.app``), and the script's Slicer path fills real nodes through the module's Logic, the panel's one
way from an engine result to segments (``ModuleLogic.loadSegmentation``).

Adds to test_slicer_batch.py (which runs the script where `import slicer` fails)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
from tier import FIXTURES, ROOT, slicer_core

slicer = slicer_core()
from realscene import import_module_file, load_volume, save_segmentation  # noqa: E402

from HILASegmentLib.formats import segfile, terminology  # noqa: E402
from HILASegmentLib.ground.colors import label_color  # noqa: E402
from HILASegmentLib.inference.segmenter import Segmenter  # noqa: E402
from HILASegmentSlicerLib import mrmlgeometry, segments  # noqa: E402

SCRIPT = ROOT / "scripts" / "hila_slicer_batch.py"
MRI = FIXTURES / "prostate_mri_oblique_small.nrrd"
MODEL = ROOT / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"


def test_plain_python_with_slicer_core_is_not_slicer_and_takes_the_engine_path(rs, tmp_path):
    out = tmp_path / "plain.seg.nrrd"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--image", str(MRI), "--out", str(out), "--model", str(MODEL)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Slicer not found" in proc.stderr
    assert segfile.read_segmentation(out).names == ["prostate"]


def test_the_scripts_slicer_path_writes_real_nodes_like_the_panel(rs, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("hila_slicer_batch", SCRIPT)
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    monkeypatch.setattr(slicer.util, "loadVolume", lambda path: load_volume(path, "input"))  # need slicer.app
    monkeypatch.setattr(slicer.util, "saveNode", lambda node, path: bool(save_segmentation(node, path)))
    args = SimpleNamespace(image=str(MRI), out=str(tmp_path / "slicer.seg.nrrd"), model=str(MODEL), tta=False,
                           threads=1, device="cpu")
    through = []  # batch mode turns the engine's result into segments the panel's way: the Logic's one path
    logic_class = import_module_file().HILASegmentLogic().impl.__class__
    original = logic_class.loadSegmentation
    monkeypatch.setattr(logic_class, "loadSegmentation",
                        lambda self, *a, **k: through.append(a) or original(self, *a, **k))
    assert batch.run_in_slicer(slicer, args).startswith(args.out)
    (call,) = through
    assert call[2] is slicer.mrmlScene.GetFirstNodeByName("input") and call[1] is segments.segmentation_for(
        slicer.mrmlScene, call[2], create=False)  # the volume's own segmentation, as Segment fills it
    # the engine on the image exactly as Slicer's node holds it (the file read by SimpleITK differs from it in the
    # 16th digit of the spacing, which moves this tiny threshold model's boundary voxels)
    volume = slicer.mrmlScene.GetFirstNodeByName("input")
    image = mrmlgeometry.array_to_image(slicer.util.arrayFromVolume(volume), import_module_file().HILASegmentLogic().ijkToRas(volume))
    engine = Segmenter(str(MODEL), threads=1, device="cpu").segment(image).to_segmentation()
    mine = segfile.read_segmentation(args.out)
    s = mine.segment("prostate")
    assert np.array_equal(mine.mask_array("prostate"), engine.mask_array("prostate"))
    assert np.allclose(s.color, label_color("prostate"), atol=1e-4)
    assert s.tags["TerminologyEntry"] == terminology.entry_for("prostate")
    assert s.tags.get("HILA.model") == engine.segment("prostate").tags.get("HILA.model")
