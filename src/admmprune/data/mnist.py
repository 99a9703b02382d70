"""MNIST and Fashion-MNIST without torchvision: IDX reading, locating, downloading and
in-memory batching.

Both sets use the same four IDX file names; an :class:`IDXSpec` says which set is meant
(its checksums, mirrors, folder names and normalisation), so a folder holding the other set
fails the md5 check with a clear message instead of training on the wrong data.

The four IDX files may be raw or gzipped (detected from the content, not the name) and are
always decompressed in memory: the data directory may be shared and read-only, so nothing is
ever written next to the source files. Integrity is checked with the md5 of the uncompressed
bytes, which is the same whether a copy was re-gzipped or not.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import RandomShift
from .errors import DatasetError
from .registry import register_dataset
from .tensors import TensorBatches, tensor_splits

__all__ = [
    "DatasetError",
    "IDXSpec",
    "MNIST",
    "FASHION_MNIST",
    "IDX_SPECS",
    "MNIST_FILES",
    "MNIST_MD5",
    "MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "MNISTData",
    "TensorBatches",
    "read_idx",
    "find_mnist",
    "default_cache_dir",
    "download_mnist",
    "load_mnist",
    "mnist_loaders",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "ADMMPRUNE_DATA_DIR"
CACHE_DIR_ENV = "ADMMPRUNE_CACHE_DIR"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# md5 of the *uncompressed* files, so re-gzipped copies still verify.
MNIST_MD5: dict[str, str] = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

# yann.lecun.com is no longer reliable (403s), so it is not listed.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class IDXSpec:
    """One IDX image set: what its files must hash to and where they may lie."""

    name: str                       # registry name and cache folder: mnist, fashion-mnist
    title: str                      # for messages
    md5: Mapping[str, str]          # of the uncompressed files, by file name
    mirrors: tuple[str, ...]
    folders: tuple[str, ...]        # sub-folders of a data directory that may hold the files
    mean: float
    std: float
    system_dirs: tuple[str, ...] = ()  # searched after the cache (a distribution's package)


MNIST = IDXSpec(
    name="mnist", title="MNIST", md5=MNIST_MD5, mirrors=MIRRORS,
    folders=("mnist", "MNIST/raw"), mean=MNIST_MEAN, std=MNIST_STD)

# Zalando's Fashion-MNIST; Debian's dataset-fashion-mnist re-gzips the files, which is why
# every md5 here is of the uncompressed bytes.
FASHION_MNIST = IDXSpec(
    name="fashion-mnist", title="Fashion-MNIST",
    md5={
        TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
        TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
        TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    folders=("fashion-mnist", "FashionMNIST/raw"), mean=0.2860, std=0.3530,
    system_dirs=("/usr/share/datasets/fashion-mnist",))

IDX_SPECS: dict[str, IDXSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}

_GZIP_MAGIC = b"\x1f\x8b"
_FIX_HINT = (
    "Delete the file and download it again, or point --data-dir / "
    f"{DATA_DIR_ENV} at an intact copy."
)


def _local_copy_hint(spec: IDXSpec) -> str:
    folders = " and ".join(f"DIR/{f}/" for f in spec.folders)
    return (f"Pass --data-dir DIR or set the environment variable {DATA_DIR_ENV}=DIR, where "
            f"DIR holds the {spec.title} files {', '.join(MNIST_FILES)} (raw or .gz; {folders}"
            " are also accepted).")

# IDX type codes; the format stores every multi-byte value big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------- IDX reading


def _read_uncompressed(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        # A download cut short is the usual cause: gzip reports it as EOFError.
        raise DatasetError(
            f"{path}: the gzip stream is truncated or corrupt ({exc}). {_FIX_HINT}"
        ) from exc


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    def fail(what: str) -> DatasetError:
        return DatasetError(f"{path} is not a valid IDX file: {what}. {_FIX_HINT}")

    if len(data) < 4:
        raise fail(f"only {len(data)} bytes, shorter than the 4-byte magic number")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise fail(
            f"bad magic number 0x{data[:4].hex()} (expected 0x0000, a type code in "
            f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and a dimension count >= 1)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise fail(
            f"the header declares {ndim} dimensions but the file ends after {len(data)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    # Python ints: prod(dims) * itemsize must not overflow for a corrupt header.
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        kind = "truncated" if got < expected else "has trailing bytes"
        raise fail(
            f"{kind}: dims {dims} of {dtype.itemsize}-byte items need {expected} payload "
            f"bytes, found {got}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header)
    # Copy to native byte order: a frombuffer view over bytes is read-only, and torch
    # warns on (and cannot own) non-writable or big-endian arrays.
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by content) into a native-endian array.

    Raises :class:`DatasetError` when the file is truncated, has a bad magic number or
    its payload length does not match the dimensions in the header.
    """
    path = Path(path)
    return _parse_idx(_read_uncompressed(path), path)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- locating


