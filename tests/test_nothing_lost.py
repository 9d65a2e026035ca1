"""Nothing lost, nothing silent (round two): an interrupted report, saved runs and cached features
that are not what they claim, full and read-only disks, and settings of the wrong type.

Full and read-only disks are 64 KiB tmpfs mounts where the tests run as root (CI does), and
simulated otherwise (the ``small_disk`` fixture in conftest.py says which, and each test prints it).
"""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cnnlab import data, runs
from cnnlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cnnlab.files import SaveError
from cnnlab.models import MLP, LinearClassifier
from cnnlab.train import TrainConfig, evaluate, fit

SHARED = Path(os.environ["CNNLAB_DATA"]) if os.environ.get("CNNLAB_DATA") else None
needs_shared = pytest.mark.skipif(SHARED is None, reason="CNNLAB_DATA (the shared MNIST archives) is not set")


# ----- an interrupted report ------------------------------------------------------------------------

@needs_shared
def test_ctrl_c_while_report_trains_stops_it_and_prints_no_table(tmp_path):
    """A real SIGINT while `report` trains the small CNN: it stops (exit 130), says which run did
    not finish, prints no table, and saves only the runs that finished."""
    env = {k: v for k, v in os.environ.items() if k != "CNNLAB_SMOKE"} | {
        "CNNLAB_CACHE": str(tmp_path / "cache"), "CNNLAB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # lines as printed
    errors = open(tmp_path / "stderr.txt", "w+")  # progress bars: a file, never a pipe nobody reads while it fills
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "report", "--limit-train", "20000", "--limit-test", "500",
                          "--seeds", "1", "--device", "cpu"],  # on the CPU: 5 epochs of the small CNN take long enough
                         stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("small-cnn: no saved run"):
            break
    time.sleep(3)  # into its training (a Ctrl-C before it would stop the report as well, with less to say)
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=300)
    errors.seek(0)
    err = errors.read()
    out = "".join(seen) + rest
    assert p.returncode == 130, out + err
    assert "interrupted: small-cnn: training was interrupted after" in err and "no table is printed" in err
    assert "per million" not in out and "Small CNN" not in out  # no table, no row from the unfinished model
    saved = sorted(f.name.split("-")[0] for f in (tmp_path / "cache" / "runs").glob("*.pt"))
    assert saved == ["linear", "mlp"]  # what finished is kept; the interrupted run is not


def test_an_interrupted_saved_run_is_neither_saved_nor_handed_on(isolated_cache, mnist_small, monkeypatch):
    train, test = mnist_small

    def interrupted_fit(model, *args, **kwargs):
        history = real_fit(model, *args, **{**kwargs, "epochs": 1})
        history.stopped = "interrupt"  # as fit leaves it after a Ctrl-C
        return history

    real_fit = runs.fit
    monkeypatch.setattr(runs, "fit", interrupted_fit)
    with pytest.raises(runs.TrainingInterrupted, match=r"lin: training was interrupted after 1 of 3 epochs; nothing"):
        runs.load_or_train("lin", LinearClassifier, train, test, epochs=3, progress=False, device="cpu")
    assert not list((isolated_cache / "cache" / "runs").glob("*.pt"))
    assert issubclass(runs.TrainingInterrupted, KeyboardInterrupt)  # a notebook cell stops, as for Ctrl-C


# ----- saved runs that are not what they claim, or cannot be saved ------------------------------------

@pytest.mark.parametrize("record", [{"test_acc": "0.7"}, {"test_acc": None}, {"test_acc": 7.5},
                                    {"test_acc": 0.8, "probe": 3}, {"test_acc": 0.8, "probe": {"images": "x", "answers": 7}},
                                    {"test_acc": 0.8, "probe": {"images": "x", "answers": ["a", "b"]}}])
