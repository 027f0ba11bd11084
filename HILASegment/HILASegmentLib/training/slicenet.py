"""A 2-D U-Net per axial slice (the ``2d`` and ``2.5d`` configurations), as a 5-D network like the 3-D ones.
Registered in ``architectures`` as ``SliceUNet``."""
from __future__ import annotations

import torch
from torch import nn


class SliceUNet(nn.Module):
    """A 2-D U-Net applied to every axial slice of a (B, C, X, Y, Z) volume: the ``2d`` configuration, and
    ``2.5d`` with ``context`` neighbouring slices on each side as extra input channels.

    It takes and returns 5-D tensors like the 3-D nets, so the sliding-window inference engine, the training
    loop and the ONNX export treat it as any other network (a window of Z slices is Z 2-D images)."""

    def __init__(self, arch: dict):
        super().__init__()
        from monai.networks.nets import UNet  # MONAI's network zoo: only the architecture asked for

        self.context = int(arch.get("context", 0))
        self.net = UNet(spatial_dims=2, in_channels=int(arch.get("in_channels", 1)) * (2 * self.context + 1),
                        out_channels=int(arch["out_channels"]), channels=tuple(arch["channels"]),
                        strides=tuple(arch["strides"]), num_res_units=int(arch.get("num_res_units", 0)),
                        norm=arch.get("norm", "instance"), dropout=float(arch.get("dropout", 0.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, nx, ny, nz = x.shape
        if self.context:
            k = self.context
            xp = torch.cat([x[..., :1]] * k + [x] + [x[..., -1:]] * k, dim=-1)  # replicate the end slices
            x = torch.cat([xp[..., i:i + nz] for i in range(2 * k + 1)], dim=1)
            c = x.shape[1]
        s = x.permute(0, 4, 1, 2, 3).reshape(b * nz, c, nx, ny)
        y = self.net(s)
        return y.reshape(b, nz, y.shape[1], nx, ny).permute(0, 2, 3, 4, 1)
