"""Receptive fields: the theoretical one from layer arithmetic, the effective one from gradients.

For a chain of layers, along each axis, unit ``u`` of a layer sees input pixels
``[start + u*jump, start + u*jump + size - 1]``. A layer with kernel ``k``, stride ``s``,
padding ``p`` and dilation ``d`` updates these as

    size  += (k - 1) * d * jump        start -= p * jump        jump *= s

(starting from size 1, jump 1, start 0 at the input). Layers that act pixel by pixel (ReLU,
BatchNorm, Dropout) change nothing. The *effective* receptive field is measured instead:
how much each input pixel moves a unit, ``|d unit / d input|``, averaged over images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.device import eval_mode, model_device
from cnnlab.hooks import capture, leaf_layers

__all__ = [
    "RFLayer",
    "receptive_fields",
    "input_region",
    "receptive_field_view",
    "effective_receptive_field",
    "linearised",
    "erf_extent",
    "measured_receptive_field",
]

_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity,
              nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class RFLayer:
    """The receptive field of the units of one layer's output, per axis (rows, columns)."""

    name: str
    out_shape: tuple[int, int, int]  # (channels, H, W) of the layer's output
    size: tuple[int, int]  # input pixels one unit sees, per axis
    jump: tuple[int, int]  # input pixels between neighbouring units (the stride product)
    start: tuple[int, int]  # first input pixel seen by unit 0 (negative: it reaches into the padding)

    def region(self, unit: tuple[int, int], image_size: tuple[int, int] | None = None) -> tuple[slice, slice]:
        """The input rows and columns unit ``(i, j)`` sees; clipped to ``image_size`` if given."""
        out = []
        for axis, u in enumerate(unit):
            lo = self.start[axis] + u * self.jump[axis]
            hi = lo + self.size[axis]
            if image_size is not None:
                lo, hi = max(lo, 0), min(hi, image_size[axis])
            out.append(slice(lo, hi))
        return tuple(out)


def _params(layer: nn.Module):
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    if isinstance(layer, nn.Conv2d) or getattr(layer, "is_convolution", False):  # LeNet-5's partial C3 too
        return pair(layer.kernel_size), pair(layer.stride), pair(layer.padding), pair(layer.dilation)
    if isinstance(layer, nn.ZeroPad2d):  # (left, right, top, bottom): moves the start, as a conv's padding does
        left, _, top, _ = layer.padding
        return (1, 1), (1, 1), (top, left), (1, 1)
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        dilation = pair(getattr(layer, "dilation", 1))
        return pair(layer.kernel_size), pair(layer.stride or layer.kernel_size), pair(layer.padding), dilation
    return None


