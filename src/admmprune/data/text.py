"""Text as byte tokens in fixed-length windows: the ``text`` dataset of language modeling.

A source is one of:

- a directory holding ``train.txt`` and ``test.txt`` (each raw or gzip'ed, detected from the
  content): the split layout of ``$ADMMPRUNE_DATA_DIR/pystdlib``;
- any other directory: every non-hidden file under it (recursively, sorted by relative path)
  is read, each ending with a newline, joined by one empty line, and the last
  :data:`TEST_FRACTION` of the bytes is the test split;
- a single file, split the same way.

Checksums are verified where the data provides them: a README(.md) table row naming a split
and a SHA-256 (of the split's uncompressed bytes, as pystdlib's README gives them), and a
``SHA256SUMS`` file in ``sha256sum`` format (of the files as stored). A mismatch is a
:class:`~admmprune.data.mnist.DatasetError`.

Tokens are bytes (vocabulary 256). A split of ``L`` tokens gives ``(L - 1) // T``
non-overlapping windows of ``T = context`` tokens: input ``tokens[i*T : (i+1)*T]``, target
the same window shifted by one token. Windows are served by
:class:`~admmprune.data.mnist.TensorBatches`, so every training epoch's order is the
permutation drawn from ``seed + epoch`` like every in-memory dataset's, and a resumed run
sees the batches of the uninterrupted one. ``steps_per_epoch`` caps an epoch as it does for
the other datasets.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import DatasetError
from .mnist import DATA_DIR_ENV
from .registry import DataSplits, register_dataset
from .tensors import TensorBatches

__all__ = [
    "BYTE_VOCAB",
    "DEFAULT_CONTEXT",
    "TEST_FRACTION",
    "SPLIT_FILES",
    "TextCorpus",
    "read_text_file",
    "split_checksums",
    "find_text",
    "load_text",
    "byte_tokens",
    "token_windows",
    "text_context",
    "text_splits",
]

BYTE_VOCAB = 256
DEFAULT_CONTEXT = 256
# share of a single file's (or a plain directory's) bytes held out as the test split
TEST_FRACTION = 0.1
# the split layout: ``train.txt`` / ``test.txt``, raw or gzip'ed, the .gz name also accepted
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt", "train.txt.gz"),
    "test": ("test.txt", "test.txt.gz"),
}
# where ``$ADMMPRUNE_DATA_DIR`` holds the built-in corpus
DEFAULT_CORPUS = "pystdlib"
SUMS_FILE = "SHA256SUMS"

_GZIP_MAGIC = b"\x1f\x8b"
_HEX64 = re.compile(r"\b[0-9a-fA-F]{64}\b")


@dataclass(frozen=True)
class TextCorpus:
    """The bytes of the splits that were asked for (``None`` for the others)."""

    source: Path
    train: bytes | None
    test: bytes | None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stored_and_plain(path: Path) -> tuple[bytes, bytes]:
    """A file's bytes as stored and uncompressed (gzip detected from the content)."""
    try:
        stored = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path} cannot be read: {err}") from None
    if stored[:2] != _GZIP_MAGIC:
        return stored, stored
    try:
        return stored, gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: the gzip stream is truncated or corrupt ({err}); "
                           "replace the file with an intact copy") from None


def read_text_file(path: str | os.PathLike[str],
                   sums: Mapping[str, str] | None = None) -> bytes:
    """The uncompressed bytes of ``path`` (raw or gzip'ed, detected from the content).

    Args:
        path: the file.
        sums: SHA-256 by file name (``sha256sum`` format: of the file as stored); the file is
            checked when its name is listed.

    Raises:
        DatasetError: unreadable, corrupt gzip, or a listed checksum that does not match.
    """
    path = Path(path)
    stored, plain = _stored_and_plain(path)
    expected = (sums or {}).get(path.name)
    if expected is not None and _sha256(stored) != expected.lower():
        raise DatasetError(f"{path}: SHA-256 {_sha256(stored)} does not match {expected} "
                           f"listed in {SUMS_FILE}; the file is corrupt or was changed")
    return plain


