"""Notebooks 06 and 07: the ladder's rows, the accuracy report, its command, augmentation galleries
and the two widgets."""

import json
import os
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
import torch

from cnnlab.report import compare, format_rows


def _correct(n: int, wrong) -> torch.Tensor:
    c = torch.ones(n, dtype=torch.bool)
    c[list(wrong)] = False
    return c


def test_compare_counts_errors_and_tests_each_row_against_the_one_before():
    rows = compare({
        "A": _correct(1000, range(40)),                 # 40 errors
        "B": _correct(1000, range(30, 40)),             # 10 errors, all among A's
        "C": _correct(1000, [*range(30, 35), 500, 501, 502, 503, 504]),  # 10 errors, half new
    })
    assert [r.errors for r in rows] == [40, 10, 10]
    assert rows[0].reduction is None and rows[0].p_value is None
    assert rows[1].reduction == pytest.approx(4.0) and rows[2].reduction == pytest.approx(1.0)
    # B fixes 30 of A's errors and makes no new ones: 30 one-sided coin flips.
    assert (rows[1].only_previous, rows[1].only_this) == (0, 30)
    assert rows[1].p_value == pytest.approx(2 * 0.5**30)
    assert (rows[2].only_previous, rows[2].only_this) == (5, 5) and rows[2].p_value == pytest.approx(1.0)
    for r in rows:
        assert r.interval[0] < r.error < r.interval[1]
        assert r.per_million == pytest.approx(r.errors / 1000 * 1e6)
    table = format_rows(rows)
    assert "4.00x fewer" in table and "40 / 1,000" in table


def test_compare_refuses_rows_scored_on_different_images():
    with pytest.raises(ValueError, match="same test images"):
        compare({"A": _correct(100, [1]), "B": _correct(90, [1])})


