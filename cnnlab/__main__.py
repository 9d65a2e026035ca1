"""Command line: ``python -m cnnlab {doctor,train,bench,report,models,gpu-check}`` for headless work.

Nothing heavy is imported at the top: ``--help`` and argument errors answer before PyTorch
loads, and bad settings or devices are refused before any data is read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

#: The model registry's names (``cnnlab.models.MODELS``; a test keeps them in step, as the
#: choices below), here so that ``--help`` needs no PyTorch.
MODEL_NAMES = ("linear", "mlp", "small-cnn", "modern-cnn", "conv-stack", "lenet5", "deep-stack")
#: The same for training's choices (``cnnlab.train``) and the datasets (``cnnlab.data.DATASETS``).
OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "adadelta")
AMP_MODES = ("auto", "bf16", "off")
DATASET_NAMES = ("mnist", "fashion-mnist")


def _doctor(args) -> int:
    from cnnlab.doctor import check

    report = check(download=args.download)
    print(report)
    return 0 if report.ok else 1


def _print_epoch(state, stream) -> None:
    """One line per epoch (called by a callback ``_train`` builds)."""
    e = state.history.epochs[-1]
    test = f"  test loss {e['test_loss']:.4f}  test acc {e['test_acc']:.2%}" if "test_acc" in e else ""
    print(
        f"epoch {e['epoch']}/{state.config.epochs}  train loss {e['train_loss']:.4f}  "
        f"train acc {e['train_acc']:.2%}{test}  {e['seconds']:.1f}s  {e['images_per_s']:.0f} img/s",
        file=stream,
        flush=True,
    )


def _json_safe(value):
    """``value`` with every non-finite float as None, so strict JSON parsers accept it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _print_json(obj) -> None:
    print(json.dumps(_json_safe(obj), allow_nan=False))


