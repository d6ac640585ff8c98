"""Y-PSNR / Y-SSIM as the SR literature computes them: hand-computed cases and an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hdnas.core.metrics import psnr_from_mse, psnr_y, psnr_y_batch, rgb_to_y, ssim_y, ssim_y_batch, to_levels

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: 2 threads thrash when a core is busy


def grey(value: int, h: int = 24, w: int = 24) -> torch.Tensor:
    return torch.full((3, h, w), value, dtype=torch.uint8)


def test_rgb_to_y_bt601_range_and_layouts():
    px = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = rgb_to_y(px.T.reshape(3, 1, 5))  # torch: channels first
    np.testing.assert_allclose(y.flatten().numpy(), [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-4)
    y_np = rgb_to_y(px.numpy().reshape(1, 5, 3))  # numpy: channels last
    np.testing.assert_allclose(y_np.flatten(), y.flatten().numpy(), atol=1e-5)
    assert rgb_to_y(torch.ones(2, 1, 4, 4)).shape == (2, 1, 4, 4)  # grey accepted


def test_identical_images_give_inf_psnr_and_unit_ssim(seeded):
    hr = torch.randint(0, 256, (3, 32, 32), generator=seeded, dtype=torch.uint8)
    assert psnr_y(hr, hr, 2) == float("inf")
    assert ssim_y(hr, hr, 2) == pytest.approx(1.0, abs=1e-12)
    assert psnr_from_mse(0.0) == float("inf")


def test_known_mse_gives_known_psnr():
    # Grey levels 100 vs 110: Y differs by 219/255 * 10 everywhere.
    expect = 10 * math.log10(255**2 / (219 / 255 * 10) ** 2)
    assert psnr_y(grey(110), grey(100), 4) == pytest.approx(expect, abs=1e-10)
    assert psnr_from_mse(1.0) == pytest.approx(48.1308036, abs=1e-6)


def test_border_of_scale_pixels_is_ignored():
    hr = grey(100, 20, 20)
    sr = hr.clone()
    sr[:, :3, :] = 0
    sr[:, :, -3:] = 255
    assert psnr_y(sr, hr, 3) == float("inf")
    assert math.isfinite(psnr_y(sr, hr, 2))
    sr2 = hr.clone()
    sr2[:, 3, 3] = 101  # first pixel inside the crop: one pixel of 14x14 off by one level
    expect = 10 * math.log10(255**2 / ((219 / 255) ** 2 / 14**2))
    assert psnr_y(sr2, hr, 3) == pytest.approx(expect, abs=1e-9)


def test_float_sr_is_clamped_and_rounded_to_uint8_levels_first():
    hr = grey(100)
    assert psnr_y(hr.float() / 255 + 0.4 / 255, hr, 2) == float("inf")  # rounds back to 100
    assert psnr_y(grey(101).float() / 255 - 0.49 / 255, grey(101), 2) == float("inf")
    half = psnr_y(hr.double() / 255 + 0.5 / 255, hr, 2)  # half rounds away from zero -> 101
    assert half == pytest.approx(psnr_y(grey(101), hr, 2), abs=1e-9)
    assert psnr_y(torch.full((3, 24, 24), 1.7), grey(255), 2) == float("inf")  # clamped to 1
    assert psnr_y(torch.full((3, 24, 24), -0.2), grey(0), 2) == float("inf")
    lv = to_levels(torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 2.0]))
    assert lv.tolist() == [0.0, 1.0, 2.0, 255.0]


def test_ssim_of_constant_images_by_hand():
    # sigma = 0 -> SSIM = (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1) exactly.
    y1, y2 = 16 + 219 * 100 / 255, 16 + 219 * 140 / 255
    c1 = (0.01 * 255) ** 2
    expect = (2 * y1 * y2 + c1) / (y1**2 + y2**2 + c1)
    assert ssim_y(grey(100, 30, 30), grey(140, 30, 30), 2) == pytest.approx(expect, abs=1e-12)


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Plain numpy SSIM on 2-D float arrays: full 11x11 window, explicit 'valid' sliding sums."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, w = a.shape[0] - 10, a.shape[1] - 10
    vals = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            m1, m2 = (win * pa).sum(), (win * pb).sum()
            v1 = (win * pa * pa).sum() - m1 * m1
            v2 = (win * pb * pb).sum() - m2 * m2
            cov = (win * pa * pb).sum() - m1 * m2
            vals[i, j] = ((2 * m1 * m2 + c1) * (2 * cov + c2)) / ((m1 * m1 + m2 * m2 + c1) * (v1 + v2 + c2))
    return float(vals.mean())


def test_ssim_and_psnr_match_independent_numpy_reference(seeded):
    hr = torch.randint(0, 256, (3, 26, 29), generator=seeded, dtype=torch.uint8)
    noise = torch.randint(-20, 21, hr.shape, generator=seeded)
    sr = (hr.int() + noise).clamp(0, 255).to(torch.uint8)
    hr_np, sr_np = hr.permute(1, 2, 0).numpy(), sr.permute(1, 2, 0).numpy()
    ya = rgb_to_y(sr_np.astype(np.float64) / 255)[2:-2, 2:-2]
    yb = rgb_to_y(hr_np.astype(np.float64) / 255)[2:-2, 2:-2]
    assert ssim_y(sr, hr, 2) == pytest.approx(reference_ssim(ya, yb), abs=1e-12)
    assert psnr_y(sr, hr, 2) == pytest.approx(10 * np.log10(255**2 / np.mean((ya - yb) ** 2)), abs=1e-10)
    # numpy HWC uint8 input gives the same as torch CHW
    assert ssim_y(sr_np, hr_np, 2) == pytest.approx(ssim_y(sr, hr, 2), abs=1e-15)


def test_batched_values_equal_single_image_values(seeded):
    hr = torch.randint(0, 256, (3, 3, 30, 30), generator=seeded, dtype=torch.uint8)
    sr = (hr.float() / 255 + 0.03 * torch.randn(hr.shape, generator=seeded)).float()
    p = psnr_y_batch(sr, hr, 3)
    s = ssim_y_batch(sr, hr, 3)
    assert p.shape == (3,) and s.shape == (3,) and p.dtype == torch.float64
    for i in range(3):
        assert p[i].item() == pytest.approx(psnr_y(sr[i], hr[i], 3), abs=1e-12)
        assert s[i].item() == pytest.approx(ssim_y(sr[i], hr[i], 3), abs=1e-12)
    assert psnr_y(sr, hr, 3) == pytest.approx(p.mean().item(), abs=1e-12)


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(grey(0, 20, 20), grey(0, 20, 22), 2)
    with pytest.raises(ValueError, match="too small"):
        psnr_y(grey(0, 4, 4), grey(0, 4, 4), 2)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(grey(0, 12, 12), grey(0, 12, 12), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_cuda_match_cpu(seeded):
    hr = torch.randint(0, 256, (2, 3, 30, 30), generator=seeded, dtype=torch.uint8)
    sr = hr.float() / 255 + 0.02 * torch.randn(hr.shape, generator=seeded)
    p = psnr_y_batch(sr.cuda(), hr.cuda(), 2)
    assert p.is_cuda
    torch.testing.assert_close(p.cpu(), psnr_y_batch(sr, hr, 2), atol=1e-9, rtol=0)
    torch.testing.assert_close(ssim_y_batch(sr.cuda(), hr, 2).cpu(), ssim_y_batch(sr, hr, 2), atol=1e-9, rtol=0)
