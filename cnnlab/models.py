"""The series' models, from a linear classifier to a modern CNN.

Every model is an ``nn.Sequential`` with named layers (so hooks, receptive-field analysis and
feature-map viewers can walk it), takes ``(in_channels, num_classes)`` first, computes its own
sizes, and records its constructor arguments in ``.hparams`` so a checkpoint can rebuild it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from cnnlab.conv import conv_output_size
from cnnlab.device import model_device

__all__ = [
    "LinearClassifier",
    "MLP",
    "SmallCNN",
    "ModernCNN",
    "ConvStack",
    "MODELS",
    "create_model",
    "count_parameters",
    "shape_table",
    "eval_mode",
    "as_named_models",
]


class _Model(nn.Sequential):
    """A named ``nn.Sequential`` that remembers how it was built."""

    name: str = ""

    def __init__(self, layers: OrderedDict, **hparams):
        super().__init__(layers)
        self.hparams = hparams


class LinearClassifier(_Model):
    """Softmax regression: every output is a dense combination of all input pixels."""

    name = "linear"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),  # (B, C*H*W)
                fc=nn.Linear(in_channels * image_size**2, num_classes),  # (B, classes)
            ),
            in_channels=in_channels, num_classes=num_classes, image_size=image_size,
        )


class MLP(_Model):
    """A 2-layer perceptron: one hidden layer of ``hidden`` ReLU units, then the classifier."""

    name = "mlp"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, hidden: int = 256):
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),  # (B, C*H*W)
                fc1=nn.Linear(in_channels * image_size**2, hidden),  # (B, hidden)
                relu1=nn.ReLU(),
                fc2=nn.Linear(hidden, num_classes),  # (B, classes)
            ),
            in_channels=in_channels, num_classes=num_classes, image_size=image_size, hidden=hidden,
        )


class SmallCNN(_Model):
    """The source text's CNN: Conv32-Conv64-MaxPool-FC128-Dropout-FC10 (1,199,882 parameters on MNIST).

    ``batchnorm=True`` adds a BatchNorm after each convolution (the first rung of notebook 06's
    ladder): the same network, normalised inside, 192 more parameters."""

    name = "small-cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, dropout: float = 0.5,
                 batchnorm: bool = False):
        pooled = conv_output_size(conv_output_size(image_size, 3), 3) // 2  # 28 -> 26 -> 24 -> 12

        def norm(channels: int) -> dict:
            return {} if not batchnorm else {f"bn{1 if channels == 32 else 2}": nn.BatchNorm2d(channels)}

        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 32, 3),  # (B, 32, 26, 26)
                **norm(32),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(32, 64, 3),  # (B, 64, 24, 24)
                **norm(64),
                relu2=nn.ReLU(),
                pool=nn.MaxPool2d(2),  # (B, 64, 12, 12)
                flatten=nn.Flatten(),  # (B, 9216)
                fc1=nn.Linear(64 * pooled**2, 128),  # (B, 128)
                relu3=nn.ReLU(),
                dropout=nn.Dropout(dropout),
                fc2=nn.Linear(128, num_classes),  # (B, classes); softmax lives in the loss
            ),
            in_channels=in_channels, num_classes=num_classes, image_size=image_size, dropout=dropout,
            **({"batchnorm": True} if batchnorm else {}),  # absent when off: saved runs keep their names
        )


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # BatchNorm supplies the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ModernCNN(_Model):
    """Conv-BN-ReLU stages that halve resolution and double channels, then global average pooling.

    With ``width=32``: (B,1,28,28) -> (B,32,28,28) -> (B,64,14,14) -> (B,128,7,7) -> (B,128) -> (B,classes).
    """

    name = "modern-cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.1):
        w = width
        super().__init__(
            OrderedDict(
                stage1=nn.Sequential(_conv_bn_relu(in_channels, w), _conv_bn_relu(w, w)),  # (B, w, 28, 28)
                pool1=nn.MaxPool2d(2),  # (B, w, 14, 14)
                stage2=nn.Sequential(_conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w)),  # (B, 2w, 14, 14)
                pool2=nn.MaxPool2d(2),  # (B, 2w, 7, 7)
                stage3=nn.Sequential(_conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w)),  # (B, 4w, 7, 7)
                gap=nn.AdaptiveAvgPool2d(1),  # (B, 4w, 1, 1): works for any input size
                flatten=nn.Flatten(),  # (B, 4w)
                dropout=nn.Dropout(dropout),
                fc=nn.Linear(4 * w, num_classes),  # (B, classes)
            ),
            in_channels=in_channels, num_classes=num_classes, width=width, dropout=dropout,
        )


class ConvStack(_Model):
    """``depth`` conv layers (kernel ``kernel``, ``width`` channels, ReLU), optionally a 2x2
    max-pool after every ``pool_every`` convs, then global average pooling and a classifier:
    the stacks notebook 04 measures receptive fields on."""

    name = "conv-stack"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        depth: int = 4,
        width: int = 16,
        kernel: int = 3,
        padding: int = 0,
        stride: int = 1,
        dilation: int = 1,
        pool_every: int = 0,
    ):
        layers = OrderedDict()
        c = in_channels
        for i in range(1, depth + 1):
            layers[f"conv{i}"] = nn.Conv2d(c, width, kernel, stride=stride, padding=padding, dilation=dilation)
            layers[f"relu{i}"] = nn.ReLU()
            if pool_every and i % pool_every == 0:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            c = width
        layers["gap"] = nn.AdaptiveAvgPool2d(1)  # (B, width, 1, 1)
        layers["flatten"] = nn.Flatten()  # (B, width)
        layers["fc"] = nn.Linear(width, num_classes)  # (B, classes)
        super().__init__(
            layers, in_channels=in_channels, num_classes=num_classes, depth=depth, width=width, kernel=kernel,
            padding=padding, stride=stride, dilation=dilation, pool_every=pool_every,
        )


MODELS: dict[str, type[_Model]] = {m.name: m for m in (LinearClassifier, MLP, SmallCNN, ModernCNN, ConvStack)}


def create_model(name: str, in_channels: int = 1, num_classes: int = 10, **kwargs) -> _Model:
    """Build a model of the registry by name: ``linear``, ``mlp``, ``small-cnn``, ``modern-cnn``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_channels, num_classes, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of scalar parameters (weights and biases) in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (dropout off, BatchNorm's running statistics) inside the block;
    its train/eval mode as it was afterwards, whatever happens inside."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def shape_table(model: nn.Sequential, input_shape: tuple[int, ...] = (1, 28, 28)) -> list[tuple[str, tuple[int, ...], int]]:
    """``(layer name, output shape without batch, parameters)`` for each top-level layer, from a forward pass."""
    with eval_mode(model):
        x = torch.zeros(1, *input_shape, device=model_device(model))
        rows = [("input", tuple(input_shape), 0)]
        for name, layer in model.named_children():
            x = layer(x)
            rows.append((name, tuple(x.shape[1:]), count_parameters(layer)))
    return rows


def as_named_models(models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """``{name: model}`` from one model, a list (named by their ``.name``) or a dict."""
    if isinstance(models, nn.Module):
        models = [models]
    if isinstance(models, Mapping):
        named = dict(models)
    else:
        named = {getattr(m, "name", "") or f"model {i}": m for i, m in enumerate(models)}
    if not named:
        raise ValueError("give at least one model")
    return named
