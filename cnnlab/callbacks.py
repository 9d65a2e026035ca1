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
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.device import eval_mode, model_device
from cnnlab.hooks import capture, leaf_layers
from cnnlab.train import Callback, History, LoopState, StopTraining
from cnnlab.viz import show_feature_maps, show_filters, tile

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

    def __init__(
        self,
        data: ImageSet | None = None,
        index: int = 0,
        *,
        layers: list[str] | None = None,
        channels: int = 16,
        every_s: float = 2.0,
        budget: float = 0.04,
        early: float | None = 0.03,
        show: bool | None = None,
    ):
        if not 0 < budget < 1:
            raise ValueError(f"budget is a share of training time between 0 and 1, got {budget}")
        if early is not None and not 0 < early < 1:
            raise ValueError(f"early is a share of the training steps between 0 and 1 (or None), got {early}")
        if not (isinstance(channels, int) and channels >= 1):
            raise ValueError(f"channels must be a whole number >= 1, got {channels!r}")
        if data is not None and not 0 <= index < len(data):
            raise ValueError(f"index must be from 0 to {len(data) - 1}, got {index}")
        self.data, self.index, self.layers, self.channels = data, index, layers, channels
        self.every_s, self.budget, self.early = every_s, budget, early
        self.show = in_notebook() if show is None else show
        self.png = b""  # the latest frame
        self.header = ""  # the latest frame's header line
        self.early_png, self.early_step, self.early_images = b"", 0, 0  # the frame kept at `early` of the steps
        self.frame_log: list[tuple[float, float]] = []  # (start, seconds) of each frame, from the start of fit
        self.fit_seconds = 0.0  # wall time of the whole fit, set when it ends
        self._started = time.perf_counter()
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self._history: History | None = None
        self._tail_images, self._tail_start, self._tail_end = 0, 0.0, 0.0
        self._fig: Figure | None = None
        self._cpu_twin: nn.Module | None = None
        self._handle = None

    # ----- events -------------------------------------------------------------------------------
    def before_fit(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        self.fit_seconds, self.png = 0.0, b""
        self.early_png, self.early_step, self.early_images = b"", 0, 0
        self.frame_log = []
        self._history = state.history
        self._bf16 = state.amp
        self.curves = {k: [] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
        self._reset_window(state)
        self._throttle = Every(self.every_s)
        total_steps = state.steps_per_epoch * state.config.epochs
        self._early_step = max(1, math.ceil(self.early * total_steps)) if self.early else 0
        self._early_index = -1  # where the early frame is in frame_log
        self._images_seen = 0
        self._epochs_counted = 0  # epochs whose images left the tail (after_epoch ran for them)
        model = state.model
        self._cpu_twin = None
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        self._first_conv = (convs[0], dict(model.named_modules())[convs[0]]) if convs else None
        self._map_layers = self.layers if self.layers is not None else _passed_on(model)
        self._draw(state)
        self._spaced(t0, time.perf_counter() - t0)
        self._window_start = self._tail_start = time.perf_counter()  # images/s counts from the first batch

    def before_epoch(self, state: LoopState) -> None:
        self._epoch_start = time.perf_counter()

    def after_batch(self, state: LoopState) -> None:
        n = len(state.yb)
        self._loss_sum += state.loss.detach().float() * n
        self._correct += (state.logits.argmax(1) == state.yb).sum()
        self._seen += n
        self._tail_images += n
        self._images_seen += n
        if state.step == self._early_step:  # one frame more, whatever the throttle says, kept
            self._frame(state)
            self.early_png, self.early_step, self.early_images = self.png, state.step, self._images_seen
            self._early_index = len(self.frame_log) - 1
        elif self._throttle.ready():
            self._frame(state)

    def after_epoch(self, state: LoopState) -> None:
        e = state.history.epochs[-1]
        now = time.perf_counter()
        self._window_start += max(0.0, now - (self._epoch_start + e["seconds"]))  # the test evaluation is not training
        self._tail_images, self._tail_start = 0, now
        self._epochs_counted = len(state.history.epochs)
        if "test_acc" in e:
            self.curves["test_loss"].append((float(e["epoch"]), e["test_loss"]))
            self.curves["test_acc"].append((float(e["epoch"]), e["test_acc"]))
        # No frame of its own: the next one (within the throttle's wait) shows the new test point.

    def after_fit(self, state: LoopState) -> None:
        t0 = self._tail_end = time.perf_counter()
        if len(state.history.epochs) > self._epochs_counted:  # an earlier callback ended the run in after_epoch:
            self._tail_images = 0  # History counted that epoch already
        try:
            if self._seen:
                self._record_window(state)
            self._draw(state, final=True)
        finally:
            self.frame_log.append((t0 - self._started, time.perf_counter() - t0))
            self.fit_seconds = time.perf_counter() - state.started
            self._fig = None

    @property
    def frames(self) -> int:
        """Frames drawn in the fit it watches (so far)."""
        return len(self.frame_log)

    @property
    def seconds(self) -> float:
        """Time spent inside the dashboard, all frames together."""
        return sum(cost for _, cost in self.frame_log)

    @property
    def share(self) -> float:
        """The dashboard's time as a share of the wall time of the fit it watched (so far)."""
        elapsed = self.fit_seconds or time.perf_counter() - self._started
        return self.seconds / max(elapsed, 1e-9)

    @property
    def images_per_s(self) -> float:
        """Training images per second over the run so far: its full epochs as History timed them,
        plus the batches of an unfinished epoch (the same definition, see the class docstring)."""
        epochs = self._history.epochs if self._history is not None else []
        images = sum(e["images_per_s"] * e["seconds"] for e in epochs) + self._tail_images
        tail = ((self._tail_end or time.perf_counter()) - self._tail_start) if self._tail_images else 0.0
        return images / max(sum(e["seconds"] for e in epochs) + tail, 1e-9)

    # ----- measuring and drawing ---------------------------------------------------------------------
    def _reset_window(self, state: LoopState) -> None:
        self._started = state.started
        self._loss_sum = torch.zeros((), device=state.device)
        self._correct = torch.zeros((), device=state.device, dtype=torch.long)
        self._seen = 0
        self._tail_images, self._tail_end = 0, 0.0
        self._window_start = self._tail_start = time.perf_counter()
        self._images_per_s = 0.0

    def _record_window(self, state: LoopState) -> None:
        x = state.step / state.steps_per_epoch  # in epochs
        self.curves["train_loss"].append((x, self._loss_sum.item() / self._seen))
        self.curves["train_acc"].append((x, self._correct.item() / self._seen))
        now = time.perf_counter()
        self._images_per_s = self._seen / max(now - self._window_start, 1e-9)
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = 0
        self._window_start = now

    def _frame(self, state: LoopState) -> None:
        t0 = time.perf_counter()
        if self._seen:
            self._record_window(state)
        self._draw(state)
        self._spaced(t0, time.perf_counter() - t0)
        # the frame's time stays in the next window: images/s counts the loop's wall time, as History does

    def _spaced(self, t0: float, spent: float) -> None:
        """Count a frame's cost, and keep drawing to about ``budget`` of the time: the next frame
        waits ``spent / budget`` at least (the first frame, drawn before training, counts too)."""
        self.frame_log.append((t0 - self._started, spent))
        self._throttle.seconds = max(self.every_s, spent / self.budget)
        self._throttle.reset()

    @torch.no_grad()
    def _look(self, state: LoopState) -> tuple[dict[str, Tensor], Tensor | None]:
        """The fixed digit's maps (the first ``channels`` of each layer) and class probabilities,
        from one forward pass on the CPU."""
        if self.data is None:
            return {}, None
        model = self._twin(state.model)
        x = self.data.x[self.index : self.index + 1].cpu().float()
        with eval_mode(model), capture(model, self._map_layers) as acts:
            probs = model(x).float().softmax(1)[0]
        self._map_channels = {name: acts[name].shape[1] for name in self._map_layers}
        return {name: acts[name][0, : self.channels].float() for name in self._map_layers}, probs

    def _twin(self, model: nn.Module) -> nn.Module:
        """The model itself on the CPU; elsewhere a CPU copy refreshed with its weights (one copy
        of the weights per frame), so the maps of one digit need no GPU kernels, no synchronisation
        per layer and no cuDNN tuning for a batch of one."""
        if model_device(model).type == "cpu":
            return model
        if self._cpu_twin is None:
            self._cpu_twin = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float()
        self._cpu_twin.load_state_dict(model.state_dict())
        return self._cpu_twin

    def _layout(self, state: LoopState, maps: dict[str, Tensor], probs: Tensor | None) -> None:
        """The figure and every artist, once; later frames only change their data (clearing and
        redrawing axes was half of a frame's cost)."""
        n_maps = len(maps)
        ncols = max(4, n_maps + 2)
        self._fig = Figure(figsize=(12, 5.8 if n_maps else 2.9))
        grid = self._fig.add_gridspec(2 if n_maps else 1, ncols, height_ratios=[1, 1.15] if n_maps else None)
        self._ax_loss = self._fig.add_subplot(grid[0, 0])
        self._ax_err = self._fig.add_subplot(grid[0, 1])
        # the answer panel goes in the second row beside the maps, or in the first when there are none
        self._ax_filters = self._fig.add_subplot(grid[0, 2:] if n_maps or probs is None else grid[0, 2])
        self._lines = {}
        for ax, key, title in ((self._ax_loss, "loss", "cross-entropy loss (log scale)"),
                               (self._ax_err, "acc", "error % (log scale): 1% = 99% accuracy")):
            for split, style, ms in (("train", ".-", 3), ("test", "o--", 4)):
                (self._lines[f"{split}_{key}"],) = ax.plot([], [], style, label=split, ms=ms)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(FixedLocator(_LOG_TICKS))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(0, state.config.epochs or 1)
            ax.set_xlabel("epoch", fontsize=8, labelpad=1)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, loc="upper right")
            ax.tick_params(labelsize=8)
        self._ax_loss.set_ylim(0.01, 3)
        self._ax_err.set_ylim(0.3, 100)
        self._ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        self._ax_err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        if self._first_conv is not None:
            name, conv = self._first_conv
            w = conv.weight
            show_filters(w, ax=self._ax_filters, title=f"{name}: {w.shape[0]} filters, {w.shape[2]}x{w.shape[3]}"
                         + (" (input channel 0)" if w.shape[1] > 1 else ""))
            self._im_filters = self._ax_filters.images[-1]
        else:
            self._ax_filters.axis("off")
        self._im_maps = []
        if n_maps:
            ax_digit = self._fig.add_subplot(grid[1, 0])
            digit = self.data.denormalize(self.data.x[self.index].float().cpu())
            ax_digit.imshow(digit[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax_digit.set_title(f"test digit #{self.index}", fontsize=9)
            ax_digit.set(xticks=[], yticks=[])
            for i, (name, m) in enumerate(maps.items()):
                ax = self._fig.add_subplot(grid[1, 1 + i])
                show_feature_maps(m, ax=ax, ncols=math.ceil(math.sqrt(m.shape[0])),
                                  title=f"{name}: {m.shape[0]} of {self._map_channels[name]} maps, {m.shape[1]}x{m.shape[2]}")
                self._im_maps.append(ax.images[-1])
        if probs is not None:
            self._ax_probs = self._fig.add_subplot(grid[1, 1 + n_maps] if n_maps else grid[0, 3])
            short = [c.split(" - ")[0] for c in self.data.classes]
            self._bars = self._ax_probs.barh(range(len(probs)), probs.numpy(), color="tab:blue")
            self._ax_probs.set_yticks(range(len(probs)), short, fontsize=8)
            self._ax_probs.invert_yaxis()
            self._ax_probs.set_xlim(0, 1)
            self._ax_probs.set_xlabel("probability", fontsize=8, labelpad=1)
            self._ax_probs.tick_params(axis="x", labelsize=8)
        self._draw_status(state, final=False)
        self._fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=1.0, w_pad=1.0)  # once: the layout does not change

    def _draw(self, state: LoopState, final: bool = False) -> None:
        maps, probs = self._look(state)
        if self._fig is None:
            self._layout(state, maps, probs)
        else:
            if self._first_conv is not None:
                w = tile(self._first_conv[1].weight.detach().float().cpu()[:, 0], 8)  # show_filters' 8 columns
                limit = max(float(torch.nan_to_num(w).abs().max()), 1e-8)
                self._im_filters.set_data(w.numpy())
                self._im_filters.set_clim(-limit, limit)
            for im, m in zip(self._im_maps, maps.values()):
                im.set_data(tile(m, math.ceil(math.sqrt(m.shape[0])), normalize=True).numpy())  # as drawn first
        if probs is not None:
            top = int(probs.argmax())
            for k, bar in enumerate(self._bars):
                bar.set_width(float(probs[k]))
                bar.set_color("tab:orange" if k == top else "tab:blue")
            self._ax_probs.set_title(f"its answer now: {self.data.classes[top].split(' - ')[0]} ({float(probs[top]):.0%})",
                                     fontsize=9)
        self._draw_curves()
        self._draw_status(state, final)
        buf = io.BytesIO()
        self._fig.savefig(buf, format="png", dpi=72, pil_kwargs={"compress_level": 1})
        self.png = buf.getvalue()
        if self.show:
            from IPython.display import Image, display

            if self._handle is None:
                self._handle = display(Image(self.png), display_id=True)
            else:
                self._handle.update(Image(self.png))
        if final:
            self._handle = None

    def _draw_curves(self) -> None:
        for key, line in self._lines.items():
            points = self.curves[key]
            ys = [100 * (1 - y) if key.endswith("acc") else y for _, y in points]  # accuracy drawn as error %
            line.set_data([x for x, _ in points], [y if y > 0 else float("nan") for y in ys])  # 0 has no log
        for ax, key, floor in ((self._ax_loss, "loss", 1e-4), (self._ax_err, "acc", 0.01)):
            ys = [y for split in ("train", "test") for y in self._lines[f"{split}_{key}"].get_ydata() if y > 0]
            if ys:  # from the smallest value to the largest, with a margin (a log axis has no zero), a decade at least
                top = max(ys) * 1.5 if key == "loss" else min(100, max(ys) * 1.5)
                ax.set_ylim(max(min(min(ys) / 1.5, top / 10), floor), top)

    def _draw_status(self, state: LoopState, final: bool) -> None:
        h = state.history
        elapsed = time.perf_counter() - state.started
        test = f" · test accuracy {h.last('test_acc'):.2%}" if h.epochs and "test_acc" in h.epochs[-1] else ""
        amp = " (bf16)" if self._bf16 else ""
        where = "finished" if final and h.stopped is None else ("stopped" if final else "training")
        rate = f"{self.images_per_s:,.0f} images/s over the run" if final else f"{self._images_per_s:,.0f} images/s"
        self.header = (
            f"{where}: epoch {min(state.epoch + 1, state.config.epochs)}/{state.config.epochs} · step {state.step:,}/"
            f"{state.steps_per_epoch * state.config.epochs:,} · {rate} · {elapsed:.0f} s · "
            f"{state.device.type}{amp}{test} · dashboard {self.seconds:.1f} s ({self.seconds / max(elapsed, 1e-9):.1%})"
        )
        self._fig.suptitle(self.header, fontsize=10, x=0.01, y=0.995, ha="left", va="top")  # suptitle updates one Text


_LOG_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]  # 1-2-5 on a log axis


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
            if type(nxt).__module__ == "torch.nn.modules.activation":
                chosen = after
                break
            if type(nxt).__module__ != "torch.nn.modules.batchnorm" and not isinstance(nxt, (nn.GroupNorm, nn.LayerNorm)):
                break
        names.append(chosen)
    return list(dict.fromkeys(names))
