"""One epoch of the seed CNN on full MNIST, two ways, on this machine, in one run; then the time
the series' settings take to reach 99.2%.

1. The pytorch/examples MNIST recipe as published: torchvision ``MNIST`` with ``ToTensor`` +
   ``Normalize`` per sample, a ``DataLoader`` of batch 64, Adadelta with lr 1.0.
2. cnnlab's path: the split held as one normalised tensor, batched by indexing, larger
   batches, a one-cycle schedule, and bf16 autocast where the hardware has it.

Both train the same model (``SmallCNN``) from the same seed and are scored on the full test set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from cnnlab import data
from cnnlab.data import ImageSet
from cnnlab.models import SmallCNN
from cnnlab.device import pick_device
from cnnlab.train import Callback, StopTraining, TrainConfig, fit, seed_everything

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


def _first_error(nb) -> str | None:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"[:500]
    return None


def run_notebook(path: Path, out_dir: Path, env: dict[str, str], timeout: int = 600) -> dict:
    """Execute one notebook top to bottom (nbclient, a fresh kernel, cwd notebooks/); save the
    executed copy in ``out_dir``; return its time and the first error (None when it ran clean)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    error = None
    try:
        client.execute(env=env)  # the kernel's environment; this process's own is left alone
    except nbclient.exceptions.CellExecutionError as err:
        error = _first_error(nb) or str(err).strip().splitlines()[-1][:500]
    except Exception as err:  # a kernel that died or timed out: say so, go on with the next notebook
        error = f"{type(err).__name__}: {str(err).strip()[:500]}"
    seconds = time.perf_counter() - t0
    nbformat.write(nb, out_dir / path.name)
    return {"notebook": path.stem, "seconds": seconds, "error": error}


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
        torch.cuda.synchronize(device)
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


def run(device: str | None = None, seed: int = 1, limit: int | None = None, repeats: int = 2,
        report: Callable[[str], None] | None = None) -> dict:
    """Both paths on one device, alternated ``repeats`` times (recipe, cnnlab, recipe, cnnlab, ...)
    so a burst of load on a shared machine cannot decide the ratio; each path's best epoch counts
    (``speedup`` = best recipe time / best cnnlab time) and the spread of the others is reported.
    ``report`` (e.g. ``print``) hears one line after each epoch, so a long benchmark shows progress."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    dev = pick_device(device)
    runs: dict[str, list[EpochResult]] = {"recipe": [], "cnnlab": []}
    for i in range(repeats):
        for key, epoch in (("recipe", recipe_epoch), ("cnnlab", cnnlab_epoch)):
            runs[key].append(epoch(dev, seed, limit))
            if report is not None:
                r = runs[key][-1]
                report(f"  {i + 1}/{repeats} {r.path}: {r.seconds:.1f} s, test accuracy {r.test_acc:.2%}")
    best = {k: min(v, key=lambda r: r.seconds) for k, v in runs.items()}
    if best["recipe"].train_images != best["cnnlab"].train_images:
        raise RuntimeError(f"the two paths saw {best['recipe'].train_images} and {best['cnnlab'].train_images} images")
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "recipe": asdict(best["recipe"]),
        "cnnlab": asdict(best["cnnlab"]),
        "all_seconds": {k: [r.seconds for r in v] for k, v in runs.items()},
        "cnnlab_settings": {k: v for k, v in asdict(TrainConfig(**CNNLAB_SETTINGS)).items() if k not in ("progress", "device")},
        "train_images": best["cnnlab"].train_images,
        "speedup": best["recipe"].seconds / best["cnnlab"].seconds,
        "accuracy_at_least_recipe": best["cnnlab"].test_acc >= best["recipe"].test_acc,
    }


def format_result(r: dict) -> str:
    """The benchmark as a short table."""
    rows = [f"device {r['device']} ({r['threads']} threads), torch {r['torch']}, one epoch of SmallCNN on "
            f"{r['train_images']:,} MNIST images, the two paths alternated {r['repeats']}x (best of each shown)"]
    rows.append(f"{'path':<26}{'epoch s':>9}{'images/s':>10}{'test acc':>10}{'setup s':>9}   all epochs (s)")
    for key in ("recipe", "cnnlab"):
        e = r[key]
        every = ", ".join(f"{t:.1f}" for t in r["all_seconds"][key])
        rows.append(
            f"{e['path']:<26}{e['seconds']:>9.1f}{e['images_per_s']:>10.0f}{e['test_acc']:>10.2%}{e['setup_seconds']:>9.1f}"
            f"   {every}"
        )
    verdict = "at least" if r["accuracy_at_least_recipe"] else "BELOW"
    rows.append(f"cnnlab is {r['speedup']:.2f}x faster per epoch, with accuracy {verdict} the recipe's")
    return "\n".join(rows)


class _StopAt(Callback):
    """Ends training after the first epoch whose test accuracy reaches ``target``; tells ``report``
    each epoch's accuracy and time."""

    def __init__(self, target: float, report: Callable[[str], None] | None = None):
        self.target, self.report = target, report

    def after_epoch(self, state) -> None:
        e = state.history.epochs[-1]
        if self.report is not None:
            self.report(f"  epoch {e['epoch']}: test accuracy {e['test_acc']:.2%} at {e['elapsed']:.1f} s")
        if e["test_acc"] >= self.target:
            raise StopTraining


