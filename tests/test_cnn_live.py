"""Notebook 05's machinery without a browser: the live dashboard and stop button, saliency
(against independent oracles), drawing a digit, and the feature-map explorer."""

import copy
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from cnnlab.callbacks import Every, LiveDashboard, StopButton
from cnnlab.drawing import drawing_pad, mnist_style, predict_drawing, render_strokes
from cnnlab.hooks import channel_maxima, feature_map_view, spatial_layers, top_activating
from cnnlab.models import ConvStack, LinearClassifier, SmallCNN
from cnnlab.saliency import grad_cam, input_gradients, smoothgrad
from cnnlab.train import Callback, fit, seed_everything
from cnnlab.widgets import feature_map_explorer


@pytest.fixture(scope="module")
def small_cnn(mnist_small):
    train, _ = mnist_small
    seed_everything(0)
    model = SmallCNN()
    fit(model, train, epochs=1, progress=False)
    return model


# ----- the dashboard --------------------------------------------------------------------------------

def test_dashboard_draws_frames_records_curves_and_times_itself(mnist_small):
    train, test = mnist_small
    seed_everything(0)
    dash = LiveDashboard(test, index=3, every_s=0.0, budget=0.5, show=False)
    model = SmallCNN()
    history = fit(model, train.subset(range(640)), test.subset(range(200)), epochs=2, callbacks=[dash], progress=False)
    assert history.stopped is None
    # the last frame shows the trained filters and the trained model's maps, not the first frame's:
    # the maps after each ReLU (what the next layer receives), the first 16 channels in a 4x4 grid
    from cnnlab.hooks import feature_maps
    from cnnlab.viz import tile

    shown = torch.as_tensor(dash._im_filters.get_array().filled(float("nan")))
    assert torch.allclose(shown, tile(model.conv1.weight.detach().cpu()[:, 0], 8), equal_nan=True)
    assert list(dash._map_channels) == ["relu1", "relu2"]
    maps = feature_maps(model, test.x[3:4], "relu2")[0]
    shown = torch.as_tensor(dash._im_maps[1].get_array().filled(float("nan")))
    assert torch.allclose(shown, tile(maps[:16], 4, normalize=True), equal_nan=True, atol=5e-3)  # on a GPU: a CPU twin
    assert float(torch.nan_to_num(shown).min()) >= 0  # after the ReLU: nothing negative
    probs = [bar.get_width() for bar in dash._bars]
    assert probs == pytest.approx(model.eval()(test.x[3:4].to(model.conv1.weight.device)).softmax(1)[0].tolist(), abs=1e-4)
    assert dash.png[:4] == b"\x89PNG" and dash.frames >= 2  # the first frame and the final one at least
    # train points over the run's whole length, test points at each epoch end, from fit's own numbers
    xs = [x for x, _ in dash.curves["train_loss"]]
    assert xs == sorted(xs) and xs[-1] == pytest.approx(2.0)
    assert dash.curves["test_acc"] == [(1.0, history.epochs[0]["test_acc"]), (2.0, history.epochs[1]["test_acc"])]
    assert all(0 <= a <= 1 for _, a in dash.curves["train_acc"])
    assert 0 < dash.seconds < dash.fit_seconds and dash.share == pytest.approx(dash.seconds / dash.fit_seconds)
    # the accuracy is drawn as error % on a log axis, test points exactly where History put them
    err = dash._lines["test_acc"].get_ydata()
    assert dash._ax_err.get_yscale() == "log" and list(err) == pytest.approx([100 * (1 - e["test_acc"]) for e in history.epochs])
    lo, hi = dash._ax_err.get_ylim()
    assert lo <= min(err) and max(err) <= hi <= 100


def test_dashboard_images_per_s_is_historys(mnist_small):
    """One definition of images/s: the final frame's header and ``images_per_s`` give the run's
    training images per second of the epochs as History timed them (drawing in, evaluation out)."""
    train, test = mnist_small
    dash = LiveDashboard(test, every_s=0.0, budget=0.5, show=False)
    train = train.subset(range(1280))
    history = fit(SmallCNN(), train, test.subset(range(500)), epochs=2, callbacks=[dash], progress=False)
    expected = 2 * len(train) / sum(e["seconds"] for e in history.epochs)
    assert dash.images_per_s == pytest.approx(expected, rel=1e-9)
    assert f"{expected:,.0f} images/s over the run" in dash.header
    # A frame's window leaves the test evaluation out, as History does: with no frames between the
    # first and the last, the last frame's window is the whole run, evaluations (1,000 test images
    # after each epoch, a quarter of the time here) and all, and its rate is the epochs' rate.
    dash = LiveDashboard(test, every_s=3600, early=None, show=False)
    history = fit(SmallCNN(), train.subset(range(640)), test, epochs=2, callbacks=[dash], progress=False)
    assert dash.frames == 2
    expected = 2 * 640 / sum(e["seconds"] for e in history.epochs)
    assert dash._images_per_s == pytest.approx(expected, rel=0.05)


