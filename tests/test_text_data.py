"""The text dataset: windows, (seed, epoch) order, checksums, the user's own files."""

from __future__ import annotations

import gzip
import hashlib

import pytest
import torch

from admmprune.data import DatasetError, create_dataset
from admmprune.data.text import byte_tokens, load_text, split_checksums, token_windows
from admmprune.runs.config import load_config

CPU = torch.device("cpu")


def options(source, **overrides):
    base = dict(dataset="text", data_dir=str(source), context=8,
                batch_size=4, seed=3, progress=False)
    return load_config(None, {**base, **overrides})


def write_split_layout(directory, train: bytes, test: bytes, readme_digest: str | None = None):
    directory.mkdir()
    (directory / "train.txt.gz").write_bytes(gzip.compress(train, mtime=0))
    (directory / "test.txt").write_bytes(test)
    digest = readme_digest or hashlib.sha256(train).hexdigest()
    (directory / "README.md").write_text(
        "| split | files | bytes | SHA-256 of the uncompressed bytes |\n|---|---|---|---|\n"
        f"| train | 1 | {len(train):,} | {digest} |\n"
        f"| test | 1 | {len(test):,} | {hashlib.sha256(test).hexdigest()} |\n")
    return directory


def test_windows_are_the_text_and_its_next_bytes():
    tokens = byte_tokens(b"abcdefghijk")  # 11 tokens: (11 - 1) // 3 = 3 windows
    x, y = token_windows(tokens, 3)
    assert x.dtype == torch.int64 and x.shape == y.shape == (3, 3)
    assert bytes(x.flatten().tolist()) == b"abcdefghi"
    assert bytes(y.flatten().tolist()) == b"bcdefghij"
    assert token_windows(tokens, 3, limit=2)[0].shape == (2, 3)
    with pytest.raises(DatasetError, match="too few"):
        token_windows(byte_tokens(b"abc"), 3)


def test_epoch_order_follows_seed_and_epoch(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(bytes(range(256)) * 8)
    data = create_dataset("text", options(text), CPU, ("train",))
    assert data.info["vocab_size"] == 256 and data.info["context"] == 8

    def epoch(batches, number):
        batches.set_epoch(number)
        return torch.cat([x for x, _ in batches])

    first, second = epoch(data.train, 0), epoch(data.train, 1)
    assert not torch.equal(first, second)  # a new order each epoch
    again = create_dataset("text", options(text), CPU, ("train",)).train
    assert torch.equal(epoch(again, 1), second)  # a fresh loader repeats epoch 1 exactly
    other_seed = create_dataset("text", options(text, seed=4), CPU, ("train",)).train
    assert not torch.equal(epoch(other_seed, 0), first)
    # the same windows, only reordered; targets follow their inputs
    assert torch.equal(first.sort(0).values, second.sort(0).values)
    for x, y in data.train:
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_split_layout_is_read_and_verified(tmp_path):
    train, test = b"def f(x):\n    return x\n" * 20, b"import os\n" * 10
    source = write_split_layout(tmp_path / "corpus", train, test)
    assert set(split_checksums(source)) == {"train", "test"}
    corpus = load_text(source)
    assert corpus.train == train and corpus.test == test
    data = create_dataset("text", options(source), CPU)
    assert data.info["tokens"] == {"train": (len(train) - 1) // 8 * 8,
                                   "test": (len(test) - 1) // 8 * 8}


def test_a_checksum_mismatch_is_refused(tmp_path):
    source = write_split_layout(tmp_path / "corpus", b"x = 1\n" * 30, b"y = 2\n" * 10,
                                readme_digest="0" * 64)
    with pytest.raises(DatasetError, match="SHA-256 .* README gives 0{64}"):
        load_text(source)
    assert load_text(source, ("test",)).train is None  # only the splits asked for are read


def test_a_sha256sums_mismatch_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"hello\n" * 20)
    (folder / "SHA256SUMS").write_text(f"{'f' * 64}  a.txt\n")
    with pytest.raises(DatasetError, match="a.txt: SHA-256"):
        load_text(folder)


def test_a_directory_of_own_files(tmp_path):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"second file " * 5)
    (folder / "a.txt").write_bytes(b"first file\n")
    (folder / "sub" / "c.md").write_bytes(gzip.compress(b"third, gzip'ed\n" * 5))
    (folder / ".hidden").write_bytes(b"never read")
    corpus = load_text(folder)
    joined = b"first file\n\n" + b"second file " * 5 + b"\n\n" + b"third, gzip'ed\n" * 5
    cut = len(joined) - int(len(joined) * 0.1)
    assert corpus.train + corpus.test == joined and len(corpus.train) == cut
    data = create_dataset("text", options(folder, context=4), CPU)
    x, y = next(iter(data.test))
    assert bytes(x[0].tolist()) == joined[cut:cut + 4]


def test_missing_source_names_what_to_pass(tmp_path):
    with pytest.raises(DatasetError, match="--data-dir"):
        create_dataset("text", options(tmp_path / "nothing"), CPU)
