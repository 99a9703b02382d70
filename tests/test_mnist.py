"""Offline tests of admmprune.data.mnist on small generated IDX files (plus the real data)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from admmprune.data import (
    MNIST_FILES,
    DatasetError,
    MNISTData,
    TensorBatches,
    default_cache_dir,
    download_mnist,
    find_mnist,
    load_mnist,
    mnist_loaders,
    read_idx,
)

# Read before the autouse fixture clears it for the offline tests.

TYPE_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    code = TYPE_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> bytes:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return raw


def make_mnist(
    directory: Path, gz: bool = True, n_train: int = 30, n_test: int = 12, seed: int = 0
) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Write four fake MNIST files; return their md5 table and contents."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, array in arrays.items():
        path = directory / (f"{name}.gz" if gz else name)
        checksums[name] = hashlib.md5(write_idx(path, array, gz)).hexdigest()
    return checksums, arrays


def normalised(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32))
    return ((x / 255.0 - 0.1307) / 0.3081).unsqueeze(1)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the real cache or a data dir configured in the caller's environment."""
    cache = tmp_path / "cache-root"
    monkeypatch.setenv("ADMMPRUNE_CACHE_DIR", str(cache))
    monkeypatch.delenv("ADMMPRUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return cache


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8),
        np.array([[-128, 127], [0, -1]], dtype=np.int8),
        np.array([-32768, 32767, 258], dtype=np.int16),
        np.array([[-(2**31), 2**31 - 1, 65536]], dtype=np.int32),
        np.array([1.5, -2.25, np.inf], dtype=np.float32),
        np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7,
    ],
    ids=["u8-3d", "u8-1d", "i8", "i16", "i32", "f32", "f64-3d"],
)
def test_read_idx_roundtrip(tmp_path: Path, array: np.ndarray, gz: bool) -> None:
    path = tmp_path / "data.idx"
    write_idx(path, array, gz)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    torch.from_numpy(back)  # native byte order: torch accepts it


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    gz_no_suffix = tmp_path / "labels-idx1-ubyte"
    raw_with_suffix = tmp_path / "labels-idx1-ubyte.gz"
    gz_no_suffix.write_bytes(gzip.compress(idx_bytes(array)))
    raw_with_suffix.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(gz_no_suffix), array)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), array)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_raises(tmp_path: Path, gz: bool) -> None:
    raw = idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    stored = gzip.compress(raw) if gz else raw
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(stored[: len(stored) - 30])
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message
    assert "Delete" in message and "download" in message


def test_trailing_bytes_raise(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)) + b"\0")
    with pytest.raises(DatasetError, match="trailing bytes"):
        read_idx(path)


