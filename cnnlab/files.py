"""Files written whole or not at all: what checkpoints and extracted datasets are saved with."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "check_writable", "SaveError", "why_not_written"]


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_STALE_AFTER = 600  # seconds: a writer on another machine of a shared folder is not judged by its pid


class SaveError(OSError):
    """A file could not be written (a full disk, a read-only file system, no permission, a folder in
    the way); the message says which file, why, and that the old file, if any, is as it was."""

    def __init__(self, code: int | None, message: str):
        super().__init__(code, message)  # args (code, message): copied and pickled whole

    def __str__(self) -> str:
        return str(self.args[1])


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
    errno.EISDIR: "that is a folder",
    errno.ENOENT: "a part of the path does not exist and cannot be made",
}


def why_not_written(err: BaseException, *, full: bool = False) -> str:
    """In words, why a write failed: the errno's meaning (the disk is full, read-only, ...), or the
    error's own words. torch.save reports a full disk as a RuntimeError ("unexpected pos ..."):
    ``full`` (no space was left when it failed) says that is what it was."""
    if isinstance(err, OSError) and err.errno in _REASONS:
        return _REASONS[err.errno]
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = " ".join(str(err).split())
    if full:
        torch_words = re.search(r"unexpected pos \d+ vs \d+", text)
        return "the disk is full" + (f" (torch: {torch_words.group(0)})" if torch_words else "")
    if any(w in text for w in _TORCH_WRITE_FAILURES):
        return "the disk is full, or the file could not be written to the end (torch: " + text[:120] + ")"
    return text[:200]


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


#: How torch.save words a write that failed (a full disk, most often): it raises a RuntimeError.
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter", "file write failed")


def _is_write_failure(err: BaseException) -> bool:
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and any(w in str(err) for w in _TORCH_WRITE_FAILURES))


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
    try:
        if path.is_dir():
            raise ValueError(f"cannot save the {what} as {path}: that is a folder; "
                             + ("remove it" if what == "saved run" else "give a file name inside it"))
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"cannot save the {what} as {path}: {parent} is a file, not a folder")
    except OSError as err:  # a folder on the way that cannot be looked into
        raise ValueError(f"cannot save the {what} as {path}: {why_not_written(err)}") from None
    if _read_only(parent):
        raise ValueError(f"cannot save the {what} as {path}: {parent} is on a read-only file system")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot save the {what} as {path}: no permission to write in {parent}")
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: writes go to a temporary file beside ``path``
    that replaces it in one step (``os.replace``) once the block ends, so a reader never sees half
    a file and an interrupted write leaves the old file as it was. On any error the temporary
    file is removed and the error goes on; one left by a killed process (its name carries the
    machine and process) is removed by the next write of the same file. A write that fails for want
    of space, permission or a writable folder raises :class:`SaveError`, which says so."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        raise SaveError(err.errno, f"could not write {path}: {why_not_written(err)}; nothing was written") from err
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; others sharing the cache must read it
        os.replace(tmp, path)
    except BaseException as err:
        full = _free_bytes(path.parent) < 1 << 20  # measured before the partial file is removed
        Path(tmp).unlink(missing_ok=True)  # never a partial file left to keep a full disk full
        if _is_write_failure(err) and not isinstance(err, SaveError):
            kept = "the file that was there is as it was" if path.is_file() else "nothing was written"
            raise SaveError(getattr(err, "errno", None) or (errno.ENOSPC if full else errno.EIO),
                            f"could not write {path}: {why_not_written(err, full=full)}; {kept}") from err
        raise
