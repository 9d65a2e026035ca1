"""Files written whole or not at all: what checkpoints and extracted datasets are saved with."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "check_writable"]


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_STALE_AFTER = 600  # seconds: a writer on another machine of a shared folder is not judged by its pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Temporary files that a killed writer of ``path`` left behind: on this machine, its process
    is gone; from another machine sharing the folder, it is older than ten minutes."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 :].split(".")
        try:
            if len(parts) < 3 or not parts[1].isdigit():
                continue
            if (parts[0] == _HOST and not _alive(int(parts[1]))) or now - tmp.stat().st_mtime > _STALE_AFTER:
                tmp.unlink()
        except OSError:  # gone already, or someone else's: never a reason to fail this write
            continue


def check_writable(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if a file can be written there, else a ``ValueError`` saying why: it is
    a folder, a parent is a file, or the nearest existing folder is not writable. Call it before
    long work whose result goes there."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"cannot save the {what} as {path}: that is a folder; give a file name inside it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot save the {what} as {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot save the {what} as {path}: no permission to write in {parent}")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: writes go to a temporary file beside ``path``
    that replaces it in one step (``os.replace``) once the block ends, so a reader never sees half
    a file and an interrupted write leaves the old file as it was. On any error the temporary
    file is removed and the error goes on; one left by a killed process (its name carries the
    machine and process) is removed by the next write of the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; others sharing the cache must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