@pytest.mark.parametrize(
    "header",
    [
        b"\x01\x00\x08\x01",  # first byte not zero
        b"\x00\x00\x07\x01",  # unknown type code
        b"\x00\x00\x08\x00",  # zero dimensions
        b"PK\x03\x04",  # a zip file
    ],
)
def test_bad_magic_raises(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(header + np.array([4], dtype=">u4").tobytes() + bytes(4))
    with pytest.raises(DatasetError, match="bad magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_header_cut_short_raises(tmp_path: Path) -> None:
    path = tmp_path / "short.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + bytes(5))  # 3 dims need 12 header bytes
    with pytest.raises(DatasetError, match="3 dimensions"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="only 2 bytes"):
        read_idx(path)


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


# --------------------------------------------------------------------------- load_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_load_generated_mnist(tmp_path: Path, gz: bool) -> None:
    checksums, arrays = make_mnist(tmp_path / "d", gz=gz)
    data = load_mnist(tmp_path / "d", download=False, checksums=checksums)
    assert isinstance(data, MNISTData)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (12, 1, 28, 28)
    torch.testing.assert_close(data.train_x, normalised(arrays["train-images-idx3-ubyte"]))
    torch.testing.assert_close(data.test_x, normalised(arrays["t10k-images-idx3-ubyte"]))
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert "(30, 1, 28, 28)" in repr(data)


def test_normalisation_constants(tmp_path: Path) -> None:
    checksums, arrays = make_mnist(tmp_path)
    data = load_mnist(tmp_path, download=False, checksums=checksums)
    pixel = int(arrays["train-images-idx3-ubyte"][0, 3, 7])
    expected = (pixel / 255 - 0.1307) / 0.3081
    assert data.train_x[0, 0, 3, 7].item() == pytest.approx(expected, abs=1e-6)


def test_subsets_keep_first_examples(tmp_path: Path) -> None:
    checksums, arrays = make_mnist(tmp_path)
    data = load_mnist(tmp_path, download=False, train_subset=7, test_subset=3, checksums=checksums)
    assert data.train_x.shape[0] == 7 and data.train_y.shape[0] == 7
    assert data.test_x.shape[0] == 3 and data.test_y.shape[0] == 3
    torch.testing.assert_close(data.train_x, normalised(arrays["train-images-idx3-ubyte"][:7]))
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"][:3].tolist()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_subset_rejected(tmp_path: Path, bad: object) -> None:
    checksums, _ = make_mnist(tmp_path)
    with pytest.raises(ValueError, match="train_subset"):
        load_mnist(tmp_path, download=False, train_subset=bad, checksums=checksums)


def test_wrong_md5_names_file_and_both_digests(tmp_path: Path) -> None:
    checksums, _ = make_mnist(tmp_path)
    good = checksums["t10k-labels-idx1-ubyte"]
    wrong = dict(checksums, **{"t10k-labels-idx1-ubyte": "0" * 32})
    with pytest.raises(DatasetError) as info:
        load_mnist(tmp_path, download=False, checksums=wrong)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "0" * 32 in message and good in message


def test_md5_checked_on_full_file_even_with_subset(tmp_path: Path) -> None:
    checksums, arrays = make_mnist(tmp_path, gz=False)
    # Change the last image only: the kept subset is intact, the file is not.
    images = arrays["train-images-idx3-ubyte"].copy()
    images[-1, 0, 0] ^= 0xFF
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*md5"):
        load_mnist(tmp_path, download=False, train_subset=2, checksums=checksums)


def test_default_checksums_reject_fake_data(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    with pytest.raises(DatasetError, match="6bbc9ace898e44ae57da46a324031adb"):
        load_mnist(tmp_path, download=False)


def test_label_count_mismatch_raises(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8), gz=True)
    with pytest.raises(DatasetError, match="expected 30 uint8 labels"):
        load_mnist(tmp_path, download=False, checksums={})


def test_loading_writes_nothing_next_to_sources(tmp_path: Path) -> None:
    checksums, _ = make_mnist(tmp_path / "ro")
    before = sorted(p.name for p in (tmp_path / "ro").iterdir())
    load_mnist(tmp_path / "ro", download=False, checksums=checksums)
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == before


# --------------------------------------------------------------------------- find_mnist


def test_torchvision_layout_found_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checksums, arrays = make_mnist(tmp_path / "root" / "MNIST" / "raw", gz=False)
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(tmp_path / "root"))
    assert find_mnist() == tmp_path / "root" / "MNIST" / "raw"
    data = load_mnist(download=False, checksums=checksums)
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_subdir_found_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist(tmp_path / "root" / "mnist")
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(tmp_path / "root"))
    assert find_mnist() == tmp_path / "root" / "mnist"


def test_mixed_raw_and_gz_files_accepted(tmp_path: Path) -> None:
    checksums, _ = make_mnist(tmp_path)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert find_mnist(tmp_path) == tmp_path
    assert load_mnist(tmp_path, download=False, checksums=checksums).test_x.shape[0] == 12


