"""The series' models, from a linear classifier to a modern CNN.

Every model is an ``nn.Sequential`` with named layers (so hooks, receptive-field analysis and
feature-map viewers can walk it), takes ``(in_channels, num_classes)`` first, computes its own
sizes, and records its constructor arguments in ``.hparams`` so a checkpoint can rebuild it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.conv import conv_output_size
from cnnlab.device import eval_mode, model_device  # eval_mode: also importable from here, as before

__all__ = [
    "LinearClassifier",
    "MLP",
    "SmallCNN",
    "ModernCNN",
    "ConvStack",
    "LeNet5",
    "DeepStack",
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


class ScaledTanh(nn.Module):
    """LeNet-5's squashing function, ``1.7159 * tanh(2x / 3)`` (LeCun et al. 1998, appendix A)."""

    pointwise = True  # receptive-field arithmetic: acts pixel by pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2 / 3))


class Subsampling(nn.AvgPool2d):
    """LeNet-5's S2 and S4: each map's 2x2 blocks summed, times a trainable coefficient, plus a
    trainable bias (two parameters per map). An average pool underneath, so receptive-field
    arithmetic treats it as one."""

    def __init__(self, channels: int):
        super().__init__(2)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * super().forward(x) * self.weight[:, None, None] + self.bias[:, None, None]


#: Which of S2's six maps each of C3's sixteen maps sees (LeCun et al. 1998, table I).
LENET5_C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class PartialConv2d(nn.Module):
    """A convolution in which output map ``j`` sees only the input maps ``table[j]`` (LeNet-5's
    C3: "to break the symmetry", and to save weights). Only the connected kernels are parameters."""

    is_convolution = True  # receptive-field arithmetic: a k x k convolution, stride 1, no padding

    def __init__(self, table: Sequence[Sequence[int]], in_channels: int, kernel_size: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, len(table)
        self.kernel_size, self.stride, self.padding, self.dilation = (kernel_size,) * 2, (1, 1), (0, 0), (1, 1)
        pairs = [(j, i) for j, inputs in enumerate(table) for i in inputs]
        self.register_buffer("out_index", torch.tensor([j for j, _ in pairs]), persistent=False)
        self.register_buffer("in_index", torch.tensor([i for _, i in pairs]), persistent=False)
        bound = 1 / (kernel_size * (len(pairs) / len(table))) ** 0.5
        self.weight = nn.Parameter(torch.empty(len(pairs), kernel_size, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(len(table)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.weight.new_zeros(self.out_channels, self.in_channels, *self.kernel_size)
        full = full.index_put((self.out_index, self.in_index), self.weight)
        return F.conv2d(x, full, self.bias)


class LeNet5(_Model):
    """LeNet-5 as LeCun, Bottou, Bengio and Haffner built it (1998) on 32x32 inputs: C1 (6 maps,
    5x5), S2 (trainable subsampling), C3 (16 maps, each seeing some of S2's maps), S4, C5 (120
    maps, 5x5: a convolution, but on a 5x5 input it acts as a dense layer), F6 (84 units),
    scaled tanh throughout: 60,000 trainable parameters up to F6, as the paper counts. MNIST's
    28x28 digits are padded to 32x32, as the paper's were. One change, said plainly: the output
    is a dense layer trained with cross-entropy instead of the paper's fixed RBF units (850
    more parameters)."""

    name = "lenet5"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        pad = (32 - image_size) // 2
        super().__init__(
            OrderedDict(
                pad=nn.ZeroPad2d(pad),  # (B, C, 32, 32)
                c1=nn.Conv2d(in_channels, 6, 5),  # (B, 6, 28, 28)
                act1=ScaledTanh(),
                s2=Subsampling(6),  # (B, 6, 14, 14)
                act2=ScaledTanh(),
                c3=PartialConv2d(LENET5_C3_TABLE, 6, 5),  # (B, 16, 10, 10)
                act3=ScaledTanh(),
                s4=Subsampling(16),  # (B, 16, 5, 5)
                act4=ScaledTanh(),
                c5=nn.Conv2d(16, 120, 5),  # (B, 120, 1, 1)
                act5=ScaledTanh(),
                flatten=nn.Flatten(),  # (B, 120)
                f6=nn.Linear(120, 84),  # (B, 84)
                act6=ScaledTanh(),
                output=nn.Linear(84, num_classes),  # (B, classes); the paper: 10 fixed RBF units
            ),
            in_channels=in_channels, num_classes=num_classes, image_size=image_size,
        )


class _Residual(nn.Module):
    """``x + block(x)``: the block learns a correction to the identity."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class DeepStack(_Model):
    """A stride-2 stem, then ``depth`` 3x3 conv layers of ``width`` channels with ReLU (no
    normalisation), then global average pooling and a classifier; ``residual=True`` wraps each pair of layers in a skip
    connection (ResNet's idea, without its BatchNorm): the same layers and parameters, another
    path for the signal and its gradient."""

    name = "deep-stack"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, depth: int = 32, width: int = 16,
                 residual: bool = False):
        if depth < 2 or depth % 2:
            raise ValueError(f"depth must be an even number >= 2 (layers come in pairs), got {depth}")

        def conv() -> nn.Conv2d:
            return nn.Conv2d(width, width, 3, padding=1)

        layers = OrderedDict(stem=nn.Conv2d(in_channels, width, 3, stride=2, padding=1), relu0=nn.ReLU())  # 28 -> 14, as ResNet's stem halves
        for i in range(1, depth // 2 + 1):
            pair = nn.Sequential(conv(), nn.ReLU(), conv())
            layers[f"block{i}"] = _Residual(pair) if residual else pair
            layers[f"relu{i}"] = nn.ReLU()
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(width, num_classes)
        super().__init__(layers, in_channels=in_channels, num_classes=num_classes, depth=depth, width=width,
                         residual=residual)


MODELS: dict[str, type[_Model]] = {m.name: m for m in (LinearClassifier, MLP, SmallCNN, ModernCNN, ConvStack, LeNet5,
                                                       DeepStack)}


def create_model(name: str, in_channels: int = 1, num_classes: int = 10, **kwargs) -> _Model:
    """Build a model of the registry by name: ``linear``, ``mlp``, ``small-cnn``, ``modern-cnn``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_channels, num_classes, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of scalar parameters (weights and biases) in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
