"""Data sets: a registry (``create_dataset``, ``list_datasets``), MNIST / Fashion-MNIST
(IDX, md5, download, in-memory batches), streaming batches, generated data."""

from admmprune.data.mnist import (
    FASHION_MNIST,
    IDX_SPECS,
    MIRRORS,
    MNIST,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MEAN,
    MNIST_STD,
    IDXSpec,
    MNISTData,
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

from admmprune.data.errors import DatasetError  # noqa: E402
from admmprune.data.loader import EpochSampler, StreamBatches  # noqa: E402
from admmprune.data.registry import (  # noqa: E402
    DataSplits,
    create_dataset,
    list_datasets,
    register_dataset,
)
from admmprune.data.tensors import TensorBatches  # noqa: E402

__all__ += ["DataSplits", "EpochSampler", "StreamBatches", "create_dataset", "list_datasets",
            "register_dataset"]
