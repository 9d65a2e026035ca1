"""Moving digits around: exact integer shifts of a whole test set, and a free affine transform of one digit.

Operations on tensors only (what models make of moved digits is in :mod:`cnnlab.metrics`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF


__all__ = ["DIRECTIONS", "shift_images", "transform_digit"]

#: (dx, dy) of a one-pixel move in each direction; +x is right, +y is down.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def shift_images(x: Tensor, dx: int, dy: int, fill: float = 0.0) -> Tensor:
    """Move images (…, H, W) by whole pixels, ``dx`` right and ``dy`` down; uncovered pixels get ``fill``.

    Exact (no interpolation) and without wrap-around, unlike ``torch.roll``.
    """
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return torch.full_like(x, fill)
    out = torch.full_like(x, fill)
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def transform_digit(
    x: Tensor,
    dx: float = 0,
    dy: float = 0,
    angle: float = 0.0,
    scale: float = 1.0,
    fill: float = 0.0,
) -> Tensor:
    """One image (C, H, W) moved ``dx`` right, ``dy`` down, rotated ``angle`` degrees clockwise
    (as drawn, y pointing down) about its centre and scaled by ``scale``; uncovered pixels get ``fill`` (the background value)."""
    for name, value in (("dx", dx), ("dy", dy), ("angle", angle), ("scale", scale)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not 0.1 <= scale <= 10:
        raise ValueError(f"scale must be between 0.1 and 10, got {scale}")
    if dx == int(dx) and dy == int(dy) and angle == 0 and scale == 1:
        return shift_images(x, int(dx), int(dy), fill)  # exact for whole-pixel moves
    return TF.affine(
        x, angle=angle, translate=[dx, dy], scale=scale, shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR, fill=fill,
    )
