"""Interactive explorers. Each is a function returning an ipywidget, built on a plain function
that works (and is tested) without one and lives in the module of its concept: call the plain
function first, then the widget.

| widget | plain function |
|---|---|
| :func:`shift_explorer` | :func:`cnnlab.transforms.explore_transform` |
| :func:`kernel_playground` | :func:`cnnlab.conv.apply_kernel` |
| :func:`window_explorer` | :func:`cnnlab.conv.output_window` |
| :func:`shape_calculator` | :func:`cnnlab.conv.conv_layer_summary` |
| :func:`receptive_field_explorer` | :func:`cnnlab.receptive_field.receptive_field_view` |
| :func:`feature_map_explorer` | :func:`cnnlab.hooks.feature_map_view` |
| :func:`augment_explorer` | :func:`cnnlab.augment.augment_examples` |
| :func:`error_flagger` | :func:`cnnlab.viz.show_mistakes` (every error) |
| :func:`product_explorer` | :func:`cnnlab.transfer.top5` and :func:`cnnlab.train.predict` |

Every explorer is its controls and a ``draw(values)`` function on one small scaffold,
:class:`_Explorer`: it owns the message line, the picture and the busy flag, and explains a
nonsense value instead of drawing it.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import ipywidgets as widgets
from matplotlib.axes import Axes
from matplotlib.figure import Figure
import torch
from torch import Tensor, nn

from cnnlab.augment import augment_examples
from cnnlab.conv import (KERNEL_PRESETS, ConvWindow, apply_kernel, conv_layer_summary, conv_output_size, kernel_preset,
                         output_window, parse_kernel)
from cnnlab.data import ImageSet
from cnnlab.hooks import channel_maxima, feature_map_view, filter_of, spatial_layers, top_activating
from cnnlab.metrics import explore_transform, most_confident_mistakes
from cnnlab.models import as_named_models
from cnnlab.receptive_field import receptive_field_view, receptive_fields
from cnnlab.viz import (
    PredictionPanel,
    add_colorbar,
    grid_columns,
    render_png,
    show_convolution,
    show_feature_maps,
    show_filters,
    show_receptive_field,
    tile,
    tile_origin,
)

__all__ = [
    "shift_explorer",
    "kernel_playground",
    "window_explorer",
    "shape_calculator",
    "receptive_field_explorer",
    "feature_map_explorer",
    "augment_explorer",
    "error_flagger",
    "product_explorer",
]


def _error_html(err: Exception) -> str:
    return f"<span style='color:#b00'>{html.escape(str(err))}</span>"


class _Explorer:
    """The scaffold every explorer here is built on: its ``controls`` (name -> widget), a
    ``message`` line (HTML), a PNG ``image`` (none with ``picture=False``) and a ``busy`` flag.

    The explorer sets ``draw``, a function of the controls' values (name -> value) that shows them
    (computing first, then setting the picture) and returns the message (``None``: keep it).
    :meth:`update` calls it; an exception of ``errors`` from it (a nonsense value) is explained
    in the message instead, and the last good picture stays."""

    def __init__(self, controls: dict[str, widgets.Widget], *, picture: bool = True,
                 errors: tuple[type[Exception], ...] = (ValueError,)):
        self.controls, self.errors = controls, errors
        self.message = widgets.HTML()
        self.image = widgets.Image(format="png") if picture else None
        self.busy = False
        self.draw: Callable[[dict], str | None] = lambda values: None

    def update(self, _change=None) -> None:
        """Draw what the controls say now, or say what is wrong with it; nothing while busy."""
        if self.busy:
            return
        values = {name: c.value for name, c in self.controls.items()}
        try:
            text = self.draw(values)
        except self.errors as err:
            self.message.value = _error_html(err)
            return
        if text is not None:
            self.message.value = text

    def on(self, names: Iterable[str], *steps: Callable[[], object]) -> None:
        """Run ``steps`` in turn (default: :meth:`update`) when one of the controls ``names``
        changes, unless the explorer is busy setting controls itself."""
        steps = steps or (self.update,)

        def changed(_change=None) -> None:
            if not self.busy:
                for step in steps:
                    step()

        for name in names:
            self.controls[name].observe(changed, names="value")

    @contextmanager
    def quietly(self) -> Iterator[None]:
        """Set controls in this block (a slider's new range, a preset's cells) without each
        change redrawing: busy until it ends."""
        was, self.busy = self.busy, True
        try:
            yield
        finally:
            self.busy = was

    def box(self, rows: Sequence[widgets.Widget], **parts: object) -> widgets.VBox:
        """The explorer as a VBox of ``rows``, with each of ``parts`` as an attribute (for tests)."""
        box = widgets.VBox(list(rows))
        for name, part in parts.items():
            setattr(box, name, part)
        return box


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
    ex = _Explorer(controls, errors=(ValueError, TypeError))
    fig = Figure(figsize=(2.6 + 2.6 * len(named), 2.6))  # not pyplot: never shown twice inline
    axes = fig.subplots(1, len(named) + 1, width_ratios=[1] + [1.3] * len(named))
    panel = PredictionPanel(axes, data.classes, mean=data.mean, std=data.std)  # artists updated in place

    def draw(v: dict) -> str:
        img, probs = explore_transform(named, data, **v)
        panel.update(img, probs)
        ex.image.value = render_png(fig, changed=panel.changed())
        return _summary(probs, data.classes, data.classes[int(data.y[v["index"]])])

    ex.draw = draw
    ex.on(controls)
    ex.update()
    row = list(controls.values())
    return ex.box([widgets.HBox(row[:3]), widgets.HBox(row[3:]), ex.message, ex.image],
                  controls=controls, image=ex.image, summary=ex.message)


def kernel_playground(data: ImageSet, index: int = 0, size: int = 3, preset: str = "Sobel x (vertical edges)") -> widgets.VBox:
    """Edit a 3x3 or 5x5 kernel (or pick a preset), choose a digit, stride and padding, and see the
    feature map update. Typed-in nonsense gives a message and keeps the last picture.

    The box exposes ``.cells`` (the kernel's text cells, row by row), ``.controls``, ``.image``
    and ``.status`` for tests.
    """
    controls = {
        "size": widgets.ToggleButtons(options=[3, 5], value=size, description="kernel"),
        "preset": widgets.Dropdown(options=list(KERNEL_PRESETS), value=preset, description="preset"),
        "index": widgets.BoundedIntText(value=index, min=0, max=len(data) - 1, description="digit #"),
        "stride": widgets.IntSlider(value=1, min=1, max=3, description="stride"),
        "padding": widgets.IntSlider(value=0, min=0, max=2, description="padding"),
    }
    ex = _Explorer(controls)
    grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(5, 64px)", grid_gap="2px"))
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 3, width_ratios=[1, 0.8, 1])
    cells: list[list[widgets.Text]] = []  # row by row; replaced in place for another size

    def draw(v: dict) -> str:
        kernel = parse_kernel([[c.value for c in row] for row in cells])
        raw = data.denormalize(data.x[v["index"]].cpu())
        fmap = apply_kernel(raw, kernel, v["stride"], v["padding"])
        for ax in axes:
            ax.clear()
        show_convolution(raw, kernel, fmap, axes=axes)
        ex.image.value = render_png(fig)
        k, h = kernel.shape[0], raw.shape[-1]
        return (f"output size: floor(({h} + 2·{v['padding']} − {k}) / {v['stride']}) + 1 = <b>{fmap.shape[-1]}</b>; "
                f"response range {float(fmap.min()):.2f} … {float(fmap.max()):.2f}")

    def fill_cells() -> None:
        k = kernel_preset(controls["preset"].value, controls["size"].value)
        if len(cells) != k.shape[0]:
            cells[:] = [[widgets.Text(layout=widgets.Layout(width="62px"), continuous_update=False)
                         for _ in range(k.shape[1])] for _ in range(k.shape[0])]
            for cell in (c for row in cells for c in row):
                cell.observe(ex.update, names="value")
            grid.layout.grid_template_columns = f"repeat({k.shape[1]}, 64px)"
            grid.children = [c for row in cells for c in row]
        with ex.quietly():
            for row, values in zip(cells, k.tolist()):
                for cell, value in zip(row, values):
                    cell.value = f"{value:.4g}"
        ex.update()

    ex.draw = draw
    ex.on(["size", "preset"], fill_cells)
    ex.on(["index", "stride", "padding"])
    fill_cells()
    return ex.box([
        widgets.HBox([controls["size"], controls["preset"]]),
        widgets.HBox([widgets.VBox([widgets.HTML("<b>kernel</b> (type a number, press Enter)"), grid]),
                      widgets.VBox([controls["index"], controls["stride"], controls["padding"]])]),
        ex.message,
        ex.image,
    ], cells=cells, controls=controls, image=ex.image, status=ex.message)


def _grid_html(values: Tensor, caption: str, tint: bool = False) -> str:
    """A k x k grid of numbers as a small HTML table; ``tint``: red for positive, blue for negative."""
    peak = max(float(values.abs().max()), 1e-8)
    cells = []
    for row in values.tolist():
        tds = []
        for v in row:
            v = round(v, 2) + 0.0  # no "-0.00"
            a = min(abs(v) / peak, 1.0) * 0.6
            bg = f"background:rgba({'214,39,40' if v > 0 else '31,119,180'},{a:.2f});" if tint and v else ""
            tds.append(f"<td style='{bg}border:1px solid #ccc;padding:1px 4px;text-align:right'>{v:.2f}</td>")
        cells.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<div style='display:inline-block;vertical-align:middle;text-align:center;font-size:12px'>{caption}"
            f"<table style='border-collapse:collapse;font-family:monospace'>{''.join(cells)}</table></div>")


def _arithmetic_html(w: ConvWindow) -> str:
    """Window values × kernel = products, their sum, and F.conv2d's value at the same pixel."""
    op = "<span style='font-size:20px;padding:0 8px;vertical-align:middle'>{}</span>"
    n = w.products.numel()
    return (_grid_html(w.values, "input window") + op.format("×") + _grid_html(w.kernel, "kernel")
            + op.format("=") + _grid_html(w.products, "products", tint=True)
            + f"<div style='display:inline-block;vertical-align:middle;padding-left:12px'>sum of the {n} products "
              f"= <b>{w.total:.4f}</b><br>F.conv2d at ({w.row}, {w.col}): <b>{float(w.fmap[w.row, w.col]):.4f}</b></div>")


class _WindowPanel:
    """:func:`window_explorer`'s picture on two axes: the digit (padded) with the window an output
    pixel reads outlined, and the output with that pixel marked, lines joining them. Drawn in full
    for another digit, padding, kernel size or output; a new pixel only moves the outlines, the
    lines and the titles, which :func:`render_png` then blits (:meth:`changed`). ``.window``: the
    :class:`cnnlab.conv.ConvWindow` shown last."""

    def __init__(self, axes: Sequence[Axes]):
        self.axes = list(axes)
        self.window: ConvWindow | None = None
        self._drawn: tuple | None = None  # (digit, output, padding, kernel size) drawn in full
        self._moving: list = []

    def update(self, w: ConvWindow, digit: Tensor, padding: int) -> None:
        """Show output pixel ``(w.row, w.col)`` of ``digit`` (H, W), ink 0-1, padded by ``padding``."""
        top, left, size = w.rows.start, w.cols.start, w.kernel.shape[-1]
        old = self._drawn
        same = old is not None and old[2:] == (padding, size) and torch.equal(old[0], digit) and torch.equal(old[1], w.fmap)
        if not same:
            self._draw(w, digit, padding)
            self._drawn = (digit, w.fmap, padding, size)
        window, pixel, *links = self._moving[:4]
        window.set_xy((left - 0.5, top - 0.5))
        pixel.set_xy((w.col - 0.5, w.row - 0.5))
        links[0].xy1, links[0].xy2 = (left + size - 0.5, top - 0.5), (w.col - 0.5, w.row - 0.5)
        links[1].xy1, links[1].xy2 = (left + size - 0.5, top + size - 0.5), (w.col - 0.5, w.row + 0.5)
        # a fixed title height (y=1.01): matplotlib then skips measuring the tick labels to place it
        self.axes[0].set_title(f"window: rows {top}–{top + size - 1}, cols {left}–{left + size - 1}", fontsize=9,
                               y=1.01)
        self.axes[1].set_title(f"output {w.fmap.shape[0]}x{w.fmap.shape[1]}: ({w.row}, {w.col}) = {w.total:.3f}",
                               fontsize=9, y=1.01)
        self.window = w

    def changed(self) -> list:
        """The artists a new pixel moves: the outlines, the lines, the titles (for :func:`render_png`)."""
        return self._moving

    def _draw(self, w: ConvWindow, digit: Tensor, p: int) -> None:
        from matplotlib.patches import ConnectionPatch, Rectangle

        axes = self.axes
        h, wd = digit.shape
        for ax in axes:
            ax.clear()
        im = axes[0].imshow(torch.nn.functional.pad(digit, (p, p, p, p)).numpy(), cmap="gray_r", vmin=0, vmax=1,
                            extent=(-p - 0.5, wd + p - 0.5, h + p - 0.5, -p - 0.5))
        axes[0].add_patch(Rectangle((-0.5, -0.5), wd, h, fill=False, ec="0.5", lw=0.8, ls="--"))
        axes[0].set(xlabel=f"input column (dashed: the {h}x{wd} image)", ylabel="input row")
        lim = max(float(w.fmap.abs().max()), 1e-6)
        om = axes[1].imshow(w.fmap.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[1].set(xlabel="output column", ylabel="output row")
        for ax, mappable, label in ((axes[0], im, "pixel value (0 white, 1 black)"), (axes[1], om, "response")):
            add_colorbar(ax, mappable, label)
        size = w.kernel.shape[-1]
        window = Rectangle((0, 0), size, size, fill=False, ec="tab:orange", lw=2)
        pixel = Rectangle((0, 0), 1, 1, fill=False, ec="tab:orange", lw=2)
        axes[0].add_patch(window)
        axes[1].add_patch(pixel)
        links = []
        for _ in range(2):  # lines from the window's right corners to the pixel's left ones: which inputs make it
            link = ConnectionPatch((0, 0), (0, 0), "data", "data", axesA=axes[0], axesB=axes[1], color="tab:orange",
                                   lw=0.8, alpha=0.7)
            axes[1].add_artist(link)
            link.set_clip_on(False)
            link.set_in_layout(False)  # it spans both axes: tight_layout must not make room for it
            links.append(link)
        # new artists: render_png draws a new background
        self._moving = [window, pixel, *links, axes[0].title, axes[1].title]


def window_explorer(data: ImageSet, index: int = 0, kernel: str = "Sobel x (vertical edges)") -> widgets.VBox:
    """Pick an output pixel: the input window it reads is outlined on the digit, the pixel marked
    on the output, and the arithmetic (window × kernel, summed) printed beside F.conv2d's value.
    Kernel (a preset, or typed-in weights), stride and padding can change too. It starts at the
    strongest response.

    The box exposes ``.controls``, ``.image``, ``.summary`` and ``.arithmetic`` for tests.
    """
    controls = {
        "kernel": widgets.Dropdown(options=list(KERNEL_PRESETS), value=kernel, description="kernel"),
        "size": widgets.ToggleButtons(options=[3, 5], value=3, description="size"),
        "weights": widgets.Text(description="weights", continuous_update=False, layout=widgets.Layout(width="420px"),
                                tooltip="rows separated by ';', e.g. -1 0 1; -2 0 2; -1 0 1"),
        "index": widgets.BoundedIntText(value=index, min=0, max=len(data) - 1, description="digit #"),
        "stride": widgets.IntSlider(value=1, min=1, max=3, description="stride"),
        "padding": widgets.IntSlider(value=0, min=0, max=2, description="padding"),
        "row": widgets.IntSlider(value=0, min=0, max=0, description="output row"),
        "col": widgets.IntSlider(value=0, min=0, max=0, description="output col"),
    }
    ex = _Explorer(controls)
    arithmetic = widgets.HTML()
    fig = Figure(figsize=(7.2, 3.6))
    panel = _WindowPanel(fig.subplots(1, 2))

    def draw(v: dict) -> str:
        rows = [row.replace(",", " ").split() for row in v["weights"].split(";") if row.strip()]
        weights = parse_kernel(rows or [[""]])
        digit = data.denormalize(data.x[v["index"]].cpu())[0]  # (H, W), ink 0-1
        stride, padding = v["stride"], v["padding"]
        h_out = conv_output_size(digit.shape[0], weights.shape[0], stride, padding)
        w_out = conv_output_size(digit.shape[1], weights.shape[0], stride, padding)
        with ex.quietly():  # new ranges for the pixel sliders: keep the pixel, or the nearest one
            controls["row"].max, controls["col"].max = h_out - 1, w_out - 1
        w = output_window(digit, weights, controls["row"].value, controls["col"].value, stride=stride, padding=padding)
        panel.update(w, digit, padding)
        ex.image.value = render_png(fig, changed=panel.changed())
        arithmetic.value = _arithmetic_html(w)
        k = w.kernel.shape[-1]
        return (f"Output pixel <b>({w.row}, {w.col})</b> reads input rows {w.rows.start}–{w.rows.stop - 1}, "
                f"columns {w.cols.start}–{w.cols.stop - 1} (below 0 or past {digit.shape[0] - 1}: padding, "
                f"read as 0): {k}×{k} numbers times the kernel, summed. Output {h_out}×{w_out}.")

    def fill_weights() -> None:
        k = kernel_preset(controls["kernel"].value, controls["size"].value)
        text = "; ".join(" ".join(f"{v:.4g}" for v in row) for row in k.tolist())
        if text == controls["weights"].value:
            ex.update()
        else:
            controls["weights"].value = text  # its observer redraws

    ex.draw = draw
    ex.on(["kernel", "size"], fill_weights)
    ex.on(["weights", "index", "stride", "padding", "row", "col"])  # a new pixel alone: the panel only moves the window
    fill_weights()
    fmap = panel.window.fmap  # start at the strongest response: a window with ink in it
    controls["row"].value, controls["col"].value = divmod(int(fmap.abs().argmax()), fmap.shape[1])
    return ex.box([
        widgets.HBox([controls["kernel"], controls["size"], controls["index"]]),
        widgets.HBox([controls["weights"], controls["stride"], controls["padding"]]),
        widgets.HBox([controls["row"], controls["col"]]),
        ex.message, ex.image, arithmetic,
    ], controls=controls, image=ex.image, summary=ex.message, arithmetic=arithmetic)


def shape_calculator() -> widgets.VBox:
    """Set a convolution's input shape and hyper-parameters; read its output shape and parameter count."""
    names = [("c_in", 1), ("h", 28), ("w", 28), ("c_out", 32), ("kernel", 3), ("stride", 1), ("padding", 0), ("dilation", 1)]
    controls = {n: widgets.BoundedIntText(value=v, min=0, max=4096, description=n, layout=widgets.Layout(width="160px"))
                for n, v in names}
    ex = _Explorer(controls, picture=False)

    def draw(v: dict) -> str:
        s = conv_layer_summary(**v)
        return (
            f"({v['c_in']}, {v['h']}, {v['w']}) → Conv2d({v['c_in']}, {v['c_out']}, {v['kernel']}, stride={v['stride']}, "
            f"padding={v['padding']}, dilation={v['dilation']}) → <b>{s['output']}</b><br>"
            f"parameters: {v['c_out']}·{v['c_in']}·{v['kernel']}·{v['kernel']} weights + {v['c_out']} biases = "
            f"<b>{s['parameters']:,}</b> (whatever the image size); multiply-adds: {s['multiply_adds']:,}"
        )

    ex.draw = draw
    ex.on(controls)
    ex.update()
    row = list(controls.values())
    return ex.box([widgets.HBox(row[:4]), widgets.HBox(row[4:]), ex.message], controls=controls, result=ex.message)


def receptive_field_explorer(models: Mapping[str, nn.Module], data: ImageSet, *, images: int = 64) -> widgets.VBox:
    """Pick a model, a layer and a unit: its theoretical receptive field is drawn on a digit, its
    effective one (averaged over ``images`` test digits) as a heat map beside it."""
    named = as_named_models(models)
    x = data.x[:images].cpu()
    def rows_of(model: nn.Module) -> dict:
        try:
            return {r.name: r for r in receptive_fields(model, tuple(x.shape[1:]))}
        except (TypeError, ValueError):  # a layer the arithmetic does not know: no layers to offer
            return {}

    controls = {
        "model": widgets.Dropdown(options=list(named), description="model"),
        "layer": widgets.Dropdown(options=[], description="layer"),
    }
    controls |= {
        "row": widgets.IntSlider(value=0, min=0, max=0, description="unit row"),
        "col": widgets.IntSlider(value=0, min=0, max=0, description="unit col"),
        "index": widgets.BoundedIntText(value=0, min=0, max=len(data) - 1, description="digit #"),
    }
    ex = _Explorer(controls)
    fig = Figure(figsize=(7, 3.5))
    axes = fig.subplots(1, 2)

    def draw(v: dict) -> str | None:
        if v["layer"] is None:
            return None  # set_layers said why there is nothing to show
        unit = (v["row"], v["col"])
        row, region, erf = receptive_field_view(named[v["model"]], v["layer"], unit, x)
        for ax in axes:
            ax.clear()
        digit = data.denormalize(data.x[v["index"]].cpu())
        show_receptive_field(digit, region, erf, axes=axes, title=f"{row.name}, unit {unit}")
        ex.image.value = render_png(fig)
        return (f"<b>{row.name}</b>: output {row.out_shape}; receptive field <b>{row.size[0]}×{row.size[1]}</b>, "
                f"jump {row.jump[0]}; unit {unit} sees rows {region[0].start}–{region[0].stop - 1}, "
                f"columns {region[1].start}–{region[1].stop - 1}")

    def set_layers() -> None:
        layers = list(rows_of(named[controls["model"].value]))
        with ex.quietly():
            kept = controls["layer"].value in layers
            controls["layer"].options = layers
            if layers and not kept:
                controls["layer"].value = layers[-1]
        if not layers:  # say so and wait for another model, instead of failing inside an observer
            ex.message.value = _error_html(ValueError(
                f"{controls['model'].value} has no chain of convolution and pooling layers to follow "
                "(a dense model sees the whole image from its first layer): pick a CNN"))
            return
        set_units()

    def set_units() -> None:
        rows = rows_of(named[controls["model"].value])
        if controls["layer"].value not in rows:
            return
        _, h, w = rows[controls["layer"].value].out_shape
        with ex.quietly():
            for name, n in (("row", h), ("col", w)):
                controls[name].max = n - 1
                controls[name].value = (n - 1) // 2
        ex.update()

    ex.draw = draw
    ex.on(["model"], set_layers)
    ex.on(["layer"], set_units)
    ex.on(["row", "col", "index"])
    set_layers()
    return ex.box([widgets.HBox([controls["model"], controls["layer"], controls["index"]]),
                   widgets.HBox([controls["row"], controls["col"]]), ex.message, ex.image],
                  controls=controls, image=ex.image, summary=ex.message)


class _FeatureMapPanel:
    """:func:`feature_map_explorer`'s picture on three axes: all of a layer's maps with one
    outlined, that map large, and the filter of ``model`` that made it. Drawn in full for other
    maps (another layer or image); a new channel only moves the outline and swaps the big map and
    the filter in place, which :func:`render_png` then blits (:meth:`changed`)."""

    def __init__(self, axes: Sequence[Axes], model: nn.Module):
        self.axes, self.model = list(axes), model
        self._drawn: tuple | None = None  # (layer, maps) drawn in full
        self._changed: list = []

    def update(self, view: dict, layer: str, channel: int) -> None:
        """Show ``view`` (:func:`cnnlab.hooks.feature_map_view`) of ``layer``, ``channel`` chosen."""
        if self._drawn is None or self._drawn[0] != layer or not torch.equal(self._drawn[1], view["maps"]):
            self._draw(view, layer, channel)
        rect, big, big_title, *filter_artists = self._changed
        c, h, w = view["maps"].shape
        x, y = tile_origin(channel, grid_columns(c), h, w)
        rect.set_xy((x - 1, y - 1))
        m = view["map"]
        lim = max(float(m.abs().max()), 1e-8)
        big.set_data(m.numpy())
        big.set_clim(-lim, lim)
        big_title.set_text(f"channel {channel}, {h}x{w}: red +{lim:.2f}, blue −{lim:.2f}")
        if filter_artists:
            f = view["filter"]
            filter_artists[0].set_data(tile(f.detach().float().cpu(), min(8, len(f))).numpy())
            filter_artists[1].set_text(f"its filter in {view['conv']}: {tuple(f.shape)}" if len(f) > 1
                                       else f"its filter in {view['conv']}")

    def changed(self) -> list:
        """The artists a new channel changes: the outline, the big map, the filter, their titles."""
        return self._changed

    def _draw(self, view: dict, layer: str, channel: int) -> None:
        axes = self.axes
        for ax in axes:
            ax.clear()
        show_feature_maps(view["maps"], ax=axes[0], highlight=channel, title=f"{layer}: all {len(view['maps'])} channels")
        big = axes[1].imshow(view["map"].numpy(), cmap="RdBu_r")
        axes[1].set(xticks=[], yticks=[])
        axes[1].set_title(" ", fontsize=9)  # its text: update
        changed = [axes[0].patches[-1], big, axes[1].title]
        if view["filter"] is not None:
            # one scale for all the layer's filters
            limit = max(float(filter_of(self.model, layer)[1].detach().abs().max()), 1e-8)
            show_filters(view["filter"][:, None], ax=axes[2], ncols=min(8, len(view["filter"])), limit=limit)
            changed += [axes[2].images[0], axes[2].title]
        else:
            axes[2].axis("off")
        self._drawn, self._changed = (layer, view["maps"]), changed


def feature_map_explorer(model: nn.Module, data: ImageSet, index: int = 0, *, pool: int = 2000, drawing=None) -> widgets.VBox:
    """Pick a digit, a layer and a channel: see all the layer's maps, the chosen one large beside
    the filter that made it, and the ``pool`` test images' top 9 for that channel. With ``drawing``
    (a :func:`cnnlab.drawing.drawing_pad`), its last digit can be explored too.

    The box exposes ``.controls``, ``.image``, ``.top_image`` and ``.summary`` for tests.
    """
    x_pool = data.x[:pool].cpu()
    layers = spatial_layers(model, tuple(data.x.shape[1:]))
    controls = {
        "index": widgets.BoundedIntText(value=index, min=0, max=len(data) - 1, description="digit #"),
        "layer": widgets.Dropdown(options=list(layers), value=list(layers)[0], description="layer"),
        "channel": widgets.IntSlider(value=0, min=0, max=layers[list(layers)[0]][0] - 1, description="channel"),
    }
    if drawing is not None:
        controls["source"] = widgets.ToggleButtons(options=["test digit", "your drawing"], description="image")
    ex = _Explorer(controls)
    fig = Figure(figsize=(10, 3.4))
    panel = _FeatureMapPanel(fig.subplots(1, 3, width_ratios=[1.3, 1, 1]), model)
    top_image, top_fig = widgets.Image(format="png"), Figure(figsize=(3.4, 3.6))
    top_ax = top_fig.subplots()
    maxima: dict[str, Tensor] = {}

    def draw(v: dict) -> str:
        if drawing is not None and v["source"] == "your drawing":
            if drawing.digit is None:
                raise ValueError("nothing drawn yet: draw a digit on the pad first")
            image = drawing.digit
        else:
            image = data.x[v["index"]].cpu()
        view = feature_map_view(model, image, v["layer"], v["channel"])
        panel.update(view, v["layer"], v["channel"])
        ex.image.value = render_png(fig, changed=panel.changed())
        m = view["map"]
        return (f"<b>{html.escape(v['layer'])}</b>, channel {v['channel']}: a map of {m.shape[0]}×{m.shape[1]}. "
                "Red: the filter responds; blue: the opposite pattern (negative before the ReLU).")

    def draw_top() -> None:
        layer, channel = controls["layer"].value, controls["channel"].value
        if layer not in maxima:
            maxima[layer] = channel_maxima(model, x_pool, layer)
        idx, values = top_activating(maxima[layer], channel, 9)
        digits = tile(data.denormalize(x_pool[idx])[:, 0], 3).numpy()
        if not top_ax.images:  # drawn once; later channels swap the digits and the title in place
            top_ax.imshow(digits, cmap="gray_r", vmin=0, vmax=1)
            top_ax.set(xticks=[], yticks=[])
        top_ax.images[0].set_data(digits)
        top_ax.set_title(f"top 9 of {len(x_pool):,} test digits for channel {channel}\n"
                         f"peak responses {float(values[0]):.2f} … {float(values[-1]):.2f}", fontsize=9)
        top_image.value = render_png(top_fig, changed=[top_ax.images[0], top_ax.title])

    def set_channels() -> None:
        with ex.quietly():
            controls["channel"].max = layers[controls["layer"].value][0] - 1
        ex.update()
        draw_top()

    ex.draw = draw
    ex.on(["layer"], set_channels)
    ex.on(["channel"], ex.update, draw_top)
    ex.on([name for name in ("index", "source") if name in controls])
    set_channels()
    return ex.box([widgets.HBox(list(controls.values())), ex.message, widgets.HBox([ex.image, top_image])],
                  controls=controls, image=ex.image, top_image=top_image, summary=ex.message)


def augment_explorer(data: ImageSet, index: Sequence[int] = (0, 1, 2, 3), *, copies: int = 7,
                     shift: float = 2.0, rotate: float = 10.0, scale: tuple[float, float] = (0.9, 1.1)) -> widgets.VBox:
    """Training digits and random versions of them, as augmentation feeds them to the network:
    move the sliders to set how far they may move, turn and grow; **draw again** for new draws.

    The box exposes ``.controls``, ``.again`` (the button), ``.image`` and ``.summary`` for tests.
    """
    x = data.x[list(index)].cpu()
    controls = {
        "shift": widgets.FloatSlider(value=shift, min=0, max=8, step=0.5, description="shift ≤ (px)"),
        "rotate": widgets.FloatSlider(value=rotate, min=0, max=90, step=5, description="rotate ≤ (°)"),
        "scale": widgets.FloatRangeSlider(value=tuple(scale), min=0.5, max=1.5, step=0.05, description="scale"),
    }
    again = widgets.Button(description="draw again", icon="refresh")
    ex = _Explorer(controls)  # a zero-width scale range at 0, say: a message, the last picture kept
    seed = [0]

    def draw(v: dict) -> str:
        gallery, params = augment_examples(x, copies=copies, fill=data.background, seed=seed[0], **v)
        # PIL, not matplotlib: well within 100 ms
        ex.image.value = _gallery_png(data.denormalize(gallery.float().cpu()))
        lo, hi = v["scale"]
        return (f"Each row: a training digit (orange frame) and {copies} random versions of it. Each moves up to "
                f"{v['shift']:g} px right/left and down/up, turns up to {v['rotate']:g}° either way and "
                f"is scaled by {lo:.2f}–{hi:.2f}; this draw turned them by {float(params['angle'].min()):+.0f}° to "
                f"{float(params['angle'].max()):+.0f}°. Where does a 6 stop being a 6?")

    def draw_again(_button=None) -> None:
        seed[0] += 1
        ex.update()

    ex.draw = draw
    ex.on(controls)
    again.on_click(draw_again)
    ex.update()
    return ex.box([widgets.HBox([*controls.values(), again]), ex.message, ex.image],
                  controls=controls, again=again, image=ex.image, summary=ex.message)


def _gallery_png(gallery: Tensor, zoom: int = 2, gap: int = 4) -> bytes:
    """Rows of grey images (B, 1 + copies, 1, H, W), values 0-1, ink dark, as one PNG: the first
    column (the originals) framed in orange."""
    from PIL import Image, ImageDraw

    rows, cols, _, h, w = gallery.shape
    cell_h, cell_w = h * zoom + gap, w * zoom + gap
    canvas = Image.new("RGB", (cols * cell_w + gap, rows * cell_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        for c in range(cols):
            left, top = gap + c * cell_w, gap + r * cell_h
            canvas.paste(_ink_image(gallery[r, c], zoom).convert("RGB"), (left, top))
            if c == 0:
                draw.rectangle([left - 2, top - 2, left + w * zoom + 1, top + h * zoom + 1], outline=(255, 127, 14), width=2)
    buf = io.BytesIO()
    canvas.save(buf, "png")
    return buf.getvalue()


def _ink_image(image: Tensor, zoom: int, *, light: bool = False):
    """One grey image (1, H, W), values 0-1, as a PIL image, each pixel ``zoom`` x ``zoom``: high
    values dark (ink on paper), or with ``light`` as stored (0 black, 1 white)."""
    from PIL import Image

    pixels = ((image.clamp(0, 1) if light else 1 - image.clamp(0, 1)) * 255).round().to(dtype=torch.uint8).squeeze(0).cpu().numpy()
    return Image.fromarray(pixels).resize((pixels.shape[1] * zoom, pixels.shape[0] * zoom), Image.NEAREST)


def _digit_png(image: Tensor, zoom: int = 3, *, light: bool = False) -> bytes:
    """One grey image (values 0-1, ink dark; ``light``: as stored) as a small PNG, without
    matplotlib (fast for a gallery)."""
    buf = io.BytesIO()
    _ink_image(image, zoom, light=light).save(buf, "png")
    return buf.getvalue()


def error_flagger(data: ImageSet, probs: Tensor, *, ncols: int = 8) -> widgets.VBox:
    """Every error of a model, most confident first, each with its true label, the prediction and
    its probability. Flag the ones a person could misread too: the summary counts what is left.

    The box exposes ``.index`` (the errors' test indices), ``.toggles`` (one per error),
    ``.flagged()`` (the flagged test indices) and ``.summary`` for tests.
    """
    probs = probs.detach().float().cpu()
    if probs.shape != (len(data), len(data.classes)):
        raise ValueError(f"probs must be ({len(data)}, {len(data.classes)}): one row of class probabilities per "
                         f"image of data, got {tuple(probs.shape)}")
    index = most_confident_mistakes(probs, data.y, len(data)).tolist()
    short = [c.split(" - ")[0] for c in data.classes]
    images = data.denormalize(data.x[index].float().cpu()) if index else None
    cells, toggles = [], []
    for k, i in enumerate(index):
        pred = int(probs[i].argmax())
        toggle = widgets.ToggleButton(value=False, description="arguable", tooltip="a person could read it as the model did",
                                      layout=widgets.Layout(width="96px"))
        toggles.append(toggle)
        caption = widgets.HTML(f"<small>#{i}: <b>{html.escape(short[int(data.y[i])])}</b> → "
                               f"{html.escape(short[pred])} {float(probs[i, pred]):.0%}</small>")
        cells.append(widgets.VBox([widgets.Image(value=_digit_png(images[k]), format="png", width=84), caption, toggle],
                                  layout=widgets.Layout(align_items="center", width="110px")))
    ex = _Explorer(dict(zip(map(str, index), toggles)), picture=False)  # a toggle per error, named by its test index
    n, errors = len(data), len(index)

    def flagged() -> list[int]:
        return [i for i, t in zip(index, toggles) if t.value]

    def draw(v: dict) -> str:
        k = sum(v.values())  # the flagged ones
        return (f"<b>{errors}</b> errors on {n:,} test images ({errors / n:.2%}). Flagged as arguable: <b>{k}</b>. "
                f"Leaving the flagged images out of the test set: {errors - k} errors on {n - k:,} images, "
                f"accuracy {1 - (errors - k) / (n - k):.2%}. (Only errors can be flagged here; arguable digits "
                "the model got right stay in, so this recount flatters the model a little.)"
                if errors else f"no errors on these {n:,} test images")

    ex.draw = draw
    ex.on(ex.controls)
    ex.update()
    grid = widgets.GridBox(cells, layout=widgets.Layout(grid_template_columns=f"repeat({ncols}, 112px)"))
    return ex.box([ex.message, grid], index=index, toggles=toggles, flagged=flagged, summary=ex.message)


def _bars_html(rows: Sequence[tuple[str, float]], colour: str, mark: str | None = None) -> str:
    """Labelled horizontal bars (probability 0-1) as an HTML table; the row named ``mark`` bold."""
    out = []
    for name, p in rows:
        label = html.escape(name)
        label = f"<b>{label} ✓</b>" if name == mark else label
        out.append(f"<tr><td style='padding-right:8px;white-space:nowrap'>{label}</td><td style='width:180px'>"
                   f"<div style='background:{colour};height:12px;width:{min(max(p, 0.0), 1.0) * 100:.1f}%'></div></td>"
                   f"<td style='padding-left:6px'>{p:.0%}</td></tr>")
    return "<table style='font-size:13px;border-collapse:collapse'>" + "".join(out) + "</table>"


def product_explorer(data: ImageSet, guesses: Sequence[Sequence[tuple[str, float]]], probs: Tensor, *,
                     model_name: str = "the fine-tuned model") -> widgets.VBox:
    """Pick a photo: the pretrained backbone's five likeliest ImageNet classes beside
    ``model_name``'s answer. ``guesses`` (from :func:`cnnlab.transfer.top5`) and ``probs``
    (N, classes) are computed beforehand for ``data``'s grey images, so moving the slider only draws.

    The box exposes ``.slider``, ``.image``, ``.imagenet`` and ``.finetuned`` for tests.
    """
    if not len(data) == len(guesses) == len(probs):
        raise ValueError(f"need one ImageNet guess list and one row of probabilities per image: got {len(data)} "
                         f"images, {len(guesses)} guess lists, {len(probs)} rows")
    if len(data) == 0:
        raise ValueError("no images to show: pass a non-empty subset of the test set")
    if probs.dim() != 2 or probs.shape[1] != len(data.classes) or data.x.shape[1] != 1:
        raise ValueError(f"need grey images (N, 1, H, W) and probabilities (N, {len(data.classes)}) for their "
                         f"{len(data.classes)} classes; got images {tuple(data.x.shape)} and {tuple(probs.shape)}")
    probs = probs.detach().float().cpu()
    images = data.denormalize(data.x.detach().cpu())
    slider = widgets.IntSlider(value=0, min=0, max=len(data) - 1, description="photo")
    ex = _Explorer({"photo": slider})  # its message line: the fine-tuned model's answer
    imagenet = widgets.HTML()

    def draw(v: dict) -> str:
        i = v["photo"]
        truth = data.classes[int(data.y[i])]
        # as stored and as the network receives it: light on black
        ex.image.value = _digit_png(images[i], zoom=5, light=True)
        imagenet.value = ("<b>ImageNet backbone, top 5</b> (its own 1,000 classes)"
                          + _bars_html(guesses[i], "#1f77b4"))
        p, c = probs[i].topk(min(3, probs.shape[1]))
        return (f"<b>{html.escape(model_name[:1].upper() + model_name[1:])}, top {len(c)}</b> "
                f"(true: {html.escape(truth)})"
                + _bars_html([(data.classes[int(k)], float(q)) for q, k in zip(p, c)], "#ff7f0e", truth))

    ex.draw = draw
    ex.on(ex.controls)
    ex.update()
    return ex.box([slider, widgets.HBox([ex.image, widgets.VBox([imagenet, ex.message])])],
                  slider=slider, image=ex.image, imagenet=imagenet, finetuned=ex.message)
