"""The grid pictures draw into axes they are given (issue 22): show_images, show_mistakes,
show_weights_as_templates, show_maps and show_guesses fill the caller's axes, return that figure,
make none of their own, and refuse too few axes saying how many they need and got."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from cnnlab import viz
from cnnlab.data import ImageSet


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _images(n: int = 6) -> ImageSet:
    """n random 8x8 one-channel images in [0, 1], labels 0, 1, 2, 0, 1, 2, ..."""
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3, ("zero", "one", "two"))


def _draws_into(fig, draw):
    """``draw()``'s result, checked to be ``fig`` with no other figure made."""
    before = plt.get_fignums()
    out = draw()
    assert out is fig
    assert plt.get_fignums() == before
    return out


def _refuses(draw, message):
    """``draw()`` raises ValueError matching ``message`` and makes no figure."""
    before = plt.get_fignums()
    with pytest.raises(ValueError, match=message):
        draw()
    assert plt.get_fignums() == before


def test_show_images_fills_the_given_axes_in_order():
    data = _images()
    fig, axes = plt.subplots(2, 2)
    _draws_into(fig, lambda: viz.show_images(data, [4, 0, 2], axes=axes))
    used, spare = list(axes.flat[:3]), axes.flat[3]
    assert all(len(ax.images) == 1 for ax in used) and not spare.images
    for ax, i in zip(used, [4, 0, 2]):  # each image in its own axes, in the order asked
        assert np.allclose(ax.images[0].get_array(), data.x[i, 0].numpy())
    assert [ax.get_title() for ax in used] == ["one", "zero", "two"]
    assert len(fig.axes) == 4  # nothing added


def test_show_images_puts_its_colorbar_in_the_given_figure():
    data = _images()
    fig, axes = plt.subplots(1, 3)
    _draws_into(fig, lambda: viz.show_images(data, [0, 1], axes=list(axes), ink="light", colorbar=True))
    assert len(fig.axes) == 4 and "pixel value" in fig.axes[-1].get_ylabel()
    assert [len(ax.images) for ax in axes] == [1, 1, 0]


def test_show_images_refuses_too_few_axes():
    data = _images()
    fig, axes = plt.subplots(1, 2)
    _refuses(lambda: viz.show_images(data, [0, 1, 2], axes=axes), r"show_images needs 3 axes .*got 2")
    assert not any(ax.images for ax in axes)


def _mistakes():
    """6 images, 3 of them (1, 3, 4) misclassified, image 3 most confidently, then 4, then 1."""
    data = _images()
    probs = torch.full((6, 3), 0.1)
    for i, (predicted, p) in enumerate([(0, 0.8), (2, 0.5), (2, 0.8), (1, 0.9), (2, 0.7), (2, 0.8)]):
        probs[i, predicted] = p
    return data, probs


def test_show_mistakes_draws_each_mistake_into_the_given_axes():
    data, probs = _mistakes()
    fig, axes = plt.subplots(1, 4)
    _draws_into(fig, lambda: viz.show_mistakes(data, probs, axes=axes))
    assert [len(ax.images) for ax in axes] == [1, 1, 1, 0]  # 3 mistakes among the 16 asked for
    assert [ax.get_title() for ax in axes[:3]] == ["zero→one 90%", "one→two 70%", "one→two 50%"]
    assert np.allclose(axes[0].images[0].get_array(), data.x[3, 0].numpy())


def test_show_mistakes_refuses_too_few_axes_naming_itself():
    data, probs = _mistakes()
    fig, axes = plt.subplots(1, 2)
    _refuses(lambda: viz.show_mistakes(data, probs, axes=axes), r"show_mistakes needs 3 axes .*got 2")
    viz.show_mistakes(data, probs, k=2, axes=axes)  # two mistakes asked for: two axes are enough
    assert [len(ax.images) for ax in axes] == [1, 1]


def test_show_weights_as_templates_fills_the_given_axes_with_a_colorbar_beside():
    weight = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    fig, axes = plt.subplots(1, 4)
    _draws_into(fig, lambda: viz.show_weights_as_templates(weight, ["a", "b", "c"], image_shape=(4, 4), axes=axes))
    assert [len(ax.images) for ax in axes] == [1, 1, 1, 0]
    assert [ax.get_title() for ax in axes[:3]] == ["a", "b", "c"]
    assert np.allclose(axes[1].images[0].get_array(), weight[1].view(4, 4).numpy())
    assert len(fig.axes) == 5 and fig.axes[-1].get_ylabel() == "weight"  # the colorbar, in this figure


