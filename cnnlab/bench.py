"""One epoch of the seed CNN on full MNIST, two ways, on this machine, in one run.

1. The pytorch/examples MNIST recipe as published: torchvision ``MNIST`` with ``ToTensor`` +
   ``Normalize`` per sample, a ``DataLoader`` of batch 64, Adadelta with lr 1.0.
2. cnnlab's path: the split held as one normalised tensor, batched by indexing, larger
   batches, a one-cycle schedule, and bf16 autocast where the hardware has it.

Both train the same model (``SmallCNN``) from the same seed and are scored on the full test set.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from cnnlab import data
from cnnlab.models import SmallCNN
from cnnlab.device import pick_device
from cnnlab.train import TrainConfig, fit, seed_everything

#: cnnlab's settings: fit's defaults (Adam, one-cycle schedule, batch 64) for one epoch.
CNNLAB_SETTINGS = {"epochs": 1}


@dataclass
class EpochResult:
    path: str
    seconds: float  # wall time of the training epoch alone
    images_per_s: float
    test_acc: float
    setup_seconds: float  # building the dataset / loading tensors, before training
    train_images: int


def recipe_epoch(device: torch.device, seed: int = 1, limit: int | None = None) -> EpochResult:
    """pytorch/examples' mnist/main.py for one epoch (its ``train`` and ``test`` loops).

    ``limit`` trains on a stratified subset (the same images :func:`cnnlab_epoch` uses), for tests.
    """
    t0 = time.perf_counter()
    root = data.locate("mnist").parent.parent  # the extracted raw files, where torchvision looks
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(root, train=True, download=False, transform=transform)
    test_set = datasets.MNIST(root, train=False, download=False, transform=transform)
    if limit is not None:
        train_set = Subset(train_set, data.stratified_indices(train_set.targets, limit, seed).tolist())
    cuda_kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True, **cuda_kwargs)
    test_loader = DataLoader(test_set, batch_size=1000, **cuda_kwargs)
    seed_everything(seed)
    model = SmallCNN().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    setup = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.train()
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)  # = nll_loss(log_softmax(...)), as the recipe computes it
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    n = len(train_set)
    return EpochResult("pytorch/examples recipe", seconds, n / seconds, correct / len(test_set), setup, n)


def cnnlab_epoch(device: torch.device, seed: int = 1, limit: int | None = None) -> EpochResult:
    """cnnlab's in-memory path: ``data.load`` + ``fit`` with :data:`CNNLAB_SETTINGS`."""
    t0 = time.perf_counter()
    train_set = data.load("mnist", "train", limit=limit, seed=seed, device=device)
    test_set = data.load("mnist", "test", device=device)
    setup = time.perf_counter() - t0
    model = SmallCNN()
    history = fit(model, train_set, test_set, device=str(device), seed=seed, progress=False, **CNNLAB_SETTINGS)
    epoch = history.epochs[0]
    return EpochResult("cnnlab", epoch["seconds"], epoch["images_per_s"], epoch["test_acc"], setup, len(train_set))


def run(device: str | None = None, seed: int = 1, limit: int | None = None) -> dict:
    """Both paths on one device; the result as a plain dict (``speedup`` = recipe time / cnnlab time)."""
    dev = pick_device(device)
    recipe = recipe_epoch(dev, seed, limit)
    ours = cnnlab_epoch(dev, seed, limit)
    if recipe.train_images != ours.train_images:
        raise RuntimeError(f"the two paths saw {recipe.train_images} and {ours.train_images} images")
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "recipe": asdict(recipe),
        "cnnlab": asdict(ours),
        "cnnlab_settings": {k: v for k, v in asdict(TrainConfig(**CNNLAB_SETTINGS)).items() if k not in ("progress", "device")},
        "train_images": ours.train_images,
        "speedup": recipe.seconds / ours.seconds,
        "accuracy_at_least_recipe": ours.test_acc >= recipe.test_acc,
    }


def format_result(r: dict) -> str:
    """The benchmark as a short table."""
    rows = [f"device {r['device']} ({r['threads']} threads), torch {r['torch']}, one epoch of SmallCNN on {r['train_images']:,} MNIST images"]
    rows.append(f"{'path':<26}{'epoch s':>9}{'images/s':>10}{'test acc':>10}{'setup s':>9}")
    for key in ("recipe", "cnnlab"):
        e = r[key]
        rows.append(
            f"{e['path']:<26}{e['seconds']:>9.1f}{e['images_per_s']:>10.0f}{e['test_acc']:>10.2%}{e['setup_seconds']:>9.1f}"
        )
    verdict = "at least" if r["accuracy_at_least_recipe"] else "BELOW"
    rows.append(f"cnnlab is {r['speedup']:.2f}x faster per epoch, with accuracy {verdict} the recipe's")
    return "\n".join(rows)


def dashboard_overhead(device: str | None = None, seed: int = 1, limit: int | None = None, epochs: int = 1) -> dict:
    """The live dashboard's cost: the same training run (SmallCNN, the same seed and data)
    without and with :class:`~cnnlab.callbacks.LiveDashboard` (drawing every frame as in a
    notebook, only not sending it). Wall times of the whole ``fit``, and the dashboard's own clock."""
    from cnnlab.callbacks import LiveDashboard

    dev = pick_device(device)
    train_set = data.load("mnist", "train", limit=limit, seed=seed, device=dev)
    test_set = data.load("mnist", "test", device=dev)
    times = {}
    for name in ("plain", "dashboard", "plain again"):  # plain twice: the spread of plain runs is the noise
        dash = LiveDashboard(test_set, show=False) if name == "dashboard" else None
        seed_everything(seed)
        history = fit(SmallCNN(), train_set, test_set, epochs=epochs, device=str(dev), seed=seed, progress=False,
                      callbacks=[dash] if dash else [])
        times[name] = history.seconds
        if dash:
            frames, own = dash.frames, dash.seconds
    plain = min(times["plain"], times["plain again"])
    return {"device": str(dev), "train_images": len(train_set), "epochs": epochs, "seconds": times,
            "overhead": times["dashboard"] / plain - 1, "frames": frames, "dashboard_seconds": own,
            "dashboard_share": own / times["dashboard"]}


def format_overhead(r: dict) -> str:
    """The dashboard benchmark in three lines."""
    t = r["seconds"]
    return "\n".join([
        f"device {r['device']}, SmallCNN, {r['epochs']} epoch(s) on {r['train_images']:,} MNIST images",
        f"fit without dashboard {t['plain']:.1f} s and {t['plain again']:.1f} s; with it {t['dashboard']:.1f} s",
        f"dashboard: {r['frames']} frames, {r['dashboard_seconds']:.1f} s by its own clock ({r['dashboard_share']:.1%}); "
        f"wall-time overhead {r['overhead']:+.1%}",
    ])


__all__ = ["run", "format_result", "recipe_epoch", "cnnlab_epoch", "CNNLAB_SETTINGS", "dashboard_overhead", "format_overhead"]
