"""Reading an accuracy report: error counts with intervals, reduction factors and paired tests.

:func:`compare` turns the per-image correctness of a list of models (each on the same test
images) into rows: errors, a 95% interval on the error rate, how many times fewer errors than the
row before, and McNemar's exact test against the row before. Notebook 06 reads its ablation
ladder with it; :func:`series_report` (notebook 07, ``python -m cnnlab report``) rebuilds the
source text's table from the series' saved runs, training what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from cnnlab.data import ImageSet
from cnnlab.metrics import accuracy_interval, errors_per_million, mcnemar
from cnnlab.models import count_parameters
from cnnlab.runs import COMMITTEE, load_series_run
from cnnlab.train import predict, predict_ensemble

__all__ = ["Row", "compare", "format_rows", "SOURCE_TABLE", "Report", "series_report"]


@dataclass(frozen=True)
class Row:
    """One model read on ``n`` test images."""

    label: str
    errors: int
    n: int
    interval: tuple[float, float]  # a Wilson interval on the error rate, at ``level``
    reduction: float | None  # the previous row's errors / this row's ("4x fewer errors")
    only_previous: int | None  # images the previous row gets right and this one wrong
    only_this: int | None  # and the reverse: McNemar counts only these two
    p_value: float | None  # McNemar's exact test against the previous row (paired on the same images)
    extra: dict = field(default_factory=dict)  # parameters, training time, the source's number, ...
    level: float = 0.95  # the interval's confidence level

    @property
    def change(self) -> str:
        """The reduction factor in words: "2.03x fewer", "1.11x more", "same", "none left", "from none"."""
        if self.reduction is None:
            return ""
        if self.reduction == 1:
            return "same"
        if math.isinf(self.reduction):
            return "none left"
        if self.reduction == 0:
            return "from none"
        return f"{self.reduction:.2f}x fewer" if self.reduction > 1 else f"{1 / self.reduction:.2f}x more"

    @property
    def error(self) -> float:
        """The test error rate: errors / n."""
        return self.errors / self.n

    @property
    def accuracy(self) -> float:
        """The test accuracy: 1 - error."""
        return 1 - self.error

    @property
    def per_million(self) -> float:
        """Errors per million images at this accuracy."""
        return errors_per_million(self.accuracy)

    def to_dict(self) -> dict:
        """Every field and the derived rates, for JSON."""
        return asdict(self) | {"error": self.error, "accuracy": self.accuracy, "errors_per_million": self.per_million}


def compare(correct: Mapping[str, Tensor], level: float = 0.95) -> list[Row]:
    """Rows for models whose per-image correctness (bool vectors over the same test images) is
    given in order: each one against the row before it."""
    rows: list[Row] = []
    previous: Tensor | None = None
    for label, right in correct.items():
        right = torch.as_tensor(right).bool().cpu()
        if previous is not None and right.shape != previous.shape:
            raise ValueError(f"{label!r} was scored on {len(right):,} images and the row before on {len(previous):,}: "
                             "a paired comparison needs the same test images")
        n, errors = len(right), int((~right).sum())
        lo, hi = accuracy_interval(n - errors, n, level)
        test = mcnemar(previous, right) if previous is not None else None
        prev_errors = rows[-1].errors if rows else None
        if prev_errors is None:
            reduction = None
        elif errors == 0:
            reduction = 1.0 if prev_errors == 0 else float("inf")
        else:
            reduction = prev_errors / errors
        error = errors / n  # (an interval's ends can round past a count of 0 or n)
        rows.append(Row(label, errors, n, (min(1 - hi, error), max(1 - lo, error)), reduction,
                        test.only_a if test else None, test.only_b if test else None, test.p_value if test else None,
                        level=level))
        previous = right
    return rows


def format_rows(rows: Sequence[Row], *, source: bool = False) -> str:
    """The rows as a plain-text table (``source``: with the source text's column)."""
    width = max(len(r.label) for r in rows)
    head = (f"{'model':<{width}}  {'test error':>10}  {'errors':>11}  {f'{rows[0].level:.0%} interval':>15}  {'per million':>11}  "
            f"{'vs previous':>11}  {'McNemar p':>9}")
    lines = [head + ("  source text" if source else ""), "-" * (len(head) + (13 if source else 0))]
    for r in rows:
        vs = r.change
        p = "" if r.p_value is None else f"{r.p_value:.2g}" if r.p_value >= 1e-4 else "< 0.0001"
        line = (f"{r.label:<{width}}  {r.error:>10.2%}  {r.errors:>5,} / {r.n:<5,}  "
                f"{r.interval[0]:>6.2%} - {r.interval[1]:<6.2%}  {r.per_million:>11,.0f}  {vs:>11}  {p:>9}")
        if source and r.extra.get("source_error") is not None:
            line += f"  ~{r.extra['source_error']:.1%}" + (f", {r.extra['source_reduction']}x" if r.extra.get("source_reduction") else "")
        lines.append(line)
    return "\n".join(lines)


#: The source text's table: (saved run, its label, test error, "reduction vs previous").
SOURCE_TABLE: tuple[tuple[str, str, float, float | None], ...] = (
    ("linear", "Logistic regression (linear)", 0.080, None),
    ("mlp", "2-layer MLP", 0.020, 4),
    ("small-cnn", "Small CNN", 0.008, 2.5),
    ("modern-cnn", "Modern CNN with augmentation", 0.002, 4),
)


@dataclass
class Report:
    """The source's table rebuilt: its rows, then the ensemble; with each row's per-image
    correctness and class probabilities (CPU) for further tests."""

    rows: list[Row]
    correct: dict[str, Tensor]
    probs: dict[str, Tensor]

    def __str__(self) -> str:
        """The table with the source text's column."""
        return format_rows(self.rows, source=True)


def report_runs(members: Sequence[tuple[str, int]] = COMMITTEE) -> list[tuple[str, int]]:
    """The saved runs (name, seed) that :func:`series_report` loads, in its order."""
    return [(name, 0) for name, *_ in SOURCE_TABLE] + [tuple(m) for m in members]


def series_report(train_set: ImageSet, test_set: ImageSet, *, device: str | None = None,
                  members: Sequence[tuple[str, int]] = COMMITTEE) -> Report:
    """The source's table from the series' saved runs (each trained now if missing): linear,
    MLP, small CNN and the modern CNN as the notebooks train them (seed 0), then the ensemble of
    ``members``, saved runs as (name, seed), their probabilities averaged: by default notebook
    06's committee, the ladder's three modern CNNs (:data:`cnnlab.runs.COMMITTEE`)."""
    members = [tuple(m) for m in members]
    if not members:
        raise ValueError("members: give at least one saved run (name, seed) for the ensemble")
    probs, extra, models = {}, {}, {}
    for name, label, source_error, source_reduction in SOURCE_TABLE:
        models[name], history = load_series_run(name, train_set, test_set, device=device, seed=0)
        probs[label] = predict(models[name], test_set)
        extra[label] = {"run": name, "parameters": count_parameters(models[name]), "train_seconds": history.seconds,
                        "trained_on": history.device, "source_error": source_error, "source_reduction": source_reduction}
    committee = [models[name] if seed == 0 and name in models else  # a row's model: loaded (and checked) once
                 load_series_run(name, train_set, test_set, device=device, seed=seed)[0] for name, seed in members]
    label = f"Ensemble of {len(members)} modern CNN{'s' if len(members) > 1 else ''}"
    probs[label] = predict_ensemble(committee, test_set)
    extra[label] = {"members": [list(m) for m in members], "parameters": sum(count_parameters(m) for m in committee)}
    correct = {label: p.argmax(1) == test_set.y.cpu() for label, p in probs.items()}
    rows = [Row(**{**asdict(r), "extra": extra[r.label]}) for r in compare(correct)]
    return Report(rows, correct, probs)
