"""Where a model looks: saliency maps from gradients.

- :func:`input_gradients`: d class score / d pixel — which pixels would change the score most
  (its size by default; ``signed=True`` keeps the sign: raising that pixel raises the score).
- :func:`smoothgrad`: SmoothGrad (Smilkov et al., 2017) — the signed input gradient averaged over
  noisy copies of the image, which removes most of the pixel-to-pixel speckle of one gradient.
- :func:`grad_cam`: Grad-CAM (Selvaraju et al., 2017) — a conv layer's maps weighted by the
  average gradient of the class score with respect to each map, positive part, laid on the
  input with each unit at the centre of its receptive field. For a network that ends in global
  average pooling and one linear layer it equals the class activation map (Zhou et al., 2016)
  divided by the map's area; the tests check that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.device import eval_mode, model_device
from cnnlab.hooks import capture

__all__ = ["input_gradients", "smoothgrad", "grad_cam"]


def _targets(logits: Tensor, target: int | Tensor | None) -> Tensor:
    if target is None:
        return logits.argmax(1)
    target = torch.as_tensor(target, device=logits.device).long().expand(len(logits))
    if not ((0 <= target) & (target < logits.shape[1])).all():
        raise ValueError(f"target must be a class from 0 to {logits.shape[1] - 1}, got {target.tolist()}")
    return target


def _input_gradient(model: nn.Module, x: Tensor, target: int | Tensor | None) -> tuple[Tensor, Tensor]:
    """d logit[target] / d x for images ``x`` already on the model's device, (B, C, H, W), and the
    classes it was taken for, (B,)."""
    x = x.detach().float().requires_grad_(True)
    logits = model(x)
    targets = _targets(logits, target)
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return grad, targets


def input_gradients(model: nn.Module, x: Tensor, target: int | Tensor | None = None, *, signed: bool = False) -> Tensor:
    """d logit[target] / d x for images ``x`` (B, C, H, W): (B, H, W). By default its size, the
    largest over channels; ``signed=True``: the gradient summed over channels (positive where
    raising that pixel raises the score). ``target`` None means each image's predicted class."""
    with eval_mode(model):
        grad, _ = _input_gradient(model, x.to(model_device(model)), target)
    return (grad.sum(1) if signed else grad.abs().amax(1)).cpu()


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    samples: int = 50,
    noise: float = 0.15,
    seed: int = 0,
) -> Tensor:
    """SmoothGrad (Smilkov et al., 2017): the signed input gradient (as ``input_gradients(...,
    signed=True)``) averaged over ``samples`` copies of each image with Gaussian noise added, of
    standard deviation ``noise`` x (the image's max - min). The paper's advice: noise 10-20%, about
    50 samples. ``noise=0`` gives the plain gradient. The class is chosen on the clean image
    (``target`` None: its prediction); the noise is drawn on the CPU from ``seed``, so the answer is
    the same on every device. Returns (B, H, W) on the CPU."""
    if not (isinstance(samples, int) and samples >= 1) or not noise >= 0 or noise == float("inf"):
        raise ValueError(f"need samples >= 1 and noise >= 0, got samples={samples!r}, noise={noise}")
    device = model_device(model)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with eval_mode(model):
        x = x.detach().to(device).float()
        with torch.no_grad():
            targets = _targets(model(x), target)
        sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))  # (B,): one noise level per image
        total = torch.zeros_like(x)
        for _ in range(samples):
            eps = torch.randn(x.shape, generator=generator, device="cpu").to(device)
            total += _input_gradient(model, x + sigma[:, None, None, None] * eps, targets)[0]
    return (total / samples).sum(1).cpu()


def grad_cam(model: nn.Module, x: Tensor, layer: str, target: int | Tensor | None = None) -> Tensor:
    """Grad-CAM of ``layer`` for images ``x`` (B, C, H, W): (B, H, W), non-negative, on the input's
    grid (see :func:`_to_input`). ``target`` None means each image's predicted class."""
    with eval_mode(model):
        with capture(model, [layer], detach=False) as acts:
            logits = model(x.detach().to(model_device(model)).float())
        maps = acts[layer]  # (B, K, h, w)
        if maps.dim() != 4:
            raise ValueError(f"layer {layer!r} gives shape {tuple(maps.shape)}; Grad-CAM needs a spatial (B, K, h, w) layer")
        chosen = logits.gather(1, _targets(logits, target)[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, maps)
    weights = grad.mean((2, 3), keepdim=True)  # (B, K, 1, 1): how much each map matters
    cam = F.relu((weights * maps).sum(1, keepdim=True))  # (B, 1, h, w)
    return _to_input(model, layer, cam.detach(), tuple(x.shape[1:]))[:, 0].cpu()


def _to_input(model: nn.Module, layer: str, cam: Tensor, input_shape: tuple[int, int, int]) -> Tensor:
    """Maps (B, 1, h, w) of ``layer`` laid on the input grid: each unit at the centre of its
    receptive field (a 24x24 map of a 28x28 image after two unpadded 3x3 convs starts at pixel 2,
    it is not stretched), bilinear between centres. Plain resizing where the geometry is unknown."""
    from cnnlab.receptive_field import receptive_fields

    row = None
    try:
        rows = {r.name: r for r in receptive_fields(model, input_shape)}
        for name, _ in model.named_modules():  # a pointwise layer (ReLU) has the field of the layer before it
            row = rows.get(name, row)
            if name == layer:
                break
    except (ValueError, TypeError):  # a layer the arithmetic does not know (TypeError) or a bad shape
        row = None
    if row is None or row.out_shape[1:] != tuple(cam.shape[2:]):
        return F.interpolate(cam, size=input_shape[-2:], mode="bilinear", align_corners=False)
    axes = []
    for axis in (0, 1):
        n = cam.shape[2 + axis]
        centre0 = row.start[axis] + (row.size[axis] - 1) / 2
        units = (torch.arange(input_shape[1 + axis], dtype=cam.dtype, device=cam.device) - centre0) / row.jump[axis]
        axes.append(2 * units / max(n - 1, 1) - 1)  # grid_sample's [-1, 1] units (align_corners=True)
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(len(cam), -1, -1, -1)
    return F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)