def time_to_accuracy(device: str | None = None, target: float = 0.992, seed: int = 0, limit: int | None = None,
                     report: Callable[[str], None] | None = None, **settings) -> dict:
    """Wall time of ``fit`` until the first epoch whose test accuracy reaches ``target``, for the
    seed CNN at the series' settings (``runs.SERIES_SETTINGS["small-cnn"]``, overridable),
    warm-up and per-epoch evaluation included; training stops there."""
    from cnnlab.runs import SERIES_SETTINGS

    if not 0 < target < 1:
        raise ValueError(f"target is an accuracy between 0 and 1, got {target}")
    dev = pick_device(device)
    settings = {**SERIES_SETTINGS["small-cnn"], **settings}
    train_set = data.load("mnist", "train", limit=limit, seed=seed, device=dev)
    test_set = data.load("mnist", "test", device=dev)
    seed_everything(seed)
    history = fit(SmallCNN(), train_set, test_set, device=str(dev), seed=seed, progress=False,
                  callbacks=[_StopAt(target, report)], **settings)
    hit = next((e for e in history.epochs if e["test_acc"] >= target), None)
    return {"device": str(dev), "target": target, "train_images": len(train_set), "settings": settings,
            "reached": hit is not None, "epoch": hit["epoch"] if hit else None,
            "seconds": hit["elapsed"] if hit else history.seconds, "test_acc": history.last("test_acc"),
            "epochs": [{k: e[k] for k in ("epoch", "seconds", "elapsed", "test_acc")} for e in history.epochs]}


def format_time_to_accuracy(r: dict) -> str:
    """The time-to-accuracy run in two lines."""
    per_epoch = ", ".join(f"{e['test_acc']:.2%} at {e['elapsed']:.1f} s" for e in r["epochs"])
    if r["settings"].get("cuda_graph") and r["device"].startswith("cuda"):
        per_epoch += " (CUDA-graph step: Adam's beta1 held at 0.9, not cycled as on the eager path)"
    head = (f"time to {r['target']:.1%} on {r['device']} (SmallCNN, {r['settings']}, {r['train_images']:,} images): "
            + (f"{r['seconds']:.1f} s of fit, epoch {r['epoch']}, warm-up and evaluation included" if r["reached"]
               else f"NOT REACHED in {len(r['epochs'])} epochs ({r['seconds']:.1f} s)"))
    return head + "\n  by epoch: " + per_epoch


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