def test_dashboard_images_per_s_when_another_callback_ends_the_run_after_an_epoch(mnist_small):
    """A callback that runs before the dashboard (order < 20) may end the run in after_epoch, so
    the dashboard never sees that epoch end: its images must not be counted a second time."""
    from cnnlab.train import Callback, StopTraining

    class StopAfterOneEpoch(Callback):
        order = 0

        def after_epoch(self, state):
            raise StopTraining

    train, test = mnist_small
    dash = LiveDashboard(test, every_s=3600, early=None, show=False)
    history = fit(SmallCNN(), train.subset(range(640)), test.subset(range(200)), epochs=3,
                  callbacks=[StopAfterOneEpoch(), dash], progress=False)
    assert len(history.epochs) == 1
    assert dash.images_per_s == pytest.approx(history.epochs[0]["images_per_s"], rel=1e-9)


@pytest.mark.parametrize("model_name", ["linear", "mlp"])
def test_dashboard_of_a_model_without_convolutions_shows_curves_and_its_answer(model_name, mnist_small):
    from cnnlab.models import create_model

    train, test = mnist_small
    dash = LiveDashboard(test, every_s=0.0, budget=0.5, show=False)
    fit(create_model(model_name), train.subset(range(320)), test.subset(range(100)), epochs=1, callbacks=[dash],
        progress=False)
    assert dash.frames >= 2 and dash.png[:4] == b"\x89PNG"
    assert len(dash._bars) == 10 and "its answer now" in dash._ax_probs.get_title()


def test_dashboard_keeps_an_early_frame_beside_the_last(mnist_small):
    train, test = mnist_small
    seed_everything(0)
    dash = LiveDashboard(test, every_s=3600, show=False)  # no frames but the first, the early and the last
    fit(SmallCNN(), train, epochs=3, callbacks=[dash], progress=False)
    # 2,000 images: 32 steps per epoch, 96 in all: the early frame is drawn after step ceil(3% of 96) = 3
    assert dash.frames == 3 and dash._early_index == 1
    assert dash.early_step == 3 and dash.early_images == 3 * 64
    import io

    import numpy as np
    from PIL import Image

    early, last = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int) for png in (dash.early_png, dash.png))
    assert early.shape == last.shape
    assert (np.abs(early - last).max(-1) > 40).mean() > 0.02  # more than the header: filters, maps, curves
    with pytest.raises(ValueError, match="early is a share"):
        LiveDashboard(test, early=1.5)
    none = LiveDashboard(None, early=None, show=False)
    fit(SmallCNN(), train.subset(range(256)), epochs=1, callbacks=[none], progress=False)
    assert none.early_png == b"" and none.early_step == 0


def test_dashboard_keeps_to_its_time_budget(mnist_small):
    train, _ = mnist_small
    dash = LiveDashboard(None, every_s=0.0, budget=0.5, show=False)
    fit(SmallCNN(), train.subset(range(2000)), epochs=2, callbacks=[dash], progress=False, device="cpu")
    # No minimum interval: the budget alone spaces the frames. Each frame before the last waits at
    # least its own cost / budget after the one before (timed by the dashboard itself, so a busy
    # machine changes how many frames there are, not whether the rule holds); some are drawn
    # during training (there are 64 batches, so at most 66 frames, and the early frame).
    # The early frame (after step 2 of 64) is the one drawn whatever the throttle says.
    assert len(dash.frame_log) == dash.frames and 4 <= dash.frames <= 67 and dash.early_step == 2
    pairs = list(zip(dash.frame_log[:-2], dash.frame_log[1:-1]))
    for k, ((start, cost), (next_start, _)) in enumerate(pairs):
        if k + 1 != dash._early_index:
            assert next_start - start >= cost / 0.5 * 0.999


