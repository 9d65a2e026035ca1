"""Widgets driven without a browser (set .value, check what changed) and the saved-run cache."""

import pytest
import torch

from cnnlab import runs
from cnnlab.metrics import explore_transform
from cnnlab.models import MLP, LinearClassifier
from cnnlab.transforms import shift_images
from cnnlab.widgets import shift_explorer


@pytest.fixture(scope="module")
def two_models(mnist_small):
    from cnnlab.train import fit

    train, _ = mnist_small
    lin, mlp = LinearClassifier(), MLP(hidden=64)
    fit(lin, train, epochs=2, progress=False)
    fit(mlp, train, epochs=2, progress=False)
    return {"linear": lin, "mlp": mlp}


def test_explore_transform_gives_the_shifted_digit_and_probabilities(two_models, mnist_small):
    _, test = mnist_small
    image, probs = explore_transform(two_models, test, 5, dx=3, dy=-2)
    assert torch.equal(image, shift_images(test.x[5], 3, -2, test.background))
    assert set(probs) == {"linear", "mlp"}
    for p in probs.values():
        assert p.shape == (10,) and p.sum().item() == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match="index must be a whole number from 0 to 999"):
        explore_transform(two_models, test, 1000)


def test_shift_explorer_updates_picture_and_probabilities(two_models, mnist_small):
    _, test = mnist_small
    w = shift_explorer(two_models, test, index=0)
    first_image, first_summary = w.image.value, w.summary.value
    assert first_image[:4] == b"\x89PNG" and "<b>linear</b>" in first_summary and "<b>mlp</b>" in first_summary
    w.controls["dx"].value = 6
    assert w.image.value != first_image and w.summary.value != first_summary
    _, expected = explore_transform(two_models, test, 0, dx=6)
    assert f"({float(expected['linear'].max()):.1%})" in w.summary.value
    w.controls["index"].value = 10**6  # bounded: clamped to the last digit, no error
    assert w.controls["index"].value == len(test) - 1 and "color:#b00" not in w.summary.value
    w.controls["angle"].value = 45.0
    w.controls["scale"].value = 0.5
    assert "color:#b00" not in w.summary.value


def test_a_single_model_is_accepted(two_models, mnist_small):
    _, test = mnist_small
    w = shift_explorer(two_models["linear"], test, rotate_and_scale=False)
    assert set(w.controls) == {"index", "dx", "dy"} and "<b>linear</b>" in w.summary.value


def test_load_or_train_saves_then_loads(isolated_cache, mnist_small, monkeypatch, capsys):
    train, test = mnist_small
    model, history = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False)
    assert "training it now" in capsys.readouterr().out
    saved = list((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    assert len(saved) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the saved run")

    monkeypatch.setattr(runs, "fit", no_training)
    again, history2 = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False)
    assert "loaded the saved run" in capsys.readouterr().out
    assert torch.equal(again.fc.weight, model.fc.weight) and history2.epochs == history.epochs
    # the same device whichever way the model came: trained, or loaded from the saved run
    assert again.fc.weight.device == model.fc.weight.device == torch.device(history.device)


def test_save_run_without_replace_keeps_the_run_saved_first(isolated_cache, mnist_small, capsys):
    """A notebook that trains again each time (05) keeps the run the later notebooks loaded."""
    from cnnlab.train import fit

    train, test = mnist_small
    first, second = LinearClassifier(), LinearClassifier()
    history = fit(first, train, test, epochs=1, progress=False, seed=0)
    path = runs.save_run("lin", first, history, train, eval_set=test)
    kept = torch.load(path, weights_only=False)
    history2 = fit(second, train, test, epochs=1, progress=False, seed=0)
    history2.seconds = history.seconds + 99  # the same weights, another time: what a re-run of 05 gives
    assert runs.save_run("lin", second, history2, train, eval_set=test, replace=False) == path
    assert "saved before" in capsys.readouterr().out
    assert torch.load(path, weights_only=False)["history"] == kept["history"]
    runs.save_run("lin", second, history2, train, eval_set=test)  # the default replaces it
    assert torch.load(path, weights_only=False)["history"] != kept["history"]


def test_other_settings_or_data_mean_another_run(mnist_small):
    train, _ = mnist_small
    model = LinearClassifier()
    base = runs.run_path("lin", model, train, {"epochs": 1, "lr": 0.1, "progress": True})
    assert runs.run_path("lin", model, train, {"epochs": 1, "lr": 0.1, "progress": False}) == base
    assert runs.run_path("lin", model, train, {"epochs": 2, "lr": 0.1}) != base
    assert runs.run_path("lin", model, train.subset(range(100)), {"epochs": 1, "lr": 0.1}) != base
    assert runs.run_path("lin", LinearClassifier(image_size=56), train, {"epochs": 1, "lr": 0.1}) != base


def test_a_corrupt_saved_run_is_retrained_with_a_message(isolated_cache, mnist_small, capsys):
    train, test = mnist_small
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False)
    path = next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    path.write_bytes(b"garbage")
    capsys.readouterr()
    model, history = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False)
    assert "could not be used" in capsys.readouterr().out and len(history.epochs) == 1
    assert runs.load_checkpoint(path).metrics["test_acc"] == history.last("test_acc")  # replaced


