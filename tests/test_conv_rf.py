"""Oracle tests: hand-written convolutions against F.conv2d; receptive-field arithmetic against
hand values and against gradients of linearised models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.conv import (channel_contributions, conv2d_loops, conv2d_unfold, conv_output_size, output_window,
                         shift_difference)
from cnnlab.hooks import capture, feature_maps
from cnnlab.models import ConvStack, ModernCNN, SmallCNN
from cnnlab.receptive_field import effective_receptive_field, input_region, linearised, receptive_fields

CASES = [
    dict(),
    dict(padding=1),
    dict(stride=2),
    dict(stride=2, padding=2),
    dict(dilation=2),
    dict(dilation=2, padding=1, stride=3),
    dict(stride=(1, 2), padding=(0, 1)),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("impl", [conv2d_loops, conv2d_unfold])
def test_hand_written_conv_equals_conv2d(impl, k, kwargs):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 11, 13, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    expected = F.conv2d(x, w, b, **kwargs)
    got = impl(x, w, b, **kwargs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kwargs", CASES)
def test_channel_contributions_plus_bias_sum_to_conv2d(kwargs):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 11, 13, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    parts = channel_contributions(x, w, **kwargs)
    expected = F.conv2d(x, w, b, **kwargs)
    assert parts.shape == (2, 4, 3, *expected.shape[-2:])
    torch.testing.assert_close(parts.sum(2) + b.view(1, -1, 1, 1), expected)
    # each part is that input channel alone through its own k x k kernel
    torch.testing.assert_close(parts[:, :, 1], F.conv2d(x[:, 1:2], w[:, 1:2], **kwargs))


@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 1), (2, 0), (2, 2), (3, 1)])
def test_output_window_reads_the_window_conv2d_reads(stride, padding):
    g = torch.Generator().manual_seed(stride + 10 * padding)
    image = torch.rand(2, 9, 10, generator=g)  # two channels
    kernel = torch.randn(2, 3, 3, generator=g)
    expected = F.conv2d(image[None], kernel[None], torch.tensor([0.25]), stride=stride, padding=padding)[0, 0]
    for row, col in [(0, 0), (expected.shape[0] - 1, expected.shape[1] - 1), (1, expected.shape[1] // 2)]:
        w = output_window(image, kernel, row, col, stride=stride, padding=padding, bias=0.25)
        assert w.total == pytest.approx(float(expected[row, col]), abs=1e-5)
        # which input pixels that output reads, asked of autograd rather than of the same arithmetic:
        # with a kernel of nonzero weights, exactly those pixels get a nonzero gradient
        x = image.clone().requires_grad_(True)
        F.conv2d(x[None], kernel.abs()[None] + 0.1, stride=stride, padding=padding)[0, 0, row, col].backward()
        reads = x.grad.abs().sum(0) > 0  # (H, W)
        window = torch.zeros_like(reads)
        window[max(w.rows.start, 0):max(w.rows.stop, 0), max(w.cols.start, 0):max(w.cols.stop, 0)] = True
        assert torch.equal(reads, window), f"output ({row}, {col}) reads other pixels than its window"
        inside = (slice(max(-w.rows.start, 0), 3 - max(w.rows.stop - image.shape[1], 0)),
                  slice(max(-w.cols.start, 0), 3 - max(w.cols.stop - image.shape[2], 0)))
        torch.testing.assert_close(w.values[:, inside[0], inside[1]], image[:, window.any(1)][:, :, window.any(0)])
        assert float(w.values.abs().sum()) == pytest.approx(float(w.values[:, inside[0], inside[1]].abs().sum()))  # padding: 0
        torch.testing.assert_close(w.products, w.values * kernel)


def test_output_window_in_the_padding_and_its_errors():
    image = torch.ones(5, 5)
    w = output_window(image, torch.ones(3, 3), 0, 0, padding=1)
    assert w.rows == slice(-1, 2) and w.values[0].tolist() == [0, 0, 0] and w.total == 4.0
    assert "= 4.0000" in w.arithmetic() and len(w.arithmetic().splitlines()) == 4
    with pytest.raises(ValueError, match="output row 3 is outside 0–2: a 3x3 kernel with stride 1 and padding 0"):
        output_window(image, torch.ones(3, 3), 3, 0)
    with pytest.raises(ValueError, match="output col -1 is outside"):
        output_window(image, torch.ones(3, 3), 0, -1)
    with pytest.raises(ValueError, match="stride must be a whole number >= 1, got 0"):
        output_window(image, torch.ones(3, 3), 0, 0, stride=0)
    with pytest.raises(ValueError, match="padding must be a whole number >= 0, got -1"):
        output_window(image, torch.ones(3, 3), 0, 0, padding=-1)
    two = output_window(torch.ones(2, 5, 5), torch.ones(2, 3, 3), 1, 1)  # each input channel under its heading
    assert "input channel 0:" in two.arithmetic() and "input channel 1:" in two.arithmetic() and two.total == 18.0
    with pytest.raises(ValueError, match="does not fit"):
        output_window(image, torch.ones(7, 7), 0, 0)
    with pytest.raises(ValueError, match=r"must be \(k, k\) or \(1, k, k\)"):
        output_window(image, torch.ones(2, 3, 3), 0, 0)


def test_shift_difference_convolution_is_equivariant_pooling_only_for_even_shifts():
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 20, 20)
    x[:, :, 6:14, 6:14] = torch.rand(4, 1, 8, 8)  # content away from the borders
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    pooled = nn.Sequential(conv, nn.MaxPool2d(2))
    strided = nn.Conv2d(1, 3, 3, padding=1, stride=2, bias=False)
    assert shift_difference(conv, x, 3, 2).abs().max() < 1e-6
    for layer in (pooled, strided):
        assert shift_difference(layer, x, 2, 0, (1, 0)).abs().max() < 1e-6
        assert min(shift_difference(layer, x, 1, 0, (s, 0)).abs().max() for s in (0, 1)) > 1e-3


def test_output_size_formula_and_a_kernel_too_big():
    assert conv_output_size(28, 3) == 26 and conv_output_size(28, 3, padding=1) == 28
    assert conv_output_size(28, 3, stride=2, padding=1) == 14 and conv_output_size(28, 3, dilation=2) == 24
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_size(4, 3, dilation=3)


def test_small_cnn_receptive_fields_by_hand():
    rows = receptive_fields(SmallCNN())
    assert [(r.name, r.size[0], r.jump[0], r.start[0]) for r in rows] == [
        ("conv1", 3, 1, 0), ("conv2", 5, 1, 0), ("pool", 6, 2, 0)]
    assert input_region(SmallCNN(), "pool", (3, 4)) == (slice(6, 12), slice(8, 14))


def test_padding_reaches_outside_the_image_and_regions_are_clipped():
    stack = ConvStack(depth=2, padding=1)
    last = receptive_fields(stack)[-1]
    assert last.size == (5, 5) and last.start == (-2, -2)
    assert last.region((0, 0), (28, 28)) == (slice(0, 3), slice(0, 3))


STACKS = {
    "small-cnn": SmallCNN(),
    "modern-cnn": ModernCNN(width=4),
    "2 convs": ConvStack(depth=2),
    "4 convs, padded": ConvStack(depth=4, padding=1),
    "8 convs, padded": ConvStack(depth=8, padding=1),
    "4 convs, pool every 2": ConvStack(depth=4, padding=1, pool_every=2),
    "4 convs, stride 2": ConvStack(depth=4, padding=1, stride=2),
    "3 convs, dilation 2": ConvStack(depth=3, padding=2, dilation=2),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_theory_equals_the_gradient_of_a_linearised_model(name):
    """With ReLUs removed, max-pools averaged and weights positive, no gradient path can cancel:
    the input pixels with non-zero gradient span exactly the theoretical region, for every layer."""
    model = STACKS[name]
    lin = linearised(model)
    x = torch.randn(1, 1, 28, 28)
    for row in receptive_fields(model):
        _, h, w = row.out_shape
        for unit in {(0, 0), (h // 2, w // 3), (h - 1, w - 1)}:
            grad = effective_receptive_field(lin, row.name, x, unit)
            nz = (grad != 0).nonzero()
            span = (slice(int(nz[:, 0].min()), int(nz[:, 0].max()) + 1), slice(int(nz[:, 1].min()), int(nz[:, 1].max()) + 1))
            expected = row.region(unit, (28, 28))
            assert span == expected, f"{name} {row.name} unit {unit}"
            if "dilation" not in name:  # dilated kernels skip pixels inside their span
                assert (grad[expected] != 0).all()


def test_effective_rf_is_concentrated_in_the_centre():
    torch.manual_seed(0)
    model = ConvStack(depth=8, padding=1)
    x = torch.randn(16, 1, 28, 28)
    row = receptive_fields(model)[-1]
    erf = effective_receptive_field(model, row.name, x, (14, 14))
    region = erf[row.region((14, 14), (28, 28))]
    centre = erf[12:17, 12:17].sum() / erf.sum()
    assert centre > 25 / region.numel()  # more than its share of the theoretical region
    with pytest.raises(ValueError, match="outside"):
        effective_receptive_field(model, row.name, x, (40, 0))


def test_capture_always_removes_its_hooks():
    model = SmallCNN()
    for _ in range(3):
        with pytest.raises(RuntimeError):
            with capture(model, ["conv1", "pool"]) as acts:
                model(torch.zeros(1, 1, 28, 28))
                assert acts["conv1"].shape == (1, 32, 26, 26)
                raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    assert feature_maps(model, torch.zeros(2, 1, 28, 28), "conv2").shape == (2, 64, 24, 24)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no layer named"):
        feature_maps(model, torch.zeros(1, 1, 28, 28), "conv9")


def test_unsupported_layers_are_named():
    class Odd(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Odd"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 2, 3), Odd()))


def test_erf_extent_measures_the_square_holding_most_of_the_mass():
    from cnnlab.receptive_field import erf_extent

    erf = torch.zeros(11, 11)
    erf[5, 5] = 8
    erf[3:8, 3:8] += 0.08  # 25 cells: total 8 + 2 = 10
    assert erf_extent(erf, (5, 5), 0.8) == 1
    assert erf_extent(erf, (5, 5), 0.85) == 3  # 8 + 9 * 0.08 = 8.72 of 10
    assert erf_extent(erf, (5, 5), 0.9) == 5  # 8.72 < 9: the whole 5x5 is needed
    assert erf_extent(torch.zeros(5, 5), (2, 2)) == 0