def _sums_file(directory: Path) -> dict[str, str]:
    path = directory / SUMS_FILE
    if not path.is_file():
        return {}
    sums: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and _HEX64.fullmatch(parts[0]):
            # sha256sum marks binary mode with '*'; names are relative to the directory
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def split_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of each split's uncompressed bytes as a README table gives them.

    A row counts when its first cell is a split name (``train``/``test``) and one of its
    cells is 64 hex digits, e.g. ``| train | 590 | 9,962,617 | 7325ae...52bf |``.

    Returns:
        ``{split: hex digest}`` for the splits the README lists (empty without a README).
    """
    directory = Path(directory)
    found: dict[str, str] = {}
    for name in ("README.md", "README", "README.txt"):
        path = directory / name
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.lstrip().startswith("|") and cells and cells[0] in SPLIT_FILES:
                digests = [c for c in cells[1:] if _HEX64.fullmatch(c)]
                if digests:
                    found[cells[0]] = digests[0].lower()
        break
    return found


def find_text(data_dir: str | os.PathLike[str] | None) -> Path:
    """The text source: ``data_dir`` (a file or a directory) if given, else
    ``$ADMMPRUNE_DATA_DIR/pystdlib``.

    Raises:
        DatasetError: the named source does not exist, or none is configured.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise DatasetError(f"text source {path} does not exist; pass --data-dir with a "
                               "text file, a directory of text files, or a directory holding "
                               "train.txt and test.txt (raw or .gz)")
        return path
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        path = Path(root).expanduser() / DEFAULT_CORPUS
        if path.is_dir():
            return path
        raise DatasetError(f"${DATA_DIR_ENV}/{DEFAULT_CORPUS} ({path}) does not exist; pass "
                           "--data-dir with a text file or a directory of text files")
    raise DatasetError(f"the text dataset needs a source: pass --data-dir (data_dir:) with a "
                       f"text file or a directory of text files, or set {DATA_DIR_ENV}=DIR "
                       f"where DIR/{DEFAULT_CORPUS} holds train.txt.gz and test.txt.gz")


def _split_file(directory: Path, split: str) -> Path | None:
    for name in SPLIT_FILES[split]:
        if (directory / name).is_file():
            return directory / name
    return None


def _text_files(directory: Path) -> list[Path]:
    """Non-hidden files under ``directory``, sorted by relative path (the checksum list
    excluded)."""
    found: list[str] = []
    for parent, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(parent, directory)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.extend(prefix + n for n in names
                     if not n.startswith(".") and not (prefix == "" and n == SUMS_FILE))
    return [directory / name for name in sorted(found)]


def _join(parts: Sequence[bytes]) -> bytes:
    # pystdlib's convention: each file ends with a newline, files joined by an empty line
    return b"\n".join(p if p.endswith(b"\n") else p + b"\n" for p in parts)


def _held_out(data: bytes, source: Path) -> dict[str, bytes]:
    cut = len(data) - int(len(data) * TEST_FRACTION)
    if cut == len(data) or cut == 0:
        raise DatasetError(f"{source} has {len(data)} bytes, too few to hold out "
                           f"{TEST_FRACTION:.0%} as the test split")
    return {"train": data[:cut], "test": data[cut:]}


def load_text(source: str | os.PathLike[str],
              splits: Sequence[str] = ("train", "test")) -> TextCorpus:
    """Read and verify the splits of ``source`` (see the module docstring for the layouts).

    Args:
        source: a text file, a directory of text files, or a split-layout directory.
        splits: the splits needed; a split layout reads only their files.

    Returns:
        The uncompressed bytes of each split asked for.

    Raises:
        DatasetError: a missing split file, an empty source, a checksum mismatch.
    """
    source = Path(source)
    if source.is_file():
        data = {"train": None, "test": None,
                **_held_out(read_text_file(source), source)}
    elif any(_split_file(source, s) for s in SPLIT_FILES):
        expected = split_checksums(source)
        sums = _sums_file(source)
        data = {"train": None, "test": None}
        for split in splits:
            path = _split_file(source, split)
            if path is None:
                raise DatasetError(f"{source} has no {' or '.join(SPLIT_FILES[split])}: the "
                                   "split layout needs both train.txt and test.txt")
            plain = data[split] = read_text_file(path, sums)
            digest = expected.get(split)
            if digest is not None and _sha256(plain) != digest:
                raise DatasetError(
                    f"{path}: SHA-256 of the uncompressed bytes is {_sha256(plain)}, "
                    f"but {source}'s README gives {digest}; the file is corrupt or not the "
                    "original: replace it with an intact copy")
    elif source.is_dir():
        files = _text_files(source)
        if not files:
            raise DatasetError(f"{source} holds no files; put text files in it")
        sums = _sums_file(source)
        joined = _join([read_text_file(f, sums) for f in files])
        data = {"train": None, "test": None, **_held_out(joined, source)}
    else:
        raise DatasetError(f"{source} is neither a file nor a directory")
    return TextCorpus(source=source, train=data["train"] if "train" in splits else None,
                      test=data["test"] if "test" in splits else None)


