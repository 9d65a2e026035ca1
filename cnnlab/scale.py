"""CNNs at scale, counted rather than quoted (notebook 08, ``python -m cnnlab models``).

torchvision's classic ImageNet architectures, and two vision transformers to compare them with,
are built with ``weights=None`` (nothing is downloaded). For each: its exact parameters; its
multiply-accumulates (MACs) per 224x224 image, counted by ``torch.utils.flop_counter.FlopCounterMode``
(which counts FLOPs, 2 per MAC: torchvision's documented "GFLOPS" are its count / 2, i.e. MACs);
the ImageNet top-1 accuracy of each published set of weights, read from torchvision's weight
metadata (shipped with the package, so available offline); the year and paper of the
architecture; CPU inference time; and the theoretical receptive field of its last feature map,
measured through gradients so that branching networks (and attention) get one too.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.device import eval_mode, model_device, pick_device
from cnnlab.hooks import leaf_layers
from cnnlab.models import count_parameters
from cnnlab.receptive_field import RFLayer, measured_receptive_field, receptive_fields

__all__ = ["ARCHITECTURES", "PAPERS", "TRANSFORMERS", "build", "count_macs", "imagenet_weights", "inference_seconds",
           "classifier_head", "PatchGrid", "ChannelsFirst", "field_probe", "main_path_fields", "field_by_stage",
           "ModelRow", "model_row", "format_models"]

#: torchvision's name -> (the layer whose output is the last feature map, a short description), oldest first
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "alexnet": ("features", "AlexNet, torchvision's one-GPU variant: 5 conv + 3 dense layers, ReLU, dropout"),
    "vgg16": ("features", "VGG-16: 13 3x3 convs in 5 stages + 3 dense layers"),
    "googlenet": ("inception5b", "GoogLeNet (Inception v1): blocks of parallel 1x1, 3x3, 5x5 and pooling branches; "
                                 "torchvision's adds BatchNorm and has 3x3 where the paper has 5x5"),
    "resnet18": ("layer4", "ResNet-18: residual blocks of two 3x3 convs"),
    "resnet50": ("layer4", "ResNet-50: bottleneck blocks (1x1, 3x3, 1x1) with skips"),
    "efficientnet_b0": ("features", "EfficientNet-B0: inverted bottlenecks, squeeze-and-excitation"),
    "vit_b_16": ("encoder.layers.encoder_layer_0", "ViT-B/16: 16x16 patches as tokens, 12 blocks of global self-attention"),
    "swin_t": ("features", "Swin-T: self-attention within shifted 7x7 windows, in four stages like a CNN's"),
    "convnext_tiny": ("features", "ConvNeXt-Tiny: 7x7 depthwise convs, LayerNorm, a ResNet redesigned"),
}

#: torchvision's name -> (the year its architecture was first published, on arXiv or at a venue; the paper)
PAPERS: dict[str, tuple[int, str]] = {
    "alexnet": (2014, 'Krizhevsky, "One weird trick for parallelizing convolutional neural networks": the one-GPU '
                      'variant of Krizhevsky, Sutskever and Hinton\'s 2012 AlexNet, which torchvision builds'),
    "vgg16": (2014, 'Simonyan and Zisserman, "Very deep convolutional networks for large-scale image recognition"'),
    "googlenet": (2014, 'Szegedy et al., "Going deeper with convolutions"'),
    "resnet18": (2015, 'He, Zhang, Ren and Sun, "Deep residual learning for image recognition"'),
    "resnet50": (2015, 'He, Zhang, Ren and Sun, "Deep residual learning for image recognition"'),
    "efficientnet_b0": (2019, 'Tan and Le, "EfficientNet: rethinking model scaling for convolutional neural networks"'),
    "vit_b_16": (2020, 'Dosovitskiy et al., "An image is worth 16x16 words: transformers for image recognition at scale"'),
    "swin_t": (2021, 'Liu et al., "Swin Transformer: hierarchical vision transformer using shifted windows"'),
    "convnext_tiny": (2022, 'Liu et al., "A ConvNet for the 2020s"'),
}

#: the architectures in ARCHITECTURES that are transformers (attention, not convolution, mixes positions)
TRANSFORMERS = frozenset({"vit_b_16", "swin_t"})

# torchvision's published GoogLeNet weights come without the two auxiliary classifiers: leaving them out keeps the
# architecture the accuracy belongs to; init_weights=False keeps PyTorch's default initialisation (and no warning)
_BUILD_OPTIONS: dict[str, dict] = {"googlenet": {"aux_logits": False, "init_weights": False}}

# weights pretrained on more than ImageNet-1K (SWAG: weakly labelled Instagram images), then tuned on it
_EXTRA_DATA = ("SWAG",)


def build(name: str) -> nn.Module:
    """torchvision's architecture ``name`` with random weights (``weights=None``: no download)."""
    from torchvision import models

    if name not in models.list_models():
        raise ValueError(f"torchvision has no model {name!r}; the series counts {', '.join(ARCHITECTURES)}")
    return models.get_model(name, weights=None, **_BUILD_OPTIONS.get(name, {}))


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled dot-product attention: the scores (Q K^T) and their weighted sum of the values."""
    b, heads, queries, d = query_shape
    keys, d_value = key_shape[2], value_shape[3]
    return 2 * b * heads * queries * keys * (d + d_value)


@contextlib.contextmanager
def _attention_counted():
    """Inside the block, nn.MultiheadAttention takes its plain path, whose matrix products FlopCounterMode sees
    (its fused inference fast path is one operation the counter does not know)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_shape``, counted by
    PyTorch's ``FlopCounterMode`` (its FLOPs / 2), on the model's device; attention's matrix
    products included, as torchvision's documented counts include them."""
    x = torch.zeros(1, *input_shape, device=model_device(model))
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # no formula of its own
    formulas = {cpu_attention: _attention_flops} if cpu_attention is not None else {}
    with eval_mode(model), _attention_counted(), FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        model(x)
    return counter.get_total_flops() // 2


