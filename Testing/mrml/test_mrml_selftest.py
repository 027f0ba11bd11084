"""The in-Slicer self-test's own code (HILASegment.py's ``HILASegmentTest``, the steps in
``HILASegmentSlicerLib.selftest``) run on slicer-core: two cases with a result in flight (the A/B race, a real
`hila infer` child), Accept, Accept as weak (a real ROI and two real line markups), then training.

What slicer-core cannot give is put in its place: ``slicer.util.tempDirectory`` (needs ``slicer.app``) is a pytest
folder, and the training step, which needs torch (not in the slicer-core environment), is a child process that
registers the tiny test model as the next version, as `hila train` would on success."""
from __future__ import annotations

import sys
from pathlib import Path

from tier import ROOT, slicer_core

slicer = slicer_core()
from realscene import import_module_file  # noqa: E402

from HILASegmentSlicerLib import logic as logicmodule  # noqa: E402
from HILASegmentSlicerLib.processrunner import ProcessRunner  # noqa: E402

MODEL = ROOT / "HILASegment" / "Resources" / "Models" / "hila_tiny_test.onnx"
_REGISTER = ("import sys\nfrom HILASegmentLib.models.modelcard import read_card\n"
             "from HILASegmentLib.workspace import Workspace\nws = Workspace.open(sys.argv[1])\n"
             "ws.add_model(sys.argv[2], read_card(sys.argv[2]), parent=ws.current_model().version)\nws.close()\n")


def test_the_self_tests_race_accept_weak_and_train_steps_pass_on_real_nodes(rs, logic, tmp_path, monkeypatch):
    module = import_module_file()
    temp = []

    def temp_directory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):
        folder = tmp_path / ("%s_%d" % (key, len(temp)))
        folder.mkdir()
        temp.append(folder)
        return str(folder)

    trained = []

    def start_training(self, ws, maxMinutes, device, autoPromote=False, watch=False):
        trained.append((Path(ws.root), maxMinutes, device, autoPromote, watch))
        return ProcessRunner([sys.executable, "-c", _REGISTER, str(ws.root), str(MODEL)],
                             env=self.util.startupEnvironment())

    monkeypatch.setattr(slicer.util, "tempDirectory", temp_directory)
    monkeypatch.setattr(logicmodule.ModuleLogic, "startTraining", start_training)
    test = module.HILASegmentTest()
    test.setUp()
    test.test_race_accept_and_train()
    assert test.displayed[-1] == "HILASegment self-test passed"
    assert [t[1:] for t in trained] == [(1, "cpu", False, False)] and temp and trained[0][0].parent == temp[0]
