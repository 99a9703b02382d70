"""The pipeline's block-by-block one-shot stage (``pruning: blockwise``): the engine of
``admmprune oneshot`` (:func:`~admmprune.posttraining.prune_oneshot`) run on the run's model
with calibration batches of the training split, its masks then installed in the pruner so
that masked retraining keeps them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..masks import LayerSparsity
from ..posttraining import OneShotError, block_layers, find_blocks, prune_oneshot
from ..pruner import ADMMPruner
from .config import Config

__all__ = ["blockwise_prune", "check_blockwise"]


def check_blockwise(model: nn.Module, config: Config) -> None:
    """Whether the block engine can prune every tensor ``config`` selects in ``model``:
    blocks it recognises, holding every selected tensor, each the weight of an nn.Linear or
    HF Conv1D (asked before anything trains).

    Raises:
        OneShotError: what the engine would refuse (BlockError: no blocks found).
    """
    block_layers(model, find_blocks(model), config.include, config.exclude,
                 config.blockwise_method)


def blockwise_prune(model: nn.Module, pruner: ADMMPruner, config: Config, batches: Iterable,
                    device: torch.device,
                    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
                    ) -> list[LayerSparsity]:
    """Hard prune ``model`` block by block by ``config.blockwise_method`` under
    ``config.allocation`` (N:M for structure nm), from the first ``calibration_batches`` of
    ``batches``, and install the resulting masks in ``pruner``.

    Args:
        model: the dense model, pruned in place (weights reconstructed by admm/sparsegpt).
        pruner: the run's pruner over the same selection; it gets the engine's masks.
        config: the run's config (pruning blockwise).
        batches: training batches ``(x, y)``.
        device: where the batches go.
        loss_fn: ``loss_fn(model(x), y)``, the loss whose gradients weigh the layers'
            outputs in the global allocation (the run's task loss).

    Returns:
        The per-layer sparsity after pruning.

    Raises:
        OneShotError: what the engine refuses, or a selection that differs from the
            pruner's.
    """
    nm = (config.nm_n, config.nm_m) if config.structure == "nm" else None
    result = prune_oneshot(model, batches, method=config.blockwise_method,
                           all_percent=None if nm else config.final_percent(), nm=nm,
                           allocation=config.allocation, include=config.include,
                           exclude=config.exclude, max_batches=config.calibration_batches,
                           device=device, progress=config.progress, loss_fn=loss_fn,
                           keep_masks=True)
    masks = {r.name: r.mask for r in result.records if r.mask is not None}
    if sorted(masks) != sorted(pruner.names):
        raise OneShotError(f"the block engine pruned {sorted(masks)} but the pruner holds "
                           f"{sorted(pruner.names)}: both must select the same tensors")
    # the engine's masks, not the weights' zeros: a kept weight may be exactly zero
    return pruner.apply_masks([masks[name].to(param.device)
                               for name, param in zip(pruner.names, pruner.params, strict=True)])