def widget_latency(data: ImageSet, models: dict, *, repeats: int = 5) -> dict[str, float]:
    """Each widget's answer time: the median over ``repeats`` changes of one control, from the
    change to the new picture and text (what a learner waits for after moving a slider), in
    seconds. ``models``: name -> model (the series uses the linear model, the MLP and the small
    CNN; the small CNN is the one the single-model widgets get). Nothing is asserted: a
    benchmark prints, a test never times."""
    import statistics

    from cnnlab.drawing import drawing_pad
    from cnnlab.train import predict
    from cnnlab.widgets import (augment_explorer, error_flagger, feature_map_explorer, kernel_playground,
                                product_explorer, receptive_field_explorer, shift_explorer, window_explorer)

    cnn = list(models.values())[-1]
    shown = data.subset(range(min(48, len(data))))
    flagged = data.subset(range(min(2000, len(data))))  # enough images for a few errors to flag
    guesses = [[("jersey", 0.5), ("sweatshirt", 0.2), ("cardigan", 0.1), ("wool", 0.05), ("apron", 0.05)]] * len(shown)

    def slide(control, values):
        def change(k):
            control.value = values[k % len(values)]
        return change

    def flip(toggle):
        def change(k):
            toggle.value = not toggle.value
        return change

    cases = [  # (name, the widget, the change a learner makes)
        (f"shift_explorer ({len(models)} models): shift right", lambda: shift_explorer(models, data),
         lambda b: slide(b.controls["dx"], [1, 2, 3, 0])),
        ("kernel_playground: stride", lambda: kernel_playground(data), lambda b: slide(b.controls["stride"], [2, 1])),
        ("window_explorer: output col", lambda: window_explorer(data), lambda b: slide(b.controls["col"], [5, 6, 7, 8])),
        ("receptive_field_explorer: unit row", lambda: receptive_field_explorer({"cnn": cnn}, data, images=16),
         lambda b: slide(b.controls["row"], [1, 2, 0])),
        ("feature_map_explorer: channel", lambda: feature_map_explorer(cnn, data, pool=500),
         lambda b: slide(b.controls["channel"], [1, 2, 3, 0])),
        ("augment_explorer: rotate", lambda: augment_explorer(data), lambda b: slide(b.controls["rotate"], [20.0, 30.0, 10.0])),
        ("error_flagger: flag one", lambda: error_flagger(flagged, predict(cnn, flagged)), lambda b: flip(b.toggles[0])),
        ("product_explorer: photo", lambda: product_explorer(shown, guesses, predict(cnn, shown)),
         lambda b: slide(b.slider, [1, 2, 3, 0])),
    ]
    times = {}
    for name, make, changer in cases:
        box = make()
        change = changer(box)
        change(0)  # a warm-up change
        samples = []
        for k in range(1, repeats + 1):
            t0 = time.perf_counter()
            change(k)
            samples.append(time.perf_counter() - t0)
        times[name] = statistics.median(samples)
    pad = drawing_pad(models, data, maps_model=cnn)
    pad.strokes.extend([[(140, 40 + 20 * k) for k in range(11)]])  # a "1", drawn down the middle
    pad.update()  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pad.update()  # what a lifted pen runs
        samples.append(time.perf_counter() - t0)
    times[f"drawing_pad ({len(models)} models and the CNN's maps): pen lifted"] = statistics.median(samples)
    return times


def format_widget_latency(times: dict[str, float]) -> str:
    """One line a widget, slowest first, with the 100 ms a slider needs marked."""
    return "\n".join(f"{1000 * t:7.1f} ms  {'over 100 ms ' if t > 0.1 else '            '}{name}"
                     for name, t in sorted(times.items(), key=lambda kv: -kv[1]))


__all__ = ["run", "format_result", "recipe_epoch", "cnnlab_epoch", "CNNLAB_SETTINGS", "time_to_accuracy",
           "format_time_to_accuracy", "dashboard_overhead", "format_overhead",
           "widget_latency", "format_widget_latency"]


# ----- each notebook's time, as a learner meets it ---------------------------------------------