def test_a_saved_run_with_a_damaged_record_is_trained_again(record, isolated_cache, mnist_small, capsys):
    train, test = mnist_small
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    path = next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    ckpt = load_checkpoint(path)
    save_checkpoint(path, ckpt.model, history=ckpt.history, metrics=record)
    capsys.readouterr()
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    out = capsys.readouterr().out
    what = "its answers to the probe images" if "probe" in record else f"its test accuracy is {record['test_acc']!r}"
    assert f"has a damaged record ({what}" in out and "training again" in out


def test_a_saved_run_whose_history_is_damaged_is_refused_when_loaded_and_trained_again(isolated_cache, mnist_small,
                                                                                        capsys):
    train, test = mnist_small
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    path = next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    payload = torch.load(path, weights_only=True)
    payload["history"]["epochs"] = "five"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"training history cnnlab cannot read \(its epochs is not"):
        load_checkpoint(path)
    capsys.readouterr()
    _, history = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    assert "could not be used" in capsys.readouterr().out and history.last("test_acc") > 0.5


def test_a_folder_where_a_saved_run_goes_is_refused_before_training(isolated_cache, mnist_small, monkeypatch):
    train, test = mnist_small
    config = asdict(TrainConfig(epochs=1, progress=False, device="cpu"))
    path = runs.run_path("lin", LinearClassifier(), train, config)
    path.mkdir(parents=True)
    monkeypatch.setattr(runs, "fit", lambda *a, **k: pytest.fail("trained, though the run could not be saved"))
    with pytest.raises(ValueError, match=r"lin: cannot save the saved run as .*: that is a folder.*CNNLAB_CACHE"):
        runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")


def test_a_runs_folder_that_cannot_be_written_is_refused_before_training(isolated_cache, mnist_small, small_disk,
                                                                           monkeypatch):
    train, test = mnist_small
    _, how = small_disk("cache/runs", read_only=True)
    print("read-only disk:", how)
    monkeypatch.setattr(runs, "fit", lambda *a, **k: pytest.fail("trained, though the run could not be saved"))
    with pytest.raises(ValueError, match=r"(no permission to write in|runs is on a read-only file system).*CNNLAB_CACHE"):
        runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")


def test_a_run_that_fills_the_disk_is_used_and_said_to_be_unsaved(isolated_cache, mnist_small, small_disk, capsys):
    train, test = mnist_small
    folder, how = small_disk("cache/runs")
    print("full disk:", how)
    model, history = runs.load_or_train("mlp", MLP, train, test, epochs=1, progress=False, device="cpu")  # 0.4 MB
    out = capsys.readouterr().out
    assert "mlp: the run is used but not kept (could not write" in out and "the disk is full" in out
    assert evaluate(model, test).accuracy == history.last("test_acc")  # the trained model, not lost
    assert list(folder.iterdir()) == []  # no partial file left to keep the disk full


# ----- train --save and dataset extraction on full or read-only disks -----------------------------------

def test_train_save_onto_a_full_disk_keeps_the_old_file_and_the_new_model(small_disk, capsys):
    from cnnlab.__main__ import main

    folder, how = small_disk("disk")
    print("full disk:", how)
    (folder / "run.pt").write_bytes(b"the old run")
    rc = main(["train", "--model", "mlp", "--epochs", "1", "--limit-train", "500", "--limit-test", "100", "--no-progress",
               "--save", str(folder / "run.pt")])
    err = capsys.readouterr().err
    assert rc == 1 and "the disk is full" in err and "the file that was there is as it was" in err
    assert (folder / "run.pt").read_bytes() == b"the old run" and [f.name for f in folder.iterdir()] == ["run.pt"]
    rescued = Path(err.split("was saved as ")[1].split(" instead")[0])
    assert load_checkpoint(rescued).metrics["complete"] is True
    rescued.unlink()


