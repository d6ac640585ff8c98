"""FSRCNN (Dong et al., 2016): d = 56, s = 12, m = 4, PReLU, 9×9 deconvolution for upscaling.

FSRCNN works on the luminance: :class:`FSRCNN` maps Y to Y, and :class:`YChannelSR` gives it our
RGB interface (RGB -> YCbCr BT.601, FSRCNN on Y, chroma by bicubic, back to RGB). Our metrics are
computed on Y, so the chroma path does not change PSNR/SSIM (only the final uint8 rounding of RGB).

Multi-Adds of the deconvolution. A transposed conv scatters every input pixel through its k×k
kernel: exactly ``c_in · c_out · k² · H_in · W_in`` multiply-adds (the taps that land in the
cropped border included, since they are computed too). fvcore counts ConvTranspose2d the same way
(its conv handle uses the *input* spatial size for transposed convs), so ours equals fvcore's.
Papers (e.g. the lightweight-SR tables after CARN: 6.0G/5.0G/4.6G at ×2/×3/×4) counted it as a 9×9
conv evaluated at every HR pixel, ``c_in · k² · H_out · W_out``, which is s² times the real work;
that figure is ``paper_macs``.

Not counted: the colour conversion and chroma upscaling of :class:`YChannelSR` (pre/post-processing,
as papers do) — fvcore does not count them either (element-wise ops, bicubic interpolation).
Parameters: the paper's 12,464 counts conv weights only; ``params`` here counts every parameter
(biases and PReLU slopes too).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.cost import HR_SIZE, lr_size_for
from hdnas.core.ops import conv_macs, conv_params
from hdnas.zoo.common import ModelCost

__all__ = ["FSRCNN", "YChannelSR", "fsrcnn_cost", "build_fsrcnn"]

# BT.601 "studio swing", RGB in [0, 1] -> YCbCr in [0, 1] (Y in [16, 235]/255), as hdnas.core.metrics.
_RGB_TO_YCBCR = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
_OFFSET = (16.0, 128.0, 128.0)


class FSRCNN(nn.Module):
    """One-channel FSRCNN(d, s, m): feature 5×5, shrink 1×1, m mapping 3×3, expand 1×1, deconv 9×9 stride s."""

    def __init__(self, scale: int, d: int = 56, s: int = 12, m: int = 4, channels: int = 1):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(channels, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        # output = (H-1)·s − 2·4 + 9 + (s−1) = H·s
        self.deconv = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.body(x))


class YChannelSR(nn.Module):
    """RGB in, RGB out around a Y-only network; chroma upscaled by bicubic interpolation."""

    def __init__(self, net: nn.Module, scale: int):
        super().__init__()
        self.net = net
        self.scale = scale
        fwd = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64) / 255.0
        self.register_buffer("fwd", fwd.float(), persistent=False)
        self.register_buffer("inv", torch.linalg.inv(fwd).float(), persistent=False)
        self.register_buffer("offset", (torch.tensor(_OFFSET) / 255.0), persistent=False)

    @staticmethod
    def _mix(x: torch.Tensor, m: torch.Tensor) -> list[torch.Tensor]:
        # element-wise on purpose (no matmul/einsum): colour conversion is not part of the network's cost
        return [x[:, 0:1] * m[i, 0] + x[:, 1:2] * m[i, 1] + x[:, 2:3] * m[i, 2] for i in range(3)]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        y, cb, cr = (v + o for v, o in zip(self._mix(rgb, self.fwd), self.offset))
        y_sr = self.net(y)
        chroma = F.interpolate(torch.cat([cb, cr], dim=1), scale_factor=self.scale, mode="bicubic", align_corners=False)
        ycc = torch.cat([y_sr, chroma], dim=1) - self.offset.view(1, 3, 1, 1)
        return torch.cat(self._mix(ycc, self.inv), dim=1)


def build_fsrcnn(scale: int, d: int = 56, s: int = 12, m: int = 4) -> YChannelSR:
    return YChannelSR(FSRCNN(scale, d, s, m), scale)


def fsrcnn_cost(scale: int, hr_size: tuple[int, int] = HR_SIZE, d: int = 56, s: int = 12, m: int = 4) -> ModelCost:
    """Exact Multi-Adds (== fvcore's) and parameters of :func:`build_fsrcnn`, plus the papers' convention."""
    h, w = lr_size_for(scale, hr_size)
    convs = [(1, d, 5), (d, s, 1)] + [(s, s, 3)] * m + [(s, d, 1)]
    lr_macs = sum(conv_macs(i, o, k, h, w) for i, o, k in convs)
    deconv = d * 1 * 9 * 9 * h * w  # scatter form: every input pixel through the whole kernel
    params = sum(conv_params(i, o, k) for i, o, k in convs) + conv_params(d, 1, 9)
    params += 2 * d + s * (m + 1)  # PReLU slopes, one per channel
    paper = lr_macs + conv_macs(d, 1, 9, h * scale, w * scale)
    return ModelCost(
        macs=lr_macs + deconv,
        params=params,
        lr_size=(h, w),
        extras=0,
        paper_macs=paper,
        note="paper convention counts the 9x9 deconv at every HR pixel (s^2 x the real work); "
        "colour conversion and chroma bicubic not counted",
    )