def test_simulated_power_is_the_false_alarm_rate_when_nothing_differs():
    from cnnlab.metrics import required_test_size, simulated_power

    assert simulated_power(0.99, 0.99, 10_000, trials=8000) == pytest.approx(0.05, abs=0.012)
    n = required_test_size(0.990, 0.992)
    assert simulated_power(0.990, 0.992, n) == pytest.approx(0.8, abs=0.03)
    assert simulated_power(0.990, 0.992, n // 4) < 0.4  # a quarter of the images: the difference is usually missed
    # With few errors expected (0.8% vs 0.2% needs under 2,000 images) the formula errs on the safe side.
    assert 0.8 <= simulated_power(0.992, 0.998, required_test_size(0.992, 0.998)) < 0.9
    with pytest.raises(ValueError, match="whole numbers"):
        simulated_power(0.9, 0.8, 0)


def test_augment_examples_gives_each_copy_its_own_draw_and_repeats_from_the_seed(mnist_small):
    from cnnlab.augment import augment_examples

    train, _ = mnist_small
    x = train.x[:3]
    gallery, params = augment_examples(x, copies=5, fill=train.background, seed=7)
    assert gallery.shape == (3, 6, 1, 28, 28) and params["angle"].shape == (3, 5)
    assert torch.equal(gallery[:, 0], x)  # the first column is the image itself
    assert len(set(params["angle"].flatten().tolist())) == 15  # every copy its own rotation
    assert not torch.allclose(gallery[0, 1], gallery[0, 2])
    again, _ = augment_examples(x, copies=5, fill=train.background, seed=7)
    assert torch.equal(again, gallery)
    other, _ = augment_examples(x, copies=5, fill=train.background, seed=8)
    assert not torch.equal(other, gallery)
    with pytest.raises(ValueError, match="copies"):
        augment_examples(x, copies=0)


def test_augment_explorer_redraws_and_reports_nonsense(mnist_small):
    from cnnlab.widgets import augment_explorer

    train, _ = mnist_small
    box = augment_explorer(train, index=[0, 1])
    first = box.image.value
    assert first[:4] == b"\x89PNG" and "10°" in box.summary.value
    box.again.click()
    assert box.image.value != first  # new draws
    box.controls["rotate"].value = 45
    assert "45°" in box.summary.value
    box.controls["scale"].value = (0.5, 0.5)  # a zero-width range is allowed: every copy at half size
    assert "0.50–0.50" in box.summary.value and "color:#b00" not in box.summary.value


def test_error_flagger_lists_every_error_and_recounts_when_flagged(mnist_small):
    from cnnlab.widgets import error_flagger

    _, test = mnist_small
    probs = torch.nn.functional.one_hot(test.y, 10).float()
    wrong = [3, 10, 42]
    for i in wrong:
        probs[i] = torch.nn.functional.one_hot((test.y[i] + 1) % 10, 10).float() * 0.7 + 0.03
    box = error_flagger(test, probs)
    assert sorted(box.index) == wrong and len(box.toggles) == 3
    assert "<b>3</b> errors" in box.summary.value
    box.toggles[box.index.index(42)].value = True
    assert box.flagged() == [42]
    n = len(test)
    assert f"2 errors on {n - 1:,} images, accuracy {1 - 2 / (n - 1):.2%}" in box.summary.value
    with pytest.raises(ValueError, match="one row of class probabilities"):
        error_flagger(test, probs[:10])


def test_error_ladder_draws_every_row_with_its_interval():
    from cnnlab.viz import plot_error_ladder

    rows = compare({"linear": _correct(10_000, range(700)), "cnn": _correct(10_000, range(70))})
    ax = plot_error_ladder(rows)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["linear", "cnn"]
    assert ax.get_xscale() == "log"  # errors spanning 10x
    assert any("p < 0.0001" in t.get_text() for t in ax.texts)
    plt.close("all")


def test_series_models_match_their_descriptions():
    from cnnlab.models import count_parameters
    from cnnlab.runs import LADDER, SERIES_MODELS, SERIES_SETTINGS, series_model

    assert all(name in SERIES_SETTINGS and name in SERIES_MODELS for name, _ in LADDER)
    small, wide = count_parameters(series_model("small-cnn")), count_parameters(series_model("mlp-wide"))
    assert abs(wide - small) / small < 0.001  # "as many parameters as the small CNN"
    assert count_parameters(series_model("modern-cnn")) < small / 4
    # each rung changes one thing: consecutive rungs' settings differ in one key; a change of the
    # number of epochs besides it must be named in the rung's label
    for (a, _), (b, label) in zip(LADDER, LADDER[1:]):
        changed = {k for k in SERIES_SETTINGS[a].keys() | SERIES_SETTINGS[b].keys()
                   if SERIES_SETTINGS[a].get(k) != SERIES_SETTINGS[b].get(k)}
        if "epochs" in changed and len(changed) + (SERIES_MODELS[a] != SERIES_MODELS[b]) > 1:
            assert f"({SERIES_SETTINGS[b]['epochs']} epochs)" in label, (b, label)
            changed.discard("epochs")
        assert len(changed) + (SERIES_MODELS[a] != SERIES_MODELS[b]) == 1, (a, b, changed)
    with pytest.raises(ValueError, match="choose one of"):
        series_model("resnet")


def _report_cli(*args, cache):
    env = {**os.environ, "CNNLAB_SMOKE": "1", "CNNLAB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "cnnlab", "report", "--device", "cpu", "--limit-train", "600",
                           "--limit-test", "300", "--seeds", "2", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_report_trains_what_is_missing_then_loads_it(tmp_path):
    first = _report_cli("--json", cache=tmp_path)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.strip().splitlines()[-1])
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["Logistic regression (linear)", "2-layer MLP", "Small CNN", "Modern CNN with augmentation",
                      "Ensemble of 2 modern CNNs"]
    assert result["test_images"] == 300 and result["smoke"] is True
    assert all(r["n"] == 300 and 0 <= r["errors"] <= 300 for r in result["rows"])
    assert result["rows"][0]["extra"]["source_error"] == 0.08
    assert first.stderr.count("training it now") == 5  # linear, MLP, small CNN, modern CNN seeds 0 and 1
    # it said so before it started, with a time
    assert ("to train first: linear (seed 0, 1 epoch), mlp (seed 0, 1 epoch), small-cnn (seed 0, 1 epoch), "
            "modern-cnn (seed 0, 1 epoch), modern-cnn (seed 1, 1 epoch); under a minute on a 2-core CPU") in first.stderr
    assert first.stderr.index("to train first") < first.stderr.index("training it now")
    second = _report_cli(cache=tmp_path)
    assert second.returncode == 0 and "training it now" not in second.stdout
    assert "every run it needs is saved: nothing to train" in second.stdout
    assert second.stdout.count("loaded the saved run") == 5  # the modern CNN of seed 0 once, for its row and the ensemble
    for r in result["rows"]:  # the same models: the same counts in the printed table
        assert f"{r['errors']:>5,} / 300" in second.stdout


def test_report_default_ensemble_is_the_ladders_committee(tmp_path):
    """Without --seeds the report averages notebook 06's committee (the ladder's three modern CNNs),
    so it trains nothing notebook 06 does not."""
    env = {**os.environ, "CNNLAB_SMOKE": "1", "CNNLAB_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cnnlab", "report", "--device", "cpu", "--limit-train", "300",
                          "--limit-test", "200", "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert ("to train first: linear (seed 0, 1 epoch), mlp (seed 0, 1 epoch), small-cnn (seed 0, 1 epoch), "
            "modern-cnn (seed 0, 1 epoch), modern-cnn-plain (seed 0, 1 epoch), modern-cnn-aug (seed 0, 1 epoch)") in out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])["rows"][-1]
    assert last["label"] == "Ensemble of 3 modern CNNs"
    assert last["extra"]["members"] == [["modern-cnn-plain", 0], ["modern-cnn-aug", 0], ["modern-cnn", 0]]


