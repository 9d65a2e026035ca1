"""bench --notebooks: each notebook cold (a fresh cache with only the earlier notebooks' runs) and
warm (its own runs present), on tiny stand-in notebooks that record what they found."""

import json

import nbformat
import pytest

from cnnlab.bench import format_notebook_times, notebook_times

SAVES = """import os, pathlib
cache = pathlib.Path(os.environ["CNNLAB_CACHE"])
print("found before:", sorted(p.name for p in cache.glob("*.run")))
(cache / "{name}.run").write_text("x")
"""


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for stem in ("00_first", "01_second", "02_third"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SAVES.format(name=stem))])
        nbformat.write(nb, tmp_path / "notebooks" / f"{stem}.ipynb")
    return tmp_path


def _printed(path):
    return "".join(json.loads(path.read_text())["cells"][0]["outputs"][0]["text"])


def test_cold_sees_only_earlier_notebooks_runs_and_warm_sees_its_own(repo):
    results = notebook_times(["01"], store=True, folder=repo / "notebooks", report=lambda line: None)
    assert [r["notebook"] for r in results] == ["01_second"]  # 00 ran only to prepare, 02 not at all
    assert results[0]["error"] is None and results[0]["cold"] > 0 and results[0]["warm"] > 0
    # the stored outputs are the cold run's: 00's run was there, 01's own was not yet
    assert "found before: ['00_first.run']" in _printed(repo / "notebooks" / "01_second.ipynb")
    assert json.loads((repo / "notebooks" / "02_third.ipynb").read_text())["cells"][0]["outputs"] == []
    assert "01_second" in format_notebook_times(results)


def test_a_notebook_that_fails_is_reported_and_stops_the_run(repo):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise RuntimeError('broken on purpose')")])
    nbformat.write(nb, repo / "notebooks" / "00_first.ipynb")
    results = notebook_times(["01"], folder=repo / "notebooks", report=lambda line: None)
    assert [r["notebook"] for r in results] == ["00_first"]
    assert "broken on purpose" in results[0]["error"]
    assert "FAILED" in format_notebook_times(results)


def test_an_unknown_notebook_is_refused_with_the_choices(repo):
    with pytest.raises(ValueError, match="no notebook called 07.*00_first"):
        notebook_times(["07"], folder=repo / "notebooks")


def test_a_kept_cache_prepares_the_earlier_notebooks_once_and_refuses_a_warm_cold_run(repo, tmp_path):
    cache = tmp_path / "kept"
    first = notebook_times(["01"], folder=repo / "notebooks", cache=cache, report=lambda line: None)
    assert first[0]["error"] is None and sorted(p.name for p in cache.glob("*.run")) == ["00_first.run", "01_second.run"]
    said = []
    second = notebook_times(["02"], store=True, folder=repo / "notebooks", cache=cache, report=said.append)
    assert [r["notebook"] for r in second] == ["02_third"] and second[0]["error"] is None
    assert not any("00_first: preparing" in line or "01_second: preparing" in line for line in said)  # not run again
    assert "found before: ['00_first.run', '01_second.run']" in _printed(repo / "notebooks" / "02_third.ipynb")
    with pytest.raises(ValueError, match="01_second already ran in .*cannot run cold"):
        notebook_times(["01"], folder=repo / "notebooks", cache=cache)
