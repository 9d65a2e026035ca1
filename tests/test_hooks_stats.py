"""cnnlab.hooks.layer_statistics: per-layer forward and backward statistics of one batch (notebook 08)."""

import math

import pytest
import torch
from torch import nn

from cnnlab.hooks import layer_statistics
from cnnlab.models import DeepStack


def _two_layer_net() -> nn.Sequential:
    """x -> (2x + 1, -3x + 4) -> 0.5 * first + 0.25 * second: every statistic is arithmetic."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, -3.0]).view(2, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([1.0, 4.0]))
        net[1].weight.copy_(torch.tensor([0.5, 0.25]).view(1, 2, 1, 1))
    return net


def test_statistics_of_a_hand_built_net_are_the_arithmetic():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 3, 3, dtype=torch.float64)
    net = _two_layer_net().double()
    stats = layer_statistics(net, x, torch.zeros(16), loss_fn=lambda out, y: out.sum())
    assert stats.names == ["0", "1"]  # every Conv2d, in order
    var = x.var(0, correction=0).mean()  # each pixel's variance over the batch, averaged over pixels
    # forward: channel 0 is 2x + 1, channel 1 is -3x + 4 (the biases do not spread); the output is 0.25x + 1.5
    assert stats.output_std.tolist() == pytest.approx([math.sqrt((4 + 9) / 2 * var), 0.25 * math.sqrt(var)])
    # backward of out.sum(): 1 for every output unit, 0.5 and 0.25 for the two channels before it
    assert stats.grad_rms.tolist() == pytest.approx([math.sqrt((0.5**2 + 0.25**2) / 2), 1.0])
    # d loss / d w1[c] = w2[c] * sum(x); d loss / d w2[c] = sum of channel c
    total = float(x.sum())
    first = math.hypot(0.5 * total, 0.25 * total)
    second = math.hypot(float((2 * x + 1).sum()), float((-3 * x + 4).sum()))
    assert stats.weight_grad_norm.tolist() == pytest.approx([first, second])
    assert stats.loss == pytest.approx(float((0.25 * x + 1.5).sum()))
    assert all(t.device.type == "cpu" for t in (stats.output_std, stats.grad_rms, stats.weight_grad_norm))


def test_an_identity_residual_stack_keeps_the_signal_and_a_zeroed_plain_stack_loses_it():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    signal = ["relu0"] + [f"relu{i}" for i in range(1, 5)]
    for residual in (True, False):
        model = DeepStack(depth=8, width=4, residual=residual)
        with torch.no_grad():  # every block's convolutions give 0
            for i in range(1, 5):
                for p in getattr(model, f"block{i}").parameters():
                    p.zero_()
        stats = layer_statistics(model, x, y, signal)
        std = stats.output_std
        assert std[0] > 0
        if residual:  # x + 0, then a ReLU of a ReLU: the signal of the stem, unchanged
            assert torch.allclose(std, std[0].expand(5))
            assert (stats.grad_rms > 0).all()
        else:  # 0 after the first block: nothing of the input is left, nor any gradient before the classifier
            assert (std[1:] == 0).all() and (stats.grad_rms[:-1] == 0).all()
        assert stats.weight_grad_norm.isnan().all()  # ReLUs have no weight


def test_the_model_is_left_as_it_was_even_when_the_loss_fails():
    model = DeepStack(depth=4, width=4)
    model.train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    stats = layer_statistics(model, x, y)
    assert stats.names == ["stem", "block1.0", "block1.2", "block2.0", "block2.2"]
    assert not x.requires_grad and model.training and all(p.grad is None for p in model.parameters())

    def broken(out, target):
        raise RuntimeError("a loss that fails")

    with pytest.raises(RuntimeError, match="a loss that fails"):
        layer_statistics(model, x, y, loss_fn=broken)
    assert not any(m._forward_hooks for m in model.modules())
    assert model.training
    with pytest.raises(ValueError, match="at least 2"):
        layer_statistics(model, x[:1], y[:1])
    with pytest.raises(ValueError, match="no layer named"):
        layer_statistics(model, x, y, ["conv9"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_it_runs_where_the_model_is_and_returns_cpu_tensors():
    model = DeepStack(depth=4, width=4).to("cuda")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))  # on the CPU
    stats = layer_statistics(model, x, y)
    cpu = layer_statistics(model.cpu(), x, y)
    assert stats.output_std.device.type == "cpu"
    assert torch.allclose(stats.output_std, cpu.output_std, rtol=1e-3, atol=1e-6)
