"""Callbacks for ``fit`` that you watch: a live dashboard and a stop button. Model code never
knows about them; ``fit`` runs the same with or without them.

    dashboard = LiveDashboard(test_set)
    history = fit(model, train_set, test_set, callbacks=[dashboard])

In Jupyter the dashboard is one picture updated in place through a display handle (so the last
frame stays in the saved notebook) and a stop button; anywhere else it draws the same frames
without showing them, so tests can drive it.
"""

from __future__ import annotations

import copy
import html
import io
import math
import re
import time

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.device import eval_mode, model_device
from cnnlab.hooks import capture, leaf_layers
from cnnlab.train import Callback, History, LoopState, StopTraining
from cnnlab.viz import PredictionPanel, show_feature_maps, show_filters, tile

__all__ = ["Every", "StopButton", "LiveDashboard", "BatchLosses", "in_notebook"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where display handles and widgets reach a browser."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Every:
    """A throttle: ``ready()`` is True at most once per ``seconds`` of wall time (and at least
    ``steps`` calls apart), so work inside a training loop stays a small share of it."""

    def __init__(self, seconds: float = 0.0, steps: int = 1):
        if seconds < 0 or steps < 1:
            raise ValueError(f"need seconds >= 0 and steps >= 1, got seconds={seconds}, steps={steps}")
        self.seconds, self.steps = seconds, steps
        self.reset()

    def reset(self) -> None:
        self._last_time, self._calls = time.perf_counter(), 0

    def ready(self) -> bool:
        self._calls += 1
        now = time.perf_counter()
        if self._calls >= self.steps and now - self._last_time >= self.seconds:
            self._last_time, self._calls = now, 0
            return True
        return False


class BatchLosses(Callback):
    """The training loss of every ``every``-th batch, kept in ``.steps`` and ``.losses``: a
    learning curve finer than the per-epoch history (each record waits for the device)."""

    def __init__(self, every: int = 1):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.every = every
        self.steps: list[int] = []
        self.losses: list[float] = []

    def after_batch(self, state: LoopState) -> None:
        if state.step % self.every == 0:
            self.steps.append(state.step)
            self.losses.append(float(state.loss.detach()))


class StopButton(Callback):
    """A **stop training** button shown above the run: a click ends training after the current
    batch, and ``fit`` returns the model and the history so far.

    A kernel busy training reads no widget messages, so the button does what the notebook's ■
    does: it asks Jupyter (``POST api/kernels/<id>/interrupt``) to interrupt the kernel, and
    ``fit`` turns that interrupt into a clean stop. ``request_stop()`` stops from code.
    """

    order = -10  # before other callbacks, so a stop is seen at once

    def __init__(self):
        self.requested = False
        self.message = ""
        self._handle = None

    def request_stop(self) -> None:
        self.requested = True

    def before_fit(self, state: LoopState) -> None:
        self.requested, self.message = False, ""
        if in_notebook():
            from IPython.display import HTML, display

            frontend = _frontend()
            kernel = _kernel_id() if frontend == "jupyter" else None  # VS Code and Colab serve no kernel REST API
            self._handle = display(HTML(_stop_button_html(kernel, frontend)), display_id=True)

    def after_batch(self, state: LoopState) -> None:
        if self.requested:
            raise StopTraining

    def after_fit(self, state: LoopState) -> None:
        h = state.history
        if h.stopped == "callback" and self.requested:
            self.message = f"stopped after {state.step:,} steps ({len(h.epochs)} full epochs); the model and its history are kept"
        elif h.stopped == "interrupt":
            self.message = (f"stopped by the button (or an interrupt) after {state.step:,} steps ({len(h.epochs)} full "
                            "epochs); the model and its history are kept")
        elif h.stopped:
            self.message = f"stopped ({h.stopped}) after {state.step:,} steps"
        else:
            self.message = f"finished: {len(h.epochs)} epochs, {state.step:,} steps"
        if self._handle is not None:  # replace the button by text, so the saved notebook shows what happened
            from IPython.display import HTML

            self._handle.update(HTML(f"<i>{html.escape(self.message)}</i>"))
            self._handle = None


def _kernel_id() -> str | None:
    """This kernel's id in the Jupyter server (its connection file is ``kernel-<id>.json``)."""
    try:
        from ipykernel import get_connection_file

        match = re.search(r"kernel-([\w-]+)\.json$", get_connection_file())
    except Exception:  # not an ipykernel, or no connection file: no button, the message says what to do
        return None
    return match.group(1) if match else None


def _frontend() -> str:
    """Where this kernel's notebook is shown: ``"colab"``, ``"vscode"`` or ``"jupyter"`` (JupyterLab,
    Notebook 7, anything serving Jupyter's REST API)."""
    import os
    import sys

    if "google.colab" in sys.modules:
        return "colab"
    try:
        from IPython import get_ipython

        user_ns = getattr(get_ipython(), "user_ns", {}) or {}
    except ImportError:
        user_ns = {}
    if "__vsc_ipynb_file__" in user_ns:  # VS Code's Jupyter extension sets this in every notebook
        return "vscode"
    if "JPY_SESSION_NAME" in os.environ:  # a kernel started by a Jupyter server (even from a VS Code terminal)
        return "jupyter"
    if any(k.startswith("VSCODE_") for k in os.environ):
        return "vscode"
    return "jupyter"


_INTERRUPT = {"jupyter": "the ■ (interrupt) button in the toolbar", "vscode": "the Interrupt button above the notebook",
              "colab": "the ■ button beside the running cell (or Runtime → Interrupt execution)"}


def _stop_button_html(kernel_id: str | None, frontend: str = "jupyter") -> str:
    where = _INTERRUPT.get(frontend, _INTERRUPT["jupyter"])
    if kernel_id is None:
        return f"<i>to stop training early and keep the model, press {html.escape(where)}</i>"
    script = (
        "var b=this; b.disabled=true; b.textContent='stopping…';"
        "var c=JSON.parse((document.getElementById('jupyter-config-data')||{}).textContent||'{}');"
        "var h={}; var x=(document.cookie.match(/\\b_xsrf=([^;]*)/)||[])[1]; if(x){h['X-XSRFToken']=x;}"
        "if(c.token){h['Authorization']='token '+c.token;}"
        f"fetch((c.baseUrl||'/')+'api/kernels/{kernel_id}/interrupt',{{method:'POST',headers:h,credentials:'same-origin'}})"
        ".then(function(r){if(!r.ok){b.textContent='could not stop: press ■';}})"
        ".catch(function(){b.textContent='could not stop: press ■';});"
    )
    return (f'<button class="cnnlab-stop" title="ends training after the current batch; the model is kept" '
            f'style="background:#d32f2f;color:white;border:0;border-radius:3px;padding:4px 12px;cursor:pointer" '
            f'onclick="{html.escape(script)}">■ stop training</button> '
            f'<span style="color:#777;font-size:85%">(or {html.escape(where)}: the same clean stop)</span>')


class LiveDashboard(Callback):
    """Training watched live: loss and error curves (train and test) on log scales, so that the
    last tenths of a percent stay readable; the first conv layer's filters; and for one fixed test
    digit what each conv layer passes on (the maps after its ReLU, the first ``channels`` of them)
    and the model's answer. The header gives images/s, elapsed time and device. Give it a
    :class:`StopButton` as a sibling to stop from the page:
    ``fit(..., callbacks=[StopButton(), LiveDashboard(test_set)])``.

    Frames are drawn at most every ``every_s`` seconds, and further apart if drawing would take
    more than ``budget`` of the time (the dashboard times itself: ``seconds``, ``share``). One more
    frame is drawn when ``early`` of the steps are done, and kept (``early_png``, ``early_step``,
    ``early_images``), so that a saved notebook shows the filters early as well as at the end.

    images/s means what it means in :class:`~cnnlab.train.History` (each epoch's
    ``images_per_s``): training images per second of the training loop's wall time, the dashboard's
    own drawing included, the test evaluation not. The header shows it for the batches since the
    frame before; the final frame for the whole run (``images_per_s``).
    """

    order = 20  # after the loop's own bookkeeping and any early-stopping callbacks

    def __init__(self, data: ImageSet | None = None, index: int = 0, *, layers: list[str] | None = None,
                 channels: int = 16, every_s: float = 2.0, budget: float = 0.04, early: float | None = 0.03,
                 show: bool | None = None):
        _check_settings(data, index, channels, budget, early)
        self.data, self.index, self.layers, self.channels = data, index, layers, channels
        self.every_s, self.budget, self.early = every_s, budget, early
        self.show = in_notebook() if show is None else show
        self.png, self.header = b"", ""  # the latest frame and its header line
        self.early_png, self.early_step, self.early_images = b"", 0, 0  # the frame kept at `early` of the steps
        self._clock, self._meter = _FrameClock(every_s, budget, time.perf_counter()), _Meter()  # before any fit
        self._probe: _Probe | None = None  # what it computes, and what it draws, for the fit it watches
        self._picture: _Picture | None = None
        self._handle = None

    def before_fit(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        self.png, self.early_png, self.early_step, self.early_images = b"", b"", 0, 0
        self._clock, self._meter = _FrameClock(self.every_s, self.budget, state.started), _Meter(state)
        steps = state.steps_per_epoch * state.config.epochs
        self._early_at, self._early_index = (max(1, math.ceil(self.early * steps)) if self.early else 0), -1
        model = state.model
        self._probe = _Probe(self.data, self.index, self.layers if self.layers is not None else _passed_on(model),
                             self.channels)
        first_conv = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        self._picture = _Picture(first_conv, self.data, self.index, state.config.epochs)
        self._show(state)
        self._clock.drawn(t0)
        self._meter.restart()  # images/s counts from the first batch

    def before_epoch(self, state: LoopState) -> None:
        self._meter.epoch_began()

    def after_batch(self, state: LoopState) -> None:
        self._meter.add(state)
        early = state.step == self._early_at  # one frame more, whatever the throttle says, kept
        if early or self._clock.due():
            t0 = time.perf_counter()
            self._meter.point(state)
            self._show(state)
            self._clock.drawn(t0)  # the frame's time stays in the next window, as History counts the loop's wall time
        if early:
            self.early_png, self.early_step, self.early_images = self.png, state.step, self._meter.images_seen
            self._early_index = self.frames - 1  # where the early frame is in frame_log

    def after_epoch(self, state: LoopState) -> None:
        self._meter.epoch_ended(state)  # no frame of its own: the next one shows the new test point

    def after_fit(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        self._meter.stop(state, t0)
        try:
            self._meter.point(state)
            self._show(state, final=True)
        finally:
            self._clock.ended(t0, state)

    def _show(self, state: LoopState, final: bool = False) -> None:
        """Draw a frame, keep it and its header, and show it in place of the one before."""
        maps, probs = self._probe.look(state.model)
        self.header = self._meter.header(state, final, self.seconds)
        self.png = self._picture.draw(maps, probs, self._probe.map_channels, self._meter.curves, self.header)
        if self.show:
            self._handle = _display(self.png, self._handle)
        if final:
            self._handle = None

    frames = property(lambda self: len(self._clock.log), doc="Frames drawn in the fit it watches (so far).")
    seconds = property(lambda self: self._clock.seconds, doc="Time spent inside the dashboard, all frames together.")
    share = property(lambda self: self._clock.share,
                     doc="The dashboard's time as a share of the wall time of the fit it watched (so far).")
    images_per_s = property(lambda self: self._meter.images_per_s, doc=(
        "Training images per second over the run so far: its full epochs as History timed them, plus the batches "
        "of an unfinished epoch (the same definition, see the class docstring)."))
    curves = property(lambda self: self._meter.curves, doc="Train and test loss and accuracy, (epoch, value) points.")
    frame_log = property(lambda self: self._clock.log, doc="(start, seconds) of each frame, from the start of fit.")
    fit_seconds = property(lambda self: self._clock.fit_seconds, doc="Wall time of the whole fit, set when it ends.")
    # what the tests read inside the latest frame
    _images_per_s = property(lambda self: self._meter.rate)
    _map_channels = property(lambda self: self._probe.map_channels)
    _lines = property(lambda self: self._picture.curves.lines)
    _ax_err = property(lambda self: self._picture.curves.ax_err)
    _im_filters = property(lambda self: self._picture.im_filters)
    _im_maps = property(lambda self: self._picture.im_maps)
    _ax_probs = property(lambda self: self._picture.ax_probs)
    _bars = property(lambda self: self._picture.ax_probs.patches)


def _check_settings(data: ImageSet | None, index: int, channels: int, budget: float, early: float | None) -> None:
    """A ``ValueError`` saying which of :class:`LiveDashboard`'s settings makes no sense."""
    if not 0 < budget < 1:
        raise ValueError(f"budget is a share of training time between 0 and 1, got {budget}")
    if early is not None and not 0 < early < 1:
        raise ValueError(f"early is a share of the training steps between 0 and 1 (or None), got {early}")
    if not (isinstance(channels, int) and channels >= 1):
        raise ValueError(f"channels must be a whole number >= 1, got {channels!r}")
    if data is not None and not 0 <= index < len(data):
        raise ValueError(f"index must be from 0 to {len(data) - 1}, got {index}")


def _display(png: bytes, handle):
    """``png`` shown below the cell: a new display the first time, the same one updated after
    (so the last frame stays in the saved notebook). Returns the handle."""
    from IPython.display import Image, display

    if handle is None:
        return display(Image(png), display_id=True)
    handle.update(Image(png))
    return handle


# ----- what the dashboard measures ---------------------------------------------------------------------

class _FrameClock:
    """When the dashboard draws and what drawing costs: ``due()`` at most every ``every_s``
    seconds, and further apart if drawing would take more than ``budget`` of the time; ``log``
    holds (start, seconds) of each frame, from ``started`` (the start of fit)."""

    def __init__(self, every_s: float, budget: float, started: float):
        self.every_s, self.budget, self.started = every_s, budget, started
        self.log: list[tuple[float, float]] = []
        self.fit_seconds = 0.0  # wall time of the whole fit, set when it ends
        self._throttle = Every(every_s)

    def due(self) -> bool:
        return self._throttle.ready()

    def drawn(self, t0: float) -> None:
        """Count the frame begun at ``t0``, and keep drawing to about ``budget`` of the time: the
        next frame waits ``spent / budget`` at least (the first frame, drawn before training, counts too)."""
        spent = time.perf_counter() - t0
        self.log.append((t0 - self.started, spent))
        self._throttle.seconds = max(self.every_s, spent / self.budget)
        self._throttle.reset()

    def ended(self, t0: float, state: LoopState) -> None:
        """Count the last frame (begun at ``t0``) and the fit's wall time."""
        self.log.append((t0 - self.started, time.perf_counter() - t0))
        self.fit_seconds = time.perf_counter() - state.started

    @property
    def seconds(self) -> float:
        return sum(cost for _, cost in self.log)

    @property
    def share(self) -> float:
        """The dashboard's time as a share of the wall time of the fit it watched (so far)."""
        elapsed = self.fit_seconds or time.perf_counter() - self.started
        return self.seconds / max(elapsed, 1e-9)


class _Window:
    """The training batches since the last frame: their loss and correct answers summed on the
    training device, so that counting a batch waits for nothing (``fit`` keeps such sums per
    epoch, inside its loop, where callbacks cannot read them)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def add(self, state: LoopState) -> None:
        n = len(state.yb)
        self.loss_sum += state.loss.detach().float() * n
        self.correct += (state.logits.argmax(1) == state.yb).sum()
        self.seen += n

    def take(self) -> tuple[float, float, int]:
        """Mean loss, accuracy and number of the images since the last take (waits for the device)."""
        loss, acc, n = self.loss_sum.item() / self.seen, self.correct.item() / self.seen, self.seen
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0
        return loss, acc, n


class _Meter:
    """What the frames report: a train point per frame from the batches since the one before, a
    test point per epoch from the :class:`~cnnlab.train.History`, and images/s as History counts
    them (the training loop's wall time, drawing in, test evaluation out)."""

    def __init__(self, state: LoopState | None = None):  # None: before any fit
        self.history: History | None = state.history if state else None
        self.curves = {k: [] for k in ("train_loss", "train_acc", "test_loss", "test_acc")} if state else {}
        self.window = _Window(state.device if state else torch.device("cpu"))
        self.rate = 0.0  # images/s of the batches before the latest frame
        self.images_seen, self._epochs_counted = 0, 0  # epochs whose images left the tail (after_epoch ran for them)
        self.restart()

    def restart(self) -> None:
        """images/s counts from now."""
        self._window_start = self._tail_start = time.perf_counter()
        self._tail_images, self._tail_end = 0, 0.0

    def add(self, state: LoopState) -> None:
        self.window.add(state)
        self._tail_images += len(state.yb)
        self.images_seen += len(state.yb)

    def epoch_began(self) -> None:
        self._epoch_start = time.perf_counter()

    def epoch_ended(self, state: LoopState) -> None:
        e = state.history.epochs[-1]
        now = time.perf_counter()
        self._window_start += max(0.0, now - (self._epoch_start + e["seconds"]))  # the test evaluation is not training
        self._tail_images, self._tail_start = 0, now
        self._epochs_counted = len(state.history.epochs)
        if "test_acc" in e:
            self.curves["test_loss"].append((float(e["epoch"]), e["test_loss"]))
            self.curves["test_acc"].append((float(e["epoch"]), e["test_acc"]))

    def point(self, state: LoopState) -> None:
        """A train point from the batches since the last one (if there were any), and their images/s."""
        if not self.window.seen:
            return
        loss, acc, n = self.window.take()  # waits for the device first: the time below includes its work
        x = state.step / state.steps_per_epoch  # in epochs
        self.curves["train_loss"].append((x, loss))
        self.curves["train_acc"].append((x, acc))
        now = time.perf_counter()
        self.rate = n / max(now - self._window_start, 1e-9)
        self._window_start = now

    def stop(self, state: LoopState, now: float) -> None:
        """Training ended at ``now``; an epoch that an earlier callback ended in after_epoch is History's."""
        self._tail_end = now
        if len(state.history.epochs) > self._epochs_counted:
            self._tail_images = 0

    @property
    def images_per_s(self) -> float:
        """Training images per second over the run so far: its full epochs as History timed them,
        plus the batches of an unfinished epoch (the same definition, see the class docstring)."""
        epochs = self.history.epochs if self.history is not None else []
        images = sum(e["images_per_s"] * e["seconds"] for e in epochs) + self._tail_images
        tail = ((self._tail_end or time.perf_counter()) - self._tail_start) if self._tail_images else 0.0
        return images / max(sum(e["seconds"] for e in epochs) + tail, 1e-9)

    def header(self, state: LoopState, final: bool, drawing_s: float) -> str:
        """A frame's header line: where training is, images/s, time, device, the latest test
        accuracy and the ``drawing_s`` seconds spent drawing so far."""
        h = state.history
        elapsed = time.perf_counter() - state.started
        test = f" · test accuracy {h.last('test_acc'):.2%}" if h.epochs and "test_acc" in h.epochs[-1] else ""
        amp = " (bf16)" if state.amp else ""
        where = "finished" if final and h.stopped is None else ("stopped" if final else "training")
        rate = f"{self.images_per_s:,.0f} images/s over the run" if final else f"{self.rate:,.0f} images/s"
        epochs = state.config.epochs
        return (f"{where}: epoch {min(state.epoch + 1, epochs)}/{epochs} · step {state.step:,}/"
                f"{state.steps_per_epoch * epochs:,} · {rate} · {elapsed:.0f} s · "
                f"{state.device.type}{amp}{test} · dashboard {drawing_s:.1f} s ({drawing_s / max(elapsed, 1e-9):.1%})")


class _Probe:
    """One fixed test digit through the model: what each of ``layers`` passes on (the first
    ``channels`` maps) and the class probabilities, from one forward pass on the CPU."""

    def __init__(self, data: ImageSet | None, index: int, layers: list[str], channels: int):
        self.data, self.index, self.layers, self.channels = data, index, layers, channels
        self.map_channels: dict[str, int] = {}  # each layer's channels, of which the first `channels` are shown
        self._twin: nn.Module | None = None

    @torch.no_grad()
    def look(self, model: nn.Module) -> tuple[dict[str, Tensor], Tensor | None]:
        """``{layer: maps (channels, H, W)}`` and the probabilities (classes,), on the CPU; none without data."""
        if self.data is None:
            return {}, None
        model = self._on_cpu(model)
        x = self.data.x[self.index : self.index + 1].cpu().float()
        with eval_mode(model), capture(model, self.layers) as acts:
            probs = model(x).float().softmax(1)[0]
        self.map_channels = {name: acts[name].shape[1] for name in self.layers}
        return {name: acts[name][0, : self.channels].float() for name in self.layers}, probs

    def _on_cpu(self, model: nn.Module) -> nn.Module:
        """The model itself on the CPU; elsewhere a CPU copy refreshed with its weights (one copy
        of the weights per frame), so the maps of one digit need no GPU kernels, no synchronisation
        per layer and no cuDNN tuning for a batch of one."""
        if model_device(model).type == "cpu":
            return model
        if self._twin is None:
            self._twin = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float()
        self._twin.load_state_dict(model.state_dict())
        return self._twin


# ----- what the dashboard draws ------------------------------------------------------------------------

class _Picture:
    """The dashboard's picture: a Figure laid out on the first frame, every artist made once; later
    frames only change their data (clearing and redrawing axes was half of a frame's cost)."""

    def __init__(self, first_conv: tuple[str, nn.Conv2d] | None, data: ImageSet | None, index: int, epochs: int):
        self.first_conv, self.data, self.index, self.epochs = first_conv, data, index, epochs
        self.fig: Figure | None = None
        self.curves: _CurvePanels | None = None
        self.im_filters, self.im_maps = None, []
        self.ax_probs: Axes | None = None
        self.answer: PredictionPanel | None = None  # the digit and the bars of its answer
        self.digit: Tensor | None = None

    def draw(self, maps: dict[str, Tensor], probs: Tensor | None, map_channels: dict[str, int],
             curves: dict[str, list[tuple[float, float]]], header: str) -> bytes:
        """The next frame as PNG bytes."""
        first = self.fig is None
        if first:
            self._layout(maps, probs, map_channels)
        else:
            self._update_filters()
            for im, m in zip(self.im_maps, maps.values()):
                im.set_data(tile(m, math.ceil(math.sqrt(m.shape[0])), normalize=True).numpy())  # as drawn first
            if probs is not None:
                self.answer.update(self.digit, {"its answer now": probs})
        self.fig.suptitle(header, fontsize=10, x=0.01, y=0.995, ha="left", va="top")  # suptitle updates one Text
        if first:
            self.fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=1.0, w_pad=1.0)  # once: the layout does not change
        self.curves.update(curves)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=72, pil_kwargs={"compress_level": 1})
        return buf.getvalue()

    def _layout(self, maps: dict[str, Tensor], probs: Tensor | None, map_channels: dict[str, int]) -> None:
        n_maps = len(maps)
        self.fig = Figure(figsize=(12, 5.8 if n_maps else 2.9))
        grid = self.fig.add_gridspec(2 if n_maps else 1, max(4, n_maps + 2),
                                     height_ratios=[1, 1.15] if n_maps else None)
        self.curves = _CurvePanels(self.fig.add_subplot(grid[0, 0]), self.fig.add_subplot(grid[0, 1]), self.epochs)
        # the answer panel goes in the second row beside the maps, or in the first when there are none
        ax_filters = self.fig.add_subplot(grid[0, 2:] if n_maps or probs is None else grid[0, 2])
        if self.first_conv is not None:
            name, w = self.first_conv[0], self.first_conv[1].weight
            show_filters(w, ax=ax_filters, title=f"{name}: {w.shape[0]} filters, {w.shape[2]}x{w.shape[3]}"
                         + (" (input channel 0)" if w.shape[1] > 1 else ""))
            self.im_filters = ax_filters.images[-1]
        else:
            ax_filters.axis("off")
        ax_digit = self.fig.add_subplot(grid[1, 0]) if n_maps else None
        for i, (name, m) in enumerate(maps.items()):
            ax = self.fig.add_subplot(grid[1, 1 + i])
            show_feature_maps(m, ax=ax, ncols=math.ceil(math.sqrt(m.shape[0])),
                              title=f"{name}: {m.shape[0]} of {map_channels[name]} maps, {m.shape[1]}x{m.shape[2]}")
            self.im_maps.append(ax.images[-1])
        if probs is not None:
            self.ax_probs = self.fig.add_subplot(grid[1, 1 + n_maps] if n_maps else grid[0, 3])
            # PredictionPanel draws the digit beside the bars; without maps there is no room for it in
            # the figure, so it goes to axes that are no part of it (never drawn)
            if ax_digit is None:
                ax_digit = Axes(self.fig, (0, 0, 1, 1))
            self.digit = self.data.x[self.index].float().cpu()  # (1, H, W), copied once
            self.answer = PredictionPanel([ax_digit, self.ax_probs], self.data.classes, mean=self.data.mean,
                                          std=self.data.std)
            self.answer.update(self.digit, {"its answer now": probs})
            ax_digit.set_title(f"test digit #{self.index}", fontsize=9)
            self.ax_probs.set_xlabel("probability", fontsize=8, labelpad=1)
            self.ax_probs.tick_params(axis="x", labelsize=8)

    def _update_filters(self) -> None:
        if self.first_conv is None:
            return
        w = tile(self.first_conv[1].weight.detach().float().cpu()[:, 0], 8)  # show_filters' 8 columns
        limit = max(float(torch.nan_to_num(w).abs().max()), 1e-8)
        self.im_filters.set_data(w.numpy())
        self.im_filters.set_clim(-limit, limit)


class _CurvePanels:
    """Loss and error % of the train and test points on log axes, each y range fitted to them."""

    def __init__(self, ax_loss: Axes, ax_err: Axes, epochs: int):
        self.ax_loss, self.ax_err = ax_loss, ax_err
        self.lines = {}
        for ax, key, title in ((ax_loss, "loss", "cross-entropy loss (log scale)"),
                               (ax_err, "acc", "error % (log scale): 1% = 99% accuracy")):
            for split, style, ms in (("train", ".-", 3), ("test", "o--", 4)):
                (self.lines[f"{split}_{key}"],) = ax.plot([], [], style, label=split, ms=ms)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(FixedLocator(_LOG_TICKS))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(0, epochs or 1)
            ax.set_xlabel("epoch", fontsize=8, labelpad=1)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, loc="upper right")
            ax.tick_params(labelsize=8)
        ax_loss.set_ylim(0.01, 3)
        ax_err.set_ylim(0.3, 100)
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))

    def update(self, curves: dict[str, list[tuple[float, float]]]) -> None:
        for key, line in self.lines.items():
            points = curves[key]
            ys = [100 * (1 - y) if key.endswith("acc") else y for _, y in points]  # accuracy drawn as error %
            line.set_data([x for x, _ in points], [y if y > 0 else float("nan") for y in ys])  # 0 has no log
        for ax, key, floor in ((self.ax_loss, "loss", 1e-4), (self.ax_err, "acc", 0.01)):
            ys = [y for split in ("train", "test") for y in self.lines[f"{split}_{key}"].get_ydata() if y > 0]
            if ys:  # from the smallest value to the largest, with a margin (a log axis has no zero), a decade at least
                top = max(ys) * 1.5 if key == "loss" else min(100, max(ys) * 1.5)
                ax.set_ylim(max(min(min(ys) / 1.5, top / 10), floor), top)


_LOG_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]  # 1-2-5 on a log axis

#: torch's activation layers (every class of torch.nn.modules.activation that can be a leaf layer)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Threshold, nn.Sigmoid, nn.LogSigmoid, nn.Tanh,
                nn.Softplus, nn.Softsign, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.GLU, nn.Softmax, nn.Softmin,
                nn.Softmax2d, nn.LogSoftmax)
#: normalisations that may stand between a conv layer and its activation
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
          nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def _passed_on(model: nn.Module) -> list[str]:
    """For each conv layer, the layer whose maps the next layer receives: the activation after it
    (``relu1`` after ``conv1``, past any normalisation in between), or the conv itself if none."""
    leaves = leaf_layers(model)
    names = []
    for k, (name, m) in enumerate(leaves):
        if not isinstance(m, nn.Conv2d):
            continue
        chosen = name
        for after, nxt in leaves[k + 1 :]:
            if isinstance(nxt, _ACTIVATIONS):
                chosen = after
                break
            if not isinstance(nxt, _NORMS):
                break
        names.append(chosen)
    return list(dict.fromkeys(names))