def default_cache_dir(spec: IDXSpec = MNIST) -> Path:
    """Where downloads go: ``$ADMMPRUNE_CACHE_DIR/NAME``, else ``~/.cache/admmprune/NAME``."""
    root = os.environ.get(CACHE_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "admmprune"
    return base / spec.name


def _file_in(directory: Path, name: str) -> Path | None:
    # Prefer the raw file: it needs no decompression.
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds_idx_set(directory: Path, names: Sequence[str] = MNIST_FILES) -> bool:
    return all(_file_in(directory, name) is not None for name in names)


def _layouts(directory: Path, spec: IDXSpec) -> list[Path]:
    return [directory, *(directory / folder for folder in spec.folders)]


def _search(data_dir: str | os.PathLike[str] | None, spec: IDXSpec = MNIST,
            names: Sequence[str] = MNIST_FILES) -> tuple[Path | None, str | None]:
    """Return (directory found, None) or (None, source that was configured but empty)."""
    sources: list[tuple[str, Path]] = []
    if data_dir is not None:
        sources.append(("--data-dir / data_dir", Path(data_dir).expanduser()))
    elif os.environ.get(DATA_DIR_ENV):
        sources.append((f"${DATA_DIR_ENV}", Path(os.environ[DATA_DIR_ENV]).expanduser()))
    for label, directory in sources:
        # The named folder itself may hold the *other* IDX set under the same file names;
        # prefer the set's own sub-folder (DATA/fashion-mnist next to DATA/mnist).
        candidates = _layouts(directory, spec)
        for candidate in candidates[1:] + candidates[:1]:
            if _holds_idx_set(candidate, names):
                return candidate, None
        # A location the user named explicitly must not silently fall through to the cache
        # (or a download): a typo would otherwise go unnoticed.
        return None, f"{label} = {directory}"
    for root in (default_cache_dir(spec), *map(Path, spec.system_dirs)):
        for candidate in _layouts(root, spec):
            if _holds_idx_set(candidate, names):
                return candidate, None
    return None, None


def find_mnist(data_dir: str | os.PathLike[str] | None = None, spec: IDXSpec = MNIST) -> Path:
    """Return the directory holding the four IDX files (raw or ``.gz``) of ``spec``.

    The first configured location decides: ``data_dir`` if given, else ``$ADMMPRUNE_DATA_DIR``
    if set; if that location lacks the files this is an error rather than a fall-through.
    With neither configured, the download cache (:func:`default_cache_dir`) is used, then the
    spec's system folders (Debian's /usr/share/datasets/fashion-mnist). For each location D,
    the files may lie in D/mnist or D/MNIST/raw (torchvision's layout; fashion-mnist and
    FashionMNIST/raw for Fashion-MNIST), or in D itself.
    """
    found, configured = _search(data_dir, spec)
    if found is not None:
        return found
    if configured is not None:
        subfolders = " or ".join(f"{f}/" for f in spec.folders)
        raise DatasetError(
            f"{spec.title} not found in {configured} (nor in its {subfolders} "
            f"subdirectory). {_local_copy_hint(spec)}"
        )
    raise DatasetError(
        f"{spec.title} not found: {DATA_DIR_ENV} is not set and the cache "
        f"{default_cache_dir(spec)} holds no copy. {_local_copy_hint(spec)} Or allow the "
        "download."
    )


# --------------------------------------------------------------------------- downloading


def _fetch(url: str, dest: Path, timeout: float) -> Path:
    # Some hosts reject urllib's default User-Agent.
    request = urllib.request.Request(url, headers={"User-Agent": "admmprune"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as r:
            while chunk := r.read(1 << 20):
                out.write(chunk)
    except BaseException:
        os.unlink(tmp_name)
        raise
    return Path(tmp_name)


def download_mnist(
    dest: str | os.PathLike[str],
    mirrors: Sequence[str] | None = None,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    spec: IDXSpec = MNIST,
) -> Path:
    """Download the four ``.gz`` files into ``dest`` and return ``dest``.

    Each file is tried on every mirror in turn; a copy is only renamed into place (atomically)
    after the md5 of its decompressed content matches ``checksums``. Files already in ``dest``
    with the right md5 are kept. Raises :class:`DatasetError` when a file fails on every mirror.
    """
    mirrors = spec.mirrors if mirrors is None else mirrors
    checksums = spec.md5 if checksums is None else checksums
    if isinstance(mirrors, str):
        raise TypeError("mirrors must be a sequence of base URLs, not a single string")
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        final = dest / f"{name}.gz"
        expected = checksums.get(name)
        if final.is_file():
            try:
                if expected is None or _md5(_read_uncompressed(final)) == expected:
                    continue
            except DatasetError:
                pass  # a corrupt leftover: fetch it again
        errors: list[str] = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            log.info("downloading %s", url)
            try:
                tmp = _fetch(url, final, timeout)
            except (OSError, ValueError) as exc:  # URLError/HTTPError are OSErrors
                errors.append(f"{url}: {exc}")
                continue
            try:
                data = _read_uncompressed(tmp)
                _parse_idx(data, tmp)
                got = _md5(data)
                if expected is not None and got != expected:
                    raise DatasetError(f"md5 {got}, expected {expected}")
            except DatasetError as exc:
                tmp.unlink()
                errors.append(f"{url}: corrupt download ({exc})")
                continue
            os.replace(tmp, final)
            break
        else:
            tried = "\n  ".join(errors) if errors else "(no mirrors given)"
            raise DatasetError(
                f"{spec.title} could not be downloaded: {name}.gz failed on every mirror:\n"
                f"  {tried}\n{_local_copy_hint(spec)}"
            )
    return dest


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class MNISTData:
    """Normalised images (N, 1, 28, 28) float32 and labels (N,) int64; a split that was not
    asked for is None."""

    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None

    def __repr__(self) -> str:  # the default would print tensor contents
        def shape(t: torch.Tensor | None) -> object:
            return None if t is None else tuple(t.shape)

        return (
            f"MNISTData(train_x={shape(self.train_x)}, train_y={shape(self.train_y)}"
            f", test_x={shape(self.test_x)}, test_y={shape(self.test_y)})"
        )


def _load_checked(
    directory: Path, name: str, checksums: Mapping[str, str], spec: IDXSpec
) -> tuple[Path, np.ndarray]:
    path = _file_in(directory, name)
    if path is None:  # vanished between find and load
        raise DatasetError(f"{directory / name}[.gz] does not exist. {_local_copy_hint(spec)}")
    data = _read_uncompressed(path)
    expected = checksums.get(name)
    if expected is not None:
        got = _md5(data)
        if got != expected:
            raise DatasetError(
                f"{path}: md5 of the uncompressed content is {got}, expected {expected}; "
                f"the file is corrupt or not the original {spec.title}. {_FIX_HINT}"
            )
    return path, _parse_idx(data, path)


def _check_subset(n: int | None, what: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{what} must be a positive int or None, got {n!r}")


def _images(path: Path, array: np.ndarray, n: int | None, spec: IDXSpec) -> torch.Tensor:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (28, 28):
        raise DatasetError(
            f"{path}: expected uint8 images of shape (N, 28, 28), got {array.dtype} "
            f"{array.shape}. {_FIX_HINT}"
        )
    # Convert only the kept slice: a 1000-example subset costs almost nothing.
    x = torch.from_numpy(array[:n]).to(torch.float32)
    x.div_(255.0).sub_(spec.mean).div_(spec.std)
    return x.unsqueeze(1)


def _labels(path: Path, array: np.ndarray, n: int | None, count: int) -> torch.Tensor:
    if array.dtype != np.uint8 or array.ndim != 1 or array.shape[0] != count:
        raise DatasetError(
            f"{path}: expected {count} uint8 labels to match the images, got "
            f"{array.dtype} {array.shape}. {_FIX_HINT}"
        )
    if array.size and int(array.max()) > 9:
        raise DatasetError(f"{path}: labels outside 0..9. {_FIX_HINT}")
    return torch.from_numpy(array[:n]).to(torch.int64)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    checksums: Mapping[str, str] | None = None,
    mirrors: Sequence[str] | None = None,
    spec: IDXSpec = MNIST,
    splits: Sequence[str] = ("train", "test"),
) -> MNISTData:
    """Locate (see :func:`find_mnist`), verify and load ``spec`` (MNIST by default, or
    :data:`FASHION_MNIST`) as normalised tensors.

    When no location is configured and the cache is empty, the files are downloaded into
    :func:`default_cache_dir` if ``download`` is true. ``train_subset`` / ``test_subset`` keep
    the first n examples (n larger than the set keeps all); the md5 is still checked on the full
    file. Names absent from ``checksums`` are not checked. Only the files of ``splits`` are
    looked for and read (an evaluation needs no training files).
    """
    _check_subset(train_subset, "train_subset")
    _check_subset(test_subset, "test_subset")
    checksums = spec.md5 if checksums is None else checksums
    names = [n for n in MNIST_FILES if ("train" in splits and n.startswith("train")) or
             ("test" in splits and n.startswith("t10k"))]
    found, configured = _search(data_dir, spec, names)
    if found is None:
        if configured is not None or not download:
            find_mnist(data_dir, spec)  # raises the right message
        found = download_mnist(default_cache_dir(spec), mirrors=mirrors, checksums=checksums,
                               spec=spec)

    # All files are verified before any conversion, so a bad file fails fast and clearly.
    loaded = {name: _load_checked(found, name, checksums, spec) for name in names}
    tensors: dict[str, torch.Tensor | None] = {}
    for split, images, labels, subset in (("train", TRAIN_IMAGES, TRAIN_LABELS, train_subset),
                                          ("test", TEST_IMAGES, TEST_LABELS, test_subset)):
        if split not in splits:
            tensors[f"{split}_x"] = tensors[f"{split}_y"] = None
            continue
        tensors[f"{split}_x"] = _images(*loaded[images], subset, spec)
        tensors[f"{split}_y"] = _labels(*loaded[labels], subset, loaded[images][1].shape[0])
    return MNISTData(**tensors)


def mnist_loaders(
    data: MNISTData, batch_size: int, seed: int, augment_shift: int = 0
) -> tuple[TensorBatches, TensorBatches]:
    """Shuffled training batches (randomly shifted by up to ``augment_shift`` pixels) and
    unshuffled test batches of 1000."""
    transform = RandomShift(augment_shift, seed) if augment_shift > 0 else None
    train = TensorBatches(data.train_x, data.train_y, batch_size, shuffle=True, seed=seed,
                          transform=transform)
    test = TensorBatches(data.test_x, data.test_y, 1000, shuffle=False)
    return train, test


def _register_idx(spec: IDXSpec, description: str) -> None:
    @register_dataset(spec.name, description)
    def factory(options, device: torch.device, splits: Sequence[str]):
        data = load_mnist(options.data_dir, download=options.download,
                          train_subset=options.train_subset, test_subset=options.test_subset,
                          spec=spec, splits=splits)
        return tensor_splits(data, options, device, num_classes=10)


_register_idx(MNIST, "MNIST digits, 60k/10k 28x28 (IDX files, md5-checked, downloaded if "
                     "absent); in memory")
_register_idx(FASHION_MNIST, "Fashion-MNIST clothing, 60k/10k 28x28 (IDX files, md5-checked; "
                             "Debian: dataset-fashion-mnist); in memory")
