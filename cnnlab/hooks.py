"""Activations captured with forward hooks inside a context manager that always removes them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["capture", "feature_maps", "layer_names"]


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's modules, as ``capture`` and ``feature_maps`` accept them."""
    return [name for name, _ in model.named_modules() if name]


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
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with capture(model, [layer]) as acts:
            model(x.to(device))
    finally:
        model.train(was_training)
    return acts[layer].float().cpu()
