"""Trained models kept between notebooks: a notebook saves its model, a later one loads it.

A saved run is a checkpoint in ``cache_dir()/runs/`` whose file name carries a hash of what
produced it (model and its hparams, dataset and its size, training settings), so a smoke run
never overwrites a full one and changed settings never load a stale model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnlab import cache_dir, smoke_mode
from cnnlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cnnlab.data import ImageSet
from cnnlab.files import SaveError, check_writable
from cnnlab.device import pick_device
from cnnlab.models import create_model
from cnnlab.train import History, fit, make_config, predict, seed_everything

__all__ = [
    "SERIES_SETTINGS", "AUGMENT", "LADDER", "COMMITTEE", "SPREAD_SEEDS", "SERIES_MODELS",
    "CPU_EPOCH_SECONDS", "planned_training", "format_plan", "series_settings", "series_model", "load_series_run",
    "PROBE_SIZE", "TrainingInterrupted", "run_path", "save_run", "load_or_train", "scored_on",
]

#: Notebook 06's augmentation: each training digit moved up to 2 px per axis, turned up to 10
#: degrees either way and scaled by 0.9-1.1, every image with its own draw (cnnlab.augment).
AUGMENT: dict = {"shift": 2, "rotate": 10, "scale": [0.9, 1.1]}

#: How the series trains each model (the rest are fit's defaults). Notebooks start from these,
#: so a model saved by one notebook is found by the next.
SERIES_SETTINGS: dict[str, dict] = {
    "linear": {"epochs": 5},
    "mlp": {"epochs": 10},
    "small-cnn": {"epochs": 5},  # full MNIST: 99.29% (seed 0), 99.27% (seed 1); 3 epochs: 99.11%
    "conv-stack-8": {"epochs": 2},
    # Notebook 04: the same 3x3 convs with smaller and larger receptive fields (9, 33 and 68 px).
    "conv-stack-4": {"epochs": 2},
    "conv-stack-16": {"epochs": 2},
    "conv-stack-8-pool": {"epochs": 2},
    "lenet5": {"epochs": 5, "amp": "off"},  # bf16 on a CPU: 20x slower for its 6-16 channel layers (30 s vs 1.6 s an epoch of 3,000)
    # Notebook 06: the MLP as large as the small CNN, and the ladder's rungs (see LADDER). The
    # modern CNN's three rungs train 2 epochs each and are also the committee (COMMITTEE): the
    # most notebook 06 affords within 10 minutes on a 2-core CPU (about 48 s an epoch there on
    # 2026-12-04: docs/performance.md); an exercise there trains longer.
    "mlp-wide": {"epochs": 10},
    "small-cnn-bn": {"epochs": 5},
    "modern-cnn-plain": {"epochs": 2},
    "modern-cnn-aug": {"epochs": 2, "augment": AUGMENT},
    "modern-cnn": {"epochs": 2, "augment": AUGMENT, "label_smoothing": 0.1},
}

#: The model of each saved run: (registry name, constructor arguments).
SERIES_MODELS: dict[str, tuple[str, dict]] = {
    "linear": ("linear", {}),
    "mlp": ("mlp", {}),
    "small-cnn": ("small-cnn", {}),
    "conv-stack-8": ("conv-stack", {"depth": 8, "padding": 1}),  # notebook 04: 8 padded 3x3 convs, a 17x17 field
    "conv-stack-4": ("conv-stack", {"depth": 4, "padding": 1}),  # 9x9
    "conv-stack-16": ("conv-stack", {"depth": 16, "padding": 1}),  # 33x33
    "conv-stack-8-pool": ("conv-stack", {"depth": 8, "padding": 1, "pool_every": 2}),  # conv8 68x68, its last pool 76x76
    "lenet5": ("lenet5", {}),
    "mlp-wide": ("mlp", {"hidden": 1509}),  # 1,199,665 parameters: the small CNN's 1,199,882, give or take 217
    "small-cnn-bn": ("small-cnn", {"batchnorm": True}),
    "modern-cnn-plain": ("modern-cnn", {}),
    "modern-cnn-aug": ("modern-cnn", {}),
    "modern-cnn": ("modern-cnn", {}),
}

#: Notebook 06's ablation ladder, from the small CNN of notebook 05 to the modern CNN: each rung
#: is the one before it with one change, trained from the same seed (the deeper body also trains
#: 2 epochs, not 5). (saved run, what changed) The notebook adds the COMMITTEE as a last row.
LADDER: tuple[tuple[str, str], ...] = (
    ("small-cnn", "small CNN (notebook 05)"),
    ("small-cnn-bn", "+ BatchNorm"),
    ("modern-cnn-plain", "+ deeper conv body, global average pooling (2 epochs)"),
    ("modern-cnn-aug", "+ augmentation"),
    ("modern-cnn", "+ label smoothing 0.1"),
)

#: The committee of notebooks 06 and 07 (and the CLI's report): the ladder's three modern CNNs, as
#: (saved run, seed), their class probabilities averaged. They differ in their training (plain,
#: augmented, augmented with label smoothing), which costs nothing to train beyond the ladder.
COMMITTEE: tuple[tuple[str, int], ...] = (("modern-cnn-plain", 0), ("modern-cnn-aug", 0), ("modern-cnn", 0))

#: Notebook 07's seeds of the small CNN, trained once each to measure the seed-to-seed spread.
SPREAD_SEEDS: tuple[int, ...] = (0, 1, 2)


#: Seconds one training epoch of the 60,000 MNIST images takes on the project's 2-core CPU (AMD EPYC
#: with bf16 units, torch 2.14.1, 2026-12-04; from the histories of the series' saved runs; the same
#: machine type has been up to 3.5x slower on other days): for estimates before training.
CPU_EPOCH_SECONDS: dict[str, float] = {
    "linear": 0.4, "mlp": 0.7, "small-cnn": 30.0, "small-cnn-bn": 35.0, "mlp-wide": 5.4,
    "modern-cnn-plain": 57.0, "modern-cnn-aug": 55.0, "modern-cnn": 51.0,
}


def planned_training(runs: Sequence[tuple[str, int]], train_set: ImageSet, device: str | None = None) -> list[dict]:
    """Which of the series' ``runs`` (name, seed) have no saved run for ``train_set`` yet, so
    would be trained now: ``[{"name", "seed", "epochs", "seconds"}]``, ``seconds`` estimated for
    the project's 2-core CPU (:data:`CPU_EPOCH_SECONDS`, scaled to the number of images)."""
    plan = []
    for name, seed in dict.fromkeys(runs):  # each run once, in order
        settings = series_settings(name, device=device) | {"seed": seed}
        config = asdict(make_config(**settings))
        if not run_path(name, series_model(name), train_set, config).exists():
            per_epoch = CPU_EPOCH_SECONDS.get(name, 30.0) * len(train_set) / 60_000
            plan.append({"name": name, "seed": seed, "epochs": config["epochs"], "seconds": per_epoch * config["epochs"]})
    return plan


