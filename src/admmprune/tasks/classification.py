"""Classification: cross-entropy loss, top-1 and top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data.errors import DatasetError
from .registry import Task, register_task

__all__ = ["Classification", "topk_correct", "target_problem", "check_targets"]

# the label dtypes cross_entropy takes as class indices
_INDEX_DTYPES = (torch.int64, torch.uint8)


def target_problem(logits: Any, target: Any, what: str = "label") -> str | None:
    """Why ``target`` cannot be the class indices of ``logits`` ``[N, C]`` (a sentence),
    or None when it can: integer labels ``[N]`` in ``0..C-1``."""
    if not isinstance(target, torch.Tensor):
        kind = type(target).__name__
        if isinstance(target, (list, tuple)) and target:
            kind = f"a {kind} of {type(target[0]).__name__}"
        return (f"{what}s must be integer class indices (a torch.long tensor), got {kind}: "
                f"give each item's {what} as its index 0..C-1 in __getitem__")
    if target.dtype not in _INDEX_DTYPES:
        return (f"{what}s must be integer class indices of dtype torch.long, got "
                f"{target.dtype}: convert them (e.g. torch.tensor(int({what})) or "
                f"{what}s.long()) in the dataset")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else \
            type(logits).__name__
        return f"classification needs class scores [N, C] from the model, got {shape}"
    if target.shape != logits.shape[:1]:
        return (f"{what}s of shape {tuple(target.shape)} do not fit the model's class "
                f"scores {tuple(logits.shape)}: one {what} per example ([N]) is needed")
    if target.numel():
        low, high = (int(v) for v in torch.aminmax(target))
        classes = logits.shape[1]
        if low < 0 or high >= classes:
            return (f"{what} {high if high >= classes else low} is out of range: the model "
                    f"outputs {classes} class scores ({what}s 0..{classes - 1})")
    return None


def check_targets(logits: Any, target: Any, what: str = "label") -> None:
    """Raise DatasetError with :func:`target_problem`'s sentence when there is one (before
    cross_entropy fails with an index error, or a device-side assert on CUDA)."""
    problem = target_problem(logits, target, what)
    if problem is not None:
        raise DatasetError(problem)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> int:
    """How many rows have their target among the ``k`` largest logits (k capped at the
    number of classes, so top-5 of a 3-class problem is top-3)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == target.unsqueeze(1)).any(dim=1).sum())


@register_task("classification")
class Classification(Task):
    metric = "accuracy"
    metrics = ("accuracy", "top5")
    labels = {"accuracy": "top-1 accuracy", "top5": "top-5 accuracy", "loss": "loss"}
    # outputs are class logits: a teacher's softened logits can be distilled into them
    distillable = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        # training loss only: evaluate() reports the plain cross-entropy, comparable
        # across runs whatever their smoothing
        self.label_smoothing = float(label_smoothing)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_targets(output, target)
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def batch_problem(self, output: Any, target: Any, num_classes: int | None = None
                      ) -> str | None:
        if isinstance(output, torch.Tensor) and output.dim() == 2 and num_classes is not None \
                and output.shape[1] < num_classes:
            return (f"the model outputs {output.shape[1]} class scores but the data has "
                    f"{num_classes} classes: build it with {num_classes} outputs (a factory "
                    "taking num_classes gets it from the data)")
        return target_problem(output, target)

    def train_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float((output.argmax(1) == target).sum())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable, *, device: torch.device | str,
                 autocast: Callable[[], Any] | None = None) -> dict[str, float]:
        """Mean cross-entropy, top-1 (``accuracy``) and top-5 accuracy over ``batches``."""
        model.eval()
        loss_sum = 0.0
        top1 = top5 = seen = 0
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with (autocast or nullcontext)():
                logits = model(x)
            logits = logits.float()
            check_targets(logits, y)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top1 += int((logits.argmax(1) == y).sum())
            top5 += topk_correct(logits, y, 5)
            seen += y.numel()
        if seen == 0:
            raise ValueError("evaluation data is empty")
        return {"loss": loss_sum / seen, "accuracy": top1 / seen, "top5": top5 / seen}
