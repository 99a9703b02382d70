"""A short training / evaluation loop, used by every phase of the pipeline.

The pruner is not special here: the loop only knows an optional extra loss term
(``penalty``) and an optional hook after each optimizer step (``after_step``). The task
(classification, detection) owns the loss and the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .distill import Distillation
from .tasks import Task, create_task

__all__ = ["NonFiniteLossError", "train_epoch", "evaluate", "make_optimizer", "lr_factor",
           "autocast_for", "to_device"]


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


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Tensors (also inside lists, tuples and dicts: detection targets) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _count(target: Any, x: torch.Tensor) -> int:
    return target.numel() if isinstance(target, torch.Tensor) and target.dim() == 1 \
        else x.shape[0]


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(amp: str, device: torch.device | str) -> Callable[[], Any] | None:
    """A factory of autocast contexts for ``amp`` (off, bf16, fp16) on ``device``, or None."""
    if amp == "off":
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be off, bf16 or fp16, got {amp!r}")
    device_type = torch.device(device).type
    if amp == "fp16" and device_type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; use amp bf16 on the CPU (or off)")
    return lambda: torch.autocast(device_type, dtype=AMP_DTYPES[amp])


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    task: Task | None = None,
    device: torch.device | str = "cpu",
    penalty: Callable[[], torch.Tensor] | None = None,
    penalty_gradients: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
    lr_at: Callable[[float], float] | None = None,
    desc: str = "train",
    progress: bool = True,
    amp: str = "off",
    accumulate: int = 1,
    loss_weight: Callable[[int, int], float] | None = None,
    distill: Distillation | None = None,
) -> dict:
    """One pass over ``batches`` (at most ``max_steps`` mini-batches); returns the mean task
    loss, the task's training metrics (classification: ``accuracy``), steps, seconds,
    examples and examples per second.

    ``task`` (default: classification) gives the loss. ``accumulate`` mini-batches make one
    optimizer step (gradient accumulation: an effective batch ``accumulate`` times larger);
    ``penalty`` and ``after_step`` act once per optimizer step. ``penalty_gradients`` is the
    other form of a penalty: called once per optimizer step after the last backward pass
    (after the DDP all-reduce and the AMP unscale), it adds the penalty's gradient to
    ``.grad`` (``ADMMPruner.add_penalty_gradients``; faster than a penalty node in the
    loss, ``benchmarks/penalty_form.py``). ``amp`` runs the forward pass
    in bf16/fp16 (fp16 with a gradient scaler, CUDA only); the penalty stays in float32.
    ``lr_at(fraction_of_epoch_done)`` sets the learning rate before every optimizer step.
    Raises ``NonFiniteLossError`` as soon as the loss is NaN/inf, before the step that would
    spread it into the weights.

    Data-parallel training: ``model`` may be a ``DistributedDataParallel`` wrapper (gradients
    are then averaged across ranks only at each optimizer step: ``no_sync`` while
    accumulating), and ``loss_weight(step, local_examples)`` scales the task loss of batch
    ``step`` so that the average over ranks is the mean over the global batch also when
    the ranks' parts differ in size (the last batch of an epoch).

    ``distill`` mixes in the soft loss of a frozen teacher (:mod:`admmprune.distill`): the
    loss minimised is ``(1 - w) · task loss + w · soft loss``; the mean soft loss is
    returned as ``distill_loss`` (``loss`` stays the task loss).
    """
    task = task or _default_task()
    model.train()
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_steps is not None:
        total = min(total, max_steps) if total is not None else max_steps
    autocast = autocast_for(amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    start = time.perf_counter()
    loss_sum = soft_sum = 0.0
    sums: dict[str, float] = {}
    seen = steps = 0
    bar = tqdm(batches, total=total, desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True, unit="batch")
    optimizer.zero_grad(set_to_none=True)
    for x, y in bar:
        if max_steps is not None and steps >= max_steps:
            break
        x = to_device(x, device)
        y = to_device(y, device)
        last_micro = (steps + 1) % accumulate == 0 or steps + 1 == total
        if lr_at is not None and steps % accumulate == 0:
            _set_lr(optimizer, lr_at(steps / total if total else 0.0))
        # DDP: no gradient all-reduce for micro-batches that do not end an optimizer step
        sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with (autocast or nullcontext)():
                output = model(x)
                task_loss = task.loss(output, y)
                objective = task_loss
                if distill is not None:
                    objective, soft = distill.loss(x, task_loss, output)
                    soft_sum += float(soft) * _count(y, x)
            # The task loss is averaged over the accumulated mini-batches; the penalty, a
            # function of the weights alone, counts once per optimizer step.
            loss = objective / accumulate if accumulate > 1 else objective
            weight = 1.0 if loss_weight is None else loss_weight(steps, _count(y, x))
            if weight != 1.0:
                loss = loss * weight
            if penalty is not None and last_micro:
                loss = loss + penalty()
            if not torch.isfinite(loss):
                bar.close()
                raise NonFiniteLossError(
                    f"{desc}: the loss became {float(loss.detach())} at step {steps + 1}; "
                    "training diverged. Lower learning_rate (or rho / rho_max during ADMM) "
                    "and rerun; the last checkpoint of the run directory is intact."
                )
            (scaler.scale(loss) if scaler else loss).backward()
        if last_micro:
            if penalty_gradients is not None:
                if scaler:
                    scaler.unscale_(optimizer)  # the term is added unscaled
                penalty_gradients()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()
        steps += 1
        n = _count(y, x)
        loss_sum += float(task_loss.detach()) * n
        with torch.no_grad():  # outputs may be a tensor or a list of heads (detection)
            for key, value in task.train_sums(output, y).items():
                sums[key] = sums.get(key, 0.0) + value
        seen += n
        if steps % 20 == 0:
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", **{k: f"{v / seen:.4f}" for k, v in
                                                              sums.items()},
                            ex_s=f"{rate:.0f}")
    bar.close()
    seconds = time.perf_counter() - start
    return {
        "loss": loss_sum / max(seen, 1),
        **{k: v / max(seen, 1) for k, v in sums.items()},
        **({"distill_loss": soft_sum / max(seen, 1)} if distill is not None else {}),
        "steps": steps,
        "seconds": seconds,
        "examples": seen,
        "examples_per_second": seen / seconds if seconds > 0 else 0.0,
    }


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    *,
    device: torch.device | str = "cpu",
    task: Task | None = None,
    amp: str = "off",
) -> dict:
    """The task's metrics over ``batches`` (classification: loss, accuracy = top-1, top5)."""
    return (task or _default_task()).evaluate(model, batches, device=device,
                                              autocast=autocast_for(amp, device))


def _default_task() -> Task:
    return create_task("classification")
