"""PSNR and SSIM on the Y channel, computed the way SR papers compute them.

The recipe (MATLAB ``Evaluate_PSNR_SSIM.m`` of EDSR/RCAN, BasicSR's ``calculate_psnr/ssim``):

1. the SR image is clamped to [0, 1] and rounded to uint8 levels (the network's output is saved as
   an 8-bit image before scoring; rounding is half away from zero, like MATLAB's ``uint8()``);
2. both images go to Y of BT.601 YCbCr, ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in
   [0, 1] (so Y is in [16, 235], *not* rounded again);
3. ``scale`` pixels are cropped from every border (upsampling is unreliable there);
4. PSNR = ``10 log10(255^2 / MSE)``; SSIM = Wang et al.'s index with an 11x11 Gaussian window
   (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, mean of the SSIM map.

Set-level figures are the mean of per-image values.  Computations run in float64 on the inputs'
device, so the same functions serve training validation (CUDA batches) and offline evaluation
(numpy images).  Inputs: torch ``(N, C, H, W)`` / ``(C, H, W)`` or numpy ``(H, W, C)`` / ``(H, W)``;
uint8, or float in [0, 1]; C is 3 (RGB) or 1 (grey, treated as R = G = B).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "to_levels",
    "rgb_to_y",
    "psnr_y",
    "ssim_y",
    "psnr_y_batch",
    "ssim_y_batch",
    "psnr_from_mse",
    "psnr_on_levels",
    "ssim_on_levels",
]

_Y_COEFFS = (65.481, 128.553, 24.966)


def _as_nchw(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """Bring numpy HWC/HW or torch CHW/NCHW to a torch NCHW tensor (no copy when possible)."""
    if isinstance(x, np.ndarray):
        a = x if x.flags.writeable else x.copy()  # torch warns on read-only arrays
        if x.ndim == 2:
            t = torch.from_numpy(a)[None, None]
        elif x.ndim == 3:
            if x.shape[2] not in (1, 3):
                raise ValueError(f"{what}: numpy images are channel-last (H,W,C), got shape {x.shape}")
            t = torch.from_numpy(a).permute(2, 0, 1)[None]
        elif x.ndim == 4:
            t = torch.from_numpy(a).permute(0, 3, 1, 2)
        else:
            raise ValueError(f"{what}: expected an (H,W), (H,W,C) or (N,H,W,C) array, got shape {x.shape}")
        return t
    if not torch.is_tensor(x):
        raise TypeError(f"{what}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if x.dim() == 3:
        return x[None]
    if x.dim() != 4:
        raise ValueError(f"{what}: expected (C,H,W) or (N,C,H,W), got shape {tuple(x.shape)}")
    return x


def to_levels(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """uint8 -> float levels 0..255; float in [0, 1] -> clamped, ``*255``, rounded half away from zero.

    Rounding first is what makes a computed PSNR equal to the PSNR of the saved 8-bit image.
    """
    if x.dtype == torch.uint8:
        return x.to(dtype)
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {x.dtype}")
    return torch.floor(x.to(dtype).clamp(0.0, 1.0) * 255.0 + 0.5)


def rgb_to_y(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """BT.601 luma ``16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1] -> Y in [16, 235].

    torch input is channel-first ``(..., 3, H, W)`` and gives ``(..., 1, H, W)``; numpy input is
    channel-last ``(..., H, W, 3)`` and gives ``(..., H, W)``.  A single channel is taken as grey.
    Values are used as given (call :func:`to_levels` / divide by 255 first for uint8 images).
    """
    if isinstance(x, np.ndarray):
        xf = x.astype(np.float64)
        if xf.shape[-1] == 1:
            return 16.0 + sum(_Y_COEFFS) * xf[..., 0]
        if xf.shape[-1] != 3:
            raise ValueError(f"rgb_to_y: expected 3 channels last, got shape {x.shape}")
        r, g, b = xf[..., 0], xf[..., 1], xf[..., 2]
        return 16.0 + _Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b
    if x.dim() < 3:
        raise ValueError(f"rgb_to_y: expected (..., C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[-3]
    if c == 1:
        return 16.0 + sum(_Y_COEFFS) * x
    if c != 3:
        raise ValueError(f"rgb_to_y: expected 1 or 3 channels, got {c}")
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return 16.0 + _Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b


def _crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    b = int(border)
    if b < 0:
        raise ValueError(f"border/scale must be >= 0, got {border}")
    if b == 0:
        return x
    if x.shape[-2] <= 2 * b or x.shape[-1] <= 2 * b:
        raise ValueError(f"image {tuple(x.shape[-2:])} too small to crop a border of {b}")
    return x[..., b:-b, b:-b]


def _prepare(
    sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images -> Y on the 0..255 scale (float, unrounded), shape (N, 1, H, W), on sr's device."""
    s = _as_nchw(sr, "sr")
    h = _as_nchw(hr, "hr")
    if s.shape[-2:] != h.shape[-2:] or s.shape[0] != h.shape[0]:
        raise ValueError(f"sr and hr differ in shape: {tuple(s.shape)} vs {tuple(h.shape)}")
    if s.shape[1] not in (1, 3) or h.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got sr {s.shape[1]}, hr {h.shape[1]}")
    h = h.to(s.device)
    ys = rgb_to_y(to_levels(s, dtype) / 255.0)
    yh = rgb_to_y(to_levels(h, dtype) / 255.0)
    assert isinstance(ys, torch.Tensor) and isinstance(yh, torch.Tensor)
    return ys, yh


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """``10 log10(peak^2 / mse)``; ``inf`` for identical images (mse == 0)."""
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr_on_levels(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image PSNR ``(N,)`` of single-channel ``(N, 1, H, W)`` images on the 0..255 scale."""
    x, y = _crop_border(x, border), _crop_border(y, border)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10((255.0 * 255.0) / mse)  # mse == 0 -> +inf


def psnr_y_batch(
    sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, scale: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Per-image Y-PSNR (dB) of a batch, shape ``(N,)``, on the inputs' device; ``inf`` where identical."""
    ys, yh = _prepare(sr, hr, dtype)
    return psnr_on_levels(ys, yh, scale)


@lru_cache(maxsize=16)
def _gaussian_1d(size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(r * r) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _gaussian_filter_valid(x: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """'valid' 2-D Gaussian filtering of every channel of ``x`` (N, C, H, W).

    Done as two 1-D passes (the window is separable): 22 instead of 121 multiply-adds per pixel,
    ~5x faster in float64 on CPU, equal to the 2-D filter up to float rounding (~1e-13).
    """
    g = _gaussian_1d(size, sigma, str(x.device), x.dtype)
    c = x.shape[1]
    x = F.conv2d(x, g.reshape(1, 1, size, 1).expand(c, 1, size, 1), groups=c)
    return F.conv2d(x, g.reshape(1, 1, 1, size).expand(c, 1, 1, size), groups=c)


def ssim_on_levels(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image SSIM ``(N,)`` of single-channel ``(N, 1, H, W)`` images on the 0..255 scale."""
    x, y = _crop_border(x, border), _crop_border(y, border)
    if x.shape[-2] < 11 or x.shape[-1] < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after the border crop, got {tuple(x.shape[-2:])}")
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    stats = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu1, mu2, e11, e22, e12 = stats.unbind(dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return ssim_map.flatten(1).mean(dim=1)


def ssim_y_batch(
    sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, scale: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Per-image Y-SSIM of a batch, shape ``(N,)`` (Wang et al. 2004; 11x11 Gaussian, 'valid')."""
    ys, yh = _prepare(sr, hr, dtype)
    return ssim_on_levels(ys, yh, scale)


def psnr_y(sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, scale: int) -> float:
    """Y-PSNR in dB of one image (or the mean over a batch); ``inf`` for identical images."""
    return float(psnr_y_batch(sr, hr, scale).mean().item())


def ssim_y(sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, scale: int) -> float:
    """Y-SSIM of one image (or the mean over a batch); 1.0 for identical images."""
    return float(ssim_y_batch(sr, hr, scale).mean().item())