def test_stop_button_ends_training_and_keeps_model_and_history(mnist_small):
    train, test = mnist_small

    class PressAt(Callback):
        order = -20

        def __init__(self, step, press):
            self.step, self.press = step, press

        def after_batch(self, state):
            if state.step == self.step:
                self.press()

    # From code: request_stop(). The button is the dashboard's sibling, not part of it.
    stop, dash = StopButton(), LiveDashboard(test, show=False)
    seed_everything(0)
    model = SmallCNN()
    weights0 = model.conv1.weight.detach().clone()
    history = fit(model, train, test, epochs=3, callbacks=[dash, stop, PressAt(5, stop.request_stop)], progress=False)
    assert history.stopped == "callback" and history.epochs == []
    assert "stopped after 5 steps (0 full epochs)" in stop.message
    assert not torch.equal(model.conv1.weight.detach().cpu(), weights0)  # trained for 5 steps, kept
    assert dash.png[:4] == b"\x89PNG"  # the final frame was still drawn

    # From the browser: the button interrupts the kernel (SIGINT), as the notebook's stop does
    stop, dash = StopButton(), LiveDashboard(test, show=False)
    history = fit(SmallCNN(), train, test, epochs=3,
                  callbacks=[stop, dash, PressAt(7, lambda: os.kill(os.getpid(), signal.SIGINT))], progress=False)
    assert history.stopped == "interrupt" and "stopped by the button (or an interrupt) after 7 steps" in stop.message
    assert dash.png[:4] == b"\x89PNG"


def test_stop_button_without_a_click_reports_a_finished_run(mnist_small):
    train, _ = mnist_small
    stop = StopButton()
    history = fit(LinearClassifier(), train.subset(range(256)), epochs=1, callbacks=[stop], progress=False)
    assert history.stopped is None and stop.message == "finished: 1 epochs, 4 steps"


def test_stop_button_html_interrupts_this_kernel_through_the_server():
    from cnnlab.callbacks import _stop_button_html

    page = _stop_button_html("0a1b-2c")
    assert "api/kernels/0a1b-2c/interrupt" in page and "method:&#x27;POST&#x27;" in page and "stop training" in page
    assert "(or the ■ (interrupt) button" in page  # if scripts are off, the page still says what to press
    assert "<button" not in _stop_button_html(None) and "the ■ (interrupt) button" in _stop_button_html(None)


def test_stop_button_outside_jupyterlab_points_to_the_interrupt_button(monkeypatch):
    """VS Code and Colab serve no kernel REST API: no button that cannot work, but what to press."""
    import sys
    import types

    from cnnlab.callbacks import _frontend, _stop_button_html

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                         if not k.startswith("VSCODE_") and k != "JPY_SESSION_NAME"})
    assert _frontend() == "jupyter"
    monkeypatch.setitem(os.environ, "VSCODE_PID", "1234")
    assert _frontend() == "vscode"
    monkeypatch.setitem(os.environ, "JPY_SESSION_NAME", "/work/05.ipynb")  # JupyterLab started from VS Code's terminal
    assert _frontend() == "jupyter"
    assert "Interrupt button above the notebook" in _stop_button_html(None, "vscode")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert _frontend() == "colab" and "Runtime → Interrupt execution" in _stop_button_html(None, "colab")


def test_every_throttles_by_steps_and_time():
    every = Every(seconds=0.0, steps=3)
    assert [every.ready() for _ in range(7)] == [False, False, True, False, False, True, False]
    slow = Every(seconds=3600)
    assert not any(slow.ready() for _ in range(5))
    with pytest.raises(ValueError, match="seconds >= 0 and steps >= 1"):
        Every(steps=0)


def test_dashboard_rejects_nonsense(mnist_small):
    _, test = mnist_small
    with pytest.raises(ValueError, match="budget"):
        LiveDashboard(test, budget=2)
    with pytest.raises(ValueError, match="index must be from 0 to 999"):
        LiveDashboard(test, index=1000)


# ----- saliency ----------------------------------------------------------------------------------------

def test_input_gradient_of_a_linear_model_is_its_weight_row(mnist_small):
    _, test = mnist_small
    model = LinearClassifier()
    x = test.x[:4]
    grads = input_gradients(model, x, target=7)
    expected = model.fc.weight[7].detach().abs().view(28, 28)
    assert grads.shape == (4, 28, 28) and torch.allclose(grads, expected.expand(4, 28, 28))


