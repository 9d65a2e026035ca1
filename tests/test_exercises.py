"""The exercises' checks: each rejects a wrong answer with its hint, accepts a right one computed
differently from the worked solution, and keeps the learner's progress in the cache folder."""

import json
import math
import os

import pytest
import torch

from cnnlab.exercises import EXERCISES, check, model_answer, progress


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_diagonal_kernel_is_judged_by_what_it_does_on_strokes(cache):
    centre_only = torch.zeros(3, 3)
    centre_only[1, 1] = 1  # answers every stroke alike
    verdict = check("03.1", kernel=centre_only)
    assert not verdict.right and "negative weights" in verdict.message
    assert not check("03.1", kernel=torch.zeros(3, 3)).right  # no response at all
    assert "positive weights" in check("03.1", kernel=-torch.eye(3)).message
    assert not check("03.1", kernel=torch.eye(3).flip(1) - 0.5).right  # the other diagonal
    # right, built otherwise than the solution's literal grid: the diagonal minus half of the rest
    verdict = check("03.1", kernel=torch.eye(3) - 0.5 * (1 - torch.eye(3)))
    assert verdict.right and "diagonal stroke" in verdict.message
    assert check("03.1", kernel=[[3, -1, -2], [-1, 3, -1], [-2, -1, 3]]).right  # nested lists, uneven weights
    with pytest.raises(ValueError, match="3x3 grid"):
        check("03.1", kernel=torch.ones(5, 5))


def test_never_centred_rows_with_stride_2():
    # the rows a centre reaches, counted by arithmetic here (the check unfolds an image of row numbers)
    centres_0 = set(range(1, 27, 2))  # padding 0: the first window covers rows 0-2, then every second row
    centres_1 = set(range(0, 27, 2))  # padding 1: the first window starts one row above the image
    never_0, never_1 = set(range(28)) - centres_0, set(range(28)) - centres_1
    wrong = check("03.2", never_centred=sorted(centres_0))
    assert not wrong.right and "row 1" in wrong.message
    half = check("03.2", never_centred=never_0)
    assert half.right and "with_padding_1" in half.message  # the second part is asked for
    assert not check("03.2", never_centred=never_0, with_padding_1=never_0).right
    assert check("03.2", never_centred=list(never_0), with_padding_1=tuple(never_1)).right
    assert 27 in never_0 and 27 in never_1  # the last row is never a centre either way
    with pytest.raises(ValueError, match="whole numbers"):
        check("03.2", never_centred="every other one")


def test_the_pools_kept_shifts():
    assert not check("03.4", kept={0, 2, 4, 6}).right  # a 2x2 pool's answer
    assert "shift_difference" in check("03.4", kept={0, 1, 2}).message
    assert not check("03.4", kept={0, 3, 6, 9}).right  # beyond the shifts asked about
    assert check("03.4", kept=[s for s in range(7) if s % 3 == 0]).right


def test_layers_to_see_the_whole_digit():
    wrong = check("04.1", layers=13)
    assert not wrong.right and "27 x 27" in wrong.message  # what 13 layers see: the hint measures it
    right = check("04.1", layers=math.ceil((28 - 1) / 2))  # each 3x3 layer adds 2 pixels to a 1-pixel start
    assert right.right and "29 x 29" in right.message
    with pytest.raises(ValueError, match="whole number"):
        check("04.1", layers=14.0)


def test_the_test_size_at_95_percent_power():
    from scipy.stats import norm

    # the normal approximation for two independent proportions, written out here
    p1, p2 = 0.990, 0.992
    z = norm.ppf(0.975) + norm.ppf(0.95)
    expected = math.ceil(z ** 2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)
    assert "more images" in check("07.5", images=35_001).message  # the 80% answer
    assert not check("07.5", images=10 * expected).right
    assert check("07.5", images=expected).right
    with pytest.raises(ValueError, match="whole number"):
        check("07.5", images="lots")


def test_lenet_c3_with_every_connection():
    assert "the table's own count" in check("08.5", parameters=1_516).message
    assert not check("08.5", parameters=16 * 6 * 25).right  # the biases forgotten
    assert check("08.5", parameters=16 * (6 * 5 * 5 + 1)).right


def test_resnet50_macs_grow_with_the_area_and_its_parameters_stay():
    side_ratio = 448 / 224
    assert "how many times the positions" in check("08.2", macs_ratio=side_ratio, parameters_change=0).message
    assert "filter is the same size" in check("08.2", macs_ratio=side_ratio ** 2, parameters_change=-5).message
    assert check("08.2", macs_ratio=side_ratio ** 2, parameters_change=0).right  # four times the pixels
    with pytest.raises(ValueError, match="positive number"):
        check("08.2", macs_ratio="4x", parameters_change=0)


def test_open_questions_have_model_answers_and_checks_refuse_what_they_cannot_judge():
    assert "1,040" in model_answer("04.2") and "permutation" in model_answer("02.4")
    with pytest.raises(ValueError, match="model_answer"):
        check("04.2", same=True)
    with pytest.raises(ValueError, match="has a check"):
        model_answer("03.1")
    with pytest.raises(ValueError, match="notebooks with exercises here: 02, 03, 04, 07, 08"):
        check("99.1", x=1)
    with pytest.raises(ValueError, match="kernel=..."):
        check("03.1")
    with pytest.raises(ValueError, match="takes kernel="):
        check("03.1", kernal=torch.eye(3))
    assert all((e.judge is None) != (e.model_answer is None) for e in EXERCISES.values())  # one or the other


def test_progress_is_kept_in_the_cache_not_the_notebook(cache):
    assert progress("03").solved == [] and progress(3).open == ["03.1", "03.2", "03.4"]
    check("03.1", kernel=torch.zeros(3, 3))  # wrong: not solved
    check("03.4", kept={0, 3, 6})
    model_answer("04.2")
    assert progress("03").solved == ["03.4"]
    assert progress("04").read == ["04.2"] and "0 of 2 exercises solved" in str(progress("04"))
    assert "1 of 3 exercises solved (03.4)" in str(progress("03"))
    assert json.loads((cache / "exercises.json").read_text()) == {"03.4": "solved", "04.2": "read"}
    (cache / "exercises.json").write_text("{not json")  # a damaged record is started again, not an error
    assert progress("03").solved == []
    with pytest.raises(ValueError, match="those that do: 02, 03, 04, 07, 08"):
        progress("06")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_keeps_the_verdict_and_says_the_progress_is_lost(cache, capsys):
    cache.mkdir(parents=True)
    cache.chmod(0o500)
    try:
        assert check("03.4", kept={0, 3, 6}).right
        assert "progress not kept" in capsys.readouterr().out
    finally:
        cache.chmod(0o700)


def test_a_cache_path_that_is_a_file_keeps_the_verdict(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker))
    assert check("04.1", layers=14).right
    assert "progress not kept" in capsys.readouterr().out
