"""python -m cnnlab: doctor, train, and their error exits."""

import json
import os
import subprocess
import sys

import pytest

from cnnlab.__main__ import main


@pytest.fixture
def no_data_loading(monkeypatch):
    """Any dataset load fails the test: for errors that must come before data is read."""
    from cnnlab import data

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(data, "load", refuse)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )


def test_doctor_reports_versions_device_and_data():
    r = run_cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torch" in r.stdout and "device" in r.stdout
    assert "mnist          ok:" in r.stdout and "ready: the series can run" in r.stdout


def test_doctor_fails_when_mnist_is_missing(isolated_cache, capsys):
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "mnist          MISSING (required)" in out and "train-images-idx3-ubyte.gz" in out
    assert "NOT READY" in out


def test_train_json_is_the_last_line():
    r = run_cli("train", "--model", "linear", "--epochs", "1", "--limit-train", "1000",
                "--limit-test", "500", "--json", "--no-progress", "--lr", "0.01")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["model"] == "linear" and len(result["epochs"]) == 1
    assert 0.7 < result["test_acc"] <= 1.0
    assert "epoch 1/1" in r.stderr and "final test accuracy" in r.stderr


def test_train_saves_a_loadable_checkpoint(tmp_path, capsys):
    from cnnlab.checkpoint import load_checkpoint

    path = tmp_path / "lin.pt"
    code = main(["train", "--model", "linear", "--epochs", "1", "--limit-train", "500", "--limit-test", "200",
                 "--no-progress", "--save", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert f"saved {path}" in out
    ckpt = load_checkpoint(path)
    assert ckpt.metrics["dataset"] == "mnist" and ckpt.history.config["epochs"] == 1


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "-1", "--limit-train", "100"], "epochs=-1"),
    (["train", "--limit-train", "0"], "limit must be a positive"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    assert main(args + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def _missing_devices() -> list[str]:
    """Devices this machine lacks: cuda:7 (unless it has 8 GPUs), cuda without a GPU, mps off a Mac."""
    import torch

    from cnnlab.device import available_devices

    here = available_devices()
    missing = [] if torch.cuda.device_count() > 7 else ["cuda:7"]
    return missing + (["cuda"] if not torch.cuda.is_available() else []) + (["mps"] if "mps" not in here else [])


@pytest.mark.parametrize("device", _missing_devices() + ["gpu", "tpu", "nonsense"])
def test_a_bad_device_exits_2_before_loading_data(device, no_data_loading, capsys):
    for command in (["train", "--no-progress"], ["bench"]):
        assert main([*command, "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --device {device}: ") and "--device cpu" in err and "device=" not in err
        assert "Traceback" not in err


@pytest.mark.parametrize("device", ["cuda:7", "gpu"])
def test_a_bad_device_from_the_shell_is_one_line_not_a_traceback(device):
    import torch

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    r = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--device", device], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and f"--device {device}" in r.stderr


def test_bench_compares_both_paths_on_the_same_images():
    from cnnlab.bench import format_result, run

    result = run(device="cpu", limit=1200, repeats=2)
    assert result["train_images"] == 1200 and result["repeats"] == 2
    for key in ("recipe", "cnnlab"):
        assert result[key]["seconds"] > 0 and 0.3 < result[key]["test_acc"] <= 1
        assert result[key]["images_per_s"] == pytest.approx(1200 / result[key]["seconds"], rel=1e-6)
        # two alternated runs of each path; the best one is reported
        assert len(result["all_seconds"][key]) == 2 and result[key]["seconds"] == min(result["all_seconds"][key])
    assert result["speedup"] == pytest.approx(result["recipe"]["seconds"] / result["cnnlab"]["seconds"])
    assert "x faster per epoch" in format_result(result) and "alternated 2x" in format_result(result)
    with pytest.raises(ValueError, match="repeats"):
        run(device="cpu", limit=100, repeats=0)


def test_time_to_accuracy_stops_at_the_first_epoch_that_reaches_the_target():
    from cnnlab.bench import format_time_to_accuracy, time_to_accuracy

    reached = time_to_accuracy(device="cpu", target=0.5, limit=1000, epochs=3)
    assert reached["reached"] and reached["epoch"] == 1 and len(reached["epochs"]) == 1  # stopped there
    first = reached["epochs"][0]
    assert first["test_acc"] >= 0.5 and reached["seconds"] == first["elapsed"] > first["seconds"]  # evaluation counted
    missed = time_to_accuracy(device="cpu", target=0.999, limit=300, epochs=2)
    assert not missed["reached"] and missed["epoch"] is None and len(missed["epochs"]) == 2
    assert "NOT REACHED" in format_time_to_accuracy(missed) and "epoch 1" in format_time_to_accuracy(reached)


def test_bench_dashboard_times_training_without_and_with_it(capsys):
    import json

    assert main(["bench", "--dashboard", "--device", "cpu", "--limit-train", "640", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["train_images"] == 640 and set(result["seconds"]) == {"plain", "dashboard", "plain again"}
    assert result["frames"] >= 2 and 0 < result["dashboard_seconds"] < result["seconds"]["dashboard"]
    plain = min(result["seconds"]["plain"], result["seconds"]["plain again"])
    assert result["overhead"] == pytest.approx(result["seconds"]["dashboard"] / plain - 1)


def test_gpu_check_runs_notebooks_and_reports_each(tmp_path, capsys):
    """The GPU check's machinery, tried on the CPU (--device cpu): a notebook is executed and
    saved with its time; a broken one is reported with its first error."""
    import nbformat

    from cnnlab.bench import run_notebook

    out = tmp_path / "out"
    code = main(["gpu-check", "--device", "cpu", "--smoke", "--only", "00_start_here", "--skip-tests", "--skip-bench",
                 "--out", str(out)])
    assert code == 0
    log = (out / "gpu-check.log").read_text()
    assert "notebook 00_start_here:" in log and "GPU check passed" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [n["notebook"] for n in summary["notebooks"]] == ["00_start_here"]
    executed = nbformat.read(out / "00_start_here.ipynb", as_version=4)
    assert any("test accuracy" in "".join(o.get("text", "")) for c in executed.cells for o in c.get("outputs", []))
    assert sorted(p.name for p in out.iterdir()) == ["00_start_here.ipynb", "gpu-check.log", "summary.json"]

    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                             nbformat.v4.new_code_cell("raise ValueError('boom')")])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, tmp_path / "99_broken.ipynb")
    result = run_notebook(tmp_path / "99_broken.ipynb", out, dict(os.environ))
    assert result["error"] == "ValueError: boom" and (out / "99_broken.ipynb").exists()


def test_gpu_check_without_a_gpu_says_how_to_try_it(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["gpu-check", "--out", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "--device cpu" in err


def test_help_and_argument_errors_answer_before_pytorch_loads():
    code = ("import sys, contextlib, io\n"
            "from cnnlab.__main__ import main\n"
            "for argv in (['--help'], ['train', '--help'], ['train', '--epochs', 'x'], ['bench', '--nonsense']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_the_command_line_knows_every_model_optimizer_amp_mode_and_dataset():
    """The parser's choices are written out so that --help needs no PyTorch: each must be the
    library's own list, so that the CLI never offers what training refuses or hides what it takes."""
    from cnnlab import __main__ as cli
    from cnnlab.data import DATASETS
    from cnnlab.models import MODELS
    from cnnlab.train import _OPTIMIZERS, AMP_MODES, make_config

    assert tuple(MODELS) == cli.MODEL_NAMES
    assert tuple(_OPTIMIZERS) == cli.OPTIMIZER_NAMES and AMP_MODES == cli.AMP_MODES
    assert tuple(DATASETS) == cli.DATASET_NAMES
    for name in cli.OPTIMIZER_NAMES:  # each one a setting training takes
        make_config(optimizer=name)
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "optimizer")
    assert tuple(train.choices) == cli.OPTIMIZER_NAMES


@pytest.mark.parametrize("args,message", [
    (["--epochs", "-1"], "epochs=-1"),
    (["--lr", "0"], "lr=0"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--limit-train", "0"], "--limit-train: limit must be a positive"),
    (["--limit-test", "-5"], "--limit-test: limit must be a positive"),
])
def test_bad_settings_exit_2_before_loading_data(args, message, no_data_loading, capsys):
    assert main(["train", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_bench_reports_progress_as_it_goes(capsys):
    assert main(["bench", "--device", "cpu", "--limit-train", "640", "--repeats", "1", "--target", "0.5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any("1/1 pytorch/examples recipe:" in ln for ln in lines) and any("1/1 cnnlab:" in ln for ln in lines)
    assert any(ln.strip().startswith("epoch 1: test accuracy") for ln in lines)
    # progress lines come before the table they add up to
    assert out.index("1/1 cnnlab:") < out.index("x faster per epoch") < out.index("time to 50.0%")


# ----- nothing lost: interrupted runs, impossible paths, strict JSON ------------------------------

def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript's, jq's) do."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_interrupted_train_never_replaces_a_complete_checkpoint(tmp_path):
    """A real Ctrl-C (SIGINT) during `train --save run.pt`: run.pt, complete, stays as it was; the
    partial model goes to run.interrupted.pt with its own accuracy, and the screen says so."""
    import signal

    from cnnlab import data
    from cnnlab.checkpoint import load_checkpoint
    from cnnlab.train import evaluate

    good = tmp_path / "run.pt"
    first = run_cli("train", "--model", "linear", "--epochs", "1", "--limit-train", "500", "--limit-test", "300",
                    "--no-progress", "--save", str(good))
    assert first.returncode == 0 and good.exists(), first.stderr
    before = good.read_bytes()
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--model", "mlp", "--epochs", "300", "--limit-train",
                          "2000", "--limit-test", "300", "--no-progress", "--json", "--save", str(good)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # the human-readable lines go to stderr with --json
        if line.startswith("epoch 2/300"):
            break
    p.send_signal(signal.SIGINT)
    rest_out, rest_err = p.communicate(timeout=300)
    assert p.returncode == 130, rest_err
    assert good.read_bytes() == before  # the complete checkpoint is untouched
    partial = tmp_path / "run.interrupted.pt"
    assert "training did not finish" in rest_err and str(partial) in rest_err and "untouched" in rest_err
    ckpt = load_checkpoint(partial)
    assert ckpt.metrics["complete"] is False and ckpt.history.stopped == "interrupt"
    test = data.load("mnist", "test", limit=300, seed=0)
    assert ckpt.metrics["test_acc"] == pytest.approx(evaluate(ckpt.model, test).accuracy)  # the weights' own score
    result = strict_json(rest_out.strip().splitlines()[-1])
    assert result["test_acc"] == ckpt.metrics["test_acc"] and result["stopped"] == "interrupt"


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_save_into_an_impossible_place_is_refused_before_training(where, tmp_path, no_data_loading, capsys):
    (tmp_path / "a-file").write_text("x")
    target = tmp_path if where == "folder" else tmp_path / "a-file" / "run.pt"
    assert main(["train", "--no-progress", "--save", str(target)]) == 2
    err = capsys.readouterr().err
    assert "cannot save the checkpoint" in err and ("is a folder" in err or "is a file" in err)


def test_zero_epochs_is_refused_and_json_is_strict(capsys):
    assert main(["train", "--epochs", "0", "--no-progress"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    from cnnlab.__main__ import _json_safe

    assert strict_json(json.dumps(_json_safe({"a": float("nan"), "b": [1.0, float("inf")]}), allow_nan=False)) == \
        {"a": None, "b": [1.0, None]}


def test_gpu_check_without_the_repositorys_tests_says_so_and_fails(tmp_path, monkeypatch):
    """An installed cnnlab has no tests/: the GPU check must not report them passed."""
    from cnnlab import gpu_check

    monkeypatch.setattr(gpu_check, "repo_root", lambda: tmp_path)  # a checkout without tests/
    lines = []
    result = gpu_check._run_tests(lines.append, dict(os.environ), timeout=60)
    assert result["exit"] != 0 and "not run" in lines[0] and "--skip-tests" in lines[0]