def imagenet_weights(name: str) -> list[dict]:
    """Each set of ImageNet weights torchvision publishes for ``name``: its name, top-1 and
    top-5 accuracy, parameters and GFLOPS as documented, whether it was trained on ImageNet-1K
    alone, and torchvision's note on it (metadata only: nothing is downloaded)."""
    from torchvision import models

    rows = []
    for w in models.get_model_weights(name):
        metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
        rows.append({"weights": w.name, "top1": metrics.get("acc@1"), "top5": metrics.get("acc@5"),
                     "parameters": w.meta.get("num_params"), "gflops": w.meta.get("_ops"),
                     "imagenet1k_only": not any(tag in w.name for tag in _EXTRA_DATA),
                     "min_size": w.meta.get("min_size"), "recipe": w.meta.get("recipe", ""),
                     "docs": " ".join(w.meta.get("_docs", "").split())})
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


def classifier_head(model: nn.Module) -> nn.Module:
    """The dense layers after a torchvision network's features: ``classifier``, ``fc``, ``heads`` or ``head``."""
    for attr in ("classifier", "fc", "heads", "head"):
        if isinstance(getattr(model, attr, None), nn.Module):
            return getattr(model, attr)
    raise ValueError(f"{type(model).__name__} has none of classifier, fc, heads, head")


