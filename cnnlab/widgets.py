"""Interactive explorers. Each is a function returning an ipywidget, built on a plain function
that works (and is tested) without one: call the plain function first, then the widget."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
from matplotlib.figure import Figure
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.train import predict
from cnnlab.transforms import transform_digit
from cnnlab.viz import show_prediction

__all__ = ["explore_transform", "shift_explorer", "as_named_models"]


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


def explore_transform(
    models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: ImageSet,
    index: int,
    dx: float = 0,
    dy: float = 0,
    angle: float = 0.0,
    scale: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The test digit at ``index`` moved/rotated/scaled, and each model's class probabilities for it."""
    if not isinstance(index, int) or not 0 <= index < len(data):
        raise ValueError(f"index must be a whole number from 0 to {len(data) - 1}, got {index!r}")
    image = transform_digit(data.x[index].cpu(), dx, dy, angle, scale, fill=data.background)
    probs = {name: predict(model, image.unsqueeze(0))[0] for name, model in as_named_models(models).items()}
    return image, probs


def _render(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _summary(probs: Mapping[str, Tensor], classes: Sequence[str], true_label: str) -> str:
    rows = []
    for name, p in probs.items():
        top = int(p.argmax())
        rows.append(f"<b>{html.escape(name)}</b>: {html.escape(classes[top])} ({float(p[top]):.1%})")
    return f"true label: {html.escape(true_label)} &nbsp;|&nbsp; " + " &nbsp;|&nbsp; ".join(rows)


def shift_explorer(
    models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: ImageSet,
    index: int = 0,
    *,
    rotate_and_scale: bool = True,
) -> widgets.VBox:
    """Pick a test digit, move it with sliders (and rotate/scale it), watch every model's probabilities.

    The returned box exposes ``.controls`` (dict of sliders), ``.image`` and ``.summary`` for tests.
    """
    named = as_named_models(models)
    controls = {
        "index": widgets.BoundedIntText(value=index, min=0, max=len(data) - 1, description="digit #"),
        "dx": widgets.IntSlider(value=0, min=-10, max=10, description="shift right"),
        "dy": widgets.IntSlider(value=0, min=-10, max=10, description="shift down"),
    }
    if rotate_and_scale:
        controls["angle"] = widgets.FloatSlider(value=0, min=-90, max=90, step=5, description="rotate (°)", tooltip="degrees clockwise")
        controls["scale"] = widgets.FloatSlider(value=1, min=0.5, max=1.5, step=0.05, description="scale")
    image = widgets.Image(format="png")
    summary = widgets.HTML()
    fig = Figure(figsize=(2.6 + 2.6 * len(named), 2.6))  # not pyplot: never shown twice inline
    axes = fig.subplots(1, len(named) + 1, width_ratios=[1] + [1.3] * len(named))

    def update(_change=None) -> None:
        values = {k: c.value for k, c in controls.items()}
        try:
            img, probs = explore_transform(named, data, **values)
        except (ValueError, TypeError) as err:  # a nonsense value: say so, keep the last picture
            summary.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        for ax in axes:
            ax.clear()
        show_prediction(img, probs, data.classes, axes=axes, mean=data.mean, std=data.std)
        image.value = _render(fig)
        summary.value = _summary(probs, data.classes, data.classes[int(data.y[values["index"]])])

    for c in controls.values():
        c.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox(list(controls.values())[:3]), widgets.HBox(list(controls.values())[3:]), summary, image])
    box.controls, box.image, box.summary = controls, image, summary
    return box