def format_plan(plan: Sequence[dict]) -> str:
    """What :func:`planned_training` says will be trained, and about how long it takes, in one line."""
    if not plan:
        return "every run it needs is saved: nothing to train"
    runs = ", ".join(f"{p['name']} (seed {p['seed']}, {p['epochs']} epoch{'s' if p['epochs'] != 1 else ''})" for p in plan)
    minutes = sum(p["seconds"] for p in plan) / 60
    return (f"to train first: {runs}; about {minutes:.0f} min on a 2-core CPU" if minutes >= 1 else
            f"to train first: {runs}; under a minute on a 2-core CPU") + " (a GPU takes far less)"


def series_settings(name: str, device: str | None = None) -> dict:
    """The series' training settings for model ``name`` on ``device`` (None: the best available);
    one epoch in the smoke setting. The device is not part of a saved run's name: a run trained
    on a GPU is found on a CPU, and the other way round."""
    settings = dict(SERIES_SETTINGS[name])
    if smoke_mode():
        settings["epochs"] = 1
    settings["device"] = device
    return settings


def series_model(name: str) -> nn.Module:
    """A fresh model for the saved run ``name`` (a key of :data:`SERIES_MODELS`)."""
    if name not in SERIES_MODELS:
        raise ValueError(f"no series model called {name!r}; choose one of: {', '.join(SERIES_MODELS)}")
    model_name, kwargs = SERIES_MODELS[name]
    return create_model(model_name, **kwargs)


