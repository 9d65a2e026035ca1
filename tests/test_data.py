"""cnnlab.data: loading, subsets, batching, and every way the files can be missing or wrong."""

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab import data

SHARED = Path(os.environ.get("CNNLAB_DATA", "")) if os.environ.get("CNNLAB_DATA") else None
needs_shared = pytest.mark.skipif(
    SHARED is None or not any((SHARED / "MNIST" / "raw").glob("*.gz")),
    reason="CNNLAB_DATA with the raw .gz archives is not set"
)


def test_load_full_splits_shapes_and_normalisation():
    train = data.load("mnist", "train")
    test = data.load("mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == torch.float32
    assert test.x.shape == (10000, 1, 28, 28)
    assert train.y.dtype == torch.long and set(train.y.unique().tolist()) == set(range(10))
    # Normalised once with the training set's own mean and std.
    assert abs(train.x.mean().item()) < 1e-3 and abs(train.x.std().item() - 1) < 1e-3


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_stored_mean_and_std_match_the_training_images(name):
    spec = data.DATASETS[name]
    raw = data.load(name, "train").denormalize(data.load(name, "train").x)
    assert raw.mean().item() == pytest.approx(spec.mean, abs=5e-5)
    assert raw.std().item() == pytest.approx(spec.std, abs=5e-5)


def test_fashion_mnist_loads_with_its_class_names():
    test = data.load("fashion-mnist", "test")
    assert len(test) == 10000 and test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"


def test_limit_is_stratified_deterministic_and_seeded():
    full = data.load("mnist", "train")
    a = data.load("mnist", "train", limit=1000, seed=3)
    b = data.load("mnist", "train", limit=1000, seed=3)
    c = data.load("mnist", "train", limit=1000, seed=4)
    assert len(a) == 1000 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    share_full = torch.bincount(full.y, minlength=10).double() / len(full)
    share_a = torch.bincount(a.y, minlength=10).double() / len(a)
    assert (share_a - share_full).abs().max() < 0.002  # each class within one example of its share


def test_batches_cover_every_example_once_and_shuffle_from_the_generator(mnist_small):
    train, _ = mnist_small
    seen = torch.cat([yb for _, yb in train.batches(300, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert len(seen) == len(train) and torch.equal(seen.sort().values, train.y.sort().values)
    again = torch.cat([yb for _, yb in train.batches(300, shuffle=True, generator=torch.Generator().manual_seed(0))])
    other = torch.cat([yb for _, yb in train.batches(300, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(seen, again) and not torch.equal(seen, other)
    with pytest.raises(ValueError, match="batch_size"):
        next(train.batches(0))


def test_unknown_dataset_and_split_are_named():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist"):
        data.load("cifar")
    with pytest.raises(ValueError, match="split must be"):
        data.load("mnist", "validation")


def test_missing_files_offline_give_one_clear_message(isolated_cache):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("mnist", "train", download=False)
    msg = str(info.value)
    for raw_name in data.RAW_FILES:
        assert f"{raw_name}.gz" in msg
        assert data.DATASETS["mnist"].archive_md5[raw_name] in msg  # the checksum to expect
    assert "Folders searched" in msg and str(isolated_cache / "cache") in msg
    assert "CNNLAB_DATA" in msg  # how to fix it


def _copy_mnist(dest: Path) -> Path:
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(f, raw / f.name)
    return raw


@needs_shared
def test_archives_are_verified_and_extracted_into_the_cache_not_the_source(isolated_cache, monkeypatch):
    src = _copy_mnist(isolated_cache / "src")
    before = sorted(p.name for p in src.iterdir())
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    test = data.load("mnist", "test")
    assert len(test) == 10000
    assert sorted(p.name for p in src.iterdir()) == before  # nothing written beside the archives
    cache_raw = isolated_cache / "cache" / "MNIST" / "raw"
    assert sorted(p.name for p in cache_raw.iterdir()) == sorted(data.RAW_FILES)


@needs_shared
def test_truncated_archive_is_refused_with_its_name_and_checksum(isolated_cache, monkeypatch):
    src = _copy_mnist(isolated_cache / "src")
    bad = src / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:2000])
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    with pytest.raises(data.CorruptDatasetError) as info:
        data.load("mnist", "test", download=False)
    msg = str(info.value)
    assert str(bad) in msg and data.DATASETS["mnist"].content_md5["t10k-labels-idx1-ubyte"] in msg
    assert not (isolated_cache / "cache" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()  # never extracted


@needs_shared
def test_corrupt_content_with_valid_gzip_is_refused(isolated_cache, monkeypatch):
    src = _copy_mnist(isolated_cache / "src")
    f = src / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(f.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one wrong label
    f.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    with pytest.raises(data.CorruptDatasetError, match="does not match the official mnist file"):
        data.load("mnist", "test", download=False)


@needs_shared
def test_reheadered_archive_with_the_same_content_is_accepted(isolated_cache, monkeypatch):
    """Debian re-compresses the archives: other bytes, other archive MD5, same content."""
    src = _copy_mnist(isolated_cache / "src")
    for f in src.glob("*.gz"):
        original = f.read_bytes()
        f.write_bytes(gzip.compress(gzip.decompress(original), mtime=12345))
        assert f.read_bytes() != original
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    assert len(data.load("mnist", "test")) == 10000


@needs_shared
def test_a_corrupted_cache_file_is_replaced_from_a_good_source(isolated_cache, monkeypatch):
    _copy_mnist(isolated_cache / "src")
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    expected = data.load("mnist", "test").y.clone()
    cached = isolated_cache / "cache" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    cached.write_bytes(cached.read_bytes()[:-10])
    data.clear_cache()
    assert torch.equal(data.load("mnist", "test").y, expected)


@needs_shared
def test_a_corrupted_cache_file_with_no_source_is_refused(isolated_cache, monkeypatch):
    _copy_mnist(isolated_cache / "src")
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    data.load("mnist", "test")
    cached = isolated_cache / "cache" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    cached.write_bytes(cached.read_bytes()[:-10])
    shutil.rmtree(isolated_cache / "src")
    data.clear_cache()
    with pytest.raises(data.CorruptDatasetError, match="t10k-images-idx3-ubyte"):
        data.load("mnist", "test", download=False)


@needs_shared
def test_a_cache_that_cannot_be_written_is_a_message_not_a_traceback(isolated_cache, monkeypatch):
    """As root (CI) a read-only folder is still writable, so the refusal is simulated where the
    operating system would raise it."""
    import tempfile as tf

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir") or (args[2] if len(args) > 2 else None))

    monkeypatch.setenv("CNNLAB_DATA", str(SHARED))
    monkeypatch.setattr(tf, "mkstemp", refused)
    with pytest.raises(data.DataError, match=r"cannot write the extracted files into .*no permission to write there.*CNNLAB_CACHE.*export CNNLAB_CACHE="):
        data.locate("mnist")
    from cnnlab.doctor import check

    report = check()  # doctor reports it instead of failing
    assert "mnist" in report.missing and "no permission to write" in report.datasets["mnist"]


@needs_shared
def test_same_length_corruption_is_called_corrupt_and_a_cut_off_file_truncated(isolated_cache, monkeypatch):
    src = _copy_mnist(isolated_cache / "src")
    monkeypatch.setenv("CNNLAB_DATA", str(isolated_cache / "src"))
    bad = src / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(bad.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte changed, same length
    bad.write_bytes(bytes(blob))
    with pytest.raises(data.CorruptDatasetError, match="it is corrupt") as err:
        data.load("mnist", "test", download=False)
    assert "truncated" not in str(err.value)
    bad.write_bytes(bytes(blob[: len(blob) // 3]))
    with pytest.raises(data.CorruptDatasetError, match="it is truncated"):
        data.load("mnist", "test", download=False)


def test_a_cache_that_cannot_be_written_after_a_download_is_a_message_too(isolated_cache, monkeypatch):
    import tempfile as tf

    real_mkstemp = tf.mkstemp

    def refused(*args, **kwargs):
        if str(kwargs.get("dir", "")).startswith(str(isolated_cache / "cache")):
            raise PermissionError(13, "Permission denied", kwargs.get("dir"))
        return real_mkstemp(*args, **kwargs)

    def fake_download(spec, into):  # the download itself works; writing the cache does not
        raw = into / spec.folder / "raw"
        raw.mkdir(parents=True)
        for f in (SHARED / "MNIST" / "raw").glob("*.gz"):
            (raw / f.name).write_bytes(f.read_bytes())
        return None

    if SHARED is None or not any((SHARED / "MNIST" / "raw").glob("*.gz")):
        pytest.skip("CNNLAB_DATA with the raw .gz archives is not set")
    monkeypatch.setattr(tf, "mkstemp", refused)
    monkeypatch.setattr(data, "_download", fake_download)
    with pytest.raises(data.DataError, match="no permission to write there"):
        data.locate("mnist", download=True)
