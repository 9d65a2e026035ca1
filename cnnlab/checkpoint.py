"""Checkpoints: weights plus the config, history and metrics that produced them.

Written atomically (a temporary file renamed into place, so an interrupted save never leaves
a half-written checkpoint) and read with ``torch.load(weights_only=True)``, which refuses
pickled code. Anything wrong with a file is a :class:`CheckpointError` that says what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.files import atomic_write
from cnnlab.models import MODELS, create_model
from cnnlab.train import History

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT = "cnnlab-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file could not be used; the message says why and what to do."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and what was saved with it."""

    model: nn.Module
    history: History | None
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    history: History | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (its registry name, hparams and weights) with ``history`` and ``metrics``, atomically."""
    path = Path(path)  # atomic_write makes its folder, or says why it cannot (SaveError)
    payload = {
        "format": FORMAT,
        "model": {
            "name": getattr(model, "name", ""),
            "class": type(model).__name__,
            "hparams": dict(getattr(model, "hparams", {})),
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": history.to_dict() if history is not None else None,
        "metrics": dict(metrics or {}),
        "torch": str(torch.__version__),
    }
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


_ADVICE = ("weights_only", "Re-running", "file an issue", "Check the documentation", "arbitrary code", "trusted source",
           "In PyTorch 2.6")


def _torch_words(err: BaseException) -> str:
    """What torch said went wrong, without its advice on loading the file unchecked."""
    lines = [ln.strip().removeprefix("Please file an issue with the following so that we can make").strip()
             for ln in str(err).splitlines()]
    kept = [ln.removeprefix("WeightsUnpickler error:").strip() for ln in lines
            if ln and not any(a in ln for a in _ADVICE)]
    words = " ".join(k for k in kept if k)
    return words.split(". ")[0].rstrip(".")[:300] or "no details"  # its first sentence says what happened


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Load a checkpoint; rebuild its model from the registry, or load into ``model`` if given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train a model and save it with save_checkpoint first")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # torch's weights_only loader names what it refused to import in more than one wording
        # ("Unsupported global: GLOBAL os.system", "unsupported GLOBAL posix.system whose module
        # posix is blocked"): the file would run code. Its advice to turn the check off is never passed on.
        blocked = re.search(r"\bGLOBAL\s+([\w.]+)", str(err))
        if blocked:
            raise CheckpointError(
                f"{path} was refused: loading it would import and run {blocked.group(1)}, and cnnlab "
                "checkpoints hold only tensors and plain values. Do not load files you do not trust; "
                "delete it and train again."
            ) from None
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: {_torch_words(err)}). "
            "It is truncated, corrupt, or not a cnnlab checkpoint. Delete it and train again."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnnlab checkpoint (expected format {FORMAT!r}); delete it and train again")
    missing = [k for k, kind in (("model", dict), ("state_dict", dict)) if not isinstance(payload.get(k), kind)]
    info = payload.get("model") if isinstance(payload.get("model"), dict) else {}
    if missing or not isinstance(info.get("hparams", {}), dict) or not isinstance(payload.get("metrics", {}), dict):
        raise CheckpointError(f"{path} is damaged: its {', '.join(missing) or 'model or metrics'} entry is missing or "
                              "of the wrong kind; delete it and train again")
    bad = [k for k, v in payload["state_dict"].items() if not isinstance(v, torch.Tensor)
           or (v.is_floating_point() and not bool(torch.isfinite(v).all()))]
    if bad:
        raise CheckpointError(f"{path} holds NaN, infinite or non-tensor weights ({', '.join(bad[:5])}): the run that "
                              "saved it had diverged or the file is damaged; delete it and train again")
    if model is None:
        if info.get("name") not in MODELS:
            raise CheckpointError(
                f"{path} holds a {info.get('class')!r} model that is not in cnnlab's registry; "
                "pass model=... to load its weights into a model you built"
            )
        try:
            model = create_model(info["name"], **info.get("hparams", {}))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot rebuild {info['name']} from {info['hparams']}: {err}") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} holds weights of {info.get('class')}({info.get('hparams')}) that do not fit "
            f"{type(model).__name__}({getattr(model, 'hparams', '')}): "
            + " ".join(str(err).split())[:600]
        ) from None
    model.eval()
    try:
        history = History.from_dict(payload["history"]) if payload.get("history") else None
    except TypeError as err:
        raise CheckpointError(f"{path} holds a training history cnnlab cannot read ({err}); delete it and train again") from None
    return Checkpoint(model=model, history=history, metrics=payload.get("metrics", {}), path=path)
