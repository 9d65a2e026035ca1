"""MNIST-style datasets as in-memory tensors: found, verified by checksum, extracted, loaded once.

torchvision parses and downloads; cnnlab decides where to look, verifies every file and says
exactly what is wrong when something is missing or corrupt. A split is held as one float
tensor, normalised once, and batched by indexing: no per-sample PIL work while training.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import numbers
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import InitVar, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets as tv_datasets

from cnnlab import cache_dir, offline_mode, repo_root
from cnnlab.device import pick_device
from cnnlab.files import SaveError, atomic_write, why_not_written

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetNotFoundError",
    "CorruptDatasetError",
    "ImageSet",
    "load",
    "locate",
    "search_dirs",
    "found_in",
]

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What cnnlab knows about one dataset: where it lives and how to check it."""

    name: str
    folder: str  # torchvision's folder name: <root>/<folder>/raw/
    tv_class: type
    mean: float  # of the training images, in [0, 1] units (tests recompute these)
    std: float
    content_md5: dict[str, str]  # MD5 of each *decompressed* raw file
    system_dirs: tuple[str, ...] = ()

    @property
    def archive_md5(self) -> dict[str, str]:
        """MD5 of each published ``.gz`` archive, as torchvision lists them."""
        return {Path(url).name.removesuffix(".gz"): md5 for url, md5 in self.tv_class.resources}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.tv_class.classes)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        tv_class=tv_datasets.MNIST,
        mean=0.1307,
        std=0.3081,
        content_md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="FashionMNIST",
        tv_class=tv_datasets.FashionMNIST,
        mean=0.2860,
        std=0.3530,
        content_md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        # Debian's dataset-fashion-mnist package (re-headered .gz files, same content).
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