def test_show_weights_as_templates_refuses_too_few_axes():
    weight = torch.randn(3, 16)
    fig, axes = plt.subplots(1, 2)
    _refuses(lambda: viz.show_weights_as_templates(weight, ["a", "b", "c"], image_shape=(4, 4), axes=axes),
             r"show_weights_as_templates needs 3 axes .*got 2")


def test_show_maps_fills_the_given_axes_and_turns_off_the_rest():
    maps = {"signed": torch.tensor([[-1.0, 2.0], [0.5, 0.0]]), "zero": torch.zeros(3, 3)}
    fig, axes = plt.subplots(1, 3)
    _draws_into(fig, lambda: viz.show_maps(maps, axes=axes, label="activation"))
    assert [len(ax.images) for ax in axes] == [1, 1, 0]
    assert axes[0].images[0].get_cmap().name == "RdBu_r" and axes[1].get_title() == "zero\n(3, 3); all 0"
    assert not axes[2].axison
    bars = fig.axes[3:]
    assert len(bars) == 2 and all(bar.get_ylabel() == "activation" for bar in bars)  # a colorbar per map, here


def test_show_maps_refuses_too_few_axes():
    fig, ax = plt.subplots()
    _refuses(lambda: viz.show_maps({"a": torch.ones(2, 2), "b": torch.ones(2, 2)}, axes=[ax]),
             r"show_maps needs 2 axes .*got 1")


def _guesses(n: int = 3):
    photos = [torch.rand(3, 6, 6) for _ in range(n)]
    return photos, [[(f"cat{k}", 0.6), ("dog", 0.3)] for k in range(n)]


def test_show_guesses_puts_each_photo_above_its_chart_in_the_given_grid():
    photos, guesses = _guesses()
    fig, axes = plt.subplots(2, 3)
    _draws_into(fig, lambda: viz.show_guesses(photos, guesses, titles=["p0", "p1", "p2"], axes=axes))
    assert all(len(ax.images) == 1 for ax in axes[0]) and not any(ax.images for ax in axes[1])
    assert [ax.get_title() for ax in axes[0]] == ["p0", "p1", "p2"]
    assert [ax.get_yticklabels()[-1].get_text() for ax in axes[1]] == ["cat0", "cat1", "cat2"]  # top guess on top
    assert all(len(ax.patches) == 2 and ax.axison for ax in axes[1])


def test_show_guesses_takes_its_columns_from_a_2d_grid_and_rows_from_a_flat_one():
    photos, guesses = _guesses()
    fig, axes = plt.subplots(4, 2)  # 2 photos to a row, as wide as the grid
    _draws_into(fig, lambda: viz.show_guesses(photos, guesses, axes=axes))
    assert [[len(ax.images) for ax in row] for row in axes] == [[1, 1], [0, 0], [1, 0], [0, 0]]
    assert [[len(ax.patches) for ax in row] for row in axes] == [[0, 0], [2, 2], [0, 0], [2, 0]]
    assert not axes[3, 1].axison and not axes[2, 1].axison  # the empty slot
    flat_fig, flat = plt.subplots(1, 6)  # flat: the 2 x 3 grid row by row, photos first
    _draws_into(flat_fig, lambda: viz.show_guesses(photos, guesses, axes=flat))
    assert [len(ax.images) for ax in flat] == [1, 1, 1, 0, 0, 0]
    assert [len(ax.patches) for ax in flat] == [0, 0, 0, 2, 2, 2]


def test_show_guesses_refuses_too_few_axes():
    photos, guesses = _guesses()
    fig, axes = plt.subplots(2, 2)
    _refuses(lambda: viz.show_guesses(photos, guesses, axes=axes), r"show_guesses needs 6 axes .*got 4")
    fig, axes = plt.subplots(1, 6, squeeze=False)  # enough axes, but one row: no room for the charts
    _refuses(lambda: viz.show_guesses(photos, guesses, axes=axes), r"show_guesses needs 6 axes .*got 6 as a 1x6 grid")
