"""Draw your own digit: strokes to pixels, pixels prepared the way MNIST's were, and a drawing pad.

MNIST's digits were scaled to fit a 20x20 box (keeping their aspect ratio, with anti-aliasing)
and placed in a 28x28 image so that their centre of mass sits at the centre. A digit drawn with
a mouse must go through the same steps, or the models see something unlike anything they were
trained on. :func:`mnist_style` does them; :func:`predict_drawing` is the plain function behind
:func:`drawing_pad`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.hooks import feature_maps
from cnnlab.train import predict
from cnnlab.viz import PredictionPanel, render_png, show_feature_maps, tile

__all__ = ["render_strokes", "mnist_style", "predict_drawing", "drawing_pad"]

Stroke = Sequence[tuple[float, float]]


def render_strokes(strokes: Sequence[Stroke], size: int = 280, width: float = 22) -> Tensor:
    """Pen strokes (lists of (x, y) points on a ``size`` x ``size`` pad) as an image (size, size)
    in [0, 1], ink = 1, drawn with round ends ``width`` pixels wide."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    r = width / 2
    for stroke in strokes:
        points = [(float(x), float(y)) for x, y in stroke]
        if len(points) > 1:
            draw.line(points, fill=255, width=round(width), joint="curve")
        for x, y in (points[:1] + points[-1:]) if points else []:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size).float() / 255


