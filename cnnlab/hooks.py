"""Activations captured with forward hooks inside a context manager that always removes them;
per-layer statistics of one batch, forward and backward."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.device import eval_mode, model_device

__all__ = [
    "capture", "feature_maps", "layer_names", "leaf_layers", "spatial_layers", "channel_maxima", "top_activating",
    "filter_of", "feature_map_view", "LayerStats", "layer_statistics",
]


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's modules, as ``capture`` and ``feature_maps`` accept them."""
    return [name for name, _ in model.named_modules() if name]


def leaf_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every layer with no sub-layers, in the order they were defined:
    the chain that receptive-field arithmetic and feature-map viewers walk."""
    return [(name, m) for name, m in model.named_modules() if name and not list(m.children())]


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str], *, detach: bool = True) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of ``layers`` during forward passes inside the ``with`` block.

    ``with capture(model, ["conv1"]) as acts: model(x)`` leaves ``acts["conv1"]`` set. The hooks
    are removed on leaving the block, whatever happens inside it.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules or not name]
    if missing:
        raise ValueError(f"no layer named {missing} in {type(model).__name__}; choose from {layer_names(model)}")
    acts: dict[str, Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(module, inputs, output):
            acts[name] = output.detach() if detach else output

        return hook

    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield acts
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def feature_maps(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of ``layer`` for images ``x`` (B, C, H, W) — e.g. (B, 32, 26, 26) for SmallCNN's conv1."""
    with eval_mode(model), capture(model, [layer]) as acts:
        model(x.to(model_device(model)))
    return acts[layer].float().cpu()


@torch.no_grad()
def spatial_layers(model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28)) -> dict[str, tuple[int, int, int]]:
    """The leaf layers whose output is a stack of feature maps, in order: ``{name: (C, H, W)}``."""
    leaves = [name for name, _ in leaf_layers(model)]
    with eval_mode(model), capture(model, leaves) as acts:
        model(torch.zeros(1, *input_shape, device=model_device(model)))
    return {name: tuple(acts[name].shape[1:]) for name in leaves if acts[name].dim() == 4}


@torch.no_grad()
def channel_maxima(model: nn.Module, x: Tensor, layer: str, *, batch_size: int = 500) -> Tensor:
    """The strongest response of every channel of ``layer`` to each image: (N, C)."""
    device = model_device(model)
    out = []
    with eval_mode(model), capture(model, [layer]) as acts:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size].to(device))
            out.append(acts[layer].float().amax((2, 3)).cpu())
    return torch.cat(out)


def top_activating(maxima: Tensor, channel: int, k: int = 9) -> tuple[Tensor, Tensor]:
    """Indices and peak values of the ``k`` images that excite ``channel`` most, from
    :func:`channel_maxima`'s (N, C) table."""
    if not 0 <= channel < maxima.shape[1]:
        raise ValueError(f"channel must be from 0 to {maxima.shape[1] - 1}, got {channel}")
    values, index = maxima[:, channel].topk(min(k, len(maxima)))
    return index, values


def filter_of(model: nn.Module, layer: str) -> tuple[str, Tensor] | None:
    """The conv layer that makes ``layer``'s channels (itself, or the last conv before it) and
    its weights on the CPU; ``None`` before any conv."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last = (name, m.weight.detach().float().cpu())
        if name == layer:
            return last
    return None


def feature_map_view(model: nn.Module, x: Tensor, layer: str, channel: int) -> dict:
    """Everything the feature-map explorer shows for one image ``x`` (C, H, W): the layer's maps
    (C', H', W'), the chosen channel's map, and the filter that made it (``None`` before any conv)."""
    layers = spatial_layers(model, tuple(x.shape))
    if layer not in layers:
        raise ValueError(f"{layer!r} has no feature maps; choose one of {list(layers)}")
    if not isinstance(channel, int) or not 0 <= channel < layers[layer][0]:
        raise ValueError(f"channel must be a whole number from 0 to {layers[layer][0] - 1}, got {channel!r}")
    maps = feature_maps(model, x[None], layer)[0]
    conv = filter_of(model, layer)
    return {"maps": maps, "map": maps[channel], "conv": conv[0] if conv else None,
            "filter": conv[1][channel] if conv else None}


@dataclass(frozen=True)
class LayerStats:
    """One batch's statistics, layer by layer, in the order asked for (see :func:`layer_statistics`)."""

    names: list[str]
    output_std: Tensor  # (L,) how much each layer's output varies from image to image
    grad_rms: Tensor  # (L,) root mean square of d loss / d output
    weight_grad_norm: Tensor  # (L,) norm of d loss / d weight; nan for a layer without a weight
    loss: float

    def rows(self) -> list[tuple[str, float, float, float]]:
        """``(name, output_std, grad_rms, weight_grad_norm)`` per layer, for printing."""
        return [(n, float(a), float(g), float(w))
                for n, a, g, w in zip(self.names, self.output_std, self.grad_rms, self.weight_grad_norm)]


def layer_statistics(model: nn.Module, xb: Tensor, yb: Tensor, layers: Sequence[str] | None = None,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> LayerStats:
    """Forward and backward statistics of ``layers`` (default: every ``nn.Conv2d``) for one batch.

    Forward, ``output_std``: each output unit's standard deviation over the batch's images,
    root-mean-squared over the units: how much of the input still reaches the layer (a constant
    output, however large, scores 0). Backward, for ``loss_fn(model(xb), yb)``: the root mean
    square of its gradient with respect to each layer's output (``grad_rms``) and the norm of its
    gradient with respect to the layer's weight (``weight_grad_norm``). The model runs where it
    is, in eval mode (no dropout, BatchNorm's running statistics), and is left as it was: hooks
    removed whatever happens, no ``.grad`` written. A layer called twice is measured at its last
    call. Returns CPU tensors.
    """
    if len(xb) < 2:
        raise ValueError(f"layer_statistics needs a batch of at least 2 images to measure a spread, got {len(xb)}")
    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    device = model_device(model)
    xb = xb.detach().to(device)
    inputs = [xb.requires_grad_(True)] if xb.is_floating_point() else []  # upstream of every layer: grads reach all
    with eval_mode(model), torch.enable_grad(), capture(model, names, detach=False) as acts:
        loss = loss_fn(model(xb), yb.to(device))
    unused = [n for n in names if n not in acts]
    if unused:
        raise ValueError(f"the forward pass never called {unused}")
    weights = {n: modules[n].weight for n in names
               if isinstance(getattr(modules[n], "weight", None), Tensor) and modules[n].weight.requires_grad}
    grads = torch.autograd.grad(loss, [acts[n] for n in names] + list(weights.values()) + inputs, allow_unused=True)
    out_grads, weight_grads = grads[: len(names)], dict(zip(weights, grads[len(names):len(names) + len(weights)]))

    def rms(t: Tensor | None) -> float:
        return 0.0 if t is None else float(t.detach().double().pow(2).mean().sqrt())

    def spread(t: Tensor) -> float:
        return float(t.detach().double().flatten(1).var(0, correction=0).mean().sqrt())

    def norm(n: str) -> float:
        g = weight_grads.get(n)
        return math.nan if n not in weights else 0.0 if g is None else float(g.detach().double().norm())

    return LayerStats(
        names=names,
        output_std=torch.tensor([spread(acts[n]) for n in names]),
        grad_rms=torch.tensor([rms(g) for g in out_grads]),
        weight_grad_norm=torch.tensor([norm(n) for n in names]),
        loss=float(loss.detach()),
    )
