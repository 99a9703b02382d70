"""Language modeling: next-token cross-entropy; test loss, perplexity and bits per byte.

The model maps token windows ``[B, T]`` to logits ``[B, T, V]`` (a tensor, or an object with
``.logits`` such as a Hugging Face ``ModelOutput``); targets are the windows shifted by one
token (:mod:`admmprune.data.text`). The headline metric is bits per byte (``bpb``), which
does not depend on the tokenizer; lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .classification import target_problem
from .registry import Task, register_task

__all__ = ["LanguageModeling", "token_logits", "bits_per_byte"]


def token_logits(output: Any) -> torch.Tensor:
    """The logits ``[..., V]`` of a model's output: the tensor itself or its ``.logits``.

    Raises:
        TypeError: the output is neither.
    """
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"a language model must return logits [B, T, V] (a tensor or an "
                        f"object with .logits), got {type(output).__name__}")
    return logits


def bits_per_byte(nats_per_token: float, bytes_per_token: float = 1.0) -> float:
    """Mean nats per token as bits per byte: ``nats / ln 2 / bytes_per_token``."""
    return nats_per_token / math.log(2) / bytes_per_token


def _flat(output: Any, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = token_logits(output)
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not fit targets "
                         f"{tuple(target.shape)}: expected logits [B, T, V] for targets [B, T]")
    return logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1).long()


@register_task("language-modeling")
class LanguageModeling(Task):
    metric = "bpb"
    metrics = ("bpb", "perplexity")
    labels = {"bpb": "bits per byte", "perplexity": "perplexity",
              "loss": "loss (nats/token)"}
    higher_is_better = False
    percent_metrics = ()  # bits and perplexities, not fractions

    def __init__(self, bytes_per_token: float = 1.0) -> None:
        """Args:
            bytes_per_token: mean text bytes per token (1 for byte tokens), which turns nats
                per token into bits per byte.
        """
        if not bytes_per_token > 0:
            raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")
        self.bytes_per_token = float(bytes_per_token)

    def batch_problem(self, output: Any, target: Any, num_classes: int | None = None
                      ) -> str | None:
        if not isinstance(target, torch.Tensor):
            return f"targets must be token windows [B, T] (a tensor), got {type(target).__name__}"
        try:
            logits, flat = _flat(output, target)
        except (TypeError, ValueError) as err:
            return str(err)
        return target_problem(logits, flat, "token")

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats per token) of a batch."""
        logits, target = _flat(output, target)
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable, *, device: torch.device | str,
                 autocast: Callable[[], Any] | None = None) -> dict[str, float]:
        """Mean cross-entropy per token (``loss``), ``perplexity`` and ``bpb`` over
        ``batches``, every token weighted alike.

        Raises:
            ValueError: ``batches`` is empty or logits do not fit their targets.
        """
        model.eval()
        nats = 0.0
        tokens = 0
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with (autocast or nullcontext)():
                output = model(x)
            logits, target = _flat(output, y)
            nats += float(F.cross_entropy(logits, target, reduction="sum"))
            tokens += target.numel()
        if tokens == 0:
            raise ValueError("evaluation data is empty")
        loss = nats / tokens
        return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
                "bpb": bits_per_byte(loss, self.bytes_per_token)}
