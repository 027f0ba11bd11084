"""One colour table: a workspace label and a segment made from a label map with the same name get the
same colour, and prostate gets Slicer's terminology colour (the two tables used to disagree)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from HILASegmentLib.formats.segfile import Segmentation
from HILASegmentLib.ground.colors import default_color
from HILASegmentLib.workspace import Workspace


def test_workspace_labels_and_segments_share_colours(tmp_path):
    names = ["prostate", "Urinary_Bladder", "rectum", "my structure"]
    with Workspace.create(tmp_path / "ws", "MR", names) as ws:
        ws_colours = {l.name: l.color for l in ws.settings.labels}
    arr = np.zeros((4, 5, 6), np.uint8)
    for v in range(1, len(names) + 1):
        arr[v - 1, 0, 0] = v
    seg = Segmentation.from_label_image(sitk.GetImageFromArray(arr), [(i + 1, n, None) for i, n in enumerate(names)])
    for s in seg.segments:
        assert np.allclose(s.color, ws_colours[s.name], atol=1e-4), s.name
    # Slicer's terminology (SlicerGeneralAnatomy, = GenericAnatomyColors): prostate 230 158 140, bladder 222 154 132
    assert np.allclose(np.multiply(ws_colours["prostate"], 255), (230, 158, 140), atol=0.5)
    assert np.allclose(np.multiply(ws_colours["Urinary_Bladder"], 255), (222, 154, 132), atol=0.5)
    # spelling does not change the colour of a known structure
    assert default_color("urinary bladder", 0) == default_color("Urinary_Bladder", 5)