def test_grad_cam_equals_the_class_activation_map_on_a_gap_network(mnist_small):
    # conv layers -> global average pooling -> one linear layer: Grad-CAM = ReLU(CAM) / (h*w)
    # with CAM = sum_k w[c, k] * A_k (Zhou et al. 2016), computed here without any gradient.
    _, test = mnist_small
    torch.manual_seed(0)
    model = ConvStack(depth=3, width=8, padding=1).eval()
    x = test.x[:5]
    cam = grad_cam(model, x, "relu3", target=2)
    with torch.no_grad():
        acts = torch.nn.Sequential(*list(model)[:6])(x)  # (B, 8, 28, 28): the output of relu3
        expected = F.relu(torch.einsum("k,bkhw->bhw", model.fc.weight[2], acts)) / (28 * 28)
    assert cam.shape == (5, 28, 28) and torch.allclose(cam, expected, atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())  # the capture hook is gone


def test_saliency_checks_its_arguments(small_cnn, mnist_small):
    _, test = mnist_small
    with pytest.raises(ValueError, match="target must be a class from 0 to 9"):
        input_gradients(small_cnn, test.x[:1], target=10)
    with pytest.raises(ValueError, match="needs a spatial"):
        grad_cam(small_cnn, test.x[:1], "fc1")
    assert grad_cam(small_cnn, test.x[:2], "relu2").shape == (2, 28, 28)
    with pytest.raises(ValueError, match="samples >= 1 and noise >= 0"):
        smoothgrad(small_cnn, test.x[:1], noise=-0.1)


def test_signed_input_gradient_of_a_linear_model_is_its_weight_row(mnist_small):
    _, test = mnist_small
    model = LinearClassifier()
    grads = input_gradients(model, test.x[:3], target=4, signed=True)
    assert torch.allclose(grads, model.fc.weight[4].detach().view(28, 28).expand(3, 28, 28))
    assert (grads < 0).any() and (grads > 0).any()


def test_smoothgrad_without_noise_is_the_input_gradient(small_cnn, mnist_small):
    _, test = mnist_small
    x = test.x[:4]
    plain = input_gradients(small_cnn, x, signed=True)
    assert torch.allclose(smoothgrad(small_cnn, x, noise=0.0, samples=3), plain, atol=1e-6)
    assert not torch.allclose(smoothgrad(small_cnn, x, samples=3), plain, atol=1e-3)  # the noise does something
    assert torch.equal(smoothgrad(small_cnn, x, samples=3, seed=1), smoothgrad(small_cnn, x, samples=3, seed=1))


def test_smoothgrad_is_smoother_than_one_gradient(small_cnn, mnist_small):
    """Total variation (the summed size of differences between neighbouring pixels) relative to the
    map's own size: SmoothGrad's average over noisy copies has less pixel-to-pixel speckle."""

    def roughness(m):  # (B, H, W) -> (B,)
        tv = (m[:, 1:] - m[:, :-1]).abs().sum((1, 2)) + (m[:, :, 1:] - m[:, :, :-1]).abs().sum((1, 2))
        return tv / m.abs().sum((1, 2))

    _, test = mnist_small
    x = test.x[:8]
    plain, smooth = roughness(input_gradients(small_cnn, x, signed=True)), roughness(smoothgrad(small_cnn, x))
    assert (smooth < plain).all() and (smooth / plain).mean() < 0.93, (smooth, plain)


# ----- drawing ------------------------------------------------------------------------------------------

def test_mnist_style_recovers_mnist_digits_drawn_ten_times_larger(mnist_small):
    # An MNIST digit blown up to a 280x280 "drawing" and prepared again lands where MNIST put it.
    _, test = mnist_small
    digits = test.denormalize(test.x[:50])
    big = F.interpolate(digits, scale_factor=10, mode="bilinear", align_corners=False)
    again = torch.stack([mnist_style(b) for b in big])
    assert again.shape == (50, 1, 28, 28)
    corr = F.cosine_similarity(again.flatten(1), digits.flatten(1))
    assert corr.median() > 0.9 and corr.min() > 0.75


def test_mnist_style_centres_by_mass_in_a_20_pixel_box():
    img = torch.zeros(280, 280)
    img[10:60, 200:220] = 1  # a bar in a corner, 50 tall and 20 wide
    out = mnist_style(img)[0]
    rows, cols = (out > 0.05).any(1).nonzero()[:, 0], (out > 0.05).any(0).nonzero()[:, 0]
    assert rows[-1] - rows[0] + 1 == 20 and cols[-1] - cols[0] + 1 == 8
    cy = (out.sum(1) * torch.arange(28)).sum() / out.sum()
    cx = (out.sum(0) * torch.arange(28)).sum() / out.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert mnist_style(torch.zeros(50, 50)).abs().sum() == 0  # nothing drawn: nothing to see
    with pytest.raises(ValueError, match="one grey image"):
        mnist_style(torch.zeros(3, 28, 28))