@needs_shared
@pytest.mark.parametrize("case", ["a file", "/dev/null", "read-only", "full"])
def test_a_cache_that_cannot_hold_the_dataset_is_a_message(case, tmp_path, small_disk, monkeypatch):
    if case == "a file":
        cache = tmp_path / "cache-file"
        cache.write_text("not a folder")
    elif case == "/dev/null":
        cache = Path("/dev/null")
    else:
        cache, how = small_disk("cache", read_only=case == "read-only")
        print(case, "disk:", how)
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    monkeypatch.setenv("CNNLAB_DATA", str(SHARED))
    data.clear_cache()
    expected = {"a file": "a part of the path is a file", "/dev/null": "a part of the path is a file",
                "read-only": "the file system is read-only|no permission to write there", "full": "the disk is full"}
    try:
        with pytest.raises(data.DataError, match=rf"cannot write the extracted files into .*({expected[case]}).*CNNLAB_CACHE"):
            data.load("mnist", "test")
    finally:
        data.clear_cache()
    if case in ("read-only", "full"):
        assert not [f for f in cache.rglob("*") if f.is_file()]  # no partial file left behind


def test_a_search_folder_that_cannot_be_looked_at_is_skipped(monkeypatch, tmp_path):
    """Another user's cache made with umask 077: looking into it raises PermissionError (simulated:
    as root, nothing is refused)."""
    locked = tmp_path / "locked"
    real_exists = Path.exists

    def exists(self, *args, **kwargs):
        if self.is_relative_to(locked):
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    dirs = data.search_dirs("mnist", root=locked)
    assert dirs[0] == locked / "MNIST" / "raw" and len(dirs) > 1


# ----- checkpoints that would run code -------------------------------------------------------------------

class _Runs:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fn,name", [(os.system, "system"), (os.remove, "remove")])
def test_a_checkpoint_that_would_run_code_names_it_and_never_advises_turning_the_check_off(fn, name, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": _Runs(fn, str(tmp_path / "never"))}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert re.search(rf"loading it would import and run \w+\.{name}\b", text), text
    assert "weights_only" not in text and "Re-running" not in text and "truncated" not in text


def test_a_file_of_random_bytes_is_called_corrupt_without_torchs_advice(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="could not be read as a checkpoint") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and "Re-running" not in str(err.value)


# ----- settings of the wrong type or out of range ---------------------------------------------------------

@pytest.mark.parametrize("settings,message", [
    ({"augment": {"scale": (1e-30, 1e-30)}}, r"augment's scale must be a range \(low, high\) with 0.5 <= low <= high <= 2.0"),
    ({"augment": {"shift": 1e30}}, "augment's shift must be a number of pixels from 0 to 8"),
    ({"augment": {"rotate": -5}}, "augment's rotate must be a number of degrees from 0 to 180"),
    ({"augment": {"scale": 1.1}}, "augment's scale must be a range"),
    ({"augment": {"scale": (1.1,)}}, "augment's scale must be a range"),
    ({"augment": {"shift": "2"}}, "augment's shift must be a number of pixels"),
    ({"epochs": 2.5}, r"epochs=2.5 \(a whole number >= 0\)"),
    ({"batch_size": 2.5}, r"batch_size=2.5 \(a whole number >= 1\)"),
    ({"seed": 2**70}, r"seed=\d+ \(a whole number from 0 to 2\*\*64 - 1\)"),
    ({"lr": "fast"}, r"lr='fast' \(a number > 0\)"),
])
def test_training_settings_of_the_wrong_kind_are_refused_in_cnnlabs_words(settings, message, mnist_small):
    train, _ = mnist_small
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)
    model = LinearClassifier()
    before = model.fc.weight.detach().clone()
    with pytest.raises(ValueError, match=message):  # fit refuses before it trains on blank images
        fit(model, train.subset(range(64)), progress=False, device="cpu", **settings)
    assert torch.equal(before, model.fc.weight)


def test_a_learning_rate_scale_that_is_not_a_number_is_refused(mnist_small):
    train, _ = mnist_small
    model = LinearClassifier()
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr_scale must be a positive number, got 'x'"):
        fit(model, train.subset(range(8)), progress=False, param_groups=[{"params": model.parameters(), "lr_scale": "x"}])


