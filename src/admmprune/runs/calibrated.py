"""The pipeline's calibrated one-shot stage (``pruning: wanda``, ``sparsegpt`` or
``blockwise``): masks from calibration batches of the training split, installed in place of
the ADMM W-steps and Z-step (``blockwise``: by :mod:`.blockwise`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..masks import LayerSparsity
from ..posttraining.activations import calibrated_layers
from ..posttraining.sparsegpt import sparsegpt_prune_model
from ..posttraining.wanda import wanda_masks
from ..pruner import ADMMPruner
from .blockwise import blockwise_prune, check_blockwise
from .config import Config

__all__ = ["calibrated_prune", "check_calibrated"]


# the name each calibrated method signs its refusals with
_NAMES = {"wanda": "Wanda", "sparsegpt": "SparseGPT"}


def check_calibrated(model: nn.Module, config: Config) -> None:
    """Whether ``config.pruning`` (Wanda, SparseGPT, blockwise) can score every tensor
    ``config`` prunes in ``model``: the check its calibration makes (:func:`calibrated_layers`;
    blockwise: :func:`~.blockwise.check_blockwise`), made before anything trains.

    Raises:
        CalibrationError: a pruned tensor that is not the weight of an nn.Linear or HF Conv1D
            (blockwise: or that lies outside the model's blocks, or no blocks found).
    """
    if config.pruning == "blockwise":
        check_blockwise(model, config)
        return
    calibrated_layers(model, config.include, config.exclude, _NAMES[config.pruning])


def calibrated_prune(model: nn.Module, pruner: ADMMPruner, config: Config, batches: Iterable,
                     device: torch.device,
                     loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
                     ) -> list[LayerSparsity]:
    """Hard prune ``model`` by ``config.pruning`` (Wanda: masks only; SparseGPT: masks and
    reconstructed weights), every layer at ``config``'s all_percent, or N:M for structure
    nm, from the first ``calibration_batches`` of ``batches`` (layer by layer from the
    model pruned so far with ``calibration_order: sequential``); blockwise: block by block,
    the budget split by ``config.allocation`` (:func:`~.blockwise.blockwise_prune`, whose
    global allocation weighs the layers by ``loss_fn``).

    Returns:
        The per-layer sparsity after pruning.
    """
    if config.pruning == "blockwise":
        return blockwise_prune(model, pruner, config, batches, device, loss_fn)
    nm = (config.nm_n, config.nm_m) if config.structure == "nm" else None
    prune = {"wanda": wanda_masks, "sparsegpt": sparsegpt_prune_model}[config.pruning]
    masks = prune(model, batches, all_percent=None if nm else config.final_percent(), nm=nm,
                  include=config.include, exclude=config.exclude,
                  max_batches=config.calibration_batches, device=device,
                  sequential=config.calibration_order == "sequential")
    return pruner.apply_masks(masks)
