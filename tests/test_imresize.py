"""MATLAB-compatible bicubic imresize: kernel, weights, borders, sizes, pass order, uint8 rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hdnas.core.data.imresize import (
    bicubic_degrade,
    contributions,
    cubic,
    imresize,
    imresize_uint8,
    output_size,
    to_uint8,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: 2 threads thrash when a core is busy

UP2 = [-0.0234375, 0.2265625, 0.8671875, -0.0703125]
# x2 down, antialiased: 0.5 * cubic(d / 2) at d = +-0.5, +-1.5, +-2.5, +-3.5 (8 taps).
DOWN2 = [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875]


def naive_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Dense (n_out, n_in) resampling matrix written directly from MATLAB's definition, for cross-checks."""
    m = np.zeros((n_out, n_in))
    width = 4.0 / scale if scale < 1 else 4.0
    for x in range(1, n_out + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        row = {}
        for j in range(math.floor(u - width / 2), math.floor(u - width / 2) + math.ceil(width) + 2):
            d = u - j
            w = scale * cubic(np.array(scale * d)) if scale < 1 else cubic(np.array(d))
            # mirror 1-based j into 1..n_in: ... 2 1 | 1 2 ... n | n n-1 ...
            k = j
            while k < 1 or k > n_in:
                k = 1 - k if k < 1 else 2 * n_in + 1 - k
            row[k - 1] = row.get(k - 1, 0.0) + float(w)
        total = sum(row.values())
        for k, w in row.items():
            m[x - 1, k] = w / total
    return m


def test_cubic_kernel_values():
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, -0.25])
    expect = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0, 0.8671875]
    np.testing.assert_allclose(cubic(x), expect, atol=1e-15)


def test_upscale_x2_weights_and_mirror():
    w, idx = contributions(10, 20, 2.0)
    assert w.shape == idx.shape and w.shape[0] == 20
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-14)
    # Output pixel 1: u = 0.75 -> taps at -1, 0, 1, 2 (1-based), i.e. mirrored 2, 1, 1, 2 -> 0-based 1, 0, 0, 1
    nz = w[0] != 0
    np.testing.assert_allclose(w[0][nz], UP2, atol=1e-15)
    assert idx[0][nz].tolist() == [1, 0, 0, 1]
    # Interior rows alternate the pattern and its mirror image.
    np.testing.assert_allclose(w[8][w[8] != 0], UP2, atol=1e-15)
    np.testing.assert_allclose(w[9][w[9] != 0], UP2[::-1], atol=1e-15)


def test_downscale_x2_antialiased_8_taps_and_mirror():
    w, idx = contributions(20, 10, 0.5)
    assert w.shape == (10, 8)  # 10 candidate taps, the two all-zero columns dropped as MATLAB does
    for row in range(10):
        np.testing.assert_allclose(w[row], DOWN2, atol=1e-15)
    # Output 1: u = 1.5, taps 1-based -2..5 -> symmetric padding 3 2 1 | 1 2 3 4 5
    assert idx[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4]
    assert idx[9].tolist() == [15, 16, 17, 18, 19, 19, 18, 17]


@pytest.mark.parametrize(
    "n_in,n_out,scale",
    [(7, 14, 2.0), (7, 21, 3.0), (9, 36, 4.0), (12, 6, 0.5), (13, 5, 1 / 3), (17, 5, 0.25), (10, 7, 0.7)],
)
def test_weights_match_naive_definition(n_in, n_out, scale):
    w, idx = contributions(n_in, n_out, scale)
    dense = np.zeros((n_out, n_in))
    for r in range(n_out):
        np.add.at(dense[r], idx[r], w[r])
    np.testing.assert_allclose(dense, naive_matrix(n_in, n_out, scale), atol=1e-13)


def test_contributions_are_cached():
    contributions.cache_clear()
    a = contributions(31, 62, 2.0)
    b = contributions(31, 62, 2.0)
    assert a is b and contributions.cache_info().hits == 1


@pytest.mark.parametrize("scale", [2, 3, 4, 1 / 2, 1 / 3, 1 / 4])
def test_constant_image_preserved(scale):
    x = torch.full((3, 24, 36), 0.3, dtype=torch.float64)
    y = imresize(x, scale=scale)
    torch.testing.assert_close(y, torch.full_like(y, 0.3), atol=1e-12, rtol=0)
    u8 = imresize_uint8(torch.full((3, 24, 36), 77, dtype=torch.uint8), scale=scale)
    assert torch.all(u8 == 77)


@pytest.mark.parametrize(
    "h,w,scale,expect",
    [
        (48, 48, 2, (96, 96)),
        (17, 23, 2, (34, 46)),
        (17, 23, 3, (51, 69)),
        (17, 23, 4, (68, 92)),
        (17, 23, 1 / 2, (9, 12)),
        (17, 23, 1 / 3, (6, 8)),
        (17, 23, 1 / 4, (5, 6)),
        (255, 255, 1 / 3, (85, 85)),
        (96, 72, 1 / 4, (24, 18)),
    ],
)
def test_output_shapes(h, w, scale, expect):
    assert output_size((h, w), scale) == expect
    assert tuple(imresize(torch.rand(3, h, w), scale=scale).shape) == (3, *expect)
    assert tuple(imresize(torch.rand(2, 1, h, w), scale=scale).shape) == (2, 1, *expect)