def test_explicit_dir_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist(tmp_path / "explicit")
    make_mnist(tmp_path / "env")
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(tmp_path / "env"))
    assert find_mnist(tmp_path / "explicit") == tmp_path / "explicit"
    assert find_mnist() == tmp_path / "env"


def test_cache_dir_used_when_nothing_configured(tmp_path: Path, isolated_env: Path) -> None:
    assert default_cache_dir() == isolated_env / "mnist"
    make_mnist(isolated_env / "mnist")
    assert find_mnist() == isolated_env / "mnist"


def test_cache_defaults_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADMMPRUNE_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "admmprune" / "mnist"


def test_incomplete_dir_not_accepted(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="not found"):
        find_mnist(tmp_path)


def test_explicit_empty_dir_does_not_fall_back(tmp_path: Path, isolated_env: Path) -> None:
    make_mnist(isolated_env / "mnist")  # a good cache must not hide the user's typo
    with pytest.raises(DatasetError) as info:
        load_mnist(tmp_path / "typo", download=True, checksums={})
    assert str(tmp_path / "typo") in str(info.value)


def test_absent_without_download_names_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_mnist(download=False)
    message = str(info.value)
    assert "--data-dir" in message and "ADMMPRUNE_DATA_DIR" in message
    assert not (tmp_path / "cache-root" / "mnist").exists()


# --------------------------------------------------------------------------- download


def test_download_from_file_mirror(tmp_path: Path) -> None:
    checksums, arrays = make_mnist(tmp_path / "mirror")
    dest = download_mnist(
        tmp_path / "dest", mirrors=[(tmp_path / "mirror").as_uri()], checksums=checksums
    )
    assert dest == tmp_path / "dest"
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)
    for name, array in arrays.items():
        np.testing.assert_array_equal(read_idx(dest / f"{name}.gz"), array)


def test_download_tries_next_mirror(tmp_path: Path) -> None:
    checksums, _ = make_mnist(tmp_path / "good")
    make_mnist(tmp_path / "other", seed=1)  # well-formed but wrong content
    mirrors = [
        (tmp_path / "missing").as_uri(),
        (tmp_path / "other").as_uri() + "/",
        (tmp_path / "good").as_uri(),
    ]
    dest = download_mnist(tmp_path / "dest", mirrors=mirrors, checksums=checksums)
    assert find_mnist(dest) == dest


def test_corrupt_mirror_fails_clearly(tmp_path: Path) -> None:
    checksums, _ = make_mnist(tmp_path / "mirror")
    bad = tmp_path / "mirror" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-12])  # a download cut short
    with pytest.raises(DatasetError) as info:
        download_mnist(
            tmp_path / "dest", mirrors=[(tmp_path / "mirror").as_uri()], checksums=checksums
        )
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "train-labels-idx1-ubyte.gz" in message and "corrupt" in message
    assert "--data-dir" in message and "ADMMPRUNE_DATA_DIR" in message
    # Nothing half-written is left behind: only the file fetched before the bad one.
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["train-images-idx3-ubyte.gz"]


