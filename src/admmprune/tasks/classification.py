"""Classification: cross-entropy loss, top-1 and top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .registry import Task, register_task

__all__ = ["Classification", "topk_correct"]


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
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

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
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top1 += int((logits.argmax(1) == y).sum())
            top5 += topk_correct(logits, y, 5)
            seen += y.numel()
        if seen == 0:
            raise ValueError("evaluation data is empty")
        return {"loss": loss_sum / seen, "accuracy": top1 / seen, "top5": top5 / seen}
