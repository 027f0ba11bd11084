"""The model catalog: its figures are the files' own, and models travel with the installed module."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from HILASegmentLib.models import catalog
from HILASegmentLib.models.modelcard import ModelCard, inspect_onnx, read_card, resolve_model

MODULE = ROOT / "HILASegment"


def test_catalog_figures_are_those_of_the_files_and_cards():
    listed = catalog.entries(include_tests=True)
    assert {e.name for e in listed} >= {"pelvic_ct_unet", "taps", "hila_tiny_test"}
    for e in listed:
        if e.kind == "file":
            info = inspect_onnx(e.path)
            card = read_card(e.path, info)
            assert e.size_bytes == info.size and e.checksum == info.checksum == card.checksum, e.name
        else:
            card = ModelCard.from_json((MODULE / "HILASegmentLib" / "presets" / f"{e.name}.json").read_text())
            assert e.checksum == card.checksum and e.package == card.model_file["package"]
            if e.available:  # the package is installed here: the real file's size and checksum
                path, _ = resolve_model(e.name)
                info = inspect_onnx(path)
                assert e.size_bytes == info.size and e.checksum == info.checksum
        assert (e.modality, e.licence, str(e.version)) == (card.modality, card.licence, str(card.version)), e.name
        assert list(e.labels) == [lab.name for lab in card.labels], e.name
    assert catalog.starter_for("CT").name == "pelvic_ct_unet" and catalog.starter_for("mr").name == "taps"
    assert "hila_tiny_test" not in {e.name for e in catalog.entries()}  # test models are not offered
    line = catalog.get("pelvic_ct_unet").display()
    assert line.startswith("pelvic_ct_unet v1 · CT · 2 MB · CC BY 4.0"), line


def test_hila_models_dir_comes_first_and_lists_extra_models(tmp_path, monkeypatch):
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(MODULE / "Resources" / "Models" / "hila_tiny_test.onnx", own / "pelvic_ct_unet.onnx")
    shutil.copy(MODULE / "Resources" / "Models" / "hila_tiny_test.onnx", own / "my_model.onnx")
    monkeypatch.setenv("HILA_MODELS_DIR", str(own))
    assert catalog.find_model_file("pelvic_ct_unet") == own / "pelvic_ct_unet.onnx"
    assert catalog.get("my_model").path == own / "my_model.onnx"
    assert catalog.get("my_model").display() == "my_model · modality not stated · 1 KB · licence not stated"
    monkeypatch.delenv("HILA_MODELS_DIR")
    assert catalog.find_model_file("pelvic_ct_unet") == catalog.PACKAGE_MODELS_DIR / "pelvic_ct_unet.onnx"
    assert catalog.find_model_file("my_model") is None


def _installed_layout(dst: Path) -> Path:
    """The files HILASegment/CMakeLists.txt installs, laid out as Slicer does (qt-scripted-modules)."""
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    files = []
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)\n(.*?)\n\s*\)", text, re.S):
        files += [w for w in block.split() if not w.startswith("$")]
    m = dst / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for f in files:
        (m / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE / f, m / f)
    return m


@pytest.mark.parametrize("model,image", [("pelvic_ct_unet", "pelvic_ct_small.nrrd"), ("taps", "prostate_mri_oblique_small.nrrd")])
def test_models_travel_with_the_installed_module(tmp_path, model, image):
    if model == "taps" and not catalog.get("taps").available:
        pytest.skip("lavlab-taps (optional peer package) not installed")
    slicerio = pytest.importorskip("slicerio")
    m = _installed_layout(tmp_path / "install")
    env = {k: v for k, v in os.environ.items() if k != "HILA_MODELS_DIR"}
    env["PYTHONPATH"] = str(m)
    out = tmp_path / "out.seg.nrrd"
    code = ("import sys, HILASegmentLib; assert HILASegmentLib.__file__.startswith(sys.argv[1]), HILASegmentLib.__file__; "
            "from HILASegmentLib.cli import main; sys.exit(main(sys.argv[2:]))")
    r = subprocess.run([sys.executable, "-c", code, str(m), "infer", "--image", str(FIXTURES / image), "--out", str(out),
                        "--model", model], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == list(catalog.get(model).labels)