class DataError(RuntimeError):
    """A dataset could not be provided; the message says what is wrong and how to fix it."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """Some raw files were found nowhere cnnlab looks."""


class CorruptDatasetError(DataError):
    """A raw file was found but does not match its checksum (truncated, corrupt or wrong file)."""


def _spec(name: str) -> DatasetSpec:
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[key]


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for a dataset's raw files, in order.

    ``root`` (or ``$CNNLAB_DATA``) / <Folder>/raw, then the repository's ``data/<Folder>/raw``,
    then system folders such as Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    spec = _spec(name)
    roots = [Path(root)] if root is not None else []
    if root is None and os.environ.get("CNNLAB_DATA"):
        roots.append(Path(os.environ["CNNLAB_DATA"]).expanduser())
    roots += [repo_root() / "data", cache_dir()]
    dirs = [r / spec.folder / "raw" for r in roots] + [Path(d) for d in spec.system_dirs]
    return list(dict.fromkeys(_resolved(p) for p in dirs))


def _exists(p: Path, kind: str = "any") -> bool:
    """``p.exists()`` (or ``is_file()``), False where ``p`` cannot be looked at (no permission)."""
    try:
        return p.is_file() if kind == "file" else p.exists()
    except OSError:
        return False


def _resolved(p: Path) -> Path:
    """``p`` resolved if it exists; as it is if not, or if it cannot be looked at (a folder of
    another user's, say: searching it is then skipped, not an error)."""
    try:
        return p.resolve() if p.exists() else p
    except OSError:
        return p


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _verified_content(path: Path, spec: DatasetSpec, raw_name: str) -> bytes:
    """Return the decompressed bytes of ``path`` if they are the expected file, else raise."""
    blob = path.read_bytes()
    expected = spec.content_md5[raw_name]
    if path.suffix == ".gz":
        archive_ok = _md5(blob) == spec.archive_md5.get(raw_name)
        try:
            content = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as err:
            # EOFError: the stream stops early (a cut-off download); anything else (a CRC or
            # deflate error) means bytes were changed inside a file of the right length.
            what = "it is truncated (cut off before its end)" if isinstance(err, EOFError) else "it is corrupt"
            raise CorruptDatasetError(
                f"{path} is not a readable gzip archive ({err}); {what}. "
                f"Expected archive MD5 {spec.archive_md5.get(raw_name)} or decompressed MD5 "
                f"{expected}. Replace it with a fresh copy."
            ) from None
        if archive_ok or _md5(content) == expected:  # Debian re-headers archives: check content
            return content
        got = _md5(content)
    else:
        content, got = blob, _md5(blob)
        if got == expected:
            return content
    raise CorruptDatasetError(
        f"{path} ({len(blob):,} bytes) does not match the official {spec.name} file "
        f"{raw_name}: content MD5 is {got}, expected {expected}"
        + (f" (archive MD5 {spec.archive_md5.get(raw_name)})" if path.suffix == ".gz" else "")
        + ". It is corrupt or a different file; replace it with a fresh copy."
    )


def _download(spec: DatasetSpec, into: Path) -> str | None:
    """Let torchvision download the archives into ``into``; return an error text on failure."""
    try:
        spec.tv_class(root=str(into), train=True, download=True)
        spec.tv_class(root=str(into), train=False, download=True)
    except Exception as err:  # no network, a mirror down, a proxy: all end in the same advice
        return f"{type(err).__name__}: {err}"
    return None


def locate(
    name: str = "mnist",
    *,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
) -> Path:
    """Make sure the dataset's four raw files are extracted and verified; return their folder.

    Files are read from the folders of :func:`search_dirs` (``.gz`` or already extracted),
    verified by MD5 and extracted into the cache (``cache_dir()/<Folder>/raw``), never into
    the folder they came from. With ``download`` (default: unless ``CNNLAB_OFFLINE=1``)
    torchvision fetches what is missing. Raises :class:`DatasetNotFoundError` or
    :class:`CorruptDatasetError` with the files, checksums and folders involved.
    """
    spec = _spec(name)
    target_dir = cache_dir() / spec.folder / "raw"
    dirs = search_dirs(name, root)
    if download is None:
        download = not offline_mode()
    try:
        missing, corrupt = _fill_cache(spec, target_dir, dirs)
        if missing and download:
            with tempfile.TemporaryDirectory(prefix="cnnlab-download-") as tmp:
                download_error = _download(spec, Path(tmp))
                if download_error is None:
                    missing, corrupt = _fill_cache(spec, target_dir, [Path(tmp) / spec.folder / "raw"])
        else:
            download_error = None if download else "downloads are off (download=False or CNNLAB_OFFLINE=1)"
    except OSError as err:  # no permission, a read-only or full disk, a file where a folder should be
        where = target_dir if isinstance(err, SaveError) or not err.filename else err.filename
        raise DataError(
            f"{spec.name}: cannot write the extracted files into {where}: {why_not_written(err)}. cnnlab reads "
            f"the raw files where it finds them and writes the extracted ones into {target_dir}; point "
            "CNNLAB_CACHE at a folder you can write, on a disk with room (for example: "
            "export CNNLAB_CACHE=~/.cache/cnnlab), or fix that folder."
        ) from None
    if corrupt and missing:
        raise CorruptDatasetError(
            "\n".join(corrupt) + "\nNo good copy was found elsewhere: "
            + ", ".join(str(d) for d in dirs)
        )
    if missing:
        raise DatasetNotFoundError(_missing_message(spec, missing, dirs, download_error, corrupt))
    return target_dir


def found_in(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The first folder cnnlab searches (other than its own cache) that holds all four raw files
    of dataset ``name``, as ``.gz`` or extracted; ``None`` if there is none (say, it was downloaded)."""
    spec = _spec(name)
    cache = (cache_dir() / spec.folder / "raw").resolve()
    for d in search_dirs(name, root):
        if _exists(d) and d.resolve() != cache and all(
            _exists(d / f"{raw}.gz", "file") or _exists(d / raw, "file") for raw in RAW_FILES
        ):
            return d
    return None


def _fill_cache(spec: DatasetSpec, target_dir: Path, dirs: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Extract each raw file into ``target_dir`` from the first good copy; return what failed."""
    missing, corrupt = [], []
    for raw_name in RAW_FILES:
        target = target_dir / raw_name
        if target.exists():
            try:
                _verified_content(target, spec, raw_name)
                continue
            except CorruptDatasetError as err:
                corrupt.append(str(err))
        for d in dirs:
            found = False
            for candidate in (d / f"{raw_name}.gz", d / raw_name):
                if not _exists(candidate, "file") or candidate.resolve() == target.resolve():
                    continue
                try:
                    content = _verified_content(candidate, spec, raw_name)
                except CorruptDatasetError as err:
                    corrupt.append(str(err))
                    continue
                except OSError as err:  # a copy that cannot be read (someone else's): try the next folder
                    corrupt.append(f"{candidate}: cannot be read ({err.strerror or err})")
                    continue
                with atomic_write(target) as f:
                    f.write(content)
                found = True
                break
            if found:
                break
        else:
            missing.append(raw_name)
    return missing, corrupt


def _missing_message(spec, missing, dirs, download_error, corrupt) -> str:
    lines = [f"{spec.name}: {len(missing)} raw file(s) not found:"]
    for raw_name in missing:
        lines.append(
            f"  {raw_name}.gz  (archive MD5 {spec.archive_md5[raw_name]}; "
            f"or extracted, MD5 {spec.content_md5[raw_name]})"
        )
    lines.append("Folders searched:")
    lines += [f"  {d}{'' if _exists(d) else '  (does not exist or cannot be read)'}" for d in dirs]
    if corrupt:
        lines.append("Copies refused:")
        lines += [f"  {c}" for c in corrupt]
    if download_error:
        lines.append(f"Download not possible: {download_error}")
    lines.append(
        f"Fix: put the four .gz files in $CNNLAB_DATA/{spec.folder}/raw/ (and set CNNLAB_DATA), "
        f"or in {cache_dir() / spec.folder / 'raw'}; or run once with internet access."
    )
    return "\n".join(lines)


@functools.lru_cache(maxsize=8)
def _raw_tensors(name: str, train: bool, folder: Path) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 28, 28) and int64 labels, parsed by torchvision from the cache."""
    spec = _spec(name)
    ds = spec.tv_class(root=str(folder.parent.parent), train=train, download=False)
    return ds.data, ds.targets.long()


@dataclass(frozen=True)
class ImageSet(torch.utils.data.Dataset):
    """One split of an image dataset held as tensors: ``x`` (N, C, H, W) float, ``y`` (N,) long.

    Batches come from indexing (:meth:`batches`), so the whole set can live on the GPU.
    It is also a ``torch.utils.data.Dataset`` for code that wants a ``DataLoader``.
    """

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    name: str = ""
    split: str = ""
    mean: float = 0.0
    std: float = 1.0

    check: InitVar[bool] = True  # False only where the images come from a checked set (to, subset)

    def __post_init__(self, check: bool) -> None:
        # Refused here, once per set of new pixels: a NaN would otherwise train to chance with no word.
        x = self.x
        if check and x.is_floating_point() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero().flatten()
            raise ValueError(
                f"{len(bad):,} of {len(self.x):,} images hold NaN or infinite pixels (the first: "
                f"{bad[:5].tolist()}); fix or drop them before training (torch.nan_to_num, or keep "
                "torch.isfinite(x).flatten(1).all(1))"
            )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> ImageSet:
        """The same data on ``device`` (no copy if it is already there)."""
        return replace(self, x=self.x.to(device), y=self.y.to(device), check=False)

    def subset(self, index: Tensor | Sequence[int]) -> ImageSet:
        """The examples at ``index``, in that order."""
        index = torch.as_tensor(index, device=self.x.device)
        if index.numel() == 0 or index.is_floating_point():  # [] becomes a float tensor
            index = index.long()
        return replace(self, x=self.x[index], y=self.y[index], check=False)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(xb, yb)`` by indexing; ``shuffle`` draws one permutation from ``generator``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.x.device)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(0, n, batch_size):
                yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def with_images(self, x: Tensor) -> ImageSet:
        """The same labels with other images (e.g. shifted copies)."""
        if x.shape[0] != len(self):
            raise ValueError(f"need {len(self)} images, got {x.shape[0]}")
        return replace(self, x=x, check=True)

    @property
    def background(self) -> float:
        """The normalised value of a black (0) pixel: what shifted-in borders are filled with."""
        return -self.mean / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        """Undo the normalisation: pixel values back in [0, 1], for display."""
        return (x * self.std + self.mean).clamp(0, 1)


def stratified_indices(y: Tensor, limit: int, seed: int = 0) -> Tensor:
    """``limit`` indices drawn at random (from ``seed``) keeping each class's share; sorted."""
    n = len(y)
    if limit >= n:
        return torch.arange(n)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    classes, counts = torch.unique(y, return_counts=True)
    share = counts.double() * limit / n
    take = share.floor().long()
    # Largest remainders get the leftover examples, so the total is exactly `limit`.
    leftover = limit - int(take.sum())
    take[torch.argsort(share - take, descending=True)[:leftover]] += 1
    picked = [perm[y[perm] == c][: int(k)] for c, k in zip(classes, take)]
    return torch.cat(picked).sort().values


def load(
    name: str = "mnist",
    split: str = "train",
    *,
    limit: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    download: bool | None = None,
) -> ImageSet:
    """Load a split (``"train"`` or ``"test"``) as an :class:`ImageSet`, normalised once.

    ``limit`` keeps a stratified random subset of that many examples (drawn from ``seed``),
    for smoke runs. ``root``/``download`` are as in :func:`locate`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None:
        if not (isinstance(limit, numbers.Integral) and not isinstance(limit, bool) and limit >= 1):
            raise ValueError(f"limit must be a whole number of examples >= 1 (or None: all of them), got {limit!r}")
        limit = int(limit)
    device = pick_device(device)  # a device this machine lacks is refused in cnnlab's words, before any reading
    spec = _spec(name)
    folder = locate(spec.name, root=root, download=download)
    images, labels = _raw_tensors(spec.name, split == "train", folder)
    if limit is not None:
        keep = stratified_indices(labels, limit, seed)
        images, labels = images[keep], labels[keep]
    x = (images.unsqueeze(1).float().div_(255) - spec.mean) / spec.std  # (N, 1, 28, 28)
    data = ImageSet(x, labels.clone(), spec.classes, spec.name, split, spec.mean, spec.std)
    return data.to(device)


def clear_cache() -> None:
    """Forget parsed datasets held in memory (the files on disk stay)."""
    _raw_tensors.cache_clear()