def interrupted_path(path: str | os.PathLike) -> Path:
    """Where ``train --save PATH`` puts a run that did not finish: ``run.pt`` -> ``run.interrupted.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.interrupted{path.suffix or '.pt'}")


def _check_limits(args) -> None:
    """``--limit-train`` / ``--limit-test``: a positive number of examples, or absent."""
    for name in ("limit_train", "limit_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: limit must be a positive number of examples, "
                             f"got {getattr(args, name)}")


def _train(args) -> int:
    from cnnlab import data
    from cnnlab.checkpoint import save_checkpoint
    from cnnlab.files import SaveError, check_writable
    from cnnlab.models import count_parameters, create_model
    from cnnlab.device import pick_device
    from cnnlab.train import Callback, evaluate, fit, make_config, seed_everything

    # With --json, human-readable lines go to stderr so stdout's last line is the JSON object.
    out = sys.stderr if args.json else sys.stdout
    settings = {"epochs": args.epochs, "seed": args.seed, "device": args.device, "progress": not args.no_progress,
                "cuda_graph": args.cuda_graph}
    for key in ("lr", "batch_size", "optimizer", "amp"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    make_config(**settings)  # bad settings are refused before any data is read
    if args.cuda_graph and (device := pick_device(args.device)).type != "cuda":  # fit refuses it too, after loading
        raise ValueError(f"--cuda-graph replays each training step as a CUDA graph, which needs a CUDA device; "
                         f"this run would train on {device}: leave it off")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    _check_limits(args)
    if args.save:  # an impossible place is refused now, not after training; ~ is expanded as checked
        args.save = str(check_writable(args.save, "checkpoint"))
        check_writable(interrupted_path(args.save), "checkpoint")
    train_set = data.load(args.dataset, "train", limit=args.limit_train, seed=args.seed)
    test_set = data.load(args.dataset, "test", limit=args.limit_test, seed=args.seed)
    seed_everything(args.seed)  # the initial weights too, so a run repeats exactly on CPU
    model = create_model(args.model, train_set.x.shape[1], len(train_set.classes))

    class PrintEpochs(Callback):
        order = 10

        def after_epoch(self, state) -> None:
            _print_epoch(state, out)
    print(
        f"{args.model} ({count_parameters(model):,} parameters) on {args.dataset}: "
        f"{len(train_set):,} train / {len(test_set):,} test images",
        file=out,
        flush=True,
    )
    history = fit(model, train_set, test_set, callbacks=[PrintEpochs()], **settings)
    finished = history.stopped is None
    # The accuracy saved and printed is the final weights' own: after a stop mid-epoch, the last
    # epoch's score describes weights that have since changed.
    test_acc = history.last("test_acc") if finished else evaluate(model, test_set).accuracy
    print(
        f"final test accuracy {test_acc:.2%} after {len(history.epochs)} full epoch(s), {history.seconds:.1f}s on "
        f"{history.device}" + ("" if finished else f" (stopped: {history.stopped}; scored again after the stop)"),
        file=out,
        flush=True,
    )
    if args.save:
        path = Path(args.save) if finished else interrupted_path(args.save)
        metrics = {"test_acc": test_acc, "dataset": args.dataset, "complete": finished}
        try:
            path = save_checkpoint(path, model, history=history, metrics=metrics)
        except SaveError as err:  # a full or read-only disk found only now: the model is not to be lost
            rescue = Path(tempfile.gettempdir()) / f"cnnlab-{os.getpid()}-{path.name}"
            try:
                save_checkpoint(rescue, model, history=history, metrics=metrics)
                kept = f"The model trained now was saved as {rescue} instead: move it where it belongs"
            except SaveError as again:
                kept = f"The model trained now could not be kept anywhere ({again}): free space and train again"
            print(f"error: {err}. {kept}", file=sys.stderr)
            return 130 if history.stopped == "interrupt" else 1
        if finished:
            print(f"saved {path}", file=out)
        else:  # never over a complete checkpoint
            print(f"training did not finish: saved the partial model as {path}; {args.save} is untouched", file=out)
    if args.json:
        _print_json({"model": args.model, "dataset": args.dataset, "test_acc": test_acc, **history.to_dict()})
    return 0 if history.stopped != "interrupt" else 130


def _bench(args) -> int:
    from cnnlab.bench import dashboard_overhead, format_overhead, format_result, format_time_to_accuracy, run, time_to_accuracy

    out = sys.stderr if args.json else sys.stdout
    if not 0 <= args.target < 1:
        raise ValueError(f"--target is a test accuracy between 0 and 1 (0 skips it), got {args.target}")
    if args.store and args.notebooks is None:
        raise ValueError("--store writes the notebooks' outputs: use it with --notebooks")
    if args.cache is not None and args.notebooks is None:
        raise ValueError("--cache is the notebooks' cache folder: use it with --notebooks")
    if args.notebooks is not None:
        from cnnlab.bench import format_notebook_times, notebook_times

        results = notebook_times(args.notebooks or None, store=args.store, cache=args.cache,
                                 report=lambda line: print(line, file=out, flush=True))
        print(format_notebook_times(results), file=out, flush=True)
        if args.json:
            _print_json({"notebooks": results})
        return 1 if any(r["error"] for r in results) else 0
    if args.widgets:
        from cnnlab import data
        from cnnlab.bench import format_widget_latency, widget_latency
        from cnnlab.runs import load_series_run

        train_set = data.load("mnist", "train", limit=args.limit_train)
        test_set = data.load("mnist", "test")
        models = {name: load_series_run(name, train_set, test_set, device=args.device)[0]
                  for name in ("linear", "mlp", "small-cnn")}
        result = widget_latency(test_set, models)
        print(format_widget_latency(result), file=out, flush=True)
    elif args.dashboard:
        result = dashboard_overhead(device=args.device, seed=args.seed, limit=args.limit_train, epochs=args.epochs)
        print(format_overhead(result), file=out, flush=True)
    else:
        print(f"one epoch each way, alternated {args.repeats}x (about {args.repeats * 2} epochs of training)...",
              file=out, flush=True)
        result = run(device=args.device, seed=args.seed, limit=args.limit_train, repeats=args.repeats,
                     report=lambda line: print(line, file=out, flush=True))
        print(format_result(result), file=out, flush=True)
        if args.target > 0:
            print(f"the series' settings until {args.target:.1%}...", file=out, flush=True)
            result["time_to_accuracy"] = time_to_accuracy(device=args.device, target=args.target, seed=args.seed,
                                                          limit=args.limit_train,
                                                          report=lambda line: print(line, file=out, flush=True))
            print(format_time_to_accuracy(result["time_to_accuracy"]), file=out, flush=True)
    if args.json:
        _print_json(result)
    return 0


def _report(args) -> int:
    from cnnlab import data, smoke_mode
    from cnnlab.report import report_runs, series_report
    from cnnlab.runs import COMMITTEE, format_plan, planned_training

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds: the ensemble needs at least one modern CNN, got {args.seeds}")
    _check_limits(args)
    out = sys.stderr if args.json else sys.stdout
    # as notebook 06: the ladder's three modern CNNs; --seeds N: the modern CNN with seeds 0 .. N-1
    members = COMMITTEE if args.seeds is None else tuple(("modern-cnn", seed) for seed in range(args.seeds))
    # the smoke setting shrinks the report as it shrinks the notebooks (their TRAIN_LIMIT and TEST_LIMIT)
    limit_train = args.limit_train if args.limit_train is not None else (5_000 if smoke_mode() else None)
    limit_test = args.limit_test if args.limit_test is not None else (2_000 if smoke_mode() else None)
    train_set = data.load("mnist", "train", limit=limit_train)
    test_set = data.load("mnist", "test", limit=limit_test)
    print(f"saved runs from {len(train_set):,} training images{' (smoke setting: 1 epoch each)' if smoke_mode() else ''}, "
          f"scored on {len(test_set):,} test images; "
          f"{format_plan(planned_training(report_runs(members), train_set, device=args.device))}", file=out, flush=True)
    try:
        with contextlib.redirect_stdout(out):  # load_or_train's lines are progress, not the report
            report = series_report(train_set, test_set, device=args.device, members=members)
    except KeyboardInterrupt as err:  # never a table with a row from a model that did not finish
        print(f"interrupted: {err or 'Ctrl-C'}\nThe report did not finish, so no table is printed. The runs that "
              "finished were saved (unless a line above says one was not kept): run the report again to go on "
              "from there.", file=sys.stderr)
        return 130
    print(report, file=out)
    if args.json:
        _print_json({"test_images": len(test_set), "train_images": len(train_set), "smoke": smoke_mode(),
                     "rows": [r.to_dict() for r in report.rows]})
    return 0


def _models(args) -> int:
    from cnnlab.scale import ARCHITECTURES, format_models, model_row

    out = sys.stderr if args.json else sys.stdout
    names = args.names or list(ARCHITECTURES)
    rows = []
    for name in names:
        print(f"counting {name}...", file=out, flush=True)
        rows.append(model_row(name, device=args.device, time_it=not args.no_time, receptive_field=not args.no_rf))
    print(format_models(rows), file=out)
    if args.json:
        _print_json({"models": [r.to_dict() for r in rows]})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cnnlab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="versions, device, datasets found or missing; exit 0 when the series can run")
    fetch = d.add_mutually_exclusive_group()
    fetch.add_argument("--download", action="store_true", default=None,
                       help="download MNIST if it is missing, even with CNNLAB_OFFLINE=1 (default: unless CNNLAB_OFFLINE=1)")
    fetch.add_argument("--no-download", dest="download", action="store_false", help="never download; only look")
    d.set_defaults(func=_doctor)

    t = sub.add_parser("train", help="train a model and report test accuracy")
    t.add_argument("--model", choices=MODEL_NAMES, default="small-cnn")
    t.add_argument("--dataset", choices=DATASET_NAMES, default="mnist")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--limit-train", type=int, default=None, metavar="N", help="a stratified subset of N train images")
    t.add_argument("--limit-test", type=int, default=None, metavar="N", help="a stratified subset of N test images")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=None)
    t.add_argument("--amp", choices=AMP_MODES, default=None, help="bf16 mixed precision")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    t.add_argument("--cuda-graph", action="store_true", help="on CUDA: replay each training step as one CUDA graph")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", metavar="PATH", help="save a checkpoint (weights + config + history) here")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    b = sub.add_parser("bench", help="one epoch of the seed CNN: cnnlab's path against the pytorch/examples recipe; "
                                     "time to 99.2%% at the series' settings")
    b.add_argument("--device", default=None)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--dashboard", action="store_true", help="instead: the live dashboard's cost (training without and with it)")
    b.add_argument("--widgets", action="store_true",
                   help="instead: each widget's answer time after a control changes (the series' saved models; "
                        "trains those that are missing)")
    b.add_argument("--notebooks", nargs="*", metavar="NN", default=None,
                   help="instead: each notebook (all, or those named: 06 07 ...) at its default on a fresh kernel, cold "
                        "(a new cache with only the earlier notebooks' saved runs) and warm (its own runs saved)")
    b.add_argument("--store", action="store_true", help="with --notebooks: keep each cold run's outputs in notebooks/")
    b.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="with --notebooks: use DIR as the cache and keep it; earlier notebooks that already ran in it "
                        "are not run again (time 05-07 now, 08-09 later, preparing 00-04 once)")
    b.add_argument("--repeats", type=int, default=2, help="alternations of the two paths (default 2)")
    b.add_argument("--target", type=float, default=0.992,
                   help="then time the series' small-CNN settings to this test accuracy (default 0.992; 0 skips)")
    b.add_argument("--epochs", type=int, default=1, help="with --dashboard: epochs per run")
    b.add_argument("--limit-train", type=int, default=None, metavar="N", help="a stratified subset of N train images")
    b.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    b.set_defaults(func=_bench)

    r = sub.add_parser("report", help="the source text's accuracy table rebuilt from the series' saved runs "
                                      "(training what is missing): errors, 95%% intervals, McNemar tests")
    r.add_argument("--device", default=None)
    r.add_argument("--seeds", type=int, default=None,
                   help="an ensemble of the modern CNN trained with seeds 0 .. N-1 (default: notebook 06's committee, "
                        "the ladder's three modern CNNs)")
    r.add_argument("--limit-train", type=int, default=None, metavar="N", help="a stratified subset of N train images")
    r.add_argument("--limit-test", type=int, default=None, metavar="N", help="a stratified subset of N test images")
    r.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    r.set_defaults(func=_report)

    m = sub.add_parser("models", help="ImageNet CNNs from torchvision (random weights, nothing downloaded) counted: "
                                      "parameters, multiply-accumulates, published top-1, time per image, receptive field")
    m.add_argument("--names", nargs="+", metavar="NAME", help="torchvision model names (default: the six of notebook 08)")
    m.add_argument("--device", default="cpu", help="where to time them (default: cpu; auto: the best available)")
    m.add_argument("--no-time", action="store_true", help="skip the timing")
    m.add_argument("--no-rf", action="store_true", help="skip the receptive fields (the slowest part)")
    m.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    m.set_defaults(func=_models)

    sub.add_parser("gpu-check", add_help=False,
                   help="on a CUDA machine: unit tests, every notebook at full settings, bench (see gpu-check --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cnnlab`` and the ``cnnlab`` script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu-check"]:  # its own options: python -m cnnlab gpu-check --help
        from cnnlab.gpu_check import main as gpu_check

        return gpu_check(argv[1:])
    args = build_parser().parse_args(argv)  # --help and argument errors end here, before PyTorch loads
    from cnnlab.checkpoint import CheckpointError
    from cnnlab.data import DataError
    from cnnlab.device import DeviceError, pick_device
    from cnnlab.train import NonFiniteLoss

    try:
        if getattr(args, "device", None) is not None:
            pick_device(args.device)  # a bad --device is refused before any data is loaded
        return args.func(args)
    except DeviceError as err:
        print(f"error: {err.for_cli()}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # SaveError and the like: a full or read-only disk, a folder in the way
        print(f"error: {err}", file=sys.stderr)
        return 1
    except NonFiniteLoss as err:  # not a bad argument: the run itself went wrong
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