def test_series_settings_shrink_in_smoke_mode(monkeypatch):
    monkeypatch.setenv("CNNLAB_SMOKE", "0")
    assert runs.series_settings("mlp")["epochs"] == runs.SERIES_SETTINGS["mlp"]["epochs"]
    monkeypatch.setenv("CNNLAB_SMOKE", "1")
    assert runs.series_settings("mlp")["epochs"] == 1


def test_kernel_presets_and_apply_kernel():
    from cnnlab.conv import KERNEL_PRESETS, apply_kernel, kernel_preset

    for name in KERNEL_PRESETS:
        for size in (3, 5):
            assert kernel_preset(name, size).shape == (size, size)
    assert kernel_preset("box blur", 5).sum().item() == pytest.approx(1)
    img = torch.rand(28, 28)
    assert torch.allclose(apply_kernel(img, kernel_preset("identity", 3), padding=1), img)
    ramp = torch.arange(28.0).repeat(28, 1)  # brightness grows to the right: a vertical-edge everywhere
    assert torch.allclose(apply_kernel(ramp, kernel_preset("Sobel x (vertical edges)")), torch.full((26, 26), 8.0))
    assert torch.allclose(apply_kernel(ramp, kernel_preset("Sobel y (horizontal edges)")), torch.zeros(26, 26))
    with pytest.raises(ValueError, match="unknown preset"):
        kernel_preset("emboss")


def test_kernel_playground_updates_and_explains_bad_values(mnist_small):
    from cnnlab.widgets import kernel_playground

    _, test = mnist_small
    w = kernel_playground(test, index=3)
    first = w.image.value
    assert first[:4] == b"\x89PNG" and "<b>26</b>" in w.status.value
    w.cells[1][1].value = "7"
    assert w.image.value != first
    before = w.image.value
    for bad, message in (("", "is not a number"), ("nan", "not a number between"), ("1e99", "not a number between")):
        w.cells[0][2].value = bad
        assert message in w.status.value and w.image.value == before  # message, last picture kept
    w.cells[0][2].value = "0"
    w.controls["size"].value = 5
    assert len(w.cells) == 5 and "<b>24</b>" in w.status.value
    w.controls["stride"].value, w.controls["padding"].value = 2, 2
    assert "<b>14</b>" in w.status.value
    w.controls["preset"].value = "Gaussian"
    assert float(w.cells[2][2].value) == pytest.approx(36 / 256, rel=1e-3)


def test_window_explorer_follows_the_output_pixel_and_explains_bad_weights(mnist_small):
    from cnnlab.conv import apply_kernel, kernel_preset
    from cnnlab.widgets import window_explorer

    _, test = mnist_small
    w = window_explorer(test, index=3)
    digit = test.denormalize(test.x[3])[0]
    fmap = apply_kernel(digit, kernel_preset("Sobel x (vertical edges)"))
    row, col = w.controls["row"].value, w.controls["col"].value
    assert fmap.abs().max() == fmap[row, col].abs()  # it starts at the strongest response
    assert w.controls["row"].max == 25 and f"<b>{float(fmap[row, col]):.4f}</b>" in w.arithmetic.value
    first, first_sum = w.image.value, w.arithmetic.value
    w.controls["col"].value = 4
    assert f"<b>({row}, 4)</b>" in w.summary.value and "columns 4–6" in w.summary.value
    assert w.image.value != first and w.arithmetic.value != first_sum
    assert f"F.conv2d at ({row}, 4): <b>{float(fmap[row, 4]):.4f}</b>" in w.arithmetic.value
    w.controls["stride"].value, w.controls["padding"].value = 2, 1  # 28 -> 14: the pixel stays inside
    assert w.controls["row"].max == 13 and w.controls["row"].value <= 13 and "Output 14×14" in w.summary.value
    w.controls["row"].value, w.controls["col"].value = 0, 0
    assert "rows -1–1, columns -1–1" in w.summary.value  # the window reaches into the padding
    w.controls["row"].value = 99  # a slider keeps to its range
    assert w.controls["row"].value == 13
    before, before_sum = w.image.value, w.arithmetic.value
    for bad, message in (("1 2; x 4", "row 2, column 1: &#x27;x&#x27; is not a number"), ("1 2 3; 4 5", "square grid"),
                         ("", "is not a number")):
        w.controls["weights"].value = bad
        assert message in w.summary.value and w.image.value == before and w.arithmetic.value == before_sum
    w.controls["weights"].value = "0 0 0; 0 1 0; 0 0 0"  # the identity: the output pixel is the input pixel
    r, c = divmod(int(digit[::2, ::2].argmax()), 14)  # stride 2, padding 1: output (r, c) is centred on input (2r, 2c)
    w.controls["row"].value, w.controls["col"].value = r, c
    assert f"sum of the 9 products = <b>{float(digit[2 * r, 2 * c]):.4f}</b>" in w.arithmetic.value and digit[2 * r, 2 * c] > 0
    w.controls["size"].value = 5
    assert w.controls["weights"].value.count(";") == 4 and "5×5 numbers" in w.summary.value


