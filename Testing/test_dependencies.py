"""First-use dependency planning: what to install, never what Slicer ships, torch through PyTorchUtils."""
from __future__ import annotations

import shlex

import pytest

from HILASegmentLib.ground import dependencies as dep
from HILASegmentSlicerLib import installplan as ip


def fake_env(present, versions=None):
    versions = versions or {}
    return (lambda name: object() if name in present else None), (lambda dist: versions.get(dist))


def test_this_venv_needs_nothing():
    for tier in ("inference", "training", "dicom"):  # the dev venv has the dicom extra too
        plan = ip.plan_install(tier)
        assert not plan.needed, plan.message()
        assert plan.message() == ""


def test_bare_slicer_plans_inference_packages_only():
    find, ver = fake_env({"numpy", "SimpleITK", "vtk", "scipy"})
    plan = ip.plan_install("inference", find, ver)
    assert plan.pip_specs == ["onnxruntime>=1.16", "pynrrd>=1.0", "tqdm>=4.60"]
    assert not plan.torch_via_pytorchutils and plan.torch_pip_spec is None and not plan.no_deps_specs
    assert "onnxruntime>=1.16" in plan.message() and "segmenting" in plan.message()


def test_training_uses_pytorchutils_when_present_and_no_deps_for_monai():
    find, ver = fake_env({"numpy", "SimpleITK", "onnxruntime", "nrrd", "tqdm", "PyTorchUtils"})
    plan = ip.plan_install("training", find, ver)
    assert plan.torch_via_pytorchutils and plan.torch_pip_spec is None
    assert plan.pip_specs == ["onnx>=1.14"]
    assert plan.no_deps_specs == ["monai>=1.3", "onnx2torch>=1.5"]
    assert "PyTorch extension" in plan.message()
    find, ver = fake_env({"numpy", "SimpleITK", "onnxruntime", "nrrd", "tqdm"})
    plan = ip.plan_install("training", find, ver)
    assert not plan.torch_via_pytorchutils and plan.torch_pip_spec == "torch>=2.1"
    assert ip.plan_install("training", find, ver, pytorchutils_available=True).torch_via_pytorchutils


def test_old_versions_count_as_missing():
    find, ver = fake_env({"onnxruntime", "nrrd", "tqdm"}, {"onnxruntime": "1.12.1", "pynrrd": "1.0.0", "tqdm": "4.66.1"})
    assert [r.import_name for r in dep.missing(dep.INFERENCE, find, ver)] == ["onnxruntime"]
    find, ver = fake_env({"onnxruntime", "nrrd", "tqdm"}, {"onnxruntime": "1.20.0+cpu"})
    assert dep.missing(dep.INFERENCE, find, ver) == []


def test_never_reinstalls_what_slicer_ships():
    shipped = [dep.Requirement("numpy", "numpy>=1.0", "arrays")]
    orig = dep.TIERS["inference"]
    dep.TIERS["inference"] = orig + shipped
    try:
        find, ver = fake_env({"onnxruntime", "nrrd", "tqdm"})
        plan = ip.plan_install("inference", find, ver)
    finally:
        dep.TIERS["inference"] = orig
    assert plan.broken_slicer == ["numpy"] and "numpy>=1.0" not in plan.pip_specs
    assert "Reinstall 3D Slicer" in plan.message()
    for req in dep.INFERENCE + dep.TRAINING:
        assert req.import_name not in ip.SLICER_SHIPS


def test_pip_argument_string_splits_back_into_the_specs():
    s = ip.pip_argument_string(["onnxruntime>=1.16", "pynrrd>=1.0"])
    assert shlex.split(s) == ["onnxruntime>=1.16", "pynrrd>=1.0"]
    assert shlex.split(ip.pip_argument_string(["monai>=1.3"], no_deps=True)) == ["--no-deps", "monai>=1.3"]


def test_offline_message_and_manual_commands():
    find, ver = fake_env(set())
    plan = ip.plan_install("training", find, ver, pytorchutils_available=False)
    err = "ERROR: Could not find a version that satisfies the requirement onnxruntime>=1.16 (from versions: none)"
    msg = ip.offline_message(err, plan)
    assert msg and "offline" in msg and "PythonSlicer -m pip install" in msg and "--no-deps" in msg
    assert "\n" not in msg
    assert ip.offline_message("ERROR: permission denied", plan) is None


def test_unknown_tier_is_an_error():
    with pytest.raises(ValueError):
        ip.plan_install("everything")


def test_taps_joins_the_inference_plan_with_no_deps_only_when_taps_is_the_model():
    find, ver = fake_env({"numpy", "SimpleITK", "vtk"})
    plan = ip.plan_install("inference", find, ver, model="taps")
    assert plan.no_deps_specs == ["lavlab-taps>=1.1"] and "onnxruntime>=1.16" in plan.pip_specs
    assert "lavlab-taps>=1.1" in plan.message()  # one consent dialog for both
    assert "--no-deps 'lavlab-taps>=1.1'" in " ".join(ip.manual_command(plan))
    assert "lavlab-taps>=1.1" not in ip.plan_install("inference", find, ver, model="pelvic_ct_unet").no_deps_specs
    find, ver = fake_env({"onnxruntime", "nrrd", "tqdm", "taps"})
    assert not ip.plan_install("inference", find, ver, model="taps").needed


def test_pip_commands_for_the_background_install():
    find, ver = fake_env({"numpy", "SimpleITK", "vtk"})
    plan = ip.plan_install("inference", find, ver, model="taps")
    cmds = ip.pip_commands(plan, "/opt/Slicer/bin/PythonSlicer")
    assert [c[:4] for c in cmds] == [["/opt/Slicer/bin/PythonSlicer", "-m", "pip", "install"]] * 2
    assert cmds[0][-3:] == ["onnxruntime>=1.16", "pynrrd>=1.0", "tqdm>=4.60"]
    assert cmds[1][-2:] == ["--no-deps", "lavlab-taps>=1.1"]
