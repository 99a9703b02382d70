"""admmprune: ADMM weight pruning of PyTorch models under one global removal ratio."""

from .masks import LayerSparsity, MaskEnforcer, global_sparsity, sparsity_report
from .models import create_model, list_models, register_model
from .pruner import ADMMPruner, PrunerError
from .selection import prunable_parameters

__version__ = "0.1.0"

__all__ = [
    "ADMMPruner",
    "PrunerError",
    "MaskEnforcer",
    "LayerSparsity",
    "sparsity_report",
    "global_sparsity",
    "create_model",
    "list_models",
    "register_model",
    "prunable_parameters",
]
