"""Quality-aware loss (issue 13, ``hila train --ignore-band``): a band around a rough or weak label's
boundary is left out of the loss; a reviewed label counts everywhere."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="could not import 'torch'")
pytest.importorskip("monai", reason="could not import 'monai'")

from HILASegmentLib.training import dataset as ds  # noqa: E402
from HILASegmentLib.training.loop import masked_dice_ce  # noqa: E402


def _cube(lo=6, hi=14, n=20):
    a = np.zeros((1, n, n, n), np.uint8)
    a[0, lo:hi, lo:hi, lo:hi] = 1
    return a


def test_band_keeps_core_and_clear_outside_only():
    lab = _cube()
    out = ds.ignore_band(lab, 2)
    ign = out[0] == ds.IGNORE
    assert out[0, 10, 10, 10] == 1 and out[0, 1, 1, 1] == 0            # core and far outside kept
    assert ign[6, 10, 10] and ign[5, 10, 10] and ign[4, 10, 10] and ign[7, 10, 10]  # both sides of the boundary
    assert not ign[3, 10, 10] and not ign[8, 10, 10]
    assert ds.ignore_band(lab, 0) is lab and (lab[0] != ds.IGNORE).all()


def test_masked_loss_does_not_see_the_band():
    lab = torch.as_tensor(ds.ignore_band(_cube(), 2)[None].astype(np.int64))   # (1,1,X,Y,Z)
    keep = (lab != ds.IGNORE).float()
    y = torch.where(lab == ds.IGNORE, torch.zeros_like(lab), lab)
    logits = torch.randn(1, 2, 20, 20, 20)
    base = masked_dice_ce(logits, y, keep, sigmoid=False)
    changed = logits.clone()
    changed[:, :, 4:9, 4:16, 4:16] += 50 * torch.randn(1, 2, 5, 12, 12) * (lab[:, :, 4:9, 4:16, 4:16] == ds.IGNORE)
    assert torch.allclose(masked_dice_ce(changed, y, keep, sigmoid=False), base)     # band voxels do not count
    outside = logits.clone()
    outside[:, 1, 0:2] += 20.0                                                        # clear outside wrongly foreground
    assert masked_dice_ce(outside, y, keep, sigmoid=False) > base + 0.01
    sig = masked_dice_ce(logits[:, 1:], y.float(), keep, sigmoid=True)
    assert torch.isfinite(sig)
