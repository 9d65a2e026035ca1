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


# ----- reading an accuracy: each against an independent computation ------------------------------------

def test_errors_per_million_corrects_the_source_texts_arithmetic():
    from cnnlab.metrics import errors_per_million

    assert errors_per_million(0.99) == pytest.approx(10_000) and errors_per_million(0.992) == pytest.approx(8_000)
    assert errors_per_million(0.99) / errors_per_million(0.992) == pytest.approx(1.25)  # not the source's 5x


@pytest.mark.parametrize("correct,n", [(9929, 10_000), (92, 100), (0, 50), (50, 50)])
def test_wilson_interval_is_the_set_of_accuracies_the_score_test_keeps(correct, n):
    """Oracle: invert the score test on a fine grid, the interval's definition, not its formula."""
    from statistics import NormalDist

    from cnnlab.metrics import accuracy_interval

    lo, hi = accuracy_interval(correct, n, 0.95, "wilson")
    z, phat = NormalDist().inv_cdf(0.975), correct / n
    grid = torch.linspace(1e-7, 1 - 1e-7, 2_000_001, dtype=torch.float64)
    kept = grid[(phat - grid).abs() <= z * torch.sqrt(grid * (1 - grid) / n)]
    assert lo == pytest.approx(float(kept.min()), abs=1e-6) and hi == pytest.approx(float(kept.max()), abs=1e-6)


@pytest.mark.parametrize("correct,n", [(7, 20), (19, 20), (3, 30)])
def test_exact_interval_meets_its_tail_probabilities_exactly(correct, n):
    """Oracle: the binomial tails at the bounds, summed in exact fractions."""
    from fractions import Fraction
    from math import comb

    from cnnlab.metrics import accuracy_interval

    lo, hi = accuracy_interval(correct, n, 0.95, "exact")

    def tail_ge(k, p):
        p = Fraction(p)
        return float(sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))

    assert tail_ge(correct, lo) == pytest.approx(0.025, abs=1e-9)
    assert 1 - tail_ge(correct + 1, hi) == pytest.approx(0.025, abs=1e-9)


def test_exact_interval_at_the_ends_has_its_closed_form():
    from cnnlab.metrics import accuracy_interval

    assert accuracy_interval(0, 40, method="exact") == (0.0, pytest.approx(1 - 0.025 ** (1 / 40)))
    assert accuracy_interval(40, 40, method="exact") == (pytest.approx(0.025 ** (1 / 40)), 1.0)
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        accuracy_interval(11, 10)


def test_mcnemar_counts_only_the_disagreements_and_matches_brute_force():
    import random
    from math import comb

    from cnnlab.metrics import mcnemar

    # the textbook case: 1 image only A gets right, 9 only B: p = 2 * (C(10,0) + C(10,1)) / 2^10
    a = torch.tensor([1] * 50 + [1] + [0] * 9 + [0] * 5, dtype=torch.bool)
    b = torch.tensor([1] * 50 + [0] + [1] * 9 + [0] * 5, dtype=torch.bool)
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b, r.table) == (1, 9, ((50, 1), (9, 5))) and r.p_value == pytest.approx(22 / 1024)
    rng = random.Random(0)
    for _ in range(20):  # two-sided by enumeration: every outcome no more likely than the one seen
        x, y = rng.randint(0, 30), rng.randint(0, 30)
        n = x + y
        pmf = [comb(n, i) / 2**n for i in range(n + 1)]
        brute = min(1.0, sum(q for q in pmf if q <= pmf[x] * (1 + 1e-12))) if n else 1.0
        a = torch.tensor([1] * x + [0] * y, dtype=torch.bool)
        assert mcnemar(a, ~a).p_value == pytest.approx(brute, rel=1e-9)


def test_required_test_size_gives_the_power_it_promises_in_simulation():
    from cnnlab.metrics import required_test_size

    n = required_test_size(0.992, 0.990)  # 99.2% vs 99.0%: how many test images?
    assert n > 10_000  # MNIST's test set is too small to tell them apart reliably
    gen = torch.Generator().manual_seed(0)
    sims = 4000
    e1 = torch.binomial(torch.full((sims,), float(n)), torch.full((sims,), 0.008), generator=gen)
    e2 = torch.binomial(torch.full((sims,), float(n)), torch.full((sims,), 0.010), generator=gen)
    p1, p2 = e1 / n, e2 / n
    pooled = (e1 + e2) / (2 * n)
    z = (p2 - p1) / torch.sqrt(pooled * (1 - pooled) * 2 / n)
    power = float((z.abs() > 1.959964).float().mean())
    assert power == pytest.approx(0.8, abs=0.03)


def test_error_rate_test_agrees_with_scipy_and_says_what_a_claim_survives():
    """Oracle: SciPy's exact two-sided binomial test. 29 errors of 10,000 do not rule out 0.2% at 5%
    (the Wilson interval's lower end, 0.202%, sits just above it: the two are different tests)."""
    from scipy.stats import binomtest

    from cnnlab.metrics import error_rate_test

    for errors, n, rate in [(29, 10_000, 0.002), (0, 500, 0.01), (71, 10_000, 0.008), (500, 1_000, 0.5), (3, 10, 0.9)]:
        assert error_rate_test(errors, n, rate) == pytest.approx(binomtest(errors, n, rate).pvalue, rel=1e-6)
    assert error_rate_test(29, 10_000, 0.002) > 0.05 > error_rate_test(40, 10_000, 0.002)
    for bad in [(-1, 10, 0.1), (11, 10, 0.1), (1, 0, 0.1), (1, 10, 0.0), (1, 10, 1.0), (1.5, 10, 0.1)]:
        with pytest.raises(ValueError, match="error"):
            error_rate_test(*bad)


def test_intervals_tails_and_mcnemar_agree_with_scipy():
    """Oracles: SciPy's binomial tail, its exact (Clopper-Pearson) and Wilson intervals, and the exact
    binomial test that McNemar's exact test is, on the counts the notebooks meet and at the edges."""
    from scipy.stats import binom, binomtest

    from cnnlab.metrics import _binom_tail_ge, accuracy_interval, mcnemar

    for k, n, p in [(29, 10_000, 0.002), (0, 50, 0.3), (50, 50, 0.3), (9_929, 10_000, 0.99), (1, 1_000_000, 1e-6)]:
        assert _binom_tail_ge(k, n, p) == pytest.approx(binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)
    for correct, n in [(9_929, 10_000), (0, 20), (20, 20), (8_391, 10_000), (1, 3)]:
        for method, level in [("exact", 0.95), ("wilson", 0.95), ("exact", 0.99), ("wilson", 0.9)]:
            ci = binomtest(correct, n).proportion_ci(confidence_level=level, method=method)
            assert accuracy_interval(correct, n, level, method) == pytest.approx((ci.low, ci.high), abs=1e-9)
    g = torch.Generator().manual_seed(0)
    for only_a, only_b in [(3, 11), (0, 7), (40, 41), (0, 0)]:
        both = torch.rand(500, generator=g) < 2  # all right on both, except the images placed below
        a, b = both.clone(), both.clone()
        b[:only_a] = False  # only A right
        a[only_a:only_a + only_b] = False  # only B right
        expected = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert mcnemar(a, b).p_value == pytest.approx(expected, rel=1e-9)