def test_shape_calculator_reports_shape_and_parameters():
    from cnnlab.widgets import shape_calculator

    c = shape_calculator()
    assert "<b>(32, 26, 26)</b>" in c.result.value and "<b>320</b>" in c.result.value
    for name, v in (("c_in", 32), ("c_out", 64), ("h", 26), ("w", 26)):
        c.controls[name].value = v
    assert "<b>(64, 24, 24)</b>" in c.result.value and "<b>18,496</b>" in c.result.value
    c.controls["kernel"].value = 0
    assert "kernel must be a whole number &gt;= 1" in c.result.value


def test_receptive_field_explorer_moves_the_box(mnist_small):
    from cnnlab.models import ConvStack, SmallCNN
    from cnnlab.widgets import receptive_field_explorer

    _, test = mnist_small
    w = receptive_field_explorer({"small": SmallCNN(), "deep": ConvStack(depth=6, padding=1)}, test, images=8)
    assert w.controls["layer"].value == "pool" and "receptive field <b>6×6</b>" in w.summary.value
    first = w.image.value
    w.controls["row"].value = 0
    assert "sees rows 0–5" in w.summary.value and w.image.value != first
    w.controls["model"].value = "deep"
    assert w.controls["layer"].value == "conv6" and "<b>13×13</b>" in w.summary.value
    w.controls["layer"].value = "conv2"
    assert w.controls["row"].max == 27 and "<b>5×5</b>" in w.summary.value


def test_a_saved_run_that_no_longer_scores_what_it_recorded_is_retrained(isolated_cache, mnist_small, capsys):
    from cnnlab.checkpoint import load_checkpoint, save_checkpoint

    train, test = mnist_small
    model, history = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False)
    path = next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    ckpt = load_checkpoint(path)
    with torch.no_grad():  # same file, same recorded accuracy, but other weights: it must be noticed
        ckpt.model.fc.weight.zero_()
        ckpt.model.fc.bias.zero_()
    save_checkpoint(path, ckpt.model, history=ckpt.history, metrics=ckpt.metrics)
    capsys.readouterr()
    again, _ = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False)
    out = capsys.readouterr().out
    assert f"recorded {history.last('test_acc'):.2%} but scores" in out and "training again" in out
    assert float(again.fc.weight.detach().abs().sum()) > 0


def test_loading_a_saved_run_checks_its_answers_on_a_probe_not_the_whole_test_set(isolated_cache, mnist_small,
                                                                                   monkeypatch, capsys):
    from cnnlab.checkpoint import load_checkpoint

    train, test = mnist_small
    monkeypatch.setattr(runs, "PROBE_SIZE", 100)
    model, _ = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    kept = load_checkpoint(next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))).metrics["probe"]
    probe = test.subset(range(0, 1000, 10))  # every 10th image: spread over the whole set
    with torch.no_grad():
        assert kept["answers"] == model(probe.x).argmax(1).tolist()
    seen = []
    original = LinearClassifier.forward
    monkeypatch.setattr(LinearClassifier, "forward", lambda self, x: seen.append(len(x)) or original(self, x))
    capsys.readouterr()
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    assert "loaded the saved run" in capsys.readouterr().out and sum(seen) == 100