def mnist_style(image: Tensor, *, box: int = 20, size: int = 28, threshold: float = 0.05) -> Tensor:
    """A digit image (H, W) or (1, H, W) in [0, 1] (ink = 1) prepared as MNIST's were: cropped to
    its ink, scaled so its longer side is ``box`` pixels, placed in a ``size`` x ``size`` image
    with its centre of mass at the centre. Returns (1, size, size) in [0, 1]; all zeros if there is no ink."""
    img = image.detach().float().cpu()
    if img.dim() == 3 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 2:
        raise ValueError(f"expected one grey image (H, W) or (1, H, W), got shape {tuple(image.shape)}")
    out = torch.zeros(1, size, size, device=img.device)
    ink = img > threshold
    if not ink.any():
        return out
    rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
    crop = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(crop[None, None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    small = small.clamp(0, 1)
    mass = small.sum()
    cy = float((small.sum(1) * torch.arange(nh, device=img.device)).sum() / mass)
    cx = float((small.sum(0) * torch.arange(nw, device=img.device)).sum() / mass)
    centre = size / 2  # MNIST's digits have their centre of mass at pixel (14, 14), measured: 13.99, 14.01
    top = min(max(round(centre - cy), 0), size - nh)
    left = min(max(round(centre - cx), 0), size - nw)
    out[0, top : top + nh, left : left + nw] = small
    return out


def predict_drawing(
    models: Mapping[str, nn.Module],
    image: Tensor,
    data: ImageSet,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A drawn digit (H, W) in [0, 1] prepared like MNIST and normalised like ``data``, and each
    model's class probabilities for it: ``(digit (1, 28, 28), {name: probs})``. A drawing with no
    ink is a ``ValueError``, not a prediction: there is nothing to read."""
    prepared = mnist_style(image, size=data.x.shape[-1])
    if not bool(prepared.any()):
        raise ValueError("no ink on the pad: draw a digit (press, drag, release) first")
    digit = (prepared - data.mean) / data.std
    return digit, {name: predict(m, digit[None])[0] for name, m in models.items()}


def drawing_pad(
    models: Mapping[str, nn.Module],
    data: ImageSet,
    *,
    maps_model: nn.Module | None = None,
    layers: Sequence[str] = ("conv1", "conv2"),
    size: int = 280,
    width: float = 22,
) -> widgets.VBox:
    """A pad to draw a digit with the mouse; on each lifted pen, every model's probabilities for it
    (and ``maps_model``'s feature maps of ``layers``) appear beside the 28x28 image they saw.

    The box exposes ``.canvas``, ``.strokes`` (list of point lists), ``.digit`` (the last prepared
    digit, normalised), ``.update()``, ``.clear()``, ``.image`` and ``.summary`` for tests.
    """
    from ipycanvas import Canvas

    canvas = Canvas(width=size, height=size, layout=widgets.Layout(width=f"{size}px", height=f"{size}px",
                                                                  border="1px solid #999"))
    clear_button = widgets.Button(description="clear", icon="eraser")
    image = widgets.Image(format="png")
    summary = widgets.HTML("<i>draw a digit in the box (press, drag, release)</i>")
    n_maps = len(layers) if maps_model is not None else 0
    fig = Figure(figsize=(2.4 + 2.4 * len(models) + 2.6 * n_maps, 2.6))
    axes = fig.subplots(1, 1 + len(models) + n_maps, width_ratios=[1] + [1.3] * len(models) + [1.5] * n_maps)
    panel = PredictionPanel(axes[: 1 + len(models)], data.classes, mean=data.mean, std=data.std)
    box = widgets.VBox()
    box.strokes, box.digit = [], None
    pen = {"down": False}

    def blank() -> None:
        canvas.clear()
        canvas.fill_style = "white"
        canvas.fill_rect(0, 0, size, size)
        canvas.stroke_style = "black"
        canvas.line_width = width
        canvas.line_cap = "round"
        canvas.line_join = "round"

    def update() -> None:
        if not any(box.strokes):
            summary.value = "<i>nothing drawn yet</i>"
            return
        try:
            digit, probs = predict_drawing(models, render_strokes(box.strokes, size, width), data)
        except ValueError as err:  # no ink (a click outside the box, a stroke off the edge)
            summary.value = f"<i>{html.escape(str(err))}</i>"
            return
        box.digit = digit
        panel.update(digit, probs)  # the prediction's artists are updated in place after the first pen
        axes[0].set_title("what the models see", fontsize=9)
        for ax, layer in zip(axes[1 + len(models) :], layers):
            maps = feature_maps(maps_model, digit[None], layer)[0]
            if ax.images:  # the same tiling each time: new pixels in the same picture
                ax.images[0].set_data(tile(maps, normalize=True).numpy())
            else:
                show_feature_maps(maps, ax=ax, title=f"CNN {layer}")
        image.value = render_png(fig, changed=panel.changed() + [im for ax in axes[1 + len(models) :] for im in ax.images])
        summary.value = " &nbsp;|&nbsp; ".join(
            f"<b>{html.escape(name)}</b>: {html.escape(data.classes[int(p.argmax())])} ({float(p.max()):.1%})"
            for name, p in probs.items())

    def down(x: float, y: float) -> None:
        pen["down"] = True
        box.strokes.append([(x, y)])
        canvas.fill_circle(x, y, width / 2)

    def move(x: float, y: float) -> None:
        if pen["down"]:
            (x0, y0) = box.strokes[-1][-1]
            box.strokes[-1].append((x, y))
            canvas.stroke_line(x0, y0, x, y)

    def up(x: float, y: float) -> None:
        if pen["down"]:
            pen["down"] = False
            try:
                update()
            except Exception as err:  # never leave a broken pad: say what happened
                summary.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"

    def clear(_button=None) -> None:
        box.strokes.clear()
        box.digit = None
        blank()
        summary.value = "<i>draw a digit in the box (press, drag, release)</i>"

    blank()
    canvas.on_mouse_down(down)
    canvas.on_mouse_move(move)
    canvas.on_mouse_up(up)
    canvas.on_mouse_out(up)
    clear_button.on_click(clear)
    box.children = [widgets.HBox([canvas, widgets.VBox([clear_button, summary])]), image]
    box.canvas, box.image, box.summary = canvas, image, summary
    box.update, box.clear = update, clear
    box.pen_down, box.pen_move, box.pen_up = down, move, up
    return box
