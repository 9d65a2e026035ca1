"""The pictures notebook 09 draws: images as the network receives them, training histories one
run per column, learning curves with draws and intervals, many photos with their guesses."""

import matplotlib.pyplot as plt
import pytest
import torch

from cnnlab import viz
from cnnlab.train import History


def _history(losses, accs, scored=True):
    epochs = []
    for i, (loss, acc) in enumerate(zip(losses, accs)):
        e = {"epoch": i + 1, "train_loss": loss, "train_acc": acc}
        if scored:
            e |= {"test_loss": loss * 1.5, "test_acc": acc - 0.05}
        epochs.append(e)
    return History(config={}, device="cpu", epochs=epochs)


def test_show_images_draws_dark_ink_by_default_and_the_stored_pixels_when_asked(mnist_small):
    train, _ = mnist_small
    dark = viz.show_images(train, range(4), ncols=4)
    light = viz.show_images(train, range(4), ncols=4, ink="light", colorbar=True)
    try:
        assert [ax.images[0].get_cmap().name for ax in dark.axes[:4]] == ["gray_r"] * 4  # 01-07's look, unchanged
        assert len(dark.axes) == 4  # no colour bar unless asked
        assert [ax.images[0].get_cmap().name for ax in light.axes[:4]] == ["gray"] * 4  # 1 is white, as stored
        bar = light.axes[-1]
        assert len(light.axes) == 5 and "pixel value" in bar.get_ylabel()
        assert light.axes[0].images[0].get_clim() == (0, 1)
    finally:
        plt.close(dark)
        plt.close(light)
    with pytest.raises(ValueError, match="ink must be"):
        viz.show_images(train, range(2), ink="white")


def test_plot_history_in_separate_panels_tells_train_from_validation_on_a_log_axis():
    histories = {"a": _history([6.2, 0.5, 0.3], [0.2, 0.8, 0.9]), "b": _history([1.0, 0.8], [0.5, 0.6]),
                 "c": _history([0.4, 0.2], [0.8, 0.9], scored=False)}
    fig = viz.plot_history(histories, separate=True, scored="validation", log_loss=True)
    try:
        assert len(fig.axes) == 6  # 2 rows (loss, accuracy) x 3 runs
        acc_axes = fig.axes[3:]
        assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
        assert all(ax.get_yscale() == "log" for ax in fig.axes[:3])
        assert all(ax.get_yscale() == "linear" for ax in acc_axes)
        first = fig.axes[0].get_lines()
        assert [ln.get_label() for ln in first] == ["train", "validation"]
        assert [ln.get_color() for ln in first] == [viz.TRAIN_COLOR, viz.SCORED_COLOR]
        assert first[0].get_linestyle() != first[1].get_linestyle()  # told apart without colour too
        assert len(fig.axes[2].get_lines()) == 1  # a run with no scored set: training only
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "validation"]
    finally:
        plt.close(fig)
    default = viz.plot_history(histories)  # the other notebooks' figure: two axes, every run on both
    try:
        assert len(default.axes) == 2 and default.axes[0].get_yscale() == "linear"
        assert default.axes[1].get_ylabel() == "test accuracy (%)"
    finally:
        plt.close(default)


def test_learning_curves_join_the_means_of_the_draws_and_bar_their_intervals():
    curves = {"scratch": {100: [0.70, 0.74, 0.72], 1000: 0.85}, "probe": {100: [0.76, 0.78, 0.77], 1000: 0.84}}
    ax = viz.plot_learning_curves(curves, n_test=2000, scored="validation")
    try:
        lines = [ln for ln in ax.get_lines() if ln.get_label() in curves]
        assert [ln.get_label() for ln in lines] == ["scratch", "probe"]
        assert list(lines[0].get_ydata()) == pytest.approx([72.0, 85.0])  # the mean of the three draws, then the one
        dots = [c for c in ax.collections if c.get_offsets().shape[0] == 3]
        assert len(dots) == 2  # each draw drawn (only where there are several)
        bars = [c for c in ax.collections if c.get_offsets().shape[0] != 3]
        segments = bars[0].get_segments()
        low, high = segments[0][:, 1]
        assert low < 72.0 < high and high - low == pytest.approx(4.0, abs=0.6)  # +-2 points at 72% of 2,000
        assert ax.get_ylabel() == "validation accuracy (%)" and ax.get_xscale() == "log"
    finally:
        plt.close(ax.figure)


def test_show_guesses_wraps_many_photos_onto_rows():
    photos = [torch.rand(3, 20, 30) for _ in range(5)] + [torch.rand(1, 20, 20)]
    guesses = [[("tabby", 0.6), ("tiger cat", 0.3)]] * 6
    fig = viz.show_guesses(photos, guesses, titles=[f"p{i}" for i in range(6)], ncols=4)
    try:
        visible = [ax for ax in fig.axes if ax.axison or ax.images]
        assert len(fig.axes) == 16 and len(visible) == 12  # 2 rows of 4, photo above bars; 2 slots left empty
        assert [ax.get_title() for ax in fig.axes if ax.images] == [f"p{i}" for i in range(6)]
        grey = [ax for ax in fig.axes if ax.images][-1].images[0]
        assert grey.get_cmap().name == "gray" and grey.get_clim() == (0, 1)  # a grey photo as it is
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="one image"):
        viz.show_guesses(photos[:2], guesses)