class PatchGrid(nn.Module):
    """A torchvision ViT's patch tokens after its first ``blocks`` encoder blocks, laid out as the
    (B, D, H/16, W/16) feature map they came from (the class token left out), so that
    :func:`cnnlab.receptive_field.measured_receptive_field` can measure what one token sees."""

    def __init__(self, vit: nn.Module, blocks: int = 1):
        super().__init__()
        self.vit, self.blocks = vit, blocks

    def forward(self, x: Tensor) -> Tensor:
        v, (b, _, h, w) = self.vit, x.shape
        p = v.patch_size
        tokens = v.conv_proj(x).flatten(2).transpose(1, 2)  # (B, 196, 768): one token per 16x16 patch
        tokens = torch.cat([v.class_token.expand(b, -1, -1), tokens], 1) + v.encoder.pos_embedding  # (B, 197, 768)
        for block in v.encoder.layers[: self.blocks]:
            tokens = block(tokens)
        return tokens[:, 1:].transpose(1, 2).reshape(b, -1, h // p, w // p)  # (B, 768, 14, 14)


class ChannelsFirst(nn.Module):
    """``module``'s channels-last output (B, H, W, C), as Swin's stages give it, as (B, C, H, W)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x).permute(0, 3, 1, 2)


def field_probe(name: str, model: nn.Module) -> tuple[nn.Module, str | None, tuple[int, ...] | None, str] | None:
    """Where to measure ``name``'s receptive field: ``(module, layer, input sizes or None, note)``
    for :func:`~cnnlab.receptive_field.measured_receptive_field`; ``None`` for an architecture
    not in ARCHITECTURES.

    A CNN: the model itself at ARCHITECTURES' layer. Swin-T: its stages, turned channels-first.
    ViT-B/16: its patch tokens after the first encoder block, on the one input size its position
    embeddings fit (224). That block's attention already sees every patch, and every later block
    adds its input back (``x + f(x)``), so a later token sees at least as much: the whole image.
    The later blocks themselves are not measured: the measurement's copy has no LayerNorm to
    keep its attention's scores in range, and by the 11th block its softmax saturates and no
    gradient is left.
    """
    if name == "vit_b_16":
        return PatchGrid(model, blocks=1), None, (model.image_size,), \
            "vit_b_16: measured after its first encoder block (later blocks add their input back: they see as much)"
    if name == "swin_t":
        return ChannelsFirst(model.features), None, None, ""
    if name in ARCHITECTURES:
        return model, ARCHITECTURES[name][0], None, ""
    return None


def main_path_fields(model: nn.Module, input_shape: tuple[int, int, int] = (3, 224, 224),
                     shortcut: str = "downsample") -> list[RFLayer]:
    """The layer arithmetic of :func:`~cnnlab.receptive_field.receptive_fields` along a residual
    network's main path, its shortcut projections (modules named ``shortcut``) left out. A
    shortcut is the identity or a 1x1 convolution, so it sees less than its block's
    convolutions: the main path's field is the network's (``measured_receptive_field`` agrees)."""
    chain = nn.Sequential(OrderedDict((n.replace(".", ":"), m) for n, m in leaf_layers(model)
                                      if shortcut not in n.split(".")))  # a module's name may not hold a dot
    return [replace(r, name=r.name.replace(":", ".")) for r in receptive_fields(chain, input_shape)]


def field_by_stage(model: nn.Module, input_shape: tuple[int, int, int] = (3, 224, 224)) -> list[dict]:
    """How a torchvision ResNet's receptive field adds up, stage by stage (the stem, then layer1 to
    layer4): for each stage, its layers that widen the field (kernel > 1) as ``(name, kernel,
    jump, added)``, where a kernel k working at jump j (input pixels between its inputs) adds
    (k - 1) * j pixels; the stage's sum, and the field after it."""
    modules = dict(model.named_modules())
    stages: list[dict] = []
    size, jump = 1, 1
    for row in main_path_fields(model, input_shape):
        stage = row.name.split(".")[0] if row.name.startswith("layer") else "stem"
        if not stages or stages[-1]["stage"] != stage:
            stages.append({"stage": stage, "layers": [], "added": 0, "field": size})
        kernel = modules[row.name].kernel_size
        kernel = kernel if isinstance(kernel, int) else kernel[0]
        added = row.size[0] - size
        if added:
            stages[-1]["layers"].append((row.name, kernel, jump, added))
        stages[-1]["added"] += added
        stages[-1]["field"] = row.size[0]
        size, jump = row.size[0], row.jump[0]
    return stages


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
    year: int | None = None  # the architecture's first publication (PAPERS)
    transformer: bool = False
    extra_data: tuple[str, ...] = ()  # weights pretrained on more than ImageNet-1K
    rf_note: str = ""  # where the field was measured, when not on the last feature map itself

    @property
    def rf_text(self) -> str:
        """The receptive field for a table: ">= 512" where it filled the input it was measured on."""
        if self.receptive_field is None:
            return ""
        return f">= {self.receptive_field}" if self.receptive_field >= self.rf_input else str(self.receptive_field)

    def best_top1(self, imagenet1k_only: bool = True) -> tuple[str, float] | None:
        """``(weights, top-1)`` of the most accurate published weights (by default of those trained on
        ImageNet-1K alone); ``None`` without any."""
        known = [(v, k) for k, v in self.top1.items() if _known(v) and not (imagenet1k_only and k in self.extra_data)]
        return (max(known)[1], max(known)[0]) if known else None

    def to_dict(self) -> dict:
        """Every field, for JSON."""
        return asdict(self)


