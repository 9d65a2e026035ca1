"""cnnlab: see and measure what convolutional networks do, from a linear classifier to CNNs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

__version__ = "0.1.0"

T = TypeVar("T")

#: The environment variable that turns on the smoke setting (small real subsets, short runs).
SMOKE_ENV = "CNNLAB_SMOKE"


def smoke_mode() -> bool:
    """True when ``CNNLAB_SMOKE`` is set to 1/true/yes: notebooks shrink data and epochs."""
    return _flag(SMOKE_ENV)


def offline_mode() -> bool:
    """True when ``CNNLAB_OFFLINE`` is set to 1/true/yes: nothing is downloaded (datasets, weights)."""
    return _flag("CNNLAB_OFFLINE")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def full_or_smoke(full: T, smoke: T) -> T:
    """Return ``smoke`` in the smoke setting and ``full`` otherwise (for notebook settings cells)."""
    return smoke if smoke_mode() else full


def repo_root() -> Path:
    """The folder that holds the ``cnnlab`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where cnnlab writes extracted datasets and trained models.

    ``CNNLAB_CACHE`` if set; else the repository's ``data/`` folder in a checkout; else
    ``~/.cache/cnnlab``.
    """
    if os.environ.get("CNNLAB_CACHE"):
        return Path(os.environ["CNNLAB_CACHE"]).expanduser()
    repo_data = repo_root() / "data"
    if repo_data.is_dir() and os.access(repo_data, os.W_OK):
        return repo_data
    return Path.home() / ".cache" / "cnnlab"
