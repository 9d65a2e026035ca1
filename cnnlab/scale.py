"""CNNs at scale, counted rather than quoted (notebook 08, ``python -m cnnlab models``).

torchvision's classic ImageNet architectures are built with ``weights=None`` (nothing is
downloaded). For each: its exact parameters; its multiply-accumulates (MACs) per 224x224 image,
counted by ``torch.utils.flop_counter.FlopCounterMode`` (which counts FLOPs, 2 per MAC:
torchvision's documented "GFLOPS" are its count / 2, i.e. MACs); the ImageNet top-1 accuracy of
each published set of weights, read from torchvision's weight metadata (shipped with the
package, so available offline); CPU inference time; and the theoretical receptive field of its
last feature map, measured through gradients so that branching networks get one too.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.device import model_device
from cnnlab.models import count_parameters, eval_mode

__all__ = ["ARCHITECTURES", "build", "count_macs", "imagenet_weights", "inference_seconds", "ModelRow", "model_row",
           "format_models"]

#: torchvision's name -> (the layer whose output is the last feature map, a short description)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "alexnet": ("features", "AlexNet (2012): 5 conv + 3 dense layers, ReLU, dropout"),
    "vgg16": ("features", "VGG-16 (2014): 13 3x3 convs in 5 stages + 3 dense layers"),
    "resnet18": ("layer4", "ResNet-18 (2015): residual blocks of two 3x3 convs"),
    "resnet50": ("layer4", "ResNet-50 (2015): bottleneck blocks (1x1, 3x3, 1x1) with skips"),
    "efficientnet_b0": ("features", "EfficientNet-B0 (2019): inverted bottlenecks, squeeze-and-excitation"),
    "convnext_tiny": ("features", "ConvNeXt-Tiny (2022): 7x7 depthwise convs, LayerNorm, a ResNet redesigned"),
}


def build(name: str) -> nn.Module:
    """torchvision's architecture ``name`` with random weights (``weights=None``: no download)."""
    from torchvision import models

    if name not in models.list_models():
        raise ValueError(f"torchvision has no model {name!r}; the series counts {', '.join(ARCHITECTURES)}")
    return models.get_model(name, weights=None)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_shape``, counted by
    PyTorch's ``FlopCounterMode`` (its FLOPs / 2), on the model's device."""
    x = torch.zeros(1, *input_shape, device=model_device(model))
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def imagenet_weights(name: str) -> list[dict]:
    """Each set of ImageNet weights torchvision publishes for ``name``: its name, top-1 and
    top-5 accuracy, parameters and GFLOPS as documented (metadata only: nothing is downloaded)."""
    from torchvision import models

    rows = []
    for w in models.get_model_weights(name):
        metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
        rows.append({"weights": w.name, "top1": metrics.get("acc@1"), "top5": metrics.get("acc@5"),
                     "parameters": w.meta.get("num_params"), "gflops": w.meta.get("_ops"),
                     "recipe": w.meta.get("recipe", "")})
    return rows


@torch.no_grad()
def inference_seconds(model: nn.Module, input_shape: tuple[int, int, int] = (3, 224, 224), *, batch: int = 8,
                      repeats: int = 3) -> float:
    """Seconds per image for a forward pass in float32 on the model's device: the median of
    ``repeats`` timed batches after one warm-up batch."""
    x = torch.randn(batch, *input_shape, device=model_device(model))
    times = []
    with eval_mode(model):
        for i in range(repeats + 1):
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            model(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            if i:
                times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


@dataclass(frozen=True)
class ModelRow:
    """One architecture, counted (see :func:`model_row`)."""

    name: str
    description: str
    parameters: int
    macs: int
    top1: dict  # weights name -> ImageNet top-1 (%)
    seconds_per_image: float | None
    receptive_field: int | None  # of the last feature map's centre unit, pixels
    device: str
    rf_input: int = 512  # the input the field was measured on: a field this size may be larger still

    @property
    def rf_text(self) -> str:
        """The receptive field for a table: ">= 512" where it filled the input it was measured on."""
        if self.receptive_field is None:
            return ""
        return f">= {self.receptive_field}" if self.receptive_field >= self.rf_input else str(self.receptive_field)

    def to_dict(self) -> dict:
        """Every field, for JSON."""
        return asdict(self)


def model_row(name: str, *, device: str | None = None, time_it: bool = True, receptive_field: bool = True,
              rf_input: int = 512) -> ModelRow:
    """One architecture counted: parameters, MACs per 224x224 image, published top-1, the time
    per image on ``device`` (default: the CPU, the question being what a CPU costs), and the
    measured receptive field of its last feature map (in float64, on the CPU)."""
    from cnnlab.device import pick_device
    from cnnlab.receptive_field import measured_receptive_field

    layer, description = ARCHITECTURES.get(name, (None, name))
    dev = pick_device(device if device is not None else "cpu")
    model = build(name)  # on the CPU: the counts and the float64 field do not depend on the device
    rf, size = None, rf_input
    if receptive_field and layer is not None:
        for size in (rf_input // 2, rf_input):  # the smaller input first: float64 on big inputs is slow
            rf = measured_receptive_field(model, layer, input_size=size)[0]
            if rf < size:  # the field fits: it is the whole answer
                break
    return ModelRow(
        name=name, description=description, parameters=count_parameters(model), macs=count_macs(model),
        top1={w["weights"]: w["top1"] for w in imagenet_weights(name) if _known(w["top1"])},  # not VGG's FEATURES
        seconds_per_image=inference_seconds(model.to(dev)) if time_it else None, receptive_field=rf, device=str(dev),
        rf_input=size,
    )


def _known(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def format_models(rows: list[ModelRow]) -> str:
    """The rows as a plain-text table."""
    head = f"{'model':<16}{'parameters':>13}{'GMACs':>8}{'ImageNet top-1 (weights)':>40}{'ms/image':>10}{'RF (px)':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        top1 = ", ".join(f"{v:.2f}% ({k.removeprefix('IMAGENET1K_')})" for k, v in r.top1.items() if _known(v))
        ms = "" if r.seconds_per_image is None else f"{1000 * r.seconds_per_image:.1f}"
        lines.append(f"{r.name:<16}{r.parameters:>13,}{r.macs / 1e9:>8.2f}{top1:>40}{ms:>10}{r.rf_text:>10}")
    return "\n".join(lines)