def test_report_refuses_an_empty_ensemble(capsys):
    from cnnlab.__main__ import main

    assert main(["report", "--seeds", "0"]) == 2
    assert "at least one modern CNN" in capsys.readouterr().err


def test_rows_with_no_errors_are_read_in_words_not_divided_by_zero():
    rows = compare({"A": _correct(100, []), "B": _correct(100, []), "C": _correct(100, [1, 2]),
                    "D": _correct(100, [1, 2]), "E": _correct(100, [])})
    assert [r.change for r in rows] == ["", "same", "from none", "same", "none left"]
    table = format_rows(rows)
    assert "none left" in table and "from none" in table
    assert rows[0].interval[0] == 0 and rows[0].interval[1] > 0


def test_the_interval_level_is_carried_to_the_table_and_the_picture():
    from cnnlab.viz import plot_error_ladder

    rows = compare({"A": _correct(1000, range(20)), "B": _correct(1000, range(5))}, level=0.99)
    wider = compare({"A": _correct(1000, range(20))}, level=0.999)[0]
    assert wider.interval[1] - wider.interval[0] > rows[0].interval[1] - rows[0].interval[0]
    assert "99% interval" in format_rows(rows)
    ax = plot_error_ladder(rows)
    assert "99% intervals" in ax.get_xlabel()
    with pytest.raises(ValueError, match="same test set"):
        plot_error_ladder([*rows, *compare({"X": _correct(10, [])})])
    plt.close("all")


def test_accuracy_interval_takes_numpy_and_tensor_integers():
    import numpy as np

    from cnnlab.metrics import accuracy_interval

    assert accuracy_interval(np.int64(990), np.int64(1000)) == accuracy_interval(990, 1000)
    assert accuracy_interval(torch.tensor(990), 1000) == accuracy_interval(990, 1000)
    with pytest.raises(ValueError, match="whole numbers"):
        accuracy_interval(990.5, 1000)


def test_planned_training_lists_missing_runs_with_a_time_that_grows_with_the_work(tmp_path, monkeypatch):
    from cnnlab.runs import format_plan, planned_training

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("CNNLAB_SMOKE", raising=False)

    class Mnist:  # what a plan reads of the training set: its name and size
        name, split = "mnist", "train"

        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    plan = planned_training([("small-cnn", 0), ("modern-cnn", 0), ("modern-cnn", 1), ("small-cnn", 0)], Mnist(60_000))
    assert [(p["name"], p["seed"]) for p in plan] == [("small-cnn", 0), ("modern-cnn", 0), ("modern-cnn", 1)]
    assert plan[0]["epochs"] == 5 and plan[0]["seconds"] > 60  # five epochs of 60,000 on 2 cores: minutes
    small = planned_training([("small-cnn", 0)], Mnist(6_000))
    assert small[0]["seconds"] == pytest.approx(plan[0]["seconds"] / 10)
    assert "about" in format_plan(plan) and "min on a 2-core CPU" in format_plan(plan)
    assert format_plan([]) == "every run it needs is saved: nothing to train"
