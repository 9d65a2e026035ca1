"""cnnlab.train: fit on real data, callbacks, stopping, interrupts, determinism, checkpoints."""

import json
import os

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
    with pytest.raises(CheckpointError, match="would import and run print") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)  # never advice to switch the check off


@pytest.mark.parametrize("damage", ["no model entry", "model is a list", "hparams is a string", "history is odd",
                                    "nan weight"])
def test_crafted_or_damaged_checkpoints_are_clear_errors(tmp_path, damage):
    path = save_checkpoint(tmp_path / "m.pt", LinearClassifier(), history=None)
    payload = torch.load(path, weights_only=True)
    if damage == "no model entry":
        del payload["model"]
    elif damage == "model is a list":
        payload["model"] = [1, 2]
    elif damage == "hparams is a string":
        payload["model"]["hparams"] = "oops"
    elif damage == "history is odd":
        payload["history"] = {"unexpected": 1}
    else:
        payload["state_dict"]["fc.weight"][0, 0] = float("nan")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="delete it and train again") as err:
        load_checkpoint(path)
    if damage == "nan weight":
        assert "NaN, infinite" in str(err.value) and "fc.weight" in str(err.value)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MLP(hidden=32))
    with pytest.raises(CheckpointError, match=r"do not fit MLP.*size mismatch"):
        load_checkpoint(path, model=MLP(hidden=64))
    with pytest.raises(CheckpointError, match="do not fit SmallCNN"):
        load_checkpoint(path, model=SmallCNN())
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_cuda_graph_setting_is_checked_and_refused_off_cuda(mnist_small):
    train, test = mnist_small
    with pytest.raises(ValueError, match="cuda_graph needs adam or adamw"):
        TrainConfig(cuda_graph=True, optimizer="sgd")
    model = MLP(hidden=32)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="needs a CUDA device; this run trains on cpu: leave cuda_graph off"):
        fit(model, train, test, epochs=1, device="cpu", cuda_graph=True, progress=False)  # on every machine
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before training


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


