"""cnnlab.train: fit on real data, callbacks, stopping, interrupts, determinism, checkpoints."""

import json

import pytest
import torch

from cnnlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cnnlab.models import MLP, LinearClassifier, SmallCNN
from cnnlab.device import pick_device
from cnnlab.train import Callback, StopTraining, TrainConfig, evaluate, fit, predict, seed_everything


def test_linear_model_learns_real_digits(mnist_small):
    train, test = mnist_small
    untrained = evaluate(LinearClassifier(), test).accuracy
    model = LinearClassifier()
    history = fit(model, train, test, epochs=2, lr=1e-2, progress=False)
    assert len(history.epochs) == 2 and history.stopped is None
    assert history.last("test_acc") > 0.8 > untrained + 0.5
    assert history.epochs[1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.device == str(pick_device()) and history.config["lr"] == 1e-2  # fit chose the device
    assert history.last("test_acc") == pytest.approx(evaluate(model, test).accuracy)


def test_small_cnn_smoke_fit(mnist_small):
    train, test = mnist_small
    history = fit(SmallCNN(), train, test, epochs=1, batch_size=64, lr=2e-3, progress=False)
    assert history.last("test_acc") > 0.85
    assert history.last("images_per_s") > 0


def test_same_seed_same_result_on_cpu(mnist_small):
    train, test = mnist_small
    runs = []
    for _ in range(2):
        seed_everything(7)  # the initial weights come from the seed too
        model = MLP(hidden=32)
        history = fit(model, train, test, epochs=1, seed=7, device="cpu", progress=False)
        runs.append((history.epochs[0]["train_loss"], [p.clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    seed_everything(7)
    other = MLP(hidden=32)
    fit(other, train, test, epochs=1, seed=8, device="cpu", progress=False)
    assert not torch.equal(next(other.parameters()), runs[0][1][0])


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def before_fit(self, s):
        self.events.append("before_fit")

    def before_epoch(self, s):
        self.events.append(f"before_epoch{s.epoch}")

    def after_batch(self, s):
        self.events.append("batch")

    def after_epoch(self, s):
        self.events.append(f"after_epoch{s.epoch}")

    def after_fit(self, s):
        self.events.append("after_fit")


def test_callback_events_in_order(mnist_small):
    train, _ = mnist_small
    rec = Recorder()
    fit(LinearClassifier(), train.subset(range(250)), epochs=2, batch_size=100, callbacks=[rec], progress=False)
    epoch = ["batch"] * 3
    assert rec.events == ["before_fit", "before_epoch0", *epoch, "after_epoch0", "before_epoch1", *epoch, "after_epoch1", "after_fit"]


def test_stop_training_from_a_callback_keeps_model_and_history(mnist_small):
    train, test = mnist_small

    class StopAfter(Callback):
        def after_batch(self, state):
            if state.step == 5:
                raise StopTraining

    model = LinearClassifier()
    before = model.fc.weight.clone()
    history = fit(model, train, test, epochs=3, batch_size=100, callbacks=[StopAfter()], progress=False)
    assert history.stopped == "callback" and history.epochs == []
    assert not torch.equal(model.fc.weight.cpu(), before)  # the 5 steps taken are kept


def test_keyboard_interrupt_ends_training_cleanly(mnist_small):
    train, test = mnist_small

    class Interrupt(Callback):
        def after_epoch(self, state):
            raise KeyboardInterrupt

    history = fit(LinearClassifier(), train, test, epochs=3, callbacks=[Interrupt()], progress=False)
    assert history.stopped == "interrupt" and len(history.epochs) == 1


def test_sigint_finishes_the_batch_then_stops(mnist_small):
    """The notebook's stop button sends SIGINT: training ends at a batch boundary, no traceback."""
    import os
    import signal

    train, _ = mnist_small

    class SendSigint(Callback):
        def after_batch(self, state):
            if state.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    rec = Recorder()
    history = fit(LinearClassifier(), train, epochs=2, batch_size=100, callbacks=[SendSigint(), rec], progress=False)
    assert history.stopped == "interrupt" and rec.events.count("batch") == 3 and rec.events[-1] == "after_fit"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_bad_settings_are_explained():
    with pytest.raises(TypeError, match="unknown training setting.*'epoch'"):
        fit(LinearClassifier(), None, epoch=3)
    with pytest.raises(ValueError, match="optimizer='adamm'"):
        TrainConfig(optimizer="adamm")
    with pytest.raises(ValueError, match="lr=nan"):
        TrainConfig(lr=float("nan"))


def test_predict_returns_probabilities(mnist_small):
    _, test = mnist_small
    p = predict(LinearClassifier(), test.subset(range(10)))
    assert p.shape == (10, 10) and torch.allclose(p.sum(1), torch.ones(10))


def test_checkpoint_round_trip(tmp_path, mnist_small):
    train, test = mnist_small
    model = MLP(hidden=48)
    history = fit(model, train, test, epochs=1, progress=False)
    path = save_checkpoint(tmp_path / "runs" / "mlp.pt", model, history=history, metrics={"test_acc": history.last("test_acc")})
    assert [p.name for p in path.parent.iterdir()] == ["mlp.pt"]  # no temporary file left
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.model, MLP) and ckpt.model.hparams["hidden"] == 48
    assert evaluate(ckpt.model, test).accuracy == evaluate(model, test).accuracy
    assert ckpt.history.epochs == history.epochs and ckpt.history.config == history.config
    assert ckpt.metrics["test_acc"] == history.last("test_acc")
    json.dumps(ckpt.history.to_dict())


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", LinearClassifier())
    good = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, LinearClassifier())
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_tampered_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", LinearClassifier())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated, corrupt, or not a cnnlab checkpoint"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "cnnlab-checkpoint/1", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled code are refused"):
        load_checkpoint(path)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MLP(hidden=32))
    with pytest.raises(CheckpointError, match=r"do not fit MLP.*size mismatch"):
        load_checkpoint(path, model=MLP(hidden=64))
    with pytest.raises(CheckpointError, match="do not fit SmallCNN"):
        load_checkpoint(path, model=SmallCNN())
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_cuda_graph_setting_is_checked_and_ignored_off_cuda(mnist_small):
    train, test = mnist_small
    with pytest.raises(ValueError, match="cuda_graph needs adam or adamw"):
        TrainConfig(cuda_graph=True, optimizer="sgd")
    runs = []
    for graph in (False, True):
        seed_everything(3)
        model = MLP(hidden=32)
        h = fit(model, train, test, epochs=1, seed=3, device="cpu", cuda_graph=graph, progress=False)
        runs.append((h.epochs[0]["train_loss"], h.last("test_acc")))
    assert runs[0] == runs[1]  # on the CPU the setting changes nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_path_trains_like_the_eager_one(mnist_small):
    """The captured step learns, follows the one-cycle schedule, and handles the last, smaller batch eagerly."""
    train, test = mnist_small
    results = {}
    for graph in (False, True):
        seed_everything(0)
        model = SmallCNN()
        h = fit(model, train.subset(range(1000)), test, epochs=3, batch_size=64, seed=0, device="cuda",
                cuda_graph=graph, progress=False)  # 1000 = 15 full batches + one of 40
        results[graph] = h
        assert h.epochs[-1]["train_loss"] < h.epochs[0]["train_loss"]
        assert h.last("test_acc") == pytest.approx(evaluate(model, test).accuracy)
    assert results[True].last("test_acc") > 0.8
    assert abs(results[True].last("test_acc") - results[False].last("test_acc")) < 0.05
    assert [e["lr"] for e in results[True].epochs] == pytest.approx([e["lr"] for e in results[False].epochs], rel=1e-5)


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    from cnnlab.files import atomic_write

    target = tmp_path / "sub" / "file.bin"
    with atomic_write(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first" and oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_write(target) as f:
            f.write(b"second, half")
            raise RuntimeError("half way")
    assert target.read_bytes() == b"first"  # the old file, untouched
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary file left
