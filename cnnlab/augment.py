"""Data augmentation on the training device, each image with its own random transform.

torchvision's v2 transforms, given a batch tensor, draw *one* set of parameters for the whole
batch: every digit in it moves the same way. Here a batch (B, C, H, W) is resampled once through
per-image affine grids (``F.affine_grid`` + ``F.grid_sample``), so each image gets its own
shift, rotation and scale, on whatever device the batch is on, with no per-image Python loop.

    xb = random_affine(xb, max_shift=2, max_rotate=10, scale=(0.9, 1.1), fill=train_set.background)

The conventions are :func:`cnnlab.transforms.transform_digit`'s (and torchvision's): ``dx``
right, ``dy`` down, in pixels; ``angle`` in degrees clockwise about the image centre; ``scale``
> 1 enlarges. A test checks :func:`affine` against torchvision's ``affine``, image by image.

Training's ``augment`` setting is :class:`Augment` (checked when built) or its dict form:
``fit(model, train_set, augment=Augment(shift=2, rotate=10, scale=(0.9, 1.1)))`` trains as
``augment={"shift": 2, "rotate": 10, "scale": (0.9, 1.1)}`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["affine", "random_affine", "augment_examples", "AffineParams", "AUGMENT_RANGES", "augment_problem", "Augment"]

AffineParams = dict[str, Tensor]  # "dx", "dy", "angle", "scale": one value per image, (B,)

#: What training's ``augment`` settings may be: the largest shift (pixels per axis; more than 8
#: moves a 28-pixel digit mostly out of its image) and turn (degrees either way), and the bounds
#: of the scale range (beyond them a digit is a dot or fills the frame).
AUGMENT_RANGES: dict[str, tuple[float, float]] = {"shift": (0, 8), "rotate": (0, 180), "scale": (0.5, 2.0)}


def augment_problem(settings) -> str | None:
    """What is wrong with a training ``augment`` setting (a dict such as ``{"shift": 2, "rotate": 10,
    "scale": (0.9, 1.1)}``, or an :class:`Augment`), in words, or None if nothing is."""
    if isinstance(settings, Augment):
        settings = settings.to_dict()
    if not isinstance(settings, dict):
        return ("augment takes shift, rotate and scale in a dict or an Augment, e.g. {'shift': 2} or "
                f"Augment(shift=2), got {type(settings).__name__}")
    unknown = sorted(map(str, set(settings) - set(AUGMENT_RANGES)))
    if unknown:
        return f"augment takes shift, rotate and scale, not {', '.join(unknown)}"

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for name in ("shift", "rotate"):
        low, high = AUGMENT_RANGES[name]
        if name in settings and not (number(settings[name]) and low <= settings[name] <= high):
            unit = "pixels" if name == "shift" else "degrees"
            return f"augment's {name} must be a number of {unit} from {low} to {high}, got {settings[name]!r}"
    if "scale" in settings:
        low, high = AUGMENT_RANGES["scale"]
        v = settings["scale"]
        pair = isinstance(v, (tuple, list)) and len(v) == 2 and all(number(b) for b in v)
        if not (pair and low <= v[0] <= v[1] <= high):
            return (f"augment's scale must be a range (low, high) with {low} <= low <= high <= {high}, "
                    f"e.g. (0.9, 1.1), got {v!r}")
    return None


@dataclass(frozen=True)
class Augment:
    """Training's augmentation, checked when it is built (:data:`AUGMENT_RANGES`): each image
    moved up to ``shift`` pixels per axis, turned up to ``rotate`` degrees either way and scaled
    by a factor drawn from ``scale`` (low, high). The defaults leave an image as it is.

        fit(model, train_set, augment=Augment(shift=2, rotate=10, scale=(0.9, 1.1)))

    The same as ``augment={"shift": 2, "rotate": 10, "scale": (0.9, 1.1)}``: a
    :class:`~cnnlab.train.TrainConfig` keeps it as that dict (:meth:`to_dict`), so a saved run's
    name does not depend on which of the two was given. Values are kept as given (``rotate=10``
    stays the int 10), a list ``scale`` becomes a tuple."""

    shift: float = 0.0
    rotate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        problem = augment_problem({f.name: getattr(self, f.name) for f in fields(self)})
        if problem is not None:
            raise ValueError(problem)
        object.__setattr__(self, "scale", tuple(self.scale))

    @classmethod
    def from_value(cls, value: Augment | dict[str, Any] | None) -> Augment | None:
        """``value`` as an Augment: an Augment as it is, a dict of its fields (the form of
        training's ``augment`` setting, of notebooks and of saved runs' configs) checked and
        built, None (no augmentation) as None. Anything else, or a bad field, is refused with a
        ValueError that says what is wrong and what is allowed."""
        if value is None or isinstance(value, cls):
            return value
        problem = augment_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """The dict form of training's ``augment`` setting: the fields that differ from their
        defaults, ``scale`` as a list, e.g. ``{"shift": 2, "rotate": 10, "scale": [0.9, 1.1]}``
        (:data:`cnnlab.runs.AUGMENT`); ``Augment(shift=2)`` gives ``{"shift": 2}``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                out[f.name] = list(v) if f.name == "scale" else v
        return out


