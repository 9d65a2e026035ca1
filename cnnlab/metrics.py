"""Numbers about predictions: confusion matrices, per-class accuracy, mistakes, robustness to
shifts, and how to read an accuracy: errors per million, intervals, McNemar's test on paired
predictions, and the test-set size a comparison needs."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cnnlab.data import ImageSet
from cnnlab.models import as_named_models
from cnnlab.train import evaluate, predict
from cnnlab.transforms import DIRECTIONS, shift_images, transform_digit

__all__ = [
    "confusion_matrix",
    "per_class_accuracy",
    "most_confident_mistakes",
    "accuracy_under_shift",
    "explore_transform",
    "error_ratio",
    "errors_per_million",
    "accuracy_interval",
    "error_rate_test",
    "McNemar",
    "mcnemar",
    "required_test_size",
    "simulated_power",
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
def explore_transform(
    models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: ImageSet,
    index: int,
    dx: float = 0,
    dy: float = 0,
    angle: float = 0.0,
    scale: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The test digit at ``index`` moved/rotated/scaled, and each model's class probabilities for it."""
    if not isinstance(index, int) or not 0 <= index < len(data):
        raise ValueError(f"index must be a whole number from 0 to {len(data) - 1}, got {index!r}")
    image = transform_digit(data.x[index].cpu(), dx, dy, angle, scale, fill=data.background)
    probs = {name: predict(model, image.unsqueeze(0))[0] for name, model in as_named_models(models).items()}
    return image, probs


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
    scored: dict[tuple[int, int], float] = {}  # each move scored once: a 0-px move is the same in every direction

    def accuracy(dx: int, dy: int) -> float:
        if (dx, dy) not in scored:
            scored[dx, dy] = evaluate(model, data.with_images(shift_images(data.x, dx, dy, data.background))).accuracy
        return scored[dx, dy]

    return {direction: [accuracy(DIRECTIONS[direction][0] * s, DIRECTIONS[direction][1] * s) for s in shifts]
            for direction in directions}


# ----- reading an accuracy ---------------------------------------------------------------------------

def errors_per_million(accuracy: float) -> float:
    """Mistakes per million images at ``accuracy``: 99.2% is 8,000, not 2,000."""
    return (1 - accuracy) * 1_000_000


def _binom_tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact enough for n in the millions)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the increasing function ``f(p)`` reaches ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def _count_of(k, n, name: str) -> tuple[int, int]:
    """``k`` out of ``n`` as two Python ints (from Python's, NumPy's or a 0-d tensor's whole
    numbers), refused unless 0 <= k <= n and n > 0; ``name`` is what ``k`` counts."""
    message = f"need whole numbers 0 <= {name} <= n and n > 0, got {name}={k!r}, n={n!r}"
    try:
        k, n = operator.index(k), operator.index(n)
    except TypeError:
        raise ValueError(message) from None
    if not (n > 0 and 0 <= k <= n):
        raise ValueError(message)
    return k, n


def accuracy_interval(correct: int, n: int, level: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """A ``level`` confidence interval for an accuracy of ``correct`` out of ``n`` test images:
    ``"wilson"`` (the score interval) or ``"exact"`` (Clopper-Pearson, never too narrow)."""
    correct, n = _count_of(correct, n, "correct")
    if not 0 < level < 1:
        raise ValueError(f"level is a probability such as 0.95, got {level}")
    alpha = 1 - level
    if method == "wilson":
        z = NormalDist().inv_cdf(1 - alpha / 2)
        p = correct / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)
    if method == "exact":
        lo = 0.0 if correct == 0 else _solve(lambda q: _binom_tail_ge(correct, n, q), alpha / 2)
        hi = 1.0 if correct == n else _solve(lambda q: _binom_tail_ge(correct + 1, n, q), 1 - alpha / 2)  # P(X <= k) = alpha/2
        return lo, hi
    raise ValueError(f"method is 'wilson' or 'exact', got {method!r}")


