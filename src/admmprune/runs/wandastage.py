"""The pipeline's Wanda stage (``pruning: wanda``): masks from calibration batches of the
training split, installed in place of the ADMM W-steps and Z-step."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..masks import LayerSparsity
from ..pruner import ADMMPruner
from ..wanda import wanda_masks
from .config import Config

__all__ = ["wanda_prune"]


def wanda_prune(model: nn.Module, pruner: ADMMPruner, config: Config, batches: Iterable,
                device: torch.device) -> list[LayerSparsity]:
    """Hard prune ``model`` to Wanda's masks (every row at ``config``'s all_percent, or N:M
    for structure nm), scored on the first ``calibration_batches`` of ``batches``.

    Returns:
        The per-layer sparsity after pruning.
    """
    nm = (config.nm_n, config.nm_m) if config.structure == "nm" else None
    masks = wanda_masks(model, batches, all_percent=None if nm else config.final_percent(),
                        nm=nm, include=config.include, exclude=config.exclude,
                        max_batches=config.calibration_batches, device=device)
    return pruner.apply_masks(masks)
