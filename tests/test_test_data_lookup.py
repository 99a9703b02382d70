"""How the tests find real MNIST: as run.sh does ($ADMMPRUNE_DATA_DIR, else ../shared/data
next to the clone, else the cache ~/.cache/admmprune, else a checksummed download into it)."""

import pytest
from conftest import real_idx_dir

import admmprune.data.mnist as mnist_module
from admmprune.data import FASHION_MNIST, MNIST_FILES, DatasetError


def _fill(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        (folder / f"{name}.gz").write_bytes(b"")
    return folder


@pytest.fixture
def downloads(monkeypatch, tmp_path):
    """No network: the download writes empty files and records where it was asked to."""
    monkeypatch.delenv("ADMMPRUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("ADMMPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_download(dest, *args, spec=mnist_module.MNIST, **kwargs):
        calls.append((dest, spec.name))
        return _fill(dest)

    monkeypatch.setattr(mnist_module, "download_mnist", fake_download)
    return calls


def test_a_fresh_machine_downloads_into_the_cache_once(tmp_path, downloads):
    nothing = tmp_path / "no-shared-data"
    found = real_idx_dir(shared=nothing)
    assert found == tmp_path / "cache" / "mnist"
    assert downloads == [(tmp_path / "cache" / "mnist", "mnist")]
    assert real_idx_dir(shared=nothing) == found and len(downloads) == 1  # the cache now
    fashion = real_idx_dir(FASHION_MNIST, shared=nothing)
    assert fashion == tmp_path / "cache" / "fashion-mnist"
    assert downloads[-1] == (fashion, "fashion-mnist")


def test_shared_data_next_to_the_clone_comes_before_the_cache(tmp_path, downloads):
    shared = tmp_path / "shared" / "data"
    _fill(shared / "mnist")
    _fill(tmp_path / "cache" / "mnist")
    assert real_idx_dir(shared=shared) == shared / "mnist"
    assert downloads == []


def test_the_environment_comes_first_and_is_not_passed_over(tmp_path, downloads, monkeypatch):
    shared = _fill(tmp_path / "shared" / "data" / "mnist").parent
    mine = _fill(tmp_path / "mine" / "mnist").parent
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(mine))
    assert real_idx_dir(shared=shared) == mine / "mnist"
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(tmp_path / "empty"))
    assert real_idx_dir(shared=shared) is None  # a typo is not hidden by another copy
    assert downloads == []


def test_a_failed_download_finds_nothing(tmp_path, downloads, monkeypatch):
    def offline(dest, *args, **kwargs):
        raise DatasetError("every mirror failed")

    monkeypatch.setattr(mnist_module, "download_mnist", offline)
    assert real_idx_dir(shared=tmp_path / "none") is None