def error_rate_test(errors: int, n: int, claimed: float) -> float:
    """Is ``errors`` out of ``n`` test images consistent with a claimed error rate? The two-sided
    exact binomial p-value: the chance, at the claimed rate, of a count at most as likely as this
    one (SciPy's ``binomtest``). A small p rules the claim out; a large one does not prove it."""
    errors, n = _count_of(errors, n, "errors")
    if not 0 < claimed < 1:
        raise ValueError(f"claimed is an error rate strictly between 0 and 1 (0.002 for 0.2%), got {claimed!r}")
    lp, lq, top = math.log(claimed), math.log1p(-claimed), math.lgamma(n + 1)
    log_pmf = [top - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(n + 1)]
    cutoff = log_pmf[errors] + 1e-7  # counts as likely as the observed one, up to rounding, count too
    peak = max(log_pmf)
    total = sum(math.exp(v - peak) for v in log_pmf)
    return min(1.0, sum(math.exp(v - peak) for v in log_pmf if v <= cutoff) / total)


class McNemar(NamedTuple):
    """McNemar's exact test on paired predictions. ``only_a``: images model A gets right and B
    wrong; ``only_b``: the reverse; ``table``: [[both right, only A], [only B, both wrong]]."""

    only_a: int
    only_b: int
    table: tuple[tuple[int, int], tuple[int, int]]
    p_value: float


def mcnemar(correct_a: Tensor, correct_b: Tensor) -> McNemar:
    """Is the difference between two models on the same test images more than chance? Only the
    images exactly one of them gets right count: under "no difference" each is as likely to
    favour A as B, so ``only_a`` ~ Binomial(only_a + only_b, 1/2). Two-sided exact p-value."""
    a, b = torch.as_tensor(correct_a).bool().cpu(), torch.as_tensor(correct_b).bool().cpu()
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"need two 1-D vectors of per-image correctness of the same length, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    both, only_a = int((a & b).sum()), int((a & ~b).sum())
    only_b, neither = int((~a & b).sum()), int((~a & ~b).sum())
    n = only_a + only_b
    # P(X <= k) by symmetry as P(X >= n - k), summed directly: no 1 - (almost 1), so tiny p-values stay exact
    p = 1.0 if n == 0 else min(1.0, 2 * _binom_tail_ge(n - min(only_a, only_b), n, 0.5))
    return McNemar(only_a, only_b, ((both, only_a), (only_b, neither)), p)


def required_test_size(accuracy_a: float, accuracy_b: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Test images needed to tell ``accuracy_a`` from ``accuracy_b`` with a two-sided test at
    ``alpha`` that finds a real difference with probability ``power`` (two independent test sets
    of this size, the normal approximation): the question to ask before believing "99.2% vs 99.0%"."""
    if accuracy_a == accuracy_b:
        raise ValueError("the two accuracies are equal: no test set is large enough to tell them apart")
    for name, v in (("accuracy_a", accuracy_a), ("accuracy_b", accuracy_b), ("alpha", alpha), ("power", power)):
        if not 0 < v < 1:
            raise ValueError(f"{name} must be between 0 and 1, got {v}")
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    p1, p2 = 1 - accuracy_a, 1 - accuracy_b
    pbar = (p1 + p2) / 2
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p1 - p2) ** 2
    return math.ceil(n)


def simulated_power(accuracy_a: float, accuracy_b: float, n: int, *, alpha: float = 0.05, trials: int = 4000,
                    seed: int = 0) -> float:
    """How often a two-sided test at ``alpha`` (two proportions, pooled z) tells ``accuracy_a``
    from ``accuracy_b`` when each model is scored on its own ``n`` random test images: the check
    of :func:`required_test_size` by simulation. With equal accuracies it is the false-alarm rate."""
    if not (isinstance(n, int) and n > 0 and isinstance(trials, int) and trials > 0):
        raise ValueError(f"n and trials must be whole numbers > 0, got n={n!r}, trials={trials!r}")
    for name, v in (("accuracy_a", accuracy_a), ("accuracy_b", accuracy_b), ("alpha", alpha)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {v}")
    gen = torch.Generator().manual_seed(seed)
    errors = [torch.binomial(torch.full((trials,), float(n), dtype=torch.float64, device="cpu"),
                             torch.full((trials,), 1 - acc, dtype=torch.float64, device="cpu"), generator=gen)
              for acc in (accuracy_a, accuracy_b)]
    pooled = (errors[0] + errors[1]) / (2 * n)
    se = torch.sqrt(pooled * (1 - pooled) * 2 / n)
    z = (errors[1] - errors[0]) / n / se.clamp_min(1e-300)
    return float((z.abs() > NormalDist().inv_cdf(1 - alpha / 2)).double().mean())
