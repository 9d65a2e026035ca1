"""Where tensors live: one device rule for the whole package, decided here.

The rule:

- **Training** runs on :func:`pick_device`: the device asked for, else CUDA, then Apple's MPS,
  then the CPU. ``fit`` leaves the model on its training device; ``runs.load_or_train``
  returns it on that same device whether it trained the model or loaded a saved run.
- **Analysis** (every function that takes a model: ``evaluate``, ``predict``, ``feature_maps``,
  ``grad_cam``, ``receptive_fields``, ...) runs where the model is (:func:`model_device`),
  accepts inputs on any device, and returns CPU tensors.
  Each analyses the model in eval mode and leaves its train/eval mode as it was (:func:`eval_mode`).
- **Drawing** (``cnnlab.viz`` and the widgets) accepts tensors on any device.
- **Tensor operations** written by hand (``cnnlab.conv``, ``cnnlab.transforms``) behave like
  PyTorch's own: the result is on the device of their inputs.
- A tensor is never created without saying where (``torch.zeros(..., device=x.device)``), and
  never turned into NumPy without ``.cpu()``. The tests check this by running functions with
  PyTorch's default device set to ``meta``: a tensor made without a device lands there and
  the result comes out wrong or not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["DeviceError", "pick_device", "available_devices", "model_device", "eval_mode"]

_KNOWN = ("cpu", "cuda", "mps")
_ALIASES = {  # names people type that PyTorch does not know, and what they probably mean
    "gpu": "an NVIDIA GPU is cuda or cuda:0, an Apple GPU is mps",
    "nvidia": "an NVIDIA GPU is cuda",
    "metal": "an Apple GPU is mps",
    "tpu": "cnnlab trains on cpu, cuda or mps; TPUs are not supported",
}


class DeviceError(RuntimeError):
    """The device asked for is not a device name, or not available on this machine.

    ``str(err)`` speaks Python (``device='cpu'``); :meth:`for_cli` says the same with
    command-line words (``--device cpu``).
    """

    def __init__(self, asked: object, reason: str):
        self.asked, self.reason = asked, reason
        super().__init__(self._message("device={!r}", "device={!r}", "device=None"))

    def _message(self, asked_fmt: str, choice_fmt: str, best: str) -> str:
        choices = " or ".join(choice_fmt.format(d) for d in available_devices())
        return (f"{asked_fmt.format(str(self.asked))}: {self.reason}. On this machine use {choices}, "
                f"or {best} for the best available")

    def for_cli(self) -> str:
        """The message with command-line words: ``--device cpu`` instead of ``device='cpu'``."""
        return self._message("--device {}", "--device {}", "leave --device out")


def available_devices() -> list[str]:
    """The devices this machine can train on: ``['cpu']``, plus ``'cuda:0'``, ... and ``'mps'`` where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The training device: ``device`` if given and usable here, else CUDA, then MPS, then the CPU.
    A GPU comes back with its index (``cuda:0``), as its tensors report it.

    A name that is not a device (``'gpu'``, ``'tpu'``, ``'cude'``) or a device this machine lacks
    (``'cuda:7'`` with one GPU, ``'mps'`` off a Mac) raises :class:`DeviceError` saying what to use.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps", 0)
        return torch.device("cpu")
    name = device.strip().lower() if isinstance(device, str) else device
    if isinstance(name, str) and name in _ALIASES:
        raise DeviceError(device, f"{name!r} is not a PyTorch device name ({_ALIASES[name]})")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(device, "not a device name (names look like cpu, cuda, cuda:1, mps)") from None
    if dev.type not in _KNOWN:
        raise DeviceError(device, f"cnnlab trains on {', '.join(_KNOWN)}, not on {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            reason = ("this PyTorch was built without CUDA" if torch.version.cuda is None
                      else f"PyTorch (CUDA {torch.version.cuda}) finds no NVIDIA GPU here")
            raise DeviceError(device, reason)
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(device, f"this machine has {count} GPU{'s' if count != 1 else ''} "
                                      f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        # 'cuda' means the current GPU: name it, so a model's parameters (cuda:0) compare equal
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type == "mps":
        if not _mps_available():
            raise DeviceError(device, "Apple's MPS is not available here (it needs a Mac with Apple silicon)")
        return torch.device("mps", 0)
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise DeviceError(device, "there is one CPU device, 'cpu'")
    return torch.device("cpu") if dev.type == "cpu" else dev


def model_device(model: nn.Module) -> torch.device:
    """The device ``model`` lives on: its first parameter's, else its first buffer's, else the CPU
    (a model with neither, such as a lone ``nn.MaxPool2d``, computes wherever its input is)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (dropout off, BatchNorm's running statistics) inside the block;
    its train/eval mode as it was afterwards, whatever happens inside."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