def test_a_writer_killed_mid_write_leaves_nothing_behind_after_the_next_write(tmp_path):
    """A real SIGKILL while a checkpoint is being written: the old file is intact, and the
    temporary file the dead process left is removed by the next write of that file."""
    import signal
    import subprocess
    import sys

    from cnnlab.files import atomic_write

    target = tmp_path / "model.pt"
    target.write_bytes(b"the good one")
    code = ("import sys, time\nfrom cnnlab.files import atomic_write\n"
            f"with atomic_write({str(target)!r}) as f:\n"
            "    f.write(b'half of a new one'); f.flush()\n"
            "    print('writing', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    left = [q.name for q in tmp_path.iterdir() if q.name != "model.pt"]
    assert len(left) == 1 and left[0].endswith(".tmp") and target.read_bytes() == b"the good one"
    from cnnlab.files import _HOST

    mine = tmp_path / f".model.pt.{_HOST}.{os.getpid()}.x.tmp"  # a live writer's temporary file is left alone
    mine.write_bytes(b"in progress")
    with atomic_write(target) as f:
        f.write(b"the new one")
    assert target.read_bytes() == b"the new one"
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(["model.pt", mine.name])


def test_non_finite_images_are_refused_when_a_set_is_built(mnist_small):
    _, test = mnist_small
    x = test.x[:10].clone()
    x[3, 0, 5, 5] = float("nan")
    x[7, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 10 images hold NaN or infinite pixels \(the first: \[3, 7\]\)"):
        test.subset(range(10)).with_images(x)


def test_a_loss_that_becomes_nan_stops_training_with_where_and_what_to_try(mnist_small):
    from cnnlab.train import NonFiniteLoss

    train, test = mnist_small

    class NanAfter(Callback):  # poisons one weight after batch 3: the loss of batch 4 is NaN
        def after_batch(self, state):
            if state.step == 3:
                with torch.no_grad():
                    state.model.fc.weight[0, 0] = float("nan")

    seen = Recorder()
    with pytest.raises(NonFiniteLoss, match=r"became NaN at epoch 1, batch 4 of 5; training stopped\. Try a lower") as err:
        fit(LinearClassifier(), train.subset(range(500)), test, epochs=3, batch_size=100, device="cpu",
            callbacks=[NanAfter(), seen], progress=False)
    assert err.value.history.epochs == [] and seen.events[-1] == "after_fit"  # callbacks still cleaned up


@pytest.mark.parametrize("case,message", [
    ("empty", "the training set is empty"),
    ("float64", r"weights are float64.*model\.float\(\)"),
    ("outputs", r"outputs of shape \(5,\) per image, but mnist has 10 classes: build it with num_classes=10"),
])
def test_model_and_data_mistakes_are_one_sentence(mnist_small, case, message):
    train, _ = mnist_small
    model = LinearClassifier(num_classes=5 if case == "outputs" else 10)
    if case == "float64":
        model = model.double()
    data = train.subset([]) if case == "empty" else train.subset(range(100))
    with pytest.raises(ValueError, match=message):
        fit(model, data, epochs=1, progress=False)


def test_momentum_is_only_taken_where_it_is_used():
    assert TrainConfig(optimizer="sgd", schedule="constant", momentum=0.5).momentum == 0.5
    for settings in ({"optimizer": "sgd", "momentum": 0.5},  # one-cycle sets momentum itself
                     {"optimizer": "adam", "schedule": "constant", "momentum": 0.5}):  # adam has betas
        with pytest.raises(ValueError, match="momentum is for sgd with schedule='constant' or 'step'"):
            TrainConfig(**settings)
    assert TrainConfig().momentum is None  # recorded as what it is: not chosen


def test_a_stop_after_the_loss_went_nan_is_not_silent(mnist_small):
    from cnnlab.train import NonFiniteLoss

    train, _ = mnist_small

    class PoisonThenStop(Callback):
        def after_batch(self, state):
            if state.step == 2:
                with torch.no_grad():
                    state.model.fc.weight[0, 0] = float("nan")
            if state.step == 4:
                raise StopTraining

    with pytest.raises(NonFiniteLoss, match="became NaN at epoch 1, batch 3"):
        fit(LinearClassifier(), train.subset(range(1000)), epochs=1, batch_size=100, device="cpu",
            callbacks=[PoisonThenStop()], progress=False)


def test_subset_takes_index_lists_masks_and_nothing(mnist_small):
    train, _ = mnist_small
    ones = train.subset(train.y == 1)  # a boolean mask, not the indices 0 and 1
    assert len(ones) == int((train.y == 1).sum()) and bool((ones.y == 1).all())
    assert len(train.subset([])) == 0 and torch.equal(train.subset([5, 2]).y, train.y[[5, 2]])


def test_augmentation_moves_each_training_image_and_repeats_with_the_seed(mnist_small):
    train, test = mnist_small
    data = train.subset(range(256))

    class FirstBatch(Callback):
        def after_batch(self, state):
            if state.step == 1:
                self.xb, self.yb = state.xb.clone(), state.yb.clone()

    runs = []
    for _ in range(2):
        seen = FirstBatch()
        seed_everything(0)
        model = LinearClassifier()
        h = fit(model, data, test, epochs=1, batch_size=64, device="cpu", progress=False,
                augment={"shift": 2, "rotate": 10, "scale": (0.9, 1.1)}, callbacks=[seen])
        runs.append((seen.xb, h.epochs[0]["train_loss"]))
    plain = FirstBatch()
    fit(LinearClassifier(), data, epochs=1, batch_size=64, device="cpu", progress=False, callbacks=[plain])
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]  # the same seed, the same draws
    assert torch.equal(runs[0][0].flatten(1).sum(1) != 0, torch.ones(64, dtype=torch.bool))
    differs = (runs[0][0] - plain.xb).flatten(1).abs().amax(1) > 1e-3  # the same images, each moved
    assert int(differs.sum()) >= 60
    assert h.last("test_acc") == evaluate(model, test).accuracy  # scored on the test images as they are
    with pytest.raises(ValueError, match="augment takes shift, rotate and scale"):
        TrainConfig(augment={"flip": True})


def test_an_ensemble_averages_its_members_probabilities(mnist_small):
    from cnnlab.train import predict_ensemble

    _, test = mnist_small
    members = []
    for seed in (1, 2, 3):
        seed_everything(seed)
        members.append(LinearClassifier())
    data = test.subset(range(50))
    p = predict_ensemble(members, data)
    manual = (predict(members[0], data) + predict(members[1], data) + predict(members[2], data)) / 3
    assert torch.allclose(p, manual) and torch.allclose(p.sum(1), torch.ones(50))
    with pytest.raises(ValueError, match="at least one model"):
        predict_ensemble([], data)


def test_fit_leaves_cudnn_benchmark_as_it_found_it(mnist_small):
    """fit turns cuDNN's kernel search on for a CUDA run and restores the global setting after,
    also when it refuses the run (on the CPU it never touches it)."""
    train, test = mnist_small
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        fit(LinearClassifier(), train.subset(range(64)), test.subset(range(64)), epochs=1, progress=False)
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(ValueError, match="the test set is empty"):
            fit(LinearClassifier(), train.subset(range(64)), test.subset([]), epochs=1, progress=False)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = saved


def test_scoring_in_small_cpu_batches_gives_the_same_probabilities(mnist_small):
    """evaluate and predict score 128 images at a time on a CPU (twice as fast as 1,000 on two
    cores): the probabilities and the accuracy must be those of 1,000 at a time."""
    from cnnlab.models import create_model
    from cnnlab.train import EVAL_BATCH_SIZE, _eval_batch, evaluate, predict

    _, test = mnist_small
    torch.manual_seed(0)
    model = create_model("small-cnn")
    assert _eval_batch(None, torch.device("cpu")) == EVAL_BATCH_SIZE["cpu"] < 1000
    assert _eval_batch(None, torch.device("cuda")) == 1000 and _eval_batch(7, torch.device("cpu")) == 7
    assert torch.equal(predict(model, test), predict(model, test, batch_size=1000))
    assert evaluate(model, test).accuracy == evaluate(model, test, batch_size=1000).accuracy
