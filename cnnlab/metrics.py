"""Numbers about predictions: confusion matrices, per-class accuracy, mistakes, robustness to shifts."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.train import evaluate
from cnnlab.transforms import DIRECTIONS, shift_images

__all__ = [
    "confusion_matrix",
    "per_class_accuracy",
    "most_confident_mistakes",
    "accuracy_under_shift",
    "error_ratio",
]


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int = 10) -> Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    y_true, y_pred = y_true.cpu().long(), y_pred.cpu().long()
    return torch.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(cm: Tensor) -> Tensor:
    """Accuracy of each true class, from a confusion matrix (on the CPU, as every result here)."""
    cm = cm.detach().cpu()
    return cm.diag().double() / cm.sum(1).clamp(min=1).double()


def most_confident_mistakes(probs: Tensor, y_true: Tensor, k: int = 16) -> Tensor:
    """Indices of the ``k`` wrong predictions made with the highest probability, most confident first."""
    confidence, predicted = probs.detach().cpu().max(1)
    wrong = (predicted != y_true.cpu()).nonzero().squeeze(1)
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:k]]


def error_ratio(accuracy_before: float, accuracy_after: float) -> float:
    """How many times fewer errors: (1 - before) / (1 - after)."""
    return (1 - accuracy_before) / (1 - accuracy_after)


@torch.no_grad()
def accuracy_under_shift(
    model: nn.Module,
    data: ImageSet,
    shifts: Iterable[int] = range(7),
    directions: Iterable[str] = tuple(DIRECTIONS),
) -> dict[str, list[float]]:
    """Test accuracy with every image moved by each number of pixels in each direction.

    Returns ``{direction: [accuracy at each shift]}``; the background fills what is uncovered.
    """
    shifts = list(shifts)
    curves = {}
    for direction in directions:
        ux, uy = DIRECTIONS[direction]
        curves[direction] = [
            evaluate(model, data.with_images(shift_images(data.x, ux * s, uy * s, data.background))).accuracy for s in shifts
        ]
    return curves
