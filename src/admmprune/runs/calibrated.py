"""The pipeline's calibrated one-shot stage (``pruning: wanda`` or ``sparsegpt``): masks
from calibration batches of the training split, installed in place of the ADMM W-steps and
Z-step."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..masks import LayerSparsity
from ..posttraining.activations import calibrated_layers
from ..posttraining.sparsegpt import sparsegpt_prune_model
from ..posttraining.wanda import wanda_masks
from ..pruner import ADMMPruner
from .config import Config

__all__ = ["calibrated_prune", "check_calibrated"]


# the name each calibrated method signs its refusals with
_NAMES = {"wanda": "Wanda", "sparsegpt": "SparseGPT"}


def check_calibrated(model: nn.Module, config: Config) -> None:
    """Whether ``config.pruning`` (Wanda, SparseGPT) can score every tensor ``config``
    prunes in ``model``: the check its calibration makes (:func:`calibrated_layers`), made
    before anything trains.

    Raises:
        CalibrationError: a pruned tensor that is not the weight of an nn.Linear or HF Conv1D.
    """
    calibrated_layers(model, config.include, config.exclude, _NAMES[config.pruning])


def calibrated_prune(model: nn.Module, pruner: ADMMPruner, config: Config, batches: Iterable,
                     device: torch.device) -> list[LayerSparsity]:
    """Hard prune ``model`` by ``config.pruning`` (Wanda: masks only; SparseGPT: masks and
    reconstructed weights), every layer at ``config``'s all_percent, or N:M for structure
    nm, from the first ``calibration_batches`` of ``batches`` (layer by layer from the
    model pruned so far with ``calibration_order: sequential``).

    Returns:
        The per-layer sparsity after pruning.
    """
    nm = (config.nm_n, config.nm_m) if config.structure == "nm" else None
    prune = {"wanda": wanda_masks, "sparsegpt": sparsegpt_prune_model}[config.pruning]
    masks = prune(model, batches, all_percent=None if nm else config.final_percent(), nm=nm,
                  include=config.include, exclude=config.exclude,
                  max_batches=config.calibration_batches, device=device,
                  sequential=config.calibration_order == "sequential")
    return pruner.apply_masks(masks)
