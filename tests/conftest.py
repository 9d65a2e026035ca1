"""Shared fixtures: real MNIST subsets, loaded once per session, and a headless matplotlib."""

import os

import matplotlib
import pytest

matplotlib.use("Agg")


def pytest_report_header(config):
    return f"CNNLAB_DATA={os.environ.get('CNNLAB_DATA', '(not set)')}  CNNLAB_SMOKE={os.environ.get('CNNLAB_SMOKE', '')}"


@pytest.fixture(scope="session", autouse=True)
def full_float32_on_gpus():
    """On a GPU, tests compare results across devices: no TF32 shortcuts in matrix products and
    convolutions (on the CPU this changes nothing)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="session")
def mnist_small():
    """2,000 stratified training images and 1,000 test images of real MNIST."""
    from cnnlab import data

    return data.load("mnist", "train", limit=2000), data.load("mnist", "test", limit=1000)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh, empty cache and no CNNLAB_DATA: nothing is found unless a test puts it there."""
    from cnnlab import data

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setattr(data, "search_dirs", _without_repo_data(data.search_dirs))
    data.clear_cache()
    yield tmp_path
    data.clear_cache()


def _without_repo_data(search_dirs):
    """search_dirs minus the repository's data/ folder (which may hold a real copy)."""
    from cnnlab import repo_root

    repo_data = (repo_root() / "data").resolve()

    def dirs(name, root=None):
        return [d for d in search_dirs(name, root) if repo_data not in d.resolve().parents]

    return dirs
