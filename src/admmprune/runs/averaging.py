"""Weight averaging over the last epochs of the final masked retraining.

A small pruned network's test accuracy moves by a few hundredths of a point from one
retraining epoch to the next, and a run reports whichever epoch came last. The mean of the
last epochs' weights (stochastic weight averaging, Izmailov et al. 2018) sits in a flatter
region and is steadier. Pruned entries are zero after every epoch, so they are zero in the
mean: the masks hold exactly. The running mean is ``torch.optim.swa_utils.AveragedModel``'s;
BatchNorm statistics are recomputed for the averaged weights with ``swa_utils.update_bn``,
since the running statistics of the last epoch belong to other weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from .. import distributed

__all__ = ["RetrainingAverage", "has_batch_norm"]


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in model.modules())


class RetrainingAverage:
    """Running mean of the model's parameters after each of the last ``epochs`` of
    ``total`` retraining epochs; ``apply`` puts it into the model."""

    def __init__(self, model: nn.Module, epochs: int, total: int) -> None:
        if not 1 <= epochs <= total:
            raise ValueError(f"cannot average the last {epochs} of {total} epochs")
        self.epochs, self.total = epochs, total
        self.first = total - epochs  # 0-based index of the first averaged epoch
        self._mean = AveragedModel(model)

    @property
    def count(self) -> int:
        return int(self._mean.n_averaged)

    def covers(self, epoch: int) -> bool:
        """Is 0-based retraining epoch ``epoch`` one of the averaged ones?"""
        return self.first <= epoch < self.total

    def update(self, model: nn.Module) -> None:
        self._mean.update_parameters(model)

    def apply(self, model: nn.Module, batches: Iterable, device: torch.device) -> None:
        """Copy the mean into ``model``; then refresh its BatchNorm statistics with one pass
        over ``batches`` (tuples whose first item is the input), identical on every rank."""
        if self.count == 0:
            raise RuntimeError("no epoch has been averaged yet")
        with torch.no_grad():
            for mine, mean in zip(model.parameters(), self._mean.module.parameters(),
                                  strict=True):
                mine.copy_(mean)
        if has_batch_norm(model):
            update_bn(batches, model, device)
            if distributed.world_size() > 1:
                # each rank saw its own shard: rank 0's statistics are everybody's
                distributed.broadcast_tensors(list(model.buffers()))

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "total": self.total,
                "mean": self._mean.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if (state["epochs"], state["total"]) != (self.epochs, self.total):
            raise ValueError(f"the checkpoint averages the last {state['epochs']} of "
                             f"{state['total']} epochs, not {self.epochs} of {self.total}")
        self._mean.load_state_dict(state["mean"])
