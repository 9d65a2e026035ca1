"""cnnlab.transforms and cnnlab.metrics against hand-computed answers."""

import pytest
import torch

from cnnlab.metrics import (
    accuracy_under_shift,
    confusion_matrix,
    error_ratio,
    most_confident_mistakes,
    per_class_accuracy,
)
from cnnlab.models import LinearClassifier
from cnnlab.train import evaluate, fit
from cnnlab.transforms import shift_images, transform_digit


def test_shift_moves_pixels_without_wrapping():
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 5, 5)
    right = shift_images(x, 2, 0, fill=-1)
    assert torch.equal(right[0, :, 2:], x[0, :, :3]) and (right[0, :, :2] == -1).all()
    up = shift_images(x, 0, -1, fill=0)
    assert torch.equal(up[0, :4], x[0, 1:]) and (up[0, 4] == 0).all()
    both = shift_images(x, -1, 3)
    assert both[0, 3, 0] == x[0, 0, 1] and both[0, :3].sum() == 0
    assert (shift_images(x, 5, 0, fill=7) == 7).all()
    assert torch.equal(shift_images(x, 0, 0), x)


def test_transform_digit_whole_pixel_moves_are_exact_shifts_and_rotation_is_clockwise():
    x = torch.zeros(1, 5, 5)
    x[0, 0, 2] = 1  # top middle
    assert torch.equal(transform_digit(x, dx=1, dy=2), shift_images(x, 1, 2))
    rotated = transform_digit(x, angle=90.0)
    assert rotated[0, 2, 4] == pytest.approx(1) and rotated.sum() == pytest.approx(1)  # to the right middle
    smaller = transform_digit(torch.ones(1, 9, 9), scale=0.5, fill=0)
    assert 0 < smaller.sum() < 81 / 2


@pytest.mark.parametrize("kwargs,message", [
    ({"dx": float("nan")}, "dx must be a finite number"),
    ({"scale": 0}, "scale must be between"),
    ({"angle": "ninety"}, "angle must be a finite number"),
])
def test_transform_digit_rejects_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        transform_digit(torch.zeros(1, 28, 28), **kwargs)


def test_confusion_matrix_and_per_class_accuracy():
    y_true = torch.tensor([0, 0, 1, 1, 1, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 2, 2])
    cm = confusion_matrix(y_true, y_pred, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert per_class_accuracy(cm).tolist() == pytest.approx([0.5, 2 / 3, 1.0])


def test_most_confident_mistakes_are_wrong_and_sorted():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    y = torch.tensor([1, 1, 1, 0, 0])
    assert most_confident_mistakes(probs, y, k=5).tolist() == [0, 3, 2]
    assert most_confident_mistakes(probs, y, k=1).tolist() == [0]


def test_error_ratio():
    assert error_ratio(0.92, 0.98) == pytest.approx(4.0)
    assert error_ratio(0.99, 0.992) == pytest.approx(1.25)


def test_accuracy_under_shift_on_real_digits(mnist_small):
    train, test = mnist_small
    model = LinearClassifier()
    fit(model, train, epochs=2, progress=False)
    curves = accuracy_under_shift(model, test, shifts=[0, 3, 28])
    assert set(curves) == {"left", "right", "up", "down"}
    for acc in curves.values():
        assert acc[0] == evaluate(model, test).accuracy  # no shift: plain test accuracy
        assert acc[1] < acc[0] - 0.2  # a linear model collapses under a 3-pixel shift
    blank = torch.full((1, 1, 28, 28), test.background, device=model.fc.weight.device)  # where fit left the model
    blank_class = model(blank).argmax().item()
    assert curves["left"][2] == pytest.approx((test.y == blank_class).float().mean().item())  # all blank
