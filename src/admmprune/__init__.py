"""admmprune: ADMM weight pruning of PyTorch models under one global removal ratio."""

# Before anything imports torch: OpenMP reads OMP_WAIT_POLICY / OMP_NUM_THREADS only when
# torch loads, and its defaults make training crawl on a shared machine (see runtime.py).
from .runtime import apply_cpu_defaults

apply_cpu_defaults()

from .channels.shrink import load_shrunk, save_shrunk, shrink  # noqa: E402
from .export import load  # noqa: E402
from .export.huggingface import load_huggingface  # noqa: E402
from .export.sparse import sparsify  # noqa: E402
from .masks import LayerSparsity, MaskEnforcer, global_sparsity, sparsity_report  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402
from .posttraining import prune_oneshot as oneshot  # noqa: E402
from .posttraining.structured import prune_units  # noqa: E402
from .pruner import ADMMPruner, PrunerError  # noqa: E402
from .selection import prunable_parameters  # noqa: E402

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
    "load",
    "sparsify",
    "shrink",
    "save_shrunk",
    "load_shrunk",
    "oneshot",
    "prune_units",
    "load_huggingface",
]