def test_render_strokes_draws_round_ink():
    img = render_strokes([[(40, 40), (240, 40)], [(140, 140)]], size=280, width=20)
    assert img.shape == (280, 280) and img.max() == 1 and img.min() == 0
    assert img[40, 140] == 1 and img[40 + 12, 140] == 0 and img[140, 140] == 1 and img[140, 155] == 0


def test_a_drawn_one_is_read_as_a_one(small_cnn, mnist_small):
    _, test = mnist_small
    digit, probs = predict_drawing({"cnn": small_cnn}, render_strokes([[(150, 40), (140, 240)]]), test)
    assert digit.shape == (1, 28, 28) and digit.min() == pytest.approx(test.background)
    assert int(probs["cnn"].argmax()) == 1


def test_drawing_pad_predicts_on_pen_up_and_clears(small_cnn, mnist_small):
    _, test = mnist_small
    pad = drawing_pad({"cnn": small_cnn}, test, maps_model=small_cnn)
    assert pad.image.value == b"" and pad.digit is None
    pad.pen_down(150, 40)
    for y in range(50, 250, 10):
        pad.pen_move(150 - y / 20, y)
    pad.pen_up(140, 240)
    assert pad.image.value[:4] == b"\x89PNG" and pad.digit.shape == (1, 28, 28)
    assert "<b>cnn</b>: 1 - one" in pad.summary.value
    pad.pen_move(10, 10)  # pen is up: no ink
    assert len(pad.strokes) == 1
    pad.clear()
    assert pad.strokes == [] and pad.digit is None and "draw a digit" in pad.summary.value


def test_a_drawing_without_ink_gets_no_prediction(small_cnn, mnist_small):
    _, test = mnist_small
    with pytest.raises(ValueError, match="no ink on the pad"):
        predict_drawing({"cnn": small_cnn}, torch.zeros(280, 280), test)
    pad = drawing_pad({"cnn": small_cnn}, test)
    pad.pen_down(500, 500)  # a tap outside the 280 x 280 box: a stroke with no ink in the picture
    pad.pen_up(500, 500)
    assert "no ink on the pad" in pad.summary.value and pad.digit is None and pad.image.value == b""


# ----- the feature-map explorer ---------------------------------------------------------------------------

def test_spatial_layers_and_top_activating(small_cnn, mnist_small):
    _, test = mnist_small
    layers = spatial_layers(small_cnn)
    assert layers == {"conv1": (32, 26, 26), "relu1": (32, 26, 26), "conv2": (64, 24, 24),
                      "relu2": (64, 24, 24), "pool": (64, 12, 12)}
    maxima = channel_maxima(small_cnn, test.x[:300], "conv2", batch_size=128)
    with torch.no_grad():
        x = test.x[:300].to(small_cnn.conv1.weight.device)  # fit left the model on its device
        direct = small_cnn.conv2(small_cnn.relu1(small_cnn.conv1(x))).amax((2, 3)).cpu()
    assert torch.allclose(maxima, direct, atol=1e-4)
    idx, values = top_activating(maxima, 7, k=9)
    assert torch.equal(values, maxima[idx, 7]) and values[0] == maxima[:, 7].max() and (values[:-1] >= values[1:]).all()
    with pytest.raises(ValueError, match="channel must be from 0 to 63"):
        top_activating(maxima, 64)


def test_feature_map_view_pairs_a_channel_with_its_filter(small_cnn, mnist_small):
    _, test = mnist_small
    view = feature_map_view(small_cnn, test.x[0], "relu2", 5)
    assert view["maps"].shape == (64, 24, 24) and torch.equal(view["map"], view["maps"][5])
    assert view["conv"] == "conv2" and torch.equal(view["filter"], small_cnn.conv2.weight[5].detach().cpu())
    with pytest.raises(ValueError, match="channel must be a whole number from 0 to 63"):
        feature_map_view(small_cnn, test.x[0], "relu2", 64)
    with pytest.raises(ValueError, match="has no feature maps"):
        feature_map_view(small_cnn, test.x[0], "fc1", 0)