def test_download_keeps_good_files_and_replaces_bad(tmp_path: Path) -> None:
    checksums, _ = make_mnist(tmp_path / "mirror")
    dest = tmp_path / "dest"
    make_mnist(dest)
    (dest / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    mtime = (dest / "train-images-idx3-ubyte.gz").stat().st_mtime_ns
    download_mnist(dest, mirrors=[(tmp_path / "mirror").as_uri()], checksums=checksums)
    assert (dest / "train-images-idx3-ubyte.gz").stat().st_mtime_ns == mtime
    load_mnist(dest, download=False, checksums=checksums)


def test_load_downloads_into_cache(tmp_path: Path, isolated_env: Path) -> None:
    checksums, arrays = make_mnist(tmp_path / "mirror")
    data = load_mnist(checksums=checksums, mirrors=[(tmp_path / "mirror").as_uri()])
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert find_mnist() == isolated_env / "mnist"


def test_unreachable_mirrors_name_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_mnist(checksums={}, mirrors=[(tmp_path / "nowhere").as_uri()])
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "--data-dir" in message and "ADMMPRUNE_DATA_DIR" in message


# --------------------------------------------------------------------------- batching


def epoch_labels(batches: TensorBatches) -> list[int]:
    return torch.cat([y for _, y in batches]).tolist()


def test_batches_cover_each_example_once_and_stay_paired() -> None:
    y = torch.arange(103)
    x = (y.float() * 10).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    batches = TensorBatches(x, y, batch_size=10, shuffle=True, seed=5)
    assert len(batches) == 11
    for _ in range(3):
        sizes = []
        seen = []
        for xb, yb in batches:
            assert torch.equal(xb[:, 0, 0, 0], yb.float() * 10)
            sizes.append(len(yb))
            seen += yb.tolist()
        assert sorted(seen) == list(range(103))
        assert sizes == [10] * 10 + [3]


def test_batches_epochs_differ_but_runs_repeat() -> None:
    y = torch.arange(200)
    a = TensorBatches(y.float(), y, batch_size=32, shuffle=True, seed=1)
    b = TensorBatches(y.float(), y, batch_size=32, shuffle=True, seed=1)
    c = TensorBatches(y.float(), y, batch_size=32, shuffle=True, seed=2)
    a_epochs = [epoch_labels(a) for _ in range(3)]
    assert a_epochs[0] != a_epochs[1] != a_epochs[2]
    assert a_epochs[0] != list(range(200))
    assert [epoch_labels(b) for _ in range(3)] == a_epochs
    assert epoch_labels(c) != a_epochs[0]
    b.set_epoch(1)
    assert epoch_labels(b) == a_epochs[1]


def test_batches_drop_last_and_unshuffled_order() -> None:
    y = torch.arange(25)
    dropped = TensorBatches(y, y, batch_size=10, shuffle=True, drop_last=True)
    assert len(dropped) == 2
    assert [len(yb) for _, yb in dropped] == [10, 10]
    plain = TensorBatches(y, y, batch_size=10, shuffle=False)
    assert len(plain) == 3
    assert epoch_labels(plain) == list(range(25)) == epoch_labels(plain)


def test_batches_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="examples"):
        TensorBatches(torch.zeros(3), torch.zeros(4), 2, shuffle=False)
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(torch.zeros(3), torch.zeros(3), 0, shuffle=False)


def test_mnist_loaders(tmp_path: Path) -> None:
    checksums, arrays = make_mnist(tmp_path, n_train=50, n_test=1200)
    train, test = mnist_loaders(load_mnist(tmp_path, download=False, checksums=checksums), 16, 3)
    assert train.shuffle and train.batch_size == 16 and train.seed == 3 and len(train) == 4
    assert not test.shuffle and test.batch_size == 1000 and len(test) == 2
    assert epoch_labels(test) == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert sorted(epoch_labels(train)) == sorted(arrays["train-labels-idx1-ubyte"].tolist())


# --------------------------------------------------------------------------- real data


def test_real_mnist_subset(mnist_dir: Path) -> None:
    before = sorted(p.name for p in mnist_dir.iterdir())
    data = load_mnist(mnist_dir, download=False, train_subset=1000)
    assert data.train_x.shape == (1000, 1, 28, 28) and data.train_y.shape == (1000,)
    assert data.test_x.shape == (10000, 1, 28, 28) and data.test_y.shape == (10000,)
    assert int(data.train_y.min()) == 0 and int(data.train_y.max()) == 9
    assert set(data.test_y.tolist()) == set(range(10))
    assert abs(float(data.test_x.mean())) < 0.05
    assert abs(float(data.train_x.mean())) < 0.1
    assert abs(float(data.test_x.std()) - 1.0) < 0.05
    # The well-known first training labels: 5 0 4 1 9 2 1 3 1 4.
    assert data.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert sorted(p.name for p in mnist_dir.iterdir()) == before