def affine(x: Tensor, dx: Tensor, dy: Tensor, angle: Tensor, scale: Tensor, fill: float = 0.0) -> Tensor:
    """Images ``x`` (B, C, H, W) each moved by ``dx[i]``, ``dy[i]`` pixels, rotated ``angle[i]``
    degrees clockwise about the centre and scaled by ``scale[i]``; uncovered pixels get ``fill``.
    Bilinear; whole-pixel moves with no rotation or scaling are exact. On ``x``'s device."""
    b, _, h, w = x.shape
    params = [torch.as_tensor(p, dtype=x.dtype, device=x.device).expand(b) for p in (dx, dy, angle, scale)]
    dx, dy, angle, scale = params
    if not bool((scale > 0).all()):
        raise ValueError(f"scale must be positive, got {scale.min().item():g}")
    # affine_grid maps each output position to where it samples the input, in coordinates that
    # run from -1 to 1 across the image: the inverse of the transform, centre at 0. On a square
    # grid of pixels the normalised axes have different lengths when H != W, hence the h/w factors.
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # In pixels (y down, centre 0): p_in = R(-angle) (p_out - (dx, dy)) / scale, then into those units.
    theta = torch.stack([
        torch.stack([cos, sin * h / w, -(cos * dx + sin * dy) * 2 / w], 1),
        torch.stack([-sin * w / h, cos, (sin * dx - cos * dy) * 2 / h], 1),
    ], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill  # zeros padding, shifted: uncovered pixels are `fill`


def random_affine(
    x: Tensor,
    *,
    max_shift: float = 2.0,
    max_rotate: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    fill: float = 0.0,
    generator: torch.Generator | None = None,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, AffineParams]:
    """Each image of ``x`` (B, C, H, W) transformed by its own random parameters, drawn uniformly:
    shifts in [-max_shift, max_shift] pixels per axis, rotations in [-max_rotate, max_rotate]
    degrees, scale in ``scale``. ``generator`` (on ``x``'s device) makes it repeatable;
    ``return_params`` also returns the parameters drawn (for a gallery, or a test)."""
    for name, v in (("max_shift", max_shift), ("max_rotate", max_rotate)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    lo, hi = scale
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"scale must be a range (low, high) with 0 < low <= high, got {scale!r}")
    b = x.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, device=x.device, generator=generator)

    params = {"dx": uniform(-max_shift, max_shift), "dy": uniform(-max_shift, max_shift),
              "angle": uniform(-max_rotate, max_rotate), "scale": uniform(lo, hi)}
    out = affine(x, **params, fill=fill)
    return (out, params) if return_params else out


def augment_examples(
    x: Tensor,
    *,
    copies: int = 7,
    shift: float = 2.0,
    rotate: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    fill: float = 0.0,
    seed: int = 0,
) -> tuple[Tensor, AffineParams]:
    """What the network is fed: each image of ``x`` (B, C, H, W) followed by ``copies`` random
    versions of it, shape (B, 1 + copies, C, H, W), on ``x``'s device, with the parameters drawn
    ((B, copies) each). The same ``seed`` gives the same versions."""
    if not (isinstance(copies, int) and copies >= 1):
        raise ValueError(f"copies must be a whole number >= 1, got {copies!r}")
    b = x.shape[0]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    repeated = x.repeat_interleave(copies, 0)  # (B*copies, C, H, W): image 0's copies first
    out, params = random_affine(repeated, max_shift=shift, max_rotate=rotate, scale=tuple(scale), fill=fill,
                                generator=generator, return_params=True)
    gallery = torch.cat([x[:, None], out.view(b, copies, *x.shape[1:])], 1)
    return gallery, {k: v.view(b, copies) for k, v in params.items()}
