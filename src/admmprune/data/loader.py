"""Streaming mini-batches from a map-style Dataset through ``torch.utils.data.DataLoader``.

Worker processes decode and augment in parallel; the order of every epoch is a permutation
drawn from ``(seed, epoch)`` alone, and a dataset with ``set_epoch`` seeds its augmentation
from (seed, epoch, index), so an epoch is the same whatever the number of workers and
whether the run was interrupted and resumed before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..distributed import shard_bounds
from ..imports import user_code_error
from .errors import DatasetError
from .registry import DataSplits

__all__ = ["batch_count", "epoch_permutation", "EpochSampler", "ShardedBatchSampler",
           "StreamBatches", "NamedItems", "stream_splits", "image_options"]


def check_shard(batch_size: int, rank: int, world: int) -> None:
    """A rank of a world that can split ``batch_size`` evenly (the global batch keeps its
    meaning); ValueError otherwise."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} cannot be split evenly across "
                         f"{world} processes; use a multiple of {world}")


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``n`` examples in ``epoch``: a permutation drawn from a CPU generator
    seeded with ``seed + epoch`` alone, so it is the same on every device and after a
    resume."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator)


def batch_count(n: int, batch_size: int, drop_last: bool, world: int = 1) -> int:
    """Global batches of an epoch of ``n`` examples; split across ``world`` ranks, a last
    batch smaller than the world is dropped (it would leave a rank empty)."""
    count = n // batch_size if drop_last else -(-n // batch_size)
    if world > 1 and not drop_last and 0 < n % batch_size < world:
        count -= 1
    return count


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled by a generator seeded with ``seed + epoch``: the same
    rule as :class:`~admmprune.data.tensors.TensorBatches`, so both give the same order."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(epoch_permutation(self.n, self.seed, self.epoch).tolist())


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s part of every global batch of ``batch_size`` drawn from ``sampler``'s
    order (``distributed.shard_bounds``): the global batches of one process, split."""

    def __init__(self, sampler: EpochSampler, batch_size: int, rank: int, world: int,
                 drop_last: bool = False) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.drop_last = drop_last

    def __len__(self) -> int:
        return batch_count(len(self.sampler), self.batch_size, self.drop_last, self.world)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        for step in range(len(self)):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            yield batch[lo:hi]


class NamedItems(Dataset):
    """A user's dataset whose failing ``__getitem__`` is reported as a DatasetError naming
    ``what`` (the dataset and split), the index, and the user's file and line."""

    def __init__(self, dataset: Dataset, what: str) -> None:
        self.dataset = dataset
        self.what = what

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except DatasetError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's code failed: say where
            message = str(user_code_error(err, f"{self.what}: item {index}"))
            if isinstance(err, IndexError):
                message += (f"; its __len__ says {len(self)} items: make __len__ agree with "
                            "what __getitem__ can read")
            raise DatasetError(message) from None


class StreamBatches:
    """Batches of ``dataset`` like :class:`TensorBatches` (``len``, ``set_epoch``, a new
    epoch per ``iter()``, ``shard``), loaded by ``workers`` processes (0: in this process).
    Per-example augmentation is seeded by (seed, epoch, index), so a rank's part of a
    global batch is augmented as one process would augment it."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                 workers: int = 0, pin_memory: bool = False, drop_last: bool = False,
                 limit: int | None = None, collate_fn: Callable | None = None,
                 name: str | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        # ``limit``: the first N examples only (train_subset / test_subset)
        self.size = len(dataset) if limit is None else min(limit, len(dataset))
        self.sampler = EpochSampler(self.size, shuffle, seed)
        self.workers = workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.collate_fn = collate_fn  # e.g. detection: images stacked, targets kept as a list
        # a user's dataset (``name``: its dataset and split) reports a failing item by index
        self.items: Dataset = dataset if name is None else NamedItems(dataset, name)
        self.epoch = 0
        self.rank, self.world = 0, 1

    @property
    def num_examples(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``."""
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> None:
        """Load only ``rank``'s part of each global batch (``batch_size / world``
        examples), like :meth:`TensorBatches.shard`."""
        check_shard(self.batch_size, rank, world)
        self.rank, self.world = rank, world

    def global_batch_size(self, step: int) -> int:
        """Examples in global batch ``step`` (all ranks together)."""
        return min(self.batch_size, self.size - step * self.batch_size)

    def _sharded(self) -> ShardedBatchSampler:
        return ShardedBatchSampler(self.sampler, self.batch_size, self.rank, self.world,
                                   self.drop_last)

    def __len__(self) -> int:
        return batch_count(self.size, self.batch_size, self.drop_last, self.world)

    def __iter__(self) -> Iterator:
        epoch = self.epoch
        self.epoch += 1
        self.sampler.set_epoch(epoch)
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            # Workers are started per epoch (not persistent), so they receive this epoch.
            set_epoch(epoch)
        common = dict(num_workers=self.workers, pin_memory=self.pin_memory,
                      collate_fn=self.collate_fn, prefetch_factor=4 if self.workers else None)
        if self.world > 1:
            loader = DataLoader(self.items, batch_sampler=self._sharded(), **common)
        else:
            loader = DataLoader(self.items, batch_size=self.batch_size, sampler=self.sampler,
                                drop_last=self.drop_last, **common)
        return iter(loader)


def image_options(options) -> dict:
    """Resize / crop / preprocessing of image datasets from a run's config (Caffe defaults:
    256 then a 227 crop)."""
    crop = options.image_size or 227
    return {"resize": options.resize or max(256, crop), "crop": crop,
            "preprocess": options.preprocess, "seed": options.seed}


def stream_splits(train: Dataset | None, test: Dataset | None, options, device: torch.device,
                  collate_fn: Callable | None = None):
    """:class:`DataSplits` streaming the given datasets: shuffled training batches, test
    batches in file order; pinned memory when the model is on CUDA. ``collate_fn`` builds a
    batch from items (default: stack)."""
    def batches(dataset: Dataset, shuffle: bool, limit: int | None) -> StreamBatches:
        return StreamBatches(dataset, options.batch_size, shuffle=shuffle, seed=options.seed,
                             workers=options.workers, pin_memory=device.type == "cuda",
                             limit=limit, collate_fn=collate_fn)

    some = train if train is not None else test
    return DataSplits(
        train=None if train is None else batches(train, True, options.train_subset),
        test=None if test is None else batches(test, False, options.test_subset),
        num_classes=len(some.classes),
        info={"classes": list(some.classes), "input_shape": (3, options.image_size or 227,
                                                             options.image_size or 227)})