def byte_tokens(data: bytes) -> torch.Tensor:
    """One int64 token per byte (vocabulary 256): ready for embeddings and cross-entropy."""
    if not data:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def token_windows(tokens: torch.Tensor, context: int, limit: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``context`` tokens and their next-token targets.

    Args:
        tokens: a 1-D token tensor of length L.
        context: tokens per window T.
        limit: keep only the first ``limit`` windows (train_subset / test_subset).

    Returns:
        ``(x, y)``, both ``[N, T]`` with ``N = (L - 1) // T``: ``x[i] = tokens[i*T:(i+1)*T]``
        and ``y[i] = tokens[i*T+1:(i+1)*T+1]``; views of ``tokens``, nothing is copied.

    Raises:
        DatasetError: fewer than ``context + 1`` tokens.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive int, got {context!r}")
    count = (tokens.numel() - 1) // context
    if count < 1:
        raise DatasetError(f"{tokens.numel()} tokens are too few for one window of context "
                           f"{context} (needs {context + 1}); use more text or a shorter "
                           "context")
    if limit is not None:
        count = min(count, limit)
    span = count * context
    return tokens[:span].view(count, context), tokens[1:span + 1].view(count, context)


def text_context(options: Any) -> int:
    """Tokens per window: the recipe's ``context``, else ``model_args`` ``context`` or
    ``n_positions`` (the model's own length), else :data:`DEFAULT_CONTEXT`."""
    context = getattr(options, "context", None)
    if context is None:
        model_args = getattr(options, "model_args", None) or {}
        context = model_args.get("context", model_args.get("n_positions", DEFAULT_CONTEXT))
    return context


def text_splits(corpus: TextCorpus, options: Any, device: torch.device) -> DataSplits:
    """Windows of ``corpus`` as in-memory :class:`DataSplits`: training windows shuffled by
    (seed, epoch), test windows in order; both in batches of ``batch_size``."""
    context = text_context(options)
    train = test = None
    tokens: dict[str, int] = {}
    if corpus.train is not None:
        x, y = token_windows(byte_tokens(corpus.train), context, options.train_subset)
        tokens["train"] = x.numel()
        train = TensorBatches(x.to(device), y.to(device), options.batch_size, shuffle=True,
                              seed=options.seed)
    if corpus.test is not None:
        x, y = token_windows(byte_tokens(corpus.test), context, options.test_subset)
        tokens["test"] = x.numel()
        test = TensorBatches(x.to(device), y.to(device), options.batch_size, shuffle=False)
    # of the bytes as read (uncompressed, joined): the same text, raw or gzip'ed or moved,
    # gives the same checksums
    checksums = {split: _sha256(data) for split, data in
                 (("train", corpus.train), ("test", corpus.test)) if data is not None}
    return DataSplits(train=train, test=test, num_classes=None,
                      info={"vocab_size": BYTE_VOCAB, "context": context,
                            "input_shape": (context,), "tokens": tokens,
                            "source": str(corpus.source)},
                      checksums=checksums)


@register_dataset("text", "byte tokens of text files in windows of `context` (a file, a "
                          "directory of files, or train.txt/test.txt[.gz]; default "
                          "$ADMMPRUNE_DATA_DIR/pystdlib, SHA-256-checked); in memory",
                  task="language-modeling")
def _text_dataset(options: Any, device: torch.device, splits: Sequence[str]) -> DataSplits:
    corpus = load_text(find_text(options.data_dir), splits)
    return text_splits(corpus, options, device)