def receptive_fields(model: nn.Module, input_shape: tuple[int, int, int] = (1, 28, 28)) -> list[RFLayer]:
    """The theoretical receptive field after every spatial layer of ``model``, in order.

    ``model`` is a chain of layers (an ``nn.Sequential``, nested ones included). The walk stops
    at the first layer that mixes all positions (``Flatten``, ``Linear``, global pooling): from
    there on every unit sees the whole input.
    """
    if isinstance(model, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        model = nn.Sequential(model)
    size, jump, start = [1, 1], [1, 1], [0, 0]
    rows = []
    x = torch.zeros(1, *input_shape, device=model_device(model))  # a shape probe, where the model is
    with eval_mode(model):
        with torch.no_grad():
            for name, layer in leaf_layers(model):
                if isinstance(layer, (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                    break
                params = _params(layer)
                if params is None and not (isinstance(layer, _POINTWISE) or getattr(layer, "pointwise", False)):
                    raise TypeError(
                        f"layer {name} ({type(layer).__name__}) is neither a convolution, a pooling layer nor "
                        "pointwise; receptive_fields handles chains of those"
                    )
                x = layer(x)
                if params is None:
                    continue
                (kh, kw), (sh, sw), (ph, pw), (dh, dw) = params
                for axis, (k, s, p, d) in enumerate(((kh, sh, ph, dh), (kw, sw, pw, dw))):
                    size[axis] += (k - 1) * d * jump[axis]
                    start[axis] -= p * jump[axis]
                    jump[axis] *= s
                rows.append(RFLayer(name, tuple(x.shape[1:]), tuple(size), tuple(jump), tuple(start)))
    return rows


def input_region(model: nn.Module, layer: str, unit: tuple[int, int], input_shape=(1, 28, 28)) -> tuple[slice, slice]:
    """The input rows and columns (clipped to the image) that unit ``(i, j)`` of ``layer`` sees."""
    for row in receptive_fields(model, input_shape):
        if row.name == layer:
            return row.region(unit, input_shape[1:])
    raise ValueError(f"{layer!r} is not a spatial layer of this model; choose one of "
                     f"{[r.name for r in receptive_fields(model, input_shape)]}")


def receptive_field_view(model: nn.Module, layer: str, unit: tuple[int, int], x: Tensor) -> tuple[RFLayer, tuple[slice, slice], Tensor]:
    """A unit's theoretical receptive field (its layer's row and the clipped input region) and
    its effective receptive field averaged over the images ``x``: what the explorer shows."""
    rows = {r.name: r for r in receptive_fields(model, tuple(x.shape[1:]))}
    if layer not in rows:
        raise ValueError(f"{layer!r} is not a spatial layer; choose one of {list(rows)}")
    row = rows[layer]
    region = row.region(unit, tuple(x.shape[-2:]))
    return row, region, effective_receptive_field(model, layer, x, unit)


def effective_receptive_field(
    model: nn.Module,
    layer: str,
    x: Tensor,
    unit: tuple[int, int],
    channel: int | None = None,
) -> Tensor:
    """``|d unit / d input|`` averaged over the images ``x`` (B, C, H, W): an (H, W) map.

    ``unit`` is the (row, column) of the unit in ``layer``'s output; ``channel`` picks one
    channel (default: the sum over all channels).
    """
    x = x.detach().to(model_device(model)).requires_grad_(True)
    with eval_mode(model):
        with capture(model, [layer], detach=False) as acts:
            model(x)
        out = acts[layer]
        i, j = unit
        if not (0 <= i < out.shape[2] and 0 <= j < out.shape[3]):
            raise ValueError(f"unit {unit} is outside {layer}'s {tuple(out.shape[2:])} output")
        picked = out[:, :, i, j] if channel is None else out[:, channel, i, j]
        (grad,) = torch.autograd.grad(picked.sum(), x)
    return grad.abs().sum(1).mean(0).cpu()  # over channels, then over images


def erf_extent(erf: Tensor, centre: tuple[int, int], fraction: float = 0.9) -> int:
    """Side of the smallest square around ``centre`` that holds ``fraction`` of the map's total:
    how wide the effective receptive field really is."""
    total = float(erf.sum())
    if total <= 0:
        return 0
    ci, cj = centre
    for half in range(max(erf.shape)):
        inside = erf[max(ci - half, 0) : ci + half + 1, max(cj - half, 0) : cj + half + 1].sum()
        if float(inside) >= fraction * total:
            return 2 * half + 1
    return 2 * max(erf.shape) + 1


def _as_average_pool(pool: nn.MaxPool2d) -> nn.AvgPool2d:
    """The average-pool that reaches the same pixels as ``pool``: every pixel it could pick gets a share."""
    return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)


def linearised(model: nn.Module) -> nn.Module:
    """A copy whose gradients show the theoretical receptive field exactly: ReLUs become the
    identity, max-pools average-pools, and every weight is made positive, so no path cancels."""
    lin = copy.deepcopy(model).float().eval()
    for parent in lin.modules():
        for name, child in parent.named_children():
            if isinstance(child, _POINTWISE) and not isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, _as_average_pool(child))
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(p.abs() + 0.01)
    return lin


def _constant_positive(model: nn.Module) -> nn.Module:
    """A float64 copy in which every path from input to output carries a positive signal: each
    convolution and dense layer averages its inputs (weights 1/fan-in, no bias), normalisation
    layers pass values through, max-pools average, and activations see only positive inputs
    (ReLU, SiLU, GELU, tanh, sigmoid gates pass them with a positive slope). Its input gradient is
    then non-zero exactly on the theoretical receptive field, whatever the branching."""
    m = copy.deepcopy(model).double().eval()
    for parent in m.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, _as_average_pool(child))
            elif isinstance(child, (nn.GroupNorm, nn.InstanceNorm2d)):
                raise TypeError(f"{name} ({type(child).__name__}) normalises over positions: its output depends on the "
                                "whole image, which a gradient support cannot tell from the layers' reach")
            elif isinstance(child, (nn.BatchNorm2d, nn.LayerNorm, nn.Dropout, nn.Dropout2d)):
                # BatchNorm in eval mode is pointwise; torchvision's LayerNorms normalise each position over
                # its channels (ConvNeXt runs them channels-last): no spatial reach of their own
                setattr(parent, name, nn.Identity())
            elif type(child).__name__ in ("LayerNorm2d", "StochasticDepth", "FrozenBatchNorm2d"):
                setattr(parent, name, nn.Identity())
    with torch.no_grad():
        for mod in m.modules():
            for name, p in mod.named_parameters(recurse=False):
                if name == "bias":
                    p.zero_()
                elif name == "weight" and p.dim() >= 2:  # convolutions and dense layers: the mean of their inputs
                    p.fill_(1.0 / p[0].numel())
                else:  # gains and scales (ConvNeXt's layer scale, LeNet-5's subsampling coefficients)
                    p.fill_(1.0)
    return m


def measured_receptive_field(model: nn.Module, layer: str | None = None, input_size: int = 512,
                             in_channels: int = 3) -> tuple[int, int]:
    """The theoretical receptive field of the centre unit of ``layer``, in pixels (rows,
    columns), measured: the support of its input gradient in a constant-positive float64 copy
    of ``model`` (see :func:`_constant_positive`). Works for any network, branching ones
    (ResNet's skips, EfficientNet's squeeze-and-excitation) included, where the layer arithmetic
    of :func:`receptive_fields` does not apply; on chains the two agree. ``layer`` None: the
    model's own output. ``input_size`` must exceed the field, or the answer is the input's size."""
    m = _constant_positive(model)
    x = torch.ones(1, in_channels, input_size, input_size, dtype=torch.float64, device=model_device(model),
                   requires_grad=True)
    if layer:
        with capture(m, [layer], detach=False) as acts:
            m(x)
        out = acts[layer]
    else:
        out = m(x)
    if out.dim() != 4:
        raise ValueError(f"{layer!r} gives a {tuple(out.shape)} output; pick a layer with a spatial (B, C, H, W) output")
    (grad,) = torch.autograd.grad(out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum(), x)
    seen = grad[0].abs().sum(0) > 0
    rows, cols = seen.any(1).nonzero(), seen.any(0).nonzero()
    if len(rows) == 0:
        raise ValueError(f"no input pixel moves {layer or 'the output'}'s centre unit: an activation saturated (a "
                         "tanh or sigmoid far from 0) or a layer cut every path; this method cannot measure it")
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
