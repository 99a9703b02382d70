"""A short training / evaluation loop, used by every phase of the pipeline.

The pruner is not special here: the loop only knows an optional extra loss term
(``penalty``) and an optional hook after each optimizer step (``after_step``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

__all__ = ["NonFiniteLossError", "train_epoch", "evaluate", "make_optimizer", "lr_factor"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training diverged."""


def make_optimizer(params: Iterable[torch.Tensor], name: str, lr: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1) of a phase.

    ``step``: 1 for the first two thirds, 0.1 after (the seed's 4 epochs at 1e-3,
    2 at 1e-4); ``cosine``: half-cosine from 1 to 0.01; ``constant``: 1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return 1.0 if progress < 2 / 3 - 1e-9 else 0.1
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str = "cpu",
    penalty: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
    lr_at: Callable[[float], float] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict:
    """One pass over ``batches`` (at most ``max_steps``); returns loss/accuracy/steps/seconds.

    ``lr_at(fraction_of_epoch_done)`` sets the learning rate before every step.
    Raises ``NonFiniteLossError`` as soon as the loss is NaN/inf, before the step that
    would spread it into the weights.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_steps is not None:
        total = min(total, max_steps) if total is not None else max_steps
    start = time.perf_counter()
    loss_sum = 0.0
    correct = 0
    seen = 0
    steps = 0
    bar = tqdm(batches, total=total, desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True)
    for x, y in bar:
        if max_steps is not None and steps >= max_steps:
            break
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if lr_at is not None:
            _set_lr(optimizer, lr_at(steps / total if total else 0.0))
        logits = model(x)
        task_loss = criterion(logits, y)
        loss = task_loss + penalty() if penalty is not None else task_loss
        if not torch.isfinite(loss):
            bar.close()
            raise NonFiniteLossError(
                f"{desc}: the loss became {float(loss.detach())} at step {steps + 1}; training "
                "diverged. Lower learning_rate (or rho / rho_max during ADMM) and rerun; "
                "the last checkpoint of the run directory is intact."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        steps += 1
        loss_sum += float(task_loss.detach()) * y.numel()
        correct += int((logits.argmax(1) == y).sum())
        seen += y.numel()
        if steps % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    bar.close()
    return {
        "loss": loss_sum / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "steps": steps,
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
) -> dict:
    """Mean cross-entropy and accuracy over ``batches``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = 0.0
    correct = 0
    seen = 0
    for x, y in batches:
        x = x.to(device)
        y = y.to(device)
        logits = model(x)
        loss_sum += float(criterion(logits, y))
        correct += int((logits.argmax(1) == y).sum())
        seen += y.numel()
    if seen == 0:
        raise ValueError("evaluation data is empty")
    return {"loss": loss_sum / seen, "accuracy": correct / seen}
