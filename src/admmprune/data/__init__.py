"""Data sets: MNIST reading, locating, downloading and in-memory batching."""

from admmprune.data.mnist import (
    FASHION_MNIST,
    IDX_SPECS,
    MIRRORS,
    MNIST,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MEAN,
    MNIST_STD,
    DatasetError,
    IDXSpec,
    MNISTData,
    TensorBatches,
    default_cache_dir,
    download_mnist,
    find_mnist,
    load_mnist,
    mnist_loaders,
    read_idx,
)

__all__ = [
    "DatasetError",
    "FASHION_MNIST",
    "IDX_SPECS",
    "IDXSpec",
    "MNIST",
    "MIRRORS",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_STD",
    "MNISTData",
    "TensorBatches",
    "default_cache_dir",
    "download_mnist",
    "find_mnist",
    "load_mnist",
    "mnist_loaders",
    "read_idx",
]

from admmprune.data.synthetic import make_synthetic  # noqa: E402

__all__ += ["make_synthetic"]
