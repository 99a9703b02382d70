"""How much the model's loss cares about each output of each pruned layer: the mean squared
gradient of the calibration loss with respect to the layer's outputs (the diagonal of the
empirical Fisher in output space).

A layer-wise reconstruction error ``‖ΔW X‖²`` counts every output alike, and so cannot be
compared between layers: an error in a query projection and the same error in an MLP output
move the loss by different amounts. To second order around a trained model (where the mean
gradient is about zero) the loss grows by about ``½ Σ_i G_i · ΔW_i H ΔW_iᵀ`` when layer
``y = W x`` changes by ``ΔW``, with ``H = Σ x xᵀ`` over the calibration tokens and ``G_i`` the
mean of ``(∂loss/∂y_i)²`` per token (outputs and inputs taken as independent, as K-FAC
does). :func:`output_sensitivities` measures ``G``; :func:`weighted_error` is that loss
increase, the currency in which a global allocation compares layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

import torch
from torch import nn

from .errors import OneShotError

__all__ = ["MICRO_BATCH", "output_sensitivities", "weighted_error", "next_token_loss"]

#: sequences per backward pass: autograd holds every activation of the slice, ~20 MB per
#: sequence of 128 tokens on the 256-wide reference GPT (a batch of 16 peaked 340 MB)
MICRO_BATCH = 4


def next_token_loss(output: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from the logits of
    ``tokens[:, :-1]`` (a causal LM's own objective; ``output`` a tensor or ``.logits``)."""
    logits = getattr(output, "logits", output)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       tokens[:, 1:].reshape(-1).long())


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def output_sensitivities(model: nn.Module, layers: Sequence[tuple[nn.Module, int]],
                         batches: Iterable, *,
                         loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                         max_batches: int | None = None,
                         device: torch.device | str | None = None,
                         micro_batch: int | None = MICRO_BATCH) -> list[torch.Tensor]:
    """``G``: the mean squared gradient of the loss per output feature of each layer.

    Args:
        model: the dense model (its gradients are left as they were: None).
        layers: ``(module, output axis size)`` pairs; the module's output is ``[..., out]``.
        batches: token tensors ``[B, T]`` or ``(x, y)`` pairs.
        loss_fn: ``loss_fn(model(x), y)`` (``y = x`` for token batches); default: next-token
            cross-entropy (:func:`next_token_loss` on token batches; on pairs, ``y`` holds
            the next tokens already, as the project's text windows do).
        max_batches: use at most this many batches.
        device: where batches go (default: the model's first parameter's).
        micro_batch: run the backward pass on at most this many sequences at a time (None:
            whole batches). Each slice's loss is scaled by its share of the batch, so the
            per-token gradients, and ``G``, are those of the whole batch's mean loss (for a
            loss that is a mean over sequences); only the memory held by autograd shrinks.

    Returns:
        One float64 vector of length ``out`` per layer, on the CPU: the sum over batches of
        the squared per-token gradients of the batch-mean loss, divided by the batches.

    Raises:
        OneShotError: no batch, a loss that is not finite, a layer the loss never reached,
            or a ``micro_batch`` below 1.
    """
    if micro_batch is not None and micro_batch < 1:
        raise OneShotError(f"micro_batch must be at least 1 sequence, got {micro_batch}")
    if device is None:
        device = next(model.parameters()).device
    sums: list[torch.Tensor | None] = [None] * len(layers)

    def hook_for(index: int, size: int):
        def accumulate(g: torch.Tensor) -> None:
            value = g.detach().double().reshape(-1, size).pow(2).sum(0).cpu()
            previous = sums[index]
            sums[index] = value if previous is None else previous + value

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(accumulate)
        return hook

    handles = [module.register_forward_hook(hook_for(i, size))
               for i, (module, size) in enumerate(layers)]
    was_training = model.training
    saved = [(p, p.requires_grad) for p in model.parameters()]
    seen = 0
    try:
        model.eval()
        for p, _ in saved:  # gradients flow to the outputs, not into parameter .grad
            p.requires_grad_(False)
        for batch in islice(batches, max_batches):
            x, y = _split(batch)
            size = x.shape[0]
            step = size if micro_batch is None else min(micro_batch, size)
            for start in range(0, size, step):
                part_x = x[start:start + step].to(device)
                part_y = None if y is None else y[start:start + step].to(device)
                with torch.enable_grad():
                    # the embedding output needs a gradient, so every layer output gets one
                    output = _forward_with_grad(model, part_x)
                    loss = _loss(output, part_x, part_y, loss_fn)
                    if not torch.isfinite(loss):
                        raise OneShotError(f"the calibration loss is {loss.item()}: the model "
                                           "or its inputs hold NaN/inf")
                    # a slice's mean loss weighted by its share of the batch: the gradients
                    # are the whole batch's mean loss's
                    (loss * (part_x.shape[0] / size)).backward()
                del output, loss
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)
    if seen == 0:
        raise OneShotError("no calibration batch: the batches are empty")
    missing = [i for i, s in enumerate(sums) if s is None]
    if missing:
        raise OneShotError(f"the loss never reached layers {missing}: they do not feed the "
                           "model's output")
    return [s / seen for s in sums if s is not None]


def _loss(output: Any, x: torch.Tensor, y: torch.Tensor | None,
          loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    if loss_fn is not None:
        return loss_fn(output, x if y is None else y)
    if y is None:
        return next_token_loss(output, x)
    # (x, y) windows whose targets are already the next tokens (admmprune.data.text)
    logits = getattr(output, "logits", output)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       y.reshape(-1).long())


def _forward_with_grad(model: nn.Module, x: torch.Tensor) -> Any:
    """Run ``model`` so that autograd tracks its activations although no parameter needs a
    gradient: the input embedding's output is made to require one."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) \
        else next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is None:
        if not torch.is_floating_point(x):
            raise OneShotError("sensitivities need a differentiable input: a float input, or "
                               "an nn.Embedding the token ids go through")
        return model(x.requires_grad_(True))
    handle = embedding.register_forward_hook(lambda m, i, out: out.requires_grad_(True))
    try:
        return model(x)
    finally:
        handle.remove()


def weighted_error(delta: torch.Tensor, gram: torch.Tensor, sensitivity: torch.Tensor
                   ) -> float:
    """``½ Σ_i G_i · ΔW_i H ΔW_iᵀ``: the loss increase a change ``delta`` ``[out, in]`` of a
    layer is expected to cause, with ``H`` its inputs' ``XᵀX`` and ``G`` its outputs'
    sensitivities (:func:`output_sensitivities`)."""
    d = delta.double()
    per_row = ((d @ gram.double()) * d).sum(1)
    return 0.5 * float((sensitivity.double().to(per_row.device) * per_row).sum())