def test_an_empty_test_set_is_refused_before_training(mnist_small):
    train, test = mnist_small
    model = LinearClassifier()
    before = model.fc.weight.detach().clone()
    with pytest.raises(ValueError, match="the test set is empty"):
        fit(model, train.subset(range(64)), test.subset([]), progress=False, device="cpu")
    assert torch.equal(before, model.fc.weight)
    with pytest.raises(ValueError, match="cannot score a model on an empty set"):
        evaluate(model, test.subset([]))


@needs_shared
@pytest.mark.parametrize("limit", [1.5, float("nan"), "5", 0, True])
def test_a_dataset_limit_that_is_not_a_whole_number_is_refused(limit):
    with pytest.raises(ValueError, match="limit must be a whole number of examples >= 1"):
        data.load("mnist", "test", limit=limit)


def test_a_dataset_on_a_device_this_machine_lacks_is_a_device_error():
    from cnnlab.device import DeviceError

    with pytest.raises(DeviceError):  # on a GPU machine too: there is no 100th GPU
        data.load("mnist", "test", device="cuda:99")


# ----- cached features that are not what they claim ----------------------------------------------------------

@pytest.fixture(scope="module")
def lite0():
    from cnnlab import transfer

    return transfer.load_backbone("efficientnet_lite0")


def _feature_file(cache: Path) -> Path:
    return next((cache / "features").glob("*.pt"))


@pytest.mark.parametrize("bad", ["nan", "shape", "int64", "count"])
def test_cached_features_that_are_not_features_are_computed_again(bad, lite0, mnist_small, tmp_path, monkeypatch, capsys):
    from cnnlab.transfer import cached_features

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    part = mnist_small[0].subset(range(12))
    good = cached_features(lite0, part, size=32, progress=False).x
    path = _feature_file(tmp_path)
    stored = {"nan": torch.full_like(good, float("nan")), "shape": torch.zeros(len(part), 3),
              "int64": good.long(), "count": good[:5]}[bad]
    torch.save(stored, path)
    capsys.readouterr()
    again = cached_features(lite0, part, size=32, progress=False).x
    assert torch.allclose(again, good) and again.dtype == torch.float32
    assert f"the cached file {path.name} is not usable" in capsys.readouterr().out
    assert torch.equal(torch.load(path, weights_only=True), again)  # and the good ones replace it


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5])
def test_cached_features_refuse_a_batch_size_that_is_not_a_whole_positive_number(batch_size, lite0, mnist_small):
    from cnnlab.transfer import cached_features

    with pytest.raises(ValueError, match="batch_size must be a whole number of photos >= 1"):
        cached_features(lite0, mnist_small[0].subset(range(4)), size=32, batch_size=batch_size, cache=False)


@pytest.mark.parametrize("read_only", [False, True])
def test_cached_features_on_a_full_or_read_only_disk_are_used_and_nothing_is_left(read_only, lite0, mnist_small,
                                                                                   small_disk, monkeypatch, capsys):
    from cnnlab.transfer import cached_features

    cache, how = small_disk("cache", read_only=read_only)
    print("read-only" if read_only else "full", "disk:", how)
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    part = mnist_small[0].subset(range(40))  # 40 x 1280 float32 features: 200 KB, more than the disk holds
    x = cached_features(lite0, part, size=32, progress=False).x
    assert x.shape == (40, 1280) and bool(torch.isfinite(x).all())
    assert "features: not kept (could not write" in capsys.readouterr().out
    assert not [f for f in cache.rglob("*") if f.is_file()]  # no partial .tmp left to keep the disk full


def test_save_error_is_an_os_error_that_says_what_was_kept(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SaveError, match=r"could not write .*run.pt: a part of the path is a file, not a folder; nothing"):
        save_checkpoint(tmp_path / "a-file" / "run.pt", LinearClassifier())
    assert issubclass(SaveError, OSError)
    import copy
    import pickle

    err = SaveError(28, "could not write x: the disk is full; nothing was written")
    for again in (pickle.loads(pickle.dumps(err)), copy.copy(err)):  # as multiprocessing passes it on
        assert str(again) == str(err) and again.errno == 28