def test_size_argument_and_argument_errors():
    x = torch.rand(1, 3, 10, 12)
    assert imresize(x, size=(5, 30)).shape == (1, 3, 5, 30)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, scale=2, size=(20, 24))
    with pytest.raises(TypeError):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), scale=2)
    with pytest.raises(ValueError):
        imresize(torch.rand(8, 8), scale=2)


@pytest.mark.parametrize("scale", [2.0, 3.0, 0.5, 1 / 3, 0.25])
def test_2d_resize_equals_dense_separable_reference(scale, seeded):
    x = torch.rand(2, 3, 15, 12, generator=seeded, dtype=torch.float64)
    y = imresize(x, scale=scale)
    oh, ow = y.shape[-2:]
    mh = torch.from_numpy(naive_matrix(15, oh, scale))
    mw = torch.from_numpy(naive_matrix(12, ow, scale))
    torch.testing.assert_close(y, mh @ x @ mw.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_linear_ramp_reproduced_away_from_borders(scale):
    """Source coordinate of output pixel X is X/s + (1 - 1/s)/2 (MATLAB); a ramp must land on it."""
    n = 20
    ramp = torch.arange(1, n + 1, dtype=torch.float64).repeat(1, n, 1)  # value = 1-based column
    up = imresize(ramp, scale=scale)[0, 0]
    xs = torch.arange(1, n * scale + 1, dtype=torch.float64)
    u = xs / scale + 0.5 * (1 - 1 / scale)
    inner = slice(3 * scale, (n - 3) * scale)
    torch.testing.assert_close(up[inner], u[inner], atol=1e-12, rtol=0)
    down = imresize(torch.arange(1, 4 * n * scale + 1, dtype=torch.float64).repeat(1, 4, 1), scale=1 / scale)[0, 0]
    xs = torch.arange(1, 4 * n + 1, dtype=torch.float64)
    u = xs * scale + 0.5 * (1 - scale)
    torch.testing.assert_close(down[4:-4], u[4:-4], atol=1e-12, rtol=0)


def test_uint8_rounds_after_each_pass_in_matlab_order(seeded):
    """Height (the larger reduction) goes first; with uint8 rounding in between, order is visible."""
    x = torch.randint(0, 256, (3, 16, 16), generator=seeded, dtype=torch.uint8)
    got = imresize_uint8(x, size=(8, 32))  # scales: h 0.5, w 2 -> h first
    mh = torch.from_numpy(naive_matrix(16, 8, 0.5))
    mw = torch.from_numpy(naive_matrix(16, 32, 2.0))

    def q(t):
        return torch.floor(t.clamp(0, 255) + 0.5)

    h_first = q(q(mh @ x.double()) @ mw.T).to(torch.uint8)
    w_first = q(mh @ q(x.double() @ mw.T)).to(torch.uint8)
    assert torch.equal(got, h_first)
    assert not torch.equal(h_first, w_first)  # the test can tell the two orders apart
    # Equal scales: height first (MATLAB's stable sort).
    got_sq = imresize_uint8(x, scale=0.5)
    m = torch.from_numpy(naive_matrix(16, 8, 0.5))
    assert torch.equal(got_sq, q(q(m @ x.double()) @ m.T).to(torch.uint8))


def test_to_uint8_rounds_half_away_and_saturates():
    t = torch.tensor([-3.0, 0.49, 0.5, 1.5, 2.5, 254.5, 300.0], dtype=torch.float64)
    assert to_uint8(t).tolist() == [0, 0, 1, 2, 3, 255, 255]


def test_bicubic_degrade_uint8_numpy_and_float(seeded):
    hr = torch.randint(0, 256, (3, 24, 36), generator=seeded, dtype=torch.uint8)
    lr = bicubic_degrade(hr, 3)
    assert lr.dtype == torch.uint8 and lr.shape == (3, 8, 12)
    assert torch.equal(lr, imresize_uint8(hr, scale=1 / 3))
    lr_np = bicubic_degrade(hr.permute(1, 2, 0).numpy(), 3)
    assert isinstance(lr_np, np.ndarray) and lr_np.shape == (8, 12, 3)
    np.testing.assert_array_equal(lr_np, lr.permute(1, 2, 0).numpy())
    lr_f = bicubic_degrade(hr.double() / 255, 3)
    assert lr_f.dtype == torch.float64
    # float path and uint8 path agree up to the two roundings (<= 1 level)
    assert (lr_f * 255 - lr.double()).abs().max() <= 1.0
    with pytest.raises(ValueError, match="multiple of scale"):
        bicubic_degrade(hr[:, :23], 2)


def test_float32_close_to_float64_and_differentiable(seeded):
    x = torch.rand(1, 3, 12, 10, generator=seeded, dtype=torch.float64)
    y64 = imresize(x, scale=0.5)
    y32 = imresize(x.float(), scale=0.5)
    assert y32.dtype == torch.float32 and y32.device == x.device
    torch.testing.assert_close(y32.double(), y64, atol=1e-6, rtol=0)
    xg = torch.rand(1, 1, 6, 5, generator=seeded, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, scale=2), (xg,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_follows_input_device(seeded):
    x = torch.rand(2, 3, 20, 16, generator=seeded, dtype=torch.float64)
    y = imresize(x.cuda(), scale=1 / 2)
    assert y.is_cuda
    torch.testing.assert_close(y.cpu(), imresize(x, scale=1 / 2), atol=1e-12, rtol=0)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(imresize_uint8(u8.cuda(), scale=2).cpu(), imresize_uint8(u8, scale=2))
