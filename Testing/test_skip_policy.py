"""The skip allow-list (house rule): only what a machine lacks may skip; a broken project module never does."""
from __future__ import annotations

import pytest
from conftest import skip_reason_allowed


@pytest.mark.parametrize("reason", [
    "real data not available: /x/shared/data/pelvic_ct (set HILA_SHARED_DATA or place shared/data beside the checkout)",
    "could not import 'torch': No module named 'torch'",
    "the optional dicom extra (pydicom) is not installed",
    "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)",
    "no CUDA GPU here",
])
def test_what_a_machine_lacks_may_skip(reason):
    assert skip_reason_allowed(reason)


@pytest.mark.parametrize("reason", [
    "could not import 'HILASegmentLib.cli.train': No module named 'HILASegmentLib.cli.train'",
    "`hila train` not written yet",
    "could not import 'numpy'",
    "Orthanc answered 500",
])
def test_a_broken_project_module_or_anything_else_may_not(reason):
    assert not skip_reason_allowed(reason)


def test_a_command_module_that_fails_to_import_fails_hila_instead_of_vanishing(monkeypatch):
    """`cli/__init__.py` used to drop a command whose module failed to import; now the whole CLI fails."""
    from HILASegmentLib import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "no_such_command_module"])
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()
