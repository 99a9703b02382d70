"""Mini-batches over in-memory tensors (MNIST-sized sets, generated data): the whole set
lives on the device and every batch is an index_select, with the same epoch order and
sharding rules as the streaming batches of :mod:`.loader`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..distributed import shard_bounds
from .augment import RandomShift
from .loader import batch_count, check_shard, epoch_permutation
from .registry import DataSplits

__all__ = ["TensorBatches", "tensor_splits"]


class TensorBatches:
    """Mini-batches over in-memory tensors, without DataLoader's per-example overhead.

    Each ``iter()`` starts a new epoch; with ``shuffle`` its order is a permutation drawn from
    a CPU generator seeded with ``seed + epoch``, so epochs differ while a run with the same
    seed repeats exactly (also across devices). Use :meth:`set_epoch` when resuming.

    :meth:`shard` makes this process one of ``world`` data-parallel ranks: it then yields
    its part of every global batch of ``batch_size`` (see ``distributed.shard_bounds``).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transform = transform  # applied to each batch of x (augmentation)
        self.epoch = 0
        self.rank, self.world = 0, 1

    @property
    def num_examples(self) -> int:
        return self.x.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s order."""
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> None:
        """Yield only ``rank``'s part of each global batch (``batch_size / world``
        examples); the global order is the one-process order. Refuses a batch size that
        ``world`` does not divide: the global batch would change meaning."""
        check_shard(self.batch_size, rank, world)
        self.rank, self.world = rank, world

    def global_batch_size(self, step: int) -> int:
        """Examples in global batch ``step`` (all ranks together)."""
        return min(self.batch_size, self.num_examples - step * self.batch_size)

    def __len__(self) -> int:
        return batch_count(self.num_examples, self.batch_size, self.drop_last, self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Not a generator function: the epoch advances when iter() is called, not on the
        # first next(), so bookkeeping does not depend on when consumption starts.
        epoch = self.epoch
        self.epoch += 1
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)
        order = None
        if self.shuffle:
            order = epoch_permutation(self.x.shape[0], self.seed, epoch).to(self.x.device)
        return self._batches(order)

    def _batches(self, order: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(len(self)):
            start = step * self.batch_size
            end = start + self.global_batch_size(step)
            if self.world > 1:
                lo, hi = shard_bounds(end - start, self.rank, self.world)
                if self.transform is None:  # fetch this rank's part only
                    start, end = start + lo, start + hi
            if order is None:  # slices are views: no copy at all
                x, y = self.x[start:end], self.y[start:end]
            else:
                idx = order[start:end]
                x, y = self.x.index_select(0, idx), self.y.index_select(0, idx.to(self.y.device))
            if self.transform is not None:
                x = self.transform(x)
                if self.world > 1:
                    # The augmentation of the global batch, then this rank's part: its random
                    # draws (and the pad value, the batch minimum) are those of one process.
                    x, y = x[lo:hi], y[lo:hi]
            yield x, y


def tensor_splits(data, options, device: torch.device, num_classes: int) -> DataSplits:
    """In-memory splits as :class:`DataSplits`: the whole set is moved to ``device`` once
    (MNIST: 190 MB), which avoids per-batch copies; test batches of 1000. ``data`` holds
    ``train_x, train_y, test_x, test_y`` (a split's tensors may be None: not read)."""
    train = test = None
    if data.train_x is not None:
        transform = RandomShift(options.augment_shift, options.seed) \
            if options.augment_shift > 0 else None
        train = TensorBatches(data.train_x.to(device), data.train_y.to(device),
                              options.batch_size, shuffle=True, seed=options.seed,
                              transform=transform)
    if data.test_x is not None:
        test = TensorBatches(data.test_x.to(device), data.test_y.to(device), 1000,
                             shuffle=False)
    return DataSplits(train=train, test=test, num_classes=num_classes,
                      info={"input_shape": _input_shape(data)})


def _input_shape(data) -> tuple[int, ...]:
    x = data.train_x if data.train_x is not None else data.test_x
    return tuple(x.shape[1:]) if x is not None else (1, 28, 28)
