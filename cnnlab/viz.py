"""Pictures. Each function draws what it is given on ``ax`` or ``axes`` (or a new figure) and returns it."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.train import History

__all__ = [
    "show_images",
    "show_weights_as_templates",
    "plot_confusion",
    "plot_history",
    "TRAIN_COLOR",
    "SCORED_COLOR",
    "plot_shift_curve",
    "show_prediction",
    "PredictionPanel",
    "show_mistakes",
    "show_convolution",
    "show_receptive_field",
    "show_maps",
    "grid_columns",
    "tile_origin",
    "add_colorbar",
    "plot_rf_growth",
    "tile",
    "show_filters",
    "show_feature_maps",
    "show_saliency",
    "show_augmentations",
    "plot_error_ladder",
    "show_guesses",
    "plot_learning_curves",
    "render_png",
]


def show_images(
    data: ImageSet,
    index: Sequence[int],
    *,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    size: float = 1.2,
    ink: str = "dark",
    colorbar: bool = False,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """A grid of the images at ``index`` with their labels (or ``titles``); returns its figure.

    One-channel images are drawn with high values dark (``ink="dark"``, the series' digits as
    ink on paper) or as stored, high values light (``ink="light"``: 0 black, 1 white, what a
    network fed these pixels receives). ``colorbar`` adds the grey scale, labelled.

    ``axes``: draw into these instead of a new figure (a sequence or an array of Axes, at least
    one per image, filled in order, all framed off as here) and return their figure, its layout
    left to the caller (``ncols`` and ``size`` are then unused; the colorbar takes its room from
    these axes)."""
    if ink not in ("dark", "light"):
        raise ValueError(f"ink must be 'dark' (high values dark) or 'light' (as stored: 1 is white), got {ink!r}")
    index = list(index)
    made = axes is None
    if made:
        nrows = max(1, math.ceil(len(index) / ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size + (0.9 if colorbar else 0), nrows * size * 1.15),
                                 squeeze=False)
    else:
        axes = _given_axes("show_images", axes, len(index), "one per image")
        fig = axes.flat[0].figure
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for k, (ax, i) in enumerate(zip(axes.flat, index)):
        img = data.denormalize(data.x[i].detach().float().cpu())
        cmap = ("gray_r" if ink == "dark" else "gray") if img.shape[0] == 1 else None
        im = ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap=cmap, vmin=0, vmax=1)
        label = titles[k] if titles is not None else data.classes[int(data.y[i])]
        ax.set_title(label, fontsize=8)
    if made:
        fig.tight_layout()
    if colorbar and im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8, pad=0.02, fraction=0.03)
        cb.set_label("pixel value (0-1)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


def show_weights_as_templates(
    model_or_weight: nn.Module | Tensor,
    classes: Sequence[str],
    *,
    image_shape: tuple[int, int] = (28, 28),
    size: float = 1.5,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Each class's row of a linear layer's weights drawn as an image: red pixels vote for the
    class, blue ones against it (one colour scale for all, centred on zero, in a colorbar).
    Returns the figure.

    ``axes``: draw into these instead of a new figure (a sequence or an array of Axes, at least
    one per class, filled in order, all framed off as here) and return their figure (``size`` is
    then unused; the colorbar takes its room from these axes)."""
    if isinstance(model_or_weight, nn.Module):
        linear = [m for m in model_or_weight.modules() if isinstance(m, nn.Linear)][0]
        weight = linear.weight
    else:
        weight = model_or_weight
    weight = weight.detach().float().cpu()
    limit = weight.abs().quantile(0.995).item()  # a few extreme weights would wash out the rest
    if axes is None:
        ncols = min(5, len(classes))
        nrows = math.ceil(len(classes) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.1), squeeze=False)
    else:
        axes = _given_axes("show_weights_as_templates", axes, len(classes), "one per class")
        fig = axes.flat[0].figure
    for ax in axes.flat:
        ax.axis("off")
    for ax, w, name in zip(axes.flat, weight, classes):
        im = ax.imshow(w.view(*image_shape).numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.7, label="weight")
    return fig


