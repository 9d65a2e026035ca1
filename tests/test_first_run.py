"""A newcomer's first run, online, simulated: no dataset anywhere, the internet answered from the
archives in $CNNLAB_DATA (tests/simulated_internet.py), every other connection refused."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from cnnlab import data, repo_root

SHARED = Path(os.environ["CNNLAB_DATA"]) if os.environ.get("CNNLAB_DATA") else None
needs_archives = pytest.mark.skipif(
    SHARED is None or not any((SHARED / "MNIST" / "raw").glob("*.gz")),
    reason="CNNLAB_DATA with the raw .gz archives is not set (they stand in for the internet)",
)


@needs_archives
def test_doctor_downloads_mnist_when_online(isolated_cache, monkeypatch, capsys):
    sys.path.insert(0, str(repo_root() / "tests"))
    import simulated_internet

    monkeypatch.delenv("CNNLAB_OFFLINE")
    simulated_internet.requested.clear()
    simulated_internet.install(SHARED, setattr=monkeypatch.setattr)
    from cnnlab.doctor import check

    report = check()
    assert report.ok and "downloaded" in report.datasets["mnist"]
    names = sorted(u.rsplit("/", 1)[-1] for u in simulated_internet.requested if "MNIST" in u.upper() or "ubyte" in u)
    assert {"train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} <= set(names)
    assert len(data.load("mnist", "test")) == 10_000
    # Fashion-MNIST is only looked for: notebook 09 downloads it when it needs it
    assert "fashion-mnist" in report.missing and not any("fashion" in u.lower() for u in simulated_internet.requested)


@needs_archives
def test_offline_first_run_says_what_to_do(isolated_cache, capsys):
    from cnnlab.doctor import check

    report = check()  # CNNLAB_OFFLINE=1 (isolated_cache): no download is tried
    assert not report.ok and "MNIST" in str(report) or "mnist" in str(report)
    assert "CNNLAB_OFFLINE=1" in report.datasets["mnist"] and "CNNLAB_DATA" in report.datasets["mnist"]


@needs_archives
def test_notebook_00_on_a_first_online_run_fetches_mnist(tmp_path):
    """Notebook 00, executed as a learner's first run: a fresh copy of the project with no data,
    online (simulated): its doctor cell downloads MNIST, and the notebook runs to the end."""
    import nbclient
    import nbformat

    project = tmp_path / "project"
    shutil.copytree(repo_root() / "cnnlab", project / "cnnlab", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "notebooks").mkdir()
    (project / "data").mkdir()  # as in a fresh clone: only its README
    shutil.copy(repo_root() / "data" / "README.md", project / "data")
    (tmp_path / "home").mkdir()
    shutil.copy(repo_root() / "notebooks" / "00_start_here.ipynb", project / "notebooks")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(repo_root() / 'tests')!r})\n"
        "import simulated_internet\n"
        f"simulated_internet.install({str(SHARED)!r})\n"
    )
    log = tmp_path / "requested.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("CNNLAB_DATA", "CNNLAB_OFFLINE", "CNNLAB_CACHE")}
    env |= {"PYTHONPATH": os.pathsep.join([str(site), str(project), *filter(None, [os.environ.get("PYTHONPATH")])]), "CNNLAB_SMOKE": "1",
            "CNNLAB_SIMULATED_LOG": str(log), "MPLBACKEND": "agg", "HOME": str(tmp_path / "home")}
    nb = nbformat.read(project / "notebooks" / "00_start_here.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(project / "notebooks")}}).execute(env=env)
    text = json.dumps(nb)
    assert "downloaded" in text and "ready: the series can run" in text
    assert (project / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # the copy's own cache
    assert any(line.endswith("train-images-idx3-ubyte.gz") for line in log.read_text().splitlines())