def test_a_saved_run_is_known_by_its_answers_and_older_runs_by_their_accuracy(isolated_cache, mnist_small, capsys):
    from cnnlab.checkpoint import load_checkpoint, save_checkpoint

    train, test = mnist_small
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    path = next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    ckpt = load_checkpoint(path)
    wrong_record = {**ckpt.metrics, "test_acc": 0.25}  # the answers still match: the weights are the saved ones
    save_checkpoint(path, ckpt.model, history=ckpt.history, metrics=wrong_record)
    capsys.readouterr()
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    assert "loaded the saved run" in capsys.readouterr().out
    older = {"test_acc": 0.25}  # a run saved before runs kept answers is checked by its accuracy, which is wrong here
    save_checkpoint(path, ckpt.model, history=ckpt.history, metrics=older)
    runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    out = capsys.readouterr().out
    assert "recorded 25.00% but scores" in out and "training again" in out
    other_test = test.subset(range(1, 1000, 2))  # not the images the answers were kept for: the accuracy decides
    save_checkpoint(path, ckpt.model, history=ckpt.history, metrics=ckpt.metrics)
    runs.load_or_train("lin", LinearClassifier, train, other_test, epochs=1, progress=False, device="cpu")
    assert "loaded the saved run" in capsys.readouterr().out


def test_receptive_field_explorer_with_a_dense_model_says_so(mnist_small):
    from cnnlab.models import MLP, SmallCNN
    from cnnlab.widgets import receptive_field_explorer

    _, test = mnist_small
    w = receptive_field_explorer({"mlp": MLP(), "cnn": SmallCNN()}, test, images=4)
    assert "has no chain of convolution and pooling layers" in w.summary.value and w.controls["layer"].options == ()
    w.controls["model"].value = "cnn"  # recovers: the CNN's layers appear and a picture is drawn
    assert w.controls["layer"].value == "pool" and w.image.value[:4] == b"\x89PNG"
    w.controls["model"].value = "mlp"
    assert "has no chain" in w.summary.value


def test_a_retrained_run_starts_from_the_seed_not_from_the_refused_weights(isolated_cache, mnist_small, capsys):
    from cnnlab.checkpoint import load_checkpoint, save_checkpoint

    train, test = mnist_small
    fresh, _ = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    path = next((isolated_cache / "cache" / "runs").glob("lin-*.pt"))
    ckpt = load_checkpoint(path)
    with torch.no_grad():
        ckpt.model.fc.weight.mul_(-1)  # scores far from what it recorded
    save_checkpoint(path, ckpt.model, history=ckpt.history, metrics=ckpt.metrics)
    again, _ = runs.load_or_train("lin", LinearClassifier, train, test, epochs=1, progress=False, device="cpu")
    assert "training again" in capsys.readouterr().out
    assert torch.equal(again.fc.weight, fresh.fc.weight)  # the same run as the first: from the seed, on the CPU


def test_widget_latency_benchmark_times_every_widget_once_each(mnist_small):
    from cnnlab.bench import format_widget_latency, widget_latency
    from cnnlab.models import MLP, LinearClassifier, SmallCNN

    _, test = mnist_small
    times = widget_latency(test.subset(range(300)), {"linear": LinearClassifier(), "mlp": MLP(), "cnn": SmallCNN()},
                           repeats=2)
    assert len(times) == 9 and all(0 < t < 30 for t in times.values())
    assert any(name.startswith("drawing_pad") for name in times) and any("product_explorer" in n for n in times)
    lines = format_widget_latency({"slow": 0.25, "fast": 0.01}).splitlines()
    assert lines[0].startswith("  250.0 ms  over 100 ms slow") and "over" not in lines[1]


def test_a_blitted_frame_is_the_picture_a_full_redraw_gives(mnist_small):
    """The shift explorer redraws only its image, bars and titles after a change (render_png's
    blitting); the frame must look like the same state drawn from scratch."""
    import io

    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    from cnnlab.models import MLP, SmallCNN
    from cnnlab.metrics import explore_transform
    from cnnlab.viz import render_png, show_prediction
    from cnnlab.widgets import shift_explorer

    _, test = mnist_small
    models = {"mlp": MLP(), "cnn": SmallCNN()}
    box = shift_explorer(models, test, index=5)
    first = box.image.value
    box.controls["dx"].value = 3
    box.controls["angle"].value = 20
    img, probs = explore_transform(models, test, index=5, dx=3, dy=0, angle=20, scale=1)
    fig = Figure(figsize=(2.6 + 2.6 * 2, 2.6))
    show_prediction(img, probs, test.classes, axes=fig.subplots(1, 3, width_ratios=[1, 1.3, 1.3]), mean=test.mean,
                    std=test.std)
    fresh, blitted, before = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
                              for png in (render_png(fig), box.image.value, first))
    assert fresh.shape == blitted.shape
    # the same picture: at most the tick marks' antialiasing where a bar meets its axis differs
    assert np.abs(fresh - blitted).max() <= 16 and (fresh != blitted).any(-1).mean() < 0.001
    assert (np.abs(before - blitted).max(-1) > 40).mean() > 0.01  # and not the first frame's
