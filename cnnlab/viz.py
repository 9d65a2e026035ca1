"""Pictures. Each function draws what it is given on ``ax`` (or a new figure) and returns it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from cnnlab.data import ImageSet

__all__ = ["show_images"]


def show_images(
    data: ImageSet,
    index: Sequence[int],
    *,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    size: float = 1.2,
) -> Figure:
    """A grid of the images at ``index`` with their labels (or ``titles``)."""
    index = list(index)
    nrows = max(1, math.ceil(len(index) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, i) in enumerate(zip(axes.flat, index)):
        img = data.denormalize(data.x[i].detach().float().cpu())
        ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray_r" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        label = titles[k] if titles is not None else data.classes[int(data.y[i])]
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    return fig
