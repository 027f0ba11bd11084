"""The optional `dicom` extra missing: every DICOM command says in one line which package is missing and how
to install it, changes nothing, and never falls back to a misleading message (a missing pydicom used to
make an RTSTRUCT read as "a single DICOM file; give the folder", a missing highdicom a traceback).

The missing package is simulated the standard way: ``sys.modules[name] = None`` makes ``import name``
raise ModuleNotFoundError, as on a Python without it.
"""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from conftest import shared

from HILASegmentLib.cli import main
from HILASegmentLib.ground import dependencies
from HILASegmentLib.ground.errors import HilaError
from HILASegmentSlicerLib import installplan

pytest.importorskip("pydicom", reason="the optional dicom extra (pydicom) is not installed")


def without(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(__import__("sys").modules, name, None)


def one_line(capsys, rc: int, package: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0 and len(err) == 1 and err[0].startswith("hila: error: "), err
    assert f"the Python package {package} is needed and not installed" in err[0], err[0]
    assert "pip install 'hilasegment[dicom]'" in err[0] and "Traceback" not in err[0]
    return err[0]


def test_rtstruct_without_pydicom_names_pydicom_not_the_folder(monkeypatch, capsys, tmp_path):
    ct = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    rs = Path(glob.glob(str(ct / "RS*.dcm"))[0])
    without(monkeypatch, "pydicom")
    out = tmp_path / "rs.seg.nrrd"
    line = one_line(capsys, main(["convert", str(rs), str(out), "--reference", str(ct)]), "pydicom")
    assert str(rs) in line and "give the folder" not in line
    assert not out.exists()


def test_seg_without_highdicom_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    ct = shared("pelvic_ct_dicom", "Pelvic-Ref002")
    label = shared("pelvic_ct", "Pelvic-Ref002", "labels_manual.nii.gz")
    without(monkeypatch, "highdicom")
    out = tmp_path / "x.dcm"
    one_line(capsys, main(["convert", str(label), str(out), "--format", "seg", "--reference", str(ct)]), "highdicom")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_dicomweb_without_its_client_names_it_and_changes_nothing(monkeypatch, capsys, tmp_path):
    root = tmp_path / "ws"
    assert main(["init", str(root), "--modality", "CT", "--labels", "prostate"]) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    without(monkeypatch, "dicomweb_client", "dicomweb_client.api")
    for argv in (["export", str(root), "--dicomweb", "http://127.0.0.1:9/dicom-web"],
                 ["sync", str(root), "--dicomweb", "http://127.0.0.1:9/dicom-web"],
                 ["import", str(root), "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3"]):
        one_line(capsys, main(argv), "dicomweb-client")
    rc = main(["sync", str(root), "--dicomweb", "http://127.0.0.1:9/dicom-web", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc != 0 and json.loads(out[-1])["event"] == "error" and "dicomweb-client" in json.loads(out[-1])["error"]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_engine_require_names_the_module_it_could_not_import(monkeypatch):
    from HILASegmentLib.dicom import dicomref, dicomseg

    without(monkeypatch, "highdicom")
    with pytest.raises(HilaError, match=r"^DICOM SEG: the Python package highdicom is needed"):
        dicomseg.read_seg("nothing.dcm", None)
    assert dicomref.require() is not None  # pydicom itself is there


def test_missing_package_message_covers_the_extras_only():
    msg = dependencies.missing_package_message("pydicom.uid", "hila convert")
    assert msg.startswith("hila convert: the Python package pydicom is needed") and "hilasegment[dicom]" in msg
    assert "hilasegment[train]" in dependencies.missing_package_message("monai", "hila train")
    assert dependencies.missing_package_message("requests", "DICOMweb").count("hilasegment[dicom]") == 1
    # an ImportError of anything else is a bug: no message, so the CLI keeps its traceback
    assert dependencies.missing_package_message("numpy") is None
    assert dependencies.missing_package_message("HILASegmentLib.nothing") is None


def test_an_import_error_of_a_non_optional_module_still_raises(monkeypatch):
    import HILASegmentLib.cli.dicomio as pacs_cli

    def broken(args):
        import hila_no_such_module  # noqa: F401

    monkeypatch.setattr(pacs_cli, "cmd_sync", broken)
    with pytest.raises(ImportError):
        main(["sync", "ws", "--dicomweb", "http://x/dicom-web"])


def test_dicom_tier_in_slicer_installs_highdicom_only_and_never_upgrades_pydicom():
    shipped_5_8 = {"numpy", "SimpleITK", "onnxruntime", "nrrd", "tqdm", "pydicom", "dicomweb_client", "requests"}
    find = lambda name: object() if name in shipped_5_8 else None  # noqa: E731
    versions = {"pydicom": "2.4.4", "dicomweb-client": "0.59.1", "requests": "2.31.0"}
    plan = installplan.plan_install("dicom", find, versions.get)
    assert plan.old_slicer == ["pydicom 3.0"] and not plan.broken_slicer
    assert "pydicom" not in " ".join(plan.pip_specs) and "Slicer 5.12" in plan.message()
    versions["pydicom"] = "3.0.2"  # Slicer 5.12+ ships pydicom 3 (and highdicom; here: not yet installed)
    plan = installplan.plan_install("dicom", find, versions.get)
    assert plan.pip_specs == ["highdicom>=0.22"] and not plan.old_slicer and "DICOM and PACS" in plan.message()


@pytest.mark.parametrize("argv, fragment", [
    (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.03"], "not a DICOM study UID"),
    (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", "--series", "abc"], "not a DICOM series UID"),
    (["--dicomweb", "pacs:8042/dicom-web", "--study", "1.2.3"], "not an http(s) DICOMweb URL"),
    (["--dicomweb", "http://bob:secret@127.0.0.1:9/dicom-web", "--study", "1.2.3"], "credentials in the URL are refused"),
])
def test_bad_url_or_uid_is_one_line_before_any_request(capsys, tmp_path, argv, fragment):
    """Port 9 (discard) is never asked: the check comes first, so the error is immediate and says what is wrong."""
    root = tmp_path / "ws"
    assert main(["init", str(root), "--modality", "CT", "--labels", "prostate"]) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    rc = main(["import", str(root)] + argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0 and len(err) == 1 and fragment in err[0] and "secret" not in err[0], err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