def notebook_times(names: Sequence[str] | None = None, *, store: bool = False, timeout: int = 1800,
                   folder: Path | None = None, cache: Path | None = None,
                   report: Callable[[str], None] = print) -> list[dict]:
    """Each notebook in ``names`` (stems or numbers such as "06"; default all) at its default
    setting, top to bottom on a fresh kernel, twice: **cold**, in a new temporary cache holding
    only what the earlier notebooks saved (the order a learner takes), then **warm**, with its own
    saved runs and caches present. Notebooks before the first named one run once, untimed, to
    save the runs it loads. ``store``: write each cold run's executed copy back into ``notebooks/``
    (its stored outputs). ``folder``: where the notebooks are (default: the checkout's
    ``notebooks/``). ``cache``: a folder to use as the cache and keep afterwards (default: a new
    temporary one, removed); it records in ``prepared.txt`` which notebooks ran in it, and an
    earlier notebook recorded there is not run again, so that a later call can time the next
    notebooks without preparing the earlier ones twice. A named notebook recorded there is
    refused: its own runs are in the cache, so it cannot run cold.
    Returns ``[{"notebook", "cold", "warm", "error"}]`` (seconds)."""
    import os
    import shutil
    import tempfile

    from cnnlab import repo_root

    folder = repo_root() / "notebooks" if folder is None else Path(folder)
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise ValueError(f"no notebooks in {folder}: run the benchmark from a checkout of the repository")
    wanted = [p for p in paths if names is None or p.stem in names or p.stem[:2] in names]
    unknown = sorted(set(names or ()) - {p.stem for p in wanted} - {p.stem[:2] for p in wanted})
    if unknown or not wanted:
        raise ValueError(f"no notebook called {', '.join(unknown) or names}; choose from: "
                         f"{', '.join(p.stem for p in paths)} (or their numbers, 00-{paths[-1].stem[:2]})")
    keep = cache is not None
    cache = Path(cache) if keep else Path(tempfile.mkdtemp(prefix="cnnlab-bench-notebooks-"))
    record = cache / "prepared.txt"
    prepared = set(record.read_text().split()) if record.is_file() else set()
    ran_before = sorted(p.stem for p in wanted if p.stem in prepared)
    if ran_before:
        raise ValueError(f"{', '.join(ran_before)} already ran in {cache}, so it cannot run cold there: "
                         "time it in a new cache folder")
    scratch = cache / "executed"
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CNNLAB_CACHE": str(cache), "CNNLAB_SMOKE": "0",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "PYTHONPATH": os.pathsep.join(p for p in (str(repo_root()), os.environ.get("PYTHONPATH", "")) if p)}
    results = []
    try:
        for path in paths[:paths.index(wanted[-1]) + 1]:
            timed = path in wanted
            if not timed and path.stem in prepared:
                report(f"{path.stem}: its runs are in {cache} already")
                continue
            report(f"{path.stem}: {'cold' if timed else 'preparing the runs later notebooks load'}...")
            cold = run_notebook(path, scratch, env, timeout=timeout)
            if cold["error"]:
                report(f"{path.stem}: FAILED after {cold['seconds']:.0f} s: {cold['error']}")
                results.append({"notebook": path.stem, "cold": cold["seconds"], "warm": None, "error": cold["error"]})
                break  # the later notebooks would miss what this one saves
            with record.open("a") as f:
                f.write(path.stem + "\n")
            if not timed:
                continue
            if store:
                shutil.copyfile(scratch / path.name, path)
            warm = run_notebook(path, scratch, env, timeout=timeout)
            results.append({"notebook": path.stem, "cold": cold["seconds"], "warm": warm["seconds"], "error": warm["error"]})
            report(f"{path.stem}: cold {cold['seconds'] / 60:.1f} min, warm {warm['seconds'] / 60:.1f} min"
                   + (f"  (warm run FAILED: {warm['error']})" if warm["error"] else ""))
    finally:
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    return results


def format_notebook_times(results: Sequence[dict]) -> str:
    """The table of :func:`notebook_times`, against the targets (10 min cold, 3 min warm)."""
    lines = [f"{'notebook':<34} {'cold':>9} {'warm':>9}   (targets: cold <= 10 min, warm <= 3 min; 2-core CPU)"]
    for r in results:
        warm = "-" if r["warm"] is None else f"{r['warm'] / 60:.1f} min"
        flag = "" if r["error"] is None else f"  FAILED: {r['error']}"
        over = [k for k, limit in (("cold", 600), ("warm", 180)) if r[k] is not None and r[k] > limit]
        lines.append(f"{r['notebook']:<34} {r['cold'] / 60:>5.1f} min {warm:>9}" + (f"  over: {', '.join(over)}" if over else "") + flag)
    return "\n".join(lines)