def model_row(name: str, *, device: str | None = "cpu", time_it: bool = True, receptive_field: bool = True,
              rf_input: int = 512) -> ModelRow:
    """One architecture counted: parameters, MACs per 224x224 image, published top-1, the time
    per image on ``device`` (default: the CPU, the question being what a CPU costs; None, as
    everywhere in cnnlab: the best available, :func:`cnnlab.device.pick_device`), and the
    measured receptive field of its last feature map (in float64, on the CPU; see
    :func:`field_probe` for the transformers)."""
    description = ARCHITECTURES.get(name, (None, name))[1]
    dev = pick_device(device)
    model = build(name)  # on the CPU: the counts and the float64 field do not depend on the device
    rf, size, note = None, rf_input, ""
    probe = field_probe(name, model) if receptive_field else None
    if probe is not None:
        module, layer, sizes, note = probe
        for size in sizes or (rf_input // 2, rf_input):  # the smaller input first: float64 on big inputs is slow
            rf = measured_receptive_field(module, layer, input_size=size)[0]
            if rf < size:  # the field fits: it is the whole answer
                break
    weights = [w for w in imagenet_weights(name) if _known(w["top1"])]  # not VGG's FEATURES
    return ModelRow(
        name=name, description=description, parameters=count_parameters(model), macs=count_macs(model),
        top1={w["weights"]: w["top1"] for w in weights},
        seconds_per_image=inference_seconds(model.to(dev)) if time_it else None, receptive_field=rf, device=str(dev),
        rf_input=size, year=PAPERS.get(name, (None,))[0], transformer=name in TRANSFORMERS,
        extra_data=tuple(w["weights"] for w in weights if not w["imagenet1k_only"]), rf_note=note,
    )


def _known(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def format_models(rows: list[ModelRow]) -> str:
    """The rows as a plain-text table, with footnotes: weights marked * were pretrained on more
    than ImageNet-1K, and a field measured short of the last feature map says where."""
    def top1(r: ModelRow) -> str:
        return ", ".join(f"{v:.2f}% ({k.removeprefix('IMAGENET1K_')}{'*' if k in r.extra_data else ''})"
                         for k, v in r.top1.items() if _known(v))

    width = max([len("ImageNet top-1 (weights)")] + [len(top1(r)) for r in rows]) + 2
    head = (f"{'model':<16}{'year':>5}{'kind':>13}{'parameters':>13}{'GMACs':>8}{'ImageNet top-1 (weights)':>{width}}"
            f"{'ms/image':>10}{'RF (px)':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ms = "" if r.seconds_per_image is None else f"{1000 * r.seconds_per_image:.1f}"
        kind = "transformer" if r.transformer else "CNN"
        lines.append(f"{r.name:<16}{r.year or '':>5}{kind:>13}{r.parameters:>13,}{r.macs / 1e9:>8.2f}{top1(r):>{width}}"
                     f"{ms:>10}{r.rf_text:>10}")
    if any(r.extra_data for r in rows):
        lines.append("* pretrained on more than ImageNet-1K (SWAG: Instagram images), then tuned on it")
    lines += [f"RF of {r.rf_note}" for r in rows if r.rf_note]
    return "\n".join(lines)
