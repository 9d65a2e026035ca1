"""Activations captured with forward hooks inside a context manager that always removes them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from cnnlab.device import model_device
from cnnlab.models import eval_mode

__all__ = [
    "capture", "feature_maps", "layer_names", "leaf_layers", "spatial_layers", "channel_maxima", "top_activating",
    "filter_of", "feature_map_view",
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
