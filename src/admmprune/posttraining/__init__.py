"""Post-training (calibration-only) pruning of transformers, one block at a time.

:func:`prune_oneshot` (``admmprune.oneshot``) is the one call: a trained model, calibration
batches and one removal ratio, split between layers uniformly, by OWL, or globally by the
method's own error curves (:mod:`.api`). Below it:

:func:`prune_blocks` captures the first block's inputs on the calibration batches, then for
every block gathers its layers' input statistics, prunes them with a :class:`LayerMethod`
(:class:`Magnitude`, :class:`Wanda`, :class:`SparseGPT` or one of your own) at a uniform
ratio, per-layer ratios or N:M, and feeds the pruned block's outputs to the next block.
:func:`prune_checkpoint` does the same on a Hugging Face model directory whose weights stay on
disk, one block in memory at a time.

:func:`prune_units` (``admmprune.prune_units``) removes whole MLP neurons and attention groups
under one global ratio and shrinks the model (:mod:`.structured`, :mod:`.units`).
"""

from .api import ALLOCATIONS, DEFAULT_GRID, OneShotResult, layer_shares, prune_oneshot
from .blocks import find_blocks
from .budgets import Budget, layer_budgets
from .checkpoint import LazyCheckpoint, empty_causal_lm, prune_checkpoint, trim_heap, weight_files
from .engine import ORDERS, BlockCallback, BlockStore, LayerRecord, block_layers, prune_blocks
from .errors import BlockError, OneShotError
from .inputs import BlockInput, block_output, capture_block_inputs, run_block
from .methods import ADMM, METHODS, LayerMethod, Magnitude, SparseGPT, Wanda, layer_method
from .statistics import STATISTICS, forward_groups, gather_statistics, gram, square_sums
from .structured import STRUCTURED_ALLOCATIONS, StructuredResult, prune_units

__all__ = [
    "prune_oneshot", "OneShotResult", "ALLOCATIONS", "DEFAULT_GRID", "layer_shares", "ADMM",
    "find_blocks", "Budget", "layer_budgets", "LazyCheckpoint", "empty_causal_lm",
    "prune_checkpoint", "trim_heap", "weight_files", "ORDERS",
    "BlockCallback", "BlockStore", "LayerRecord", "block_layers", "prune_blocks", "BlockError",
    "OneShotError", "BlockInput", "block_output", "capture_block_inputs", "run_block",
    "METHODS", "LayerMethod", "Magnitude", "SparseGPT", "Wanda", "layer_method", "STATISTICS",
    "forward_groups", "gather_statistics", "gram", "square_sums", "prune_units",
    "StructuredResult", "STRUCTURED_ALLOCATIONS",
]