def test_feature_map_explorer_responds_to_every_control(small_cnn, mnist_small):
    _, test = mnist_small
    pad = drawing_pad({"cnn": small_cnn}, test)
    w = feature_map_explorer(small_cnn, test, pool=300, drawing=pad)
    first, first_top = w.image.value, w.top_image.value
    assert first[:4] == b"\x89PNG" and first_top[:4] == b"\x89PNG" and "channel 0" in w.summary.value
    w.controls["channel"].value = 9
    assert w.image.value != first and w.top_image.value != first_top and "channel 9" in w.summary.value
    w.controls["layer"].value = "conv2"
    assert w.controls["channel"].max == 63
    w.controls["channel"].value = 63
    assert "conv2</b>, channel 63" in w.summary.value
    w.controls["layer"].value = "pool"
    assert "pool</b>, channel 63" in w.summary.value and "12×12" in w.summary.value
    before = w.image.value
    w.controls["index"].value = 5
    assert w.image.value != before
    w.controls["source"].value = "your drawing"  # nothing drawn yet: a message, the picture stays
    assert "nothing drawn yet" in w.summary.value and w.image.value
    pad.pen_down(150, 40)
    pad.pen_move(140, 240)
    pad.pen_up(140, 240)
    w.controls["source"].value = "test digit"
    w.controls["source"].value = "your drawing"
    assert "color:#b00" not in w.summary.value


def test_feature_map_explorer_redraws_only_what_a_new_channel_changes(small_cnn, mnist_small):
    """A new channel moves the outline and swaps the big map, the filter and the top 9 in place
    (blitted); the frame must be the picture that drawing the same state from scratch gives."""
    import io

    import numpy as np
    from PIL import Image

    _, test = mnist_small
    w = feature_map_explorer(small_cnn, test, pool=300)
    first = w.image.value
    w.controls["channel"].value = 9  # blitted onto the background of channel 0
    blitted = w.image.value
    w.controls["index"].value = 1
    w.controls["index"].value = 0  # the same digit and channel, every panel drawn from scratch
    fresh, blit, before = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
                           for png in (w.image.value, blitted, first))
    assert fresh.shape == blit.shape
    assert np.abs(fresh - blit).max() <= 16 and (fresh != blit).any(-1).mean() < 0.001
    assert (np.abs(before - blit).max(-1) > 40).mean() > 0.01  # and it is not channel 0's picture


def test_grad_cam_puts_each_unit_at_the_centre_of_its_receptive_field():
    from cnnlab.saliency import _to_input

    cam = torch.zeros(1, 1, 24, 24)
    cam[0, 0, 0, 0] = 1  # relu2's first unit sees input pixels 0..4: its centre is pixel (2, 2)
    placed = _to_input(SmallCNN(), "relu2", cam, (1, 28, 28))[0, 0]
    assert placed.shape == (28, 28) and placed[2, 2] == pytest.approx(1) and placed[3, 3] < 1e-5
    assert torch.allclose(placed[:3, :3], torch.ones(3, 3))  # the border repeats the edge units


def test_nothing_notebook_05_calls_in_a_loop_leaves_a_hook_behind(small_cnn, mnist_small, tmp_path):
    _, test = mnist_small
    x = test.x[:4]
    for _ in range(20):  # what the explorer, the pad, saliency and the dashboard do on every change
        feature_map_view(small_cnn, x[0], "relu2", 3)
        channel_maxima(small_cnn, x, "conv2")
        spatial_layers(small_cnn)
        grad_cam(small_cnn, x, "relu2")
    model = copy.deepcopy(small_cnn)  # the shared model stays as the other tests expect it
    for _ in range(3):
        dash = LiveDashboard(test, show=False, every_s=0.0, budget=0.9)
        fit(model, test.subset(range(128)), epochs=1, callbacks=[dash], progress=False)
        assert dash.frames >= 2
    for m in (small_cnn, model):
        assert all(not mod._forward_hooks and not mod._backward_hooks for mod in m.modules())


def test_the_saved_notebook_shows_the_dashboards_last_frame_and_no_stale_button():
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).parent.parent / "notebooks" / "05_small_cnn.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "LiveDashboard(test_set" in "".join(c["source"]))
    outputs = cell["outputs"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the final frame is not stored"
    html_out = [("".join(o["data"]["text/html"])) for o in outputs if "text/html" in o.get("data", {})]
    assert any("finished: 5 epochs" in h for h in html_out) and not any("<button" in h for h in html_out)