def plot_confusion(cm: Tensor, classes: Sequence[str], *, ax: Axes | None = None, title: str = "",
                   vmax: float | None = None) -> Axes:
    """A confusion matrix with counts; the diagonal (correct) is left uncoloured, its counts printed,
    so that the colour shows only the errors. ``vmax``: the error count drawn darkest (default: this
    matrix's largest); give two matrices the same ``vmax`` to compare them by colour."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.6))
    cm = cm.detach().cpu()
    errors = cm.clone().double()
    errors.fill_diagonal_(float("nan"))
    peak = max(1.0, float(torch.nan_to_num(errors).max()) if vmax is None else vmax)
    im = ax.imshow(errors.numpy(), cmap="Reds", vmin=0, vmax=peak)
    add_colorbar(ax, im, "errors (off the diagonal)")
    k = len(classes)
    short = [c.split(" - ")[0] for c in classes]
    ax.set_xticks(range(k), short, rotation=90 if max(map(len, short)) > 2 else 0)
    ax.set_yticks(range(k), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            n = int(cm[i, j])
            if n:
                dark = i != j and n > 0.6 * peak
                ax.text(j, i, n, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_title(title or f"{int(cm.sum() - cm.trace())} errors of {int(cm.sum())}")
    return ax


#: Two colours told apart with any colour vision (Okabe and Ito's palette): training, and the
#: set a model is scored on (test or validation).
TRAIN_COLOR, SCORED_COLOR = "#0072B2", "#D55E00"


def plot_history(histories: History | Mapping[str, History], *, axes: Sequence[Axes] | None = None,
                 separate: bool = False, scored: str = "test", log_loss: bool = False) -> Figure:
    """Loss and test accuracy per epoch, for one run or several (a dict of name -> History).

    ``separate``: one column per run instead of all runs on two axes: loss on top, accuracy
    below, training and ``scored`` (what the run was scored on: "test" or "validation") in two
    colour-blind-safe colours and line styles, each run on its own scales. ``log_loss``: the loss
    on a log axis (one early spike no longer flattens the rest)."""
    if isinstance(histories, History):
        histories = {histories.model or "model": histories}
    if separate:
        return _history_panels(histories, axes=axes, scored=scored, log_loss=log_loss)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    fig = axes[0].figure
    for name, h in histories.items():
        epochs = h.column("epoch")
        line, = axes[0].plot(epochs, h.column("train_loss"), marker="o", label=f"{name} train")
        if h.epochs and "test_loss" in h.epochs[0]:
            axes[0].plot(epochs, h.column("test_loss"), marker="o", ls="--", color=line.get_color(), label=f"{name} {scored}")
            axes[1].plot(epochs, [100 * a for a in h.column("test_acc")], marker="o", color=line.get_color(), label=name)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel=f"{scored} accuracy (%)", title=f"{scored} accuracy")
    if log_loss:
        axes[0].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def _history_panels(histories: Mapping[str, History], *, axes, scored: str, log_loss: bool) -> Figure:
    n = len(histories)
    if axes is None:
        fig, axes = plt.subplots(2, n, figsize=(2.9 * n + 0.4, 5.2), squeeze=False)
    else:
        axes = [[a] for a in axes] if n == 1 and len(axes) == 2 else axes
    fig = axes[0][0].figure
    styles = {"train": dict(color=TRAIN_COLOR, ls="-", marker="o"), scored: dict(color=SCORED_COLOR, ls="--", marker="s")}
    for k, (name, h) in enumerate(histories.items()):
        loss_ax, acc_ax = axes[0][k], axes[1][k]
        epochs = h.column("epoch")
        marker_size = 4 if len(epochs) <= 20 else 2
        loss_ax.plot(epochs, h.column("train_loss"), ms=marker_size, label="train", **styles["train"])
        acc_ax.plot(epochs, [100 * a for a in h.column("train_acc")], ms=marker_size, label="train", **styles["train"])
        if h.epochs and "test_loss" in h.epochs[0]:
            loss_ax.plot(epochs, h.column("test_loss"), ms=marker_size, label=scored, **styles[scored])
            acc_ax.plot(epochs, [100 * a for a in h.column("test_acc")], ms=marker_size, label=scored, **styles[scored])
        loss_ax.set_title(name, fontsize=10)
        loss_ax.set(ylabel="cross-entropy loss" + (" (log scale)" if log_loss else "") if k == 0 else "")
        acc_ax.set(xlabel="epoch", ylabel="accuracy (%)" if k == 0 else "")
        if log_loss:
            loss_ax.set_yscale("log")
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_shift_curve(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    shifts: Sequence[int],
    *,
    ax: Axes | None = None,
) -> Axes:
    """Accuracy against shift, one line per model: the mean over directions, with a band
    from the worst to the best direction. ``curves`` is ``{model: {direction: accuracies}}``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    for name, by_direction in curves.items():
        acc = 100 * torch.tensor([list(v) for v in by_direction.values()], dtype=torch.float64)
        line, = ax.plot(shifts, acc.mean(0).numpy(), marker="o", label=name)
        ax.fill_between(shifts, acc.min(0).values.numpy(), acc.max(0).values.numpy(), color=line.get_color(), alpha=0.15)
    ax.set(xlabel="shift (pixels)", ylabel="test accuracy (%)", ylim=(0, 100),
           title="accuracy when every test digit is moved")
    ax.axhline(10, color="gray", ls=":", lw=1)
    ax.text(shifts[-1], 11, "chance", ha="right", fontsize=8, color="gray")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def show_prediction(
    image: Tensor,
    probs: Mapping[str, Tensor],
    classes: Sequence[str],
    *,
    axes: Sequence[Axes] | None = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> Figure:
    """An image beside each model's class probabilities (one bar chart per model)."""
    n = len(probs)
    made = axes is None  # lay out only a figure made here; a widget lays out its own once
    if made:
        fig, axes = plt.subplots(1, n + 1, figsize=(2.6 + 2.6 * n, 2.6), width_ratios=[1] + [1.3] * n)
    fig = axes[0].figure
    axes[0].imshow((image.float().cpu() * std + mean).clamp(0, 1).squeeze(0).numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_xticks([])
    axes[0].set_yticks([])  # keep the frame: it is the edge of the 28x28 input
    short = [c.split(" - ")[0] for c in classes]
    for ax, (name, p) in zip(axes[1:], probs.items()):
        p = p.float().cpu().numpy()
        top = int(p.argmax())
        colors = ["tab:blue"] * len(p)
        colors[top] = "tab:orange"
        ax.barh(range(len(p)), p, color=colors)
        ax.set_yticks(range(len(p)), short, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{name}: {short[top]} ({p[top]:.0%})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    if made:
        fig.tight_layout()
    return fig


class PredictionPanel:
    """:func:`show_prediction` for a widget: drawn in full the first time, then updated in place
    (the image's pixels, the bars' lengths and colours, the titles) so that a slider's answer
    costs the PNG and little else. ``update(image, probs)`` takes tensors from any device."""

    def __init__(self, axes: Sequence[Axes], classes: Sequence[str], *, mean: float = 0.0, std: float = 1.0):
        self.axes, self.classes, self.mean, self.std = list(axes), list(classes), mean, std
        self._names: list[str] | None = None

    def update(self, image: Tensor, probs: Mapping[str, Tensor]) -> None:
        if self._names != list(probs):  # first call, or other models: draw everything
            for ax in self.axes[: 1 + len(probs)]:
                ax.clear()
            show_prediction(image, probs, self.classes, axes=self.axes, mean=self.mean, std=self.std)
            self._names = list(probs)
            return
        pixels = (image.float().cpu() * self.std + self.mean).clamp(0, 1).squeeze(0).numpy()
        self.axes[0].images[0].set_data(pixels)
        short = [c.split(" - ")[0] for c in self.classes]
        for ax, (name, p) in zip(self.axes[1:], probs.items()):
            p = p.float().cpu()
            top = int(p.argmax())
            for k, bar in enumerate(ax.patches):
                bar.set_width(float(p[k]))
                bar.set_facecolor("tab:orange" if k == top else "tab:blue")
            ax.set_title(f"{name}: {short[top]} ({float(p[top]):.0%})", fontsize=9)

    def changed(self) -> list:
        """The artists :meth:`update` changes: the image, the bars, the titles (for :func:`render_png`)."""
        n = len(self._names or [])
        return [*self.axes[0].images, *(a for ax in self.axes[1 : 1 + n] for a in (*ax.patches, ax.title))]


def show_mistakes(data: ImageSet, probs: Tensor, *, k: int = 16, ncols: int = 8,
                  axes: Sequence[Axes] | None = None) -> Figure:
    """The ``k`` most confident mistakes, titled ``true→predicted probability``; returns the figure.
    ``axes``: draw into these instead of a new figure, one per mistake drawn (``k``, or fewer where
    there are fewer mistakes), as :func:`show_images` does."""
    from cnnlab.metrics import most_confident_mistakes

    probs = probs.detach().float().cpu()
    index = most_confident_mistakes(probs, data.y, k)
    if axes is not None:
        found = f": {len(index)} found, {k} asked for" if len(index) < k else ""
        axes = _given_axes("show_mistakes", axes, len(index), f"one per mistake drawn{found}")
    short = [c.split(" - ")[0] for c in data.classes]
    titles = [f"{short[int(data.y[i])]}→{short[int(probs[i].argmax())]} {float(probs[i].max()):.0%}" for i in index]
    return show_images(data, index.tolist(), titles=titles, ncols=ncols, axes=axes)


def show_convolution(image: Tensor, kernel: Tensor, fmap: Tensor, *, axes: Sequence[Axes] | None = None) -> Figure:
    """Input image, kernel and feature map side by side, each signed one on a diverging scale
    centred on zero (red positive, blue negative) so the sign of every response is visible: the
    kernel's values are printed in its cells, the map has a colorbar."""
    made = axes is None  # lay out only a figure made here; a widget lays out its own once
    if made:
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), width_ratios=[1, 0.8, 1])
    fig = axes[0].figure
    axes[0].imshow(image.float().cpu().reshape(image.shape[-2:]).numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title(f"input {tuple(image.shape[-2:])}", fontsize=9)
    k = kernel.float().cpu()
    klim = max(float(k.abs().max()), 1e-6)
    axes[1].imshow(k.numpy(), cmap="RdBu_r", vmin=-klim, vmax=klim)
    for (i, j), v in zip(torch.cartesian_prod(torch.arange(k.shape[0]), torch.arange(k.shape[1])).tolist(), k.flatten().tolist()):
        axes[1].text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                     color="white" if abs(v) > 0.6 * klim else "black")
    axes[1].set_title(f"kernel {k.shape[0]}x{k.shape[1]}", fontsize=9)
    f = fmap.float().cpu()
    flim = max(float(f.abs().max()), 1e-6)
    im = axes[2].imshow(f.numpy(), cmap="RdBu_r", vmin=-flim, vmax=flim)
    add_colorbar(axes[2], im, "response")
    axes[2].set_title(f"feature map {tuple(f.shape)}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if made:
        fig.tight_layout()
    return fig


def show_receptive_field(
    image: Tensor,
    region: tuple[slice, slice],
    erf: Tensor | None = None,
    *,
    axes: Sequence[Axes] | None = None,
    title: str = "",
) -> Figure:
    """A digit with a unit's theoretical receptive field drawn as a box, and (if given) the
    effective receptive field as a heat map with the same box and a colorbar."""
    from matplotlib.patches import Rectangle

    n = 1 if erf is None else 2
    if axes is None:
        fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.4))
        axes = [axes] if n == 1 else axes
    fig = axes[0].figure
    rows, cols = region

    def box():
        return Rectangle((cols.start - 0.5, rows.start - 0.5), cols.stop - cols.start, rows.stop - rows.start,
                         fill=False, ec="tab:orange", lw=2)

    axes[0].imshow(image.float().cpu().reshape(image.shape[-2:]).numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[0].add_patch(box())
    axes[0].set_title(title or "theoretical receptive field", fontsize=9)
    if erf is not None:
        im = axes[1].imshow(erf.detach().float().cpu().numpy(), cmap="magma", vmin=0)
        add_colorbar(axes[1], im, "|d unit / d pixel|")
        axes[1].add_patch(box())
        axes[1].set_title("effective: |d unit / d input|", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def show_maps(maps: Mapping[str, Tensor], *, size: float = 2.6, label: str = "value",
              axes: Sequence[Axes] | None = None) -> Figure:
    """2-D maps side by side, each titled with its name and shape (e.g. a feature map before and
    after pooling), each with a colorbar labelled ``label``. Maps with negative values get a
    diverging scale centred on zero; a map that is zero everywhere says so in its title. Returns
    the figure.

    ``axes``: draw into these instead of a new figure (a sequence or an array of Axes, at least
    one per map, filled in order; any left over are turned off) and return their figure, its
    layout left to the caller (``size`` is then unused; each colorbar takes its room from its
    map's axes)."""
    made = axes is None
    if made:
        fig, axes = plt.subplots(1, len(maps), figsize=(size * len(maps), size * 1.1), squeeze=False)
    else:
        axes = _given_axes("show_maps", axes, len(maps), "one per map")
        fig = axes.flat[0].figure
        for ax in axes.flat[len(maps):]:
            ax.axis("off")
    for ax, (name, m) in zip(axes.flat, maps.items()):
        m = m.detach().float().cpu()
        peak = float(m.abs().max())
        if m.min() < 0:
            im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-peak, vmax=peak)
        else:
            im = ax.imshow(m.numpy(), cmap="gray_r", vmin=0, vmax=peak or 1.0)  # all zero: white, not a grey guess
        fig.colorbar(im, ax=ax, shrink=0.75, pad=0.03, label=label)
        ax.set_title(f"{name}\n{tuple(m.shape)}" + ("; all 0" if peak == 0 else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if made:
        fig.tight_layout()
    return fig


def plot_rf_growth(stacks: Mapping[str, Sequence[int]], *, ax: Axes | None = None, image_size: int = 28) -> Axes:
    """Receptive-field size against the number of conv layers, one line per kind of stack
    (``stacks`` maps a name to the RF size after each conv layer)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    for name, sizes in stacks.items():
        ax.plot(range(1, len(sizes) + 1), sizes, marker="o", label=name)
    ax.axhline(image_size, color="gray", ls=":", lw=1)
    ax.text(1, image_size + 1, f"the whole {image_size}x{image_size} image", fontsize=8, color="gray")
    ax.set(xlabel="conv layers", ylabel="receptive field (pixels per side)", title="receptive field grows with depth")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def grid_columns(n: int) -> int:
    """Columns for a grid of n maps: 8 for multiples of 8 (32 -> 4x8, 64 -> 8x8), else about square."""
    return 8 if n >= 16 and n % 8 == 0 else math.ceil(math.sqrt(n))


def tile_origin(k: int, ncols: int, h: int, w: int) -> tuple[int, int]:
    """(x, y) of map ``k``'s top-left pixel in :func:`tile`'s image of (h, w) maps in ``ncols`` columns."""
    r, q = divmod(k, ncols)
    return q * (w + 1), r * (h + 1)


def tile(maps: Tensor, ncols: int | None = None, *, normalize: bool = False) -> Tensor:
    """Lay ``maps`` (C, H, W) out as one (rows*(H+1)-1, ncols*(W+1)-1) image with NaN gaps between
    them (drawn blank). ``normalize`` scales each map by its own largest absolute value, so weak
    channels stay visible."""
    maps = maps.detach().float().cpu()
    c, h, w = maps.shape
    if normalize:
        maps = maps / maps.flatten(1).abs().amax(1).clamp(min=1e-8)[:, None, None]
    ncols = ncols or grid_columns(c)
    nrows = math.ceil(c / ncols)
    out = torch.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1), float("nan"))
    for k in range(c):
        x, y = tile_origin(k, ncols, h, w)
        out[y : y + h, x : x + w] = maps[k]
    return out


def add_colorbar(ax: Axes, mappable, label: str = "", *, ticks: Sequence[float] | None = None,
              ticklabels: Sequence[str] | None = None, extend: str = "neither"):
    """A slim colorbar just right of ``ax``, inside its layout box: it takes no room from other axes,
    and ``ax.clear()`` removes it with the rest (widgets redraw their axes that way)."""
    cax = ax.inset_axes([1.03, 0.0, 0.045, 1.0])
    cb = ax.figure.colorbar(mappable, cax=cax, ticks=ticks, extend=extend)
    if ticklabels is not None:
        cb.set_ticklabels(ticklabels)
    cb.ax.tick_params(labelsize=7, length=2, pad=1)
    if label:
        cb.set_label(label, fontsize=7, labelpad=2)
    return cb


def _given_axes(function: str, axes: Sequence[Axes], need: int, what: str) -> np.ndarray:
    """``axes`` given to ``function`` (a sequence or an array of Axes, any shape) as an array, refused
    unless it holds ``need`` of them (``what`` says why) and one at least: its figure is drawn in."""
    given = np.asarray(axes, dtype=object)
    if given.size < max(need, 1):
        raise ValueError(f"{function} needs {max(need, 1)} axes ({what}), got {given.size}")
    return given


#: colour maps for tiled grids: the NaN gaps between tiles light grey, so that tiles near zero keep their edges
_GRID_CMAPS = {name: plt.get_cmap(name).with_extremes(bad="0.82") for name in ("RdBu_r", "Reds")}


def _diverging(ax: Axes, image: Tensor, limit: float | None = None):
    limit = limit or max(float(torch.nan_to_num(image).abs().max()), 1e-8)
    im = ax.imshow(image.numpy(), cmap=_GRID_CMAPS["RdBu_r"], vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def show_filters(weight: Tensor, *, ax: Axes | None = None, ncols: int = 8, title: str = "",
                 colorbar: bool = True, limit: float | None = None) -> Axes:
    """A conv layer's filters (C_out, C_in, k, k) as a grid of k x k images on one diverging scale
    with a colorbar (red: the filter adds that pixel, blue: subtracts it). Multi-channel filters
    show input channel 0. ``limit``: the weight drawn darkest (default: the largest here)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(ncols * 0.45 + 0.8, math.ceil(weight.shape[0] / ncols) * 0.45 + 0.4))
    w = weight.detach().float().cpu()
    im = _diverging(ax, tile(w[:, 0], ncols), limit)
    if colorbar:
        add_colorbar(ax, im, "weight")
    ax.set_title(title or f"{w.shape[0]} filters, {w.shape[2]}x{w.shape[3]}", fontsize=9)
    return ax


def show_feature_maps(
    maps: Tensor,
    *,
    ax: Axes | None = None,
    ncols: int | None = None,
    title: str = "",
    highlight: int | None = None,
    normalize: bool = True,
    colorbar: bool = True,
) -> Axes:
    """Every channel of one image's feature maps (C, H, W) in a grid; ``highlight`` outlines one
    channel. ``normalize`` (the default) scales each map to its own largest value, so a weak
    channel is as visible as a strong one; otherwise all share one scale. The colorbar says which.
    Maps with no negative values (after a ReLU) go from white (0) to red, others are red and blue
    around zero. What is drawn is ``tile(maps, ncols, normalize=normalize)``."""
    from matplotlib.patches import Rectangle

    c, h, w = maps.shape
    ncols = ncols or grid_columns(c)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 5 * math.ceil(c / ncols) / ncols + 0.4))
    grid = tile(maps, ncols, normalize=normalize)
    peak = 1.0 if normalize else max(float(torch.nan_to_num(grid).abs().max()), 1e-8)
    if torch.nan_to_num(grid).min() >= 0:  # nothing below zero: the whole scale for the responses
        im = ax.imshow(grid.numpy(), cmap=_GRID_CMAPS["Reds"], vmin=0, vmax=peak, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        im = _diverging(ax, grid, peak)
    if colorbar:
        add_colorbar(ax, im, "each map / its own max" if normalize else "activation (one scale for all)")
    if highlight is not None:
        x, y = tile_origin(highlight, ncols, h, w)
        ax.add_patch(Rectangle((x - 1, y - 1), w + 1, h + 1, fill=False, ec="gold", lw=2))
    ax.set_title(title or f"{c} feature maps, {h}x{w}", fontsize=9)
    return ax


def show_saliency(image: Tensor, maps: Mapping[str, Tensor], *, axes: Sequence[Axes] | None = None, title: str = "",
                  labels: Mapping[str, str] | None = None) -> Figure:
    """An image (1, H, W) in [0, 1] beside each saliency map (H, W), with the image's outline drawn
    on top. Each map has its own scale and a colorbar: a signed map (an input gradient) is red
    where raising that pixel (more ink) would raise the class score and blue where it would lower
    it, white at zero; a map with no negative values (Grad-CAM) goes from white (0) to red. The
    darkest colour starts at the 99th percentile of the values, so a few extreme pixels do not wash
    out the rest. ``labels``: a colorbar label for some maps, by name."""
    n = len(maps) + 1
    made = axes is None
    if made:
        fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 2.9))
    fig = axes[0].figure
    gray = image.float().cpu().reshape(image.shape[-2:])
    axes[0].imshow(gray.numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title(title or "input", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        m = m.detach().float().cpu()
        size = m.abs().flatten()
        limit = max(float(size.quantile(0.99)), 1e-12)
        clipped = "max" if float(size.max()) > limit else "neither"
        if m.min() < 0:
            im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            add_colorbar(ax, im, (labels or {}).get(name, "d score / d pixel"), ticks=[-limit, 0, limit],
                      ticklabels=["lowers\nscore", "0", "raises\nscore"], extend="both" if clipped == "max" else "neither")
        else:
            im = ax.imshow(m.numpy(), cmap="Reds", vmin=0, vmax=limit)
            add_colorbar(ax, im, (labels or {}).get(name, "evidence for the class"), ticks=[0, limit],
                      ticklabels=["0", "high"], extend=clipped)
        if float(gray.min()) < 0.5 < float(gray.max()):
            ax.contour(gray.numpy(), levels=[0.5], colors="black", linewidths=0.6, alpha=0.6)  # the digit's outline
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if made:
        fig.tight_layout()
    return fig


def show_augmentations(gallery: Tensor, data: ImageSet, *, titles: Sequence[str] | None = None,
                       fig: Figure | None = None, size: float = 1.0) -> Figure:
    """Rows of images as :func:`cnnlab.augment.augment_examples` returns them, (B, 1 + copies, C,
    H, W): the original (framed in orange) and its random versions, as the network sees them."""
    gallery = data.denormalize(gallery.detach().float().cpu()).clamp(0, 1)
    rows, cols = gallery.shape[:2]
    if fig is None:
        fig = plt.figure(figsize=(cols * size, rows * size * 1.1))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(gallery[r, c].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
            if c == 0:
                for spine in ax.spines.values():
                    spine.set(color="tab:orange", linewidth=2)
            if titles is not None and r == 0:
                ax.set_title(titles[c], fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig


def plot_error_ladder(rows: Sequence, *, ax: Axes | None = None, title: str = "", log: bool | None = None) -> Axes:
    """Test errors of :func:`cnnlab.report.compare`'s rows, top to bottom, each with its 95%
    interval, and McNemar's p-value against the row above: a gap is real where p is small.
    ``log``: a logarithmic error axis (default: when the errors span more than 5x)."""
    if len({r.n for r in rows}) != 1:
        raise ValueError(f"rows scored on different numbers of test images ({sorted({r.n for r in rows})}): "
                         "compare models on the same test set")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.2))
    n = rows[0].n
    errors = [r.errors for r in rows]
    lo = [r.interval[0] * n for r in rows]
    hi = [r.interval[1] * n for r in rows]
    y = list(range(len(rows)))
    ax.errorbar(errors, y, xerr=[[e - a for e, a in zip(errors, lo)], [b - e for e, b in zip(errors, hi)]],
                fmt="o", color="tab:blue", ecolor="tab:blue", capsize=4)
    logarithmic = (log if log is not None else max(errors) > 5 * max(min(errors), 1)) and min(errors) > 0  # 0 has no log
    if logarithmic:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 10, 20, 50, 100, ...: a readable tick per half-decade
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    for r, yi in zip(rows, y):
        # the count and the p-value in a column right of the axes, so the x-axis spans only the data
        note = f"{r.errors:,}"
        if r.p_value is not None:
            note += f"   (p = {r.p_value:.2g} vs above)" if r.p_value >= 1e-4 else "   (p < 0.0001 vs above)"
        ax.annotate(note, (1.02, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8,
                    annotation_clip=False)
    ax.set_yticks(y, [r.label for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(max(min(lo), 0.5) * 0.8 if logarithmic else 0, max(hi) * (1.25 if logarithmic else 1.05))
    ax.set(xlabel=f"test errors out of {n:,} (fewer is better; bars: {rows[0].level:.0%} intervals)" + (", log scale" if logarithmic else ""),
           title=title or "test errors, each row against the row above")
    ax.grid(axis="x", alpha=0.3)
    return ax


def show_guesses(images: Sequence[Tensor] | Tensor, guesses: Sequence[Sequence[tuple[str, float]]], *,
                 titles: Sequence[str] | None = None, size: float = 2.6, ncols: int | None = None,
                 axes: Sequence[Axes] | None = None) -> Figure:
    """Photos ((C, H, W) in [0, 1], any device) above a bar chart of each one's top guesses
    (from :func:`cnnlab.transfer.top5`): probability on a shared 0-1 axis; returns the figure.
    ``ncols``: photos per row (default: all in one row); more photos wrap onto further rows.

    ``axes``: draw into these instead of a new figure and return their figure, its layout left
    to the caller (``size`` is then unused). They are the grid made here, ``2 * rows`` by
    ``ncols``, each row of photos above a row of their charts: a 2-D array (whose width is
    ``ncols`` unless that is given; e.g. ``plt.subplots(2, 3)[1]`` for 3 photos in a row), or a
    flat sequence of that grid row by row. Those not drawn in are turned off."""
    n = len(guesses)
    if len(images) != n or (titles is not None and len(titles) != n) or n == 0:
        raise ValueError(f"need one image (and one title) per guess list: got {len(images)} images, {n} guess lists"
                         + (f", {len(titles)} titles" if titles is not None else ""))
    given = None if axes is None else _given_axes("show_guesses", axes, 2 * n, "a photo and its chart for each guess list")
    if ncols is None and given is not None and given.ndim == 2:
        ncols = given.shape[1]
    ncols = n if ncols is None else max(1, min(ncols, n))
    rows = math.ceil(n / ncols)
    if given is None:
        fig, axes = plt.subplots(2 * rows, ncols, figsize=(ncols * size, 2 * rows * size), squeeze=False,
                                 gridspec_kw={"height_ratios": [1.3, 1] * rows})
    else:
        axes = given if given.ndim == 2 else given.ravel()
        if axes.ndim == 1 and axes.size >= 2 * rows * ncols:
            axes = axes[: 2 * rows * ncols].reshape(2 * rows, ncols)
        if axes.ndim != 2 or axes.shape[0] < 2 * rows or axes.shape[1] < ncols:
            raise ValueError(f"show_guesses needs {2 * rows * ncols} axes ({2 * rows} rows of {ncols}: each row of "
                             f"photos above a row of their charts, for {n} guess lists), got {given.size}"
                             + (f" as a {given.shape[0]}x{given.shape[1]} grid" if given.ndim == 2 else ""))
        fig = axes[0, 0].figure
    for ax in axes.flat if given is None else given.flat:
        ax.axis("off")
    for k in range(n):
        r, c = divmod(k, ncols)
        photo_ax, ax = axes[2 * r, c], axes[2 * r + 1, c]
        img = images[k].detach().float().cpu()
        photo_ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None,
                        vmin=0, vmax=1)
        if titles is not None:
            photo_ax.set_title(titles[k], fontsize=9)
        names = [name for name, _ in guesses[k]][::-1]
        probs = [p for _, p in guesses[k]][::-1]
        ax.axis("on")
        ax.barh(range(len(names)), probs, color="#1f77b4")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    if given is None:
        fig.tight_layout()
    return fig


def plot_learning_curves(curves: Mapping[str, Mapping[int, float | Sequence[float]]], *, ax: Axes | None = None,
                         title: str = "", n_test: int | None = None, scored: str = "test") -> Axes:
    """Accuracy against the number of training images (log axis), one line per method.

    Each point is one accuracy, or several (one per draw of the training images): then every
    draw is a small dot and the line joins their means. ``n_test``: the number of images scored,
    to draw each mean's 95% interval (Wilson, as :func:`cnnlab.metrics.accuracy_interval`) as a bar."""
    from cnnlab.metrics import accuracy_interval

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    for name, points in curves.items():
        sizes = sorted(points)
        draws = {n: [points[n]] if isinstance(points[n], (int, float)) else list(points[n]) for n in sizes}
        means = [100 * sum(draws[n]) / len(draws[n]) for n in sizes]
        line, = ax.plot(sizes, means, marker="o", label=name)
        many = [(n, 100 * a) for n in sizes if len(draws[n]) > 1 for a in draws[n]]
        if many:
            ax.scatter(*zip(*many), s=12, color=line.get_color(), alpha=0.5, zorder=3)
        if n_test:
            bounds = [accuracy_interval(round(m / 100 * n_test), n_test) for m in means]
            ax.errorbar(sizes, means, yerr=[[m - 100 * lo for m, (lo, _) in zip(means, bounds)],
                                            [100 * hi - m for m, (_, hi) in zip(means, bounds)]],
                        fmt="none", ecolor=line.get_color(), capsize=3, lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted({n for points in curves.values() for n in points}))
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel(f"{scored} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def render_png(fig: Figure, dpi: int = 80, changed: Sequence | None = None) -> bytes:
    """The figure as PNG bytes, for an ``ipywidgets.Image`` or a display handle. Laid out on its
    first render only: later frames keep that layout, which keeps a widget's answer to a change
    fast (tight_layout is a quarter of the time).

    ``changed``: the only artists that differ from frame to frame (a widget's image, bars and
    titles). Everything else is drawn once and kept as a background; each later frame redraws
    just these on it (blitting), several times faster than a full draw, then the frames (spines)
    of their axes, which they would otherwise cover. Those artists are then marked animated, so
    render that figure with the same ``changed`` list (or a new list, which draws the background
    again) from then on."""
    if not getattr(fig, "_laid_out", False):
        fig.tight_layout()
        fig._laid_out = True
    buf = io.BytesIO()
    if changed is None:
        fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
        return buf.getvalue()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    axes = list(dict.fromkeys(a.axes for a in changed))
    changed = [*changed, *(s for ax in axes for s in ax.spines.values() if s not in changed)]  # frames on top
    key = (dpi, tuple(changed))  # the artists themselves (compared by identity), kept alive: no id can be reused
    if getattr(fig, "_blit_key", None) != key:  # the first frame, or other artists: draw the background
        fig.set_dpi(dpi)
        for artist in changed:
            artist.set_animated(True)
        canvas.draw()
        fig._blit_background, fig._blit_key = canvas.copy_from_bbox(fig.bbox), key
    else:
        canvas.restore_region(fig._blit_background)
    for artist in changed:
        artist.axes.draw_artist(artist)
    Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).save(
        buf, "png", compress_level=1)
    return buf.getvalue()