def load_series_run(name: str, train_set: ImageSet, test_set: ImageSet, *, device: str | None = None,
                         seed: int = 0, **overrides) -> tuple[nn.Module, History]:
    """The series' run ``name`` (model and settings as the notebooks train it) with ``seed``:
    loaded if saved, else trained and saved now. ``overrides`` change settings (and so the run)."""
    settings = series_settings(name, device=device) | {"seed": seed} | overrides
    return load_or_train(name, lambda: series_model(name), train_set, test_set, **settings)


_NOT_PART_OF_THE_RESULT = ("progress", "device", "eval_batch_size")


def run_path(name: str, model: nn.Module, train_set: ImageSet, config: dict) -> Path:
    """Where the run ``name`` with this model, data and config is (or would be) saved."""
    key = {
        "model": getattr(model, "name", type(model).__name__),
        "hparams": getattr(model, "hparams", {}),
        "data": [train_set.name, len(train_set)],
        "config": {k: v for k, v in config.items() if k not in _NOT_PART_OF_THE_RESULT},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return cache_dir() / "runs" / f"{name}-{digest}.pt"


def scored_on(eval_set: ImageSet | None) -> str:
    """What the accuracy a run records is measured on: "validation" for a set whose ``split`` is
    "validation" (a part of the training data held out to choose with), else "test"."""
    return "validation" if eval_set is not None and eval_set.split == "validation" else "test"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a notebook's interrupt) stopped a run that :func:`load_or_train` was training:
    its half-trained model is neither saved nor returned. A KeyboardInterrupt, so whatever was
    interrupting stops too (a notebook cell, ``python -m cnnlab report``)."""


#: How many test images (evenly spaced through the set) a saved run is checked on when it is loaded.
PROBE_SIZE = 1000


def _probe(eval_set: ImageSet) -> ImageSet:
    """At most PROBE_SIZE images spread evenly through ``eval_set`` (MNIST's test set is not
    shuffled: its first half was written by other people than its second)."""
    return eval_set.subset(range(0, len(eval_set), max(1, len(eval_set) // PROBE_SIZE))[:PROBE_SIZE])


def _fingerprint(probe: ImageSet) -> str:
    return hashlib.sha256(probe.x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _answers(model: nn.Module, probe: ImageSet) -> Tensor:
    """The classes ``model`` gives the probe's images, on the CPU."""
    return predict(model, probe).argmax(1)


def save_run(
    name: str,
    model: nn.Module,
    history: History,
    train_set: ImageSet,
    *,
    scored: str = "test",
    eval_set: ImageSet | None = None,
    replace: bool = True,
) -> Path:
    """Save a trained model with its history and the accuracy ``fit`` measured last (on the test
    set, or the validation set: ``scored``) for later notebooks, and say under which name (the
    later notebooks print the same name when they load it). With ``eval_set`` (the set that
    accuracy was measured on) the run also keeps its answers to a probe of it, so that loading it
    later checks the weights on PROBE_SIZE images instead of scoring the whole set again.
    ``replace=False`` keeps a run already saved under these settings (a notebook that trains
    again each time it runs, so that the notebooks after it keep the numbers they printed)."""
    path = run_path(name, model, train_set, history.config)
    if not replace and path.exists():
        print(f"{name}: the run {path.name} was saved before, by an earlier run with these settings: kept as it was")
        return path
    test_acc = history.last("test_acc")
    metrics: dict = {"test_acc": test_acc}
    if eval_set is not None:
        probe = _probe(eval_set)
        metrics["probe"] = {"images": _fingerprint(probe), "answers": _answers(model, probe).tolist()}
    save_checkpoint(path, model, history=history, metrics=metrics)
    print(f"{name}: saved the run {path.name} ({scored} accuracy {test_acc:.2%})")
    return path


def _still_the_saved_run(model: nn.Module, metrics: dict, eval_set: ImageSet) -> tuple[bool, str]:
    """Whether a loaded model is the run that was saved, checked on a probe of ``eval_set``, and if
    not, why. Where the run kept its answers to these very images, at least 98% of them must be
    the same (a GPU and a CPU may differ on a close call); otherwise (another test set, or a run
    saved before runs kept their answers) the probe's accuracy must agree with the recorded one."""
    recorded = metrics.get("test_acc", float("nan"))
    if not isinstance(recorded, (int, float)) or isinstance(recorded, bool) or not 0 <= recorded <= 1:
        return False, f"has a damaged record (its test accuracy is {recorded!r}, not a number from 0 to 1)"
    kept = metrics.get("probe")
    if kept is not None and not (isinstance(kept, dict) and isinstance(kept.get("images"), str)
                                 and isinstance(kept.get("answers"), list)
                                 and all(isinstance(a, int) and not isinstance(a, bool) for a in kept["answers"])):
        return False, "has a damaged record (its answers to the probe images are not a list of classes)"
    kept = kept or {}
    probe = _probe(eval_set)
    answers = _answers(model, probe)
    now = float((answers == probe.y.cpu()).float().mean())
    kind = scored_on(eval_set)
    images = (f"{len(probe):,} of these {len(eval_set):,} {kind} images" if len(probe) < len(eval_set)
              else f"these {len(eval_set):,} {kind} images")
    if kept.get("images") == _fingerprint(probe) and len(kept.get("answers", ())) == len(probe):
        same = float((answers == torch.as_tensor(kept["answers"])).float().mean())
        return same >= 0.98, f"recorded {recorded:.2%} but scores {now:.2%} on {images}: {1 - same:.1%} of its answers changed"
    return _agrees(recorded, now, len(probe)), f"recorded {recorded:.2%} but scores {now:.2%} on {images}"


def _agrees(recorded: float, now: float, n: int) -> bool:
    """Whether a saved run still scores what it recorded: within 3 standard errors of an accuracy
    measured on ``n`` test images (the notebooks' smoke setting scores on a subset), at least 0.5 point."""
    if not math.isfinite(recorded):
        return False
    p = min(max(recorded, 1e-3), 1 - 1e-3)
    return abs(now - recorded) <= max(0.005, 3 * math.sqrt(p * (1 - p) / max(n, 1)))


def load_or_train(
    name: str,
    make_model: Callable[[], nn.Module],
    train_set: ImageSet,
    test_set: ImageSet,
    **settings,
) -> tuple[nn.Module, History]:
    """The saved run ``name`` trained with ``settings``, or (if there is none) train and save it now.

    Either way the model comes back on the training device (``settings["device"]``, else the best
    available), in eval mode, so what follows does not depend on whether a saved run was found.
    """
    config = asdict(make_config(**settings))
    device = pick_device(config["device"])  # a bad device is refused before anything is loaded or trained
    seed_everything(config["seed"])
    model = make_model()
    path = run_path(name, model, train_set, config)
    if path.exists():
        try:
            ckpt = load_checkpoint(path, model=model)
            ok, why = _still_the_saved_run(ckpt.model.to(device), ckpt.metrics, test_set)
            if ok:
                recorded = ckpt.metrics.get("test_acc", float("nan"))
                print(f"{name}: loaded the saved run {path.name} ({scored_on(test_set)} accuracy {recorded:.2%})")
                return ckpt.model, ckpt.history
            print(f"{name}: the saved run {path.name} {why}; training again")
        except CheckpointError as err:
            print(f"{name}: the saved run could not be used ({err}); training again")
    else:
        print(f"{name}: no saved run with these settings; training it now")
    try:  # a run that could not be saved is refused now, not after training
        check_writable(path, "saved run")
    except ValueError as err:
        raise ValueError(f"{name}: {err}. Saved runs go in {path.parent}: point CNNLAB_CACHE at a folder you can "
                         "write (for example: export CNNLAB_CACHE=~/.cache/cnnlab), or fix that folder") from None
    if path.exists():  # loading filled this model with the saved weights: start again from the seed
        seed_everything(config["seed"])
        model = make_model()
    history = fit(model, train_set, test_set, **settings)
    if history.stopped == "interrupt":  # half-trained: never saved, and never handed on as the run
        raise TrainingInterrupted(f"{name}: training was interrupted after {len(history.epochs)} of "
                                  f"{config['epochs']} epochs; nothing was saved or used. Run it again to train it.")
    if history.stopped is None:
        try:
            save_run(name, model, history, train_set, scored=scored_on(test_set), eval_set=test_set)
        except SaveError as err:  # a full disk: the model is used now, and trained again next time
            print(f"{name}: the run is used but not kept ({err}); it will be trained again next time")
    return model, history
