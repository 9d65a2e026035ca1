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


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """``make(name, read_only=False)`` -> (folder, how): a folder on a 64 KiB tmpfs (mounted
    read-only if asked), where the tests run as root and may mount one ("tmpfs"); elsewhere a
    folder whose writes cnnlab sees fail as on such a disk, with ENOSPC past 64 KiB or EROFS
    ("simulated", by patching the calls cnnlab.files makes; CNNLAB_TEST_SIMULATE_DISKS=1 asks for it
    everywhere, to test the simulation). Unmounted afterwards."""
    import shutil
    import subprocess

    mounted = []

    def make(name: str, read_only: bool = False):
        path = tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and shutil.which("mount") and not os.environ.get("CNNLAB_TEST_SIMULATE_DISKS"):
            opts = ("ro," if read_only else "") + "size=64k"
            if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0:
                mounted.append(path)
                return path, "tmpfs"
        _simulate_small_disk(monkeypatch, path, read_only)
        return path, "simulated"

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _simulate_small_disk(monkeypatch, folder, read_only):
    import errno
    import tempfile
    from pathlib import Path

    def inside(p) -> bool:
        return Path(os.path.abspath(p)).is_relative_to(folder)

    def fail(code, p):
        raise OSError(code, os.strerror(code), str(p))

    real_mkstemp, real_fdopen, real_access, real_mkdir = tempfile.mkstemp, os.fdopen, os.access, Path.mkdir
    ours = set()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir) and read_only:
            fail(errno.EROFS, dir)
        fd, name = real_mkstemp(*args, dir=dir, **kwargs)
        if dir is not None and inside(dir):
            ours.add(fd)
        return fd, name

    class Full:  # a file that takes 64 KiB, then fails as a full disk does
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 64 * 1024:
                fail(errno.ENOSPC, "")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if fd in ours:  # once: the number is reused by the next file opened
            ours.discard(fd)
            return Full(f)
        return f

    def mkdir(self, *args, **kwargs):
        if read_only and inside(self) and not self.exists():
            fail(errno.EROFS, self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    if read_only:
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if inside(p) and mode & os.W_OK
                            else real_access(p, mode, **kw))
