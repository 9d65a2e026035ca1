"""The GPU fast path of ``fit``: one training step captured as a CUDA graph, then replayed.

On a GPU, the seed's small CNN spends most of a step launching kernels, not computing: at batch
64 an H100 finishes each kernel long before Python launches the next. A CUDA graph records the
whole step (forward, loss, backward, optimiser update) once and replays it with one launch. What
that requires, following PyTorch's "whole network capture" recipe:

- static input and output tensors: each batch is copied into the same ``x``/``y`` buffers, and
  the step's loss and logits land in the same output tensors every replay;
- a *capturable* optimiser whose learning rate lives in a device tensor, so the one-cycle
  schedule updates it in place between replays (Adam's beta1 is not cycled here: the scheduler
  would replace it by a Python number the graph never sees);
- a few eager warm-up steps on a side stream before capture (lazy initialisation, cuDNN's
  algorithm search), and autocast without its weight cache inside the capture.

Everything else in ``fit`` (shuffling, the last, smaller batch, evaluation, callbacks) stays eager.
``fit(..., cuda_graph=True)`` turns it on; off CUDA it is refused (it would change nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GraphedStep", "graph_optimizer"]


def graph_optimizer(params, name: str, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW that a CUDA graph can capture: ``capturable=True``, learning rate in a device tensor."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, lr=torch.tensor(lr, device=device), weight_decay=weight_decay, capturable=True)


class GraphedStep:
    """``step(xb, yb) -> (loss, logits)``: eager for the first ``warmup`` batches (on a side
    stream), then captured once and replayed. Batches must all have ``batch_size`` rows."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device, amp: bool,
                 label_smoothing: float = 0.0, warmup: int = 3):
        self.model, self.optimizer, self.amp, self.label_smoothing = model, optimizer, amp, label_smoothing
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0
        self.device = device
        self._side = torch.cuda.Stream(device=device)  # on the model's GPU, which need not be the current one

    def _forward_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # The textbook step, as in fit's loop; autocast keeps no weight cache, which capture forbids.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def __call__(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        with torch.cuda.device(self.device):  # streams, capture and replay on the model's GPU
            return self._step(xb, yb)

    def _step(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup:
            self._side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self._forward_backward(xb, yb)
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            return out
        if self.graph is None:
            self._capture(xb, yb)
        else:
            self.x.copy_(xb, non_blocking=True)
            self.y.copy_(yb, non_blocking=True)
        self.graph.replay()
        # Copies: the graph overwrites its outputs at the next replay, and a callback may keep these.
        return self.loss.clone(), self.logits.clone()

    def _capture(self, xb: Tensor, yb: Tensor) -> None:
        self.x, self.y = xb.clone(), yb.clone()  # the static inputs every replay reads
        self.optimizer.zero_grad(set_to_none=True)  # grads are then allocated inside the graph's pool
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        # Captured on our own side stream: torch.cuda.graph's default one lives on whichever GPU was current first.
        with torch.cuda.graph(self.graph, stream=self._side):
            self.loss, self.logits = self._forward_backward(self.x, self.y)
        # Capture only records: the replay that follows runs this batch's step for real.
