"""Layer pruning methods the block engine runs: each takes one layer's weight as ``[out, in]``
and the statistic of its calibration inputs, and returns the pruned weight and its mask.

A method is any object with a ``name``, the ``statistic`` it needs (``"gram"`` for ``XᵀX``,
``"norms"`` for ``‖X_j‖₂``, None for none) and ``prune(name, weight, statistic, budget)``
(:class:`LayerMethod`); the three here wrap the project's pure functions:

- :class:`Magnitude`: keep the largest ``|W|`` of the layer (N:M: of every group);
- :class:`Wanda`: keep the largest ``|W_ij| · ‖X_j‖₂`` of every output row (N:M: group);
- :class:`SparseGPT`: SparseGPT's mask selection and optimal-brain-surgeon updates;
- :class:`ADMM`: layer-wise ADMM reconstruction with a gradually tightened mask and an exact
  final update of the kept weights (:func:`admmprune.posttraining.reconstruct.admm_reconstruct`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..projection import layerwise_topk_masks, magnitude_scores, survivor_count
from .budgets import Budget
from .errors import OneShotError
from .reconstruct import admm_reconstruct
from .sparsegpt import sparsegpt_prune
from .wanda import nm_row_masks, row_masks_for_count, wanda_scores

__all__ = ["LayerMethod", "Magnitude", "Wanda", "SparseGPT", "ADMM", "METHODS",
           "layer_method"]


@runtime_checkable
class LayerMethod(Protocol):
    """What the engine asks of a pruning method.

    Attributes:
        name: shown in progress bars and errors.
        statistic: ``"gram"``, ``"norms"`` or None (no calibration data needed).
    """

    name: str
    statistic: str | None

    def prune(self, name: str, weight: torch.Tensor, statistic: torch.Tensor | None,
              budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
        """Prune one layer.

        Args:
            name: the weight's name in the model.
            weight: ``[out, in]`` (a copy may be needed: do not write into it).
            statistic: the layer's input statistic (``XᵀX`` ``[in, in]`` or ``‖X_j‖₂``
                ``[in]``, float64), or None.
            budget: its target.

        Returns:
            ``(new_weight, mask)``: ``[out, in]``, the weight's dtype, and a boolean mask.
        """
        ...


def _apply(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.where(mask, weight, torch.zeros_like(weight)), mask


class Magnitude:
    """Largest ``|W|`` per layer: ``n - round(p·n/100)`` survive (N:M: per group)."""

    name = "magnitude"
    statistic: str | None = None

    def prune(self, name: str, weight: torch.Tensor, statistic: torch.Tensor | None,
              budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
        if budget.nm is not None:
            mask = nm_row_masks(weight.detach().abs(), *budget.nm)
        else:
            mask = layerwise_topk_masks(magnitude_scores([weight]),
                                        float(budget.all_percent or 0.0))[0]
        return _apply(weight, mask)


class Wanda:
    """Wanda: ``|W_ij| · ‖X_j‖₂``, every output row removing the same share (within one
    weight, so that the layer keeps exactly its budget)."""

    name = "wanda"
    statistic: str | None = "norms"

    def prune(self, name: str, weight: torch.Tensor, statistic: torch.Tensor | None,
              budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
        if statistic is None:
            raise OneShotError(f"{name}: Wanda needs the input norms")
        scores = wanda_scores(weight, statistic, 1)
        mask = (nm_row_masks(scores, *budget.nm) if budget.nm is not None
                else row_masks_for_count(scores, survivor_count(
                    scores.numel(), float(budget.all_percent or 0.0))))
        return _apply(weight, mask)


class SparseGPT:
    """SparseGPT (see :func:`admmprune.posttraining.sparsegpt.sparsegpt_prune`).

    Args:
        block_size: inputs per block of the sweep.
        damp: Hessian dampening relative to its mean diagonal.
    """

    name = "sparsegpt"
    statistic: str | None = "gram"

    def __init__(self, block_size: int = 128, damp: float = 0.01) -> None:
        self.block_size = block_size
        self.damp = damp

    def prune(self, name: str, weight: torch.Tensor, statistic: torch.Tensor | None,
              budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
        if statistic is None:
            raise OneShotError(f"{name}: SparseGPT needs the inputs' XᵀX")
        return sparsegpt_prune(weight, statistic, all_percent=budget.all_percent,
                               nm=budget.nm, input_dim=1, block_size=self.block_size,
                               damp=self.damp)


class ADMM:
    """Layer-wise ADMM reconstruction (Boža 2024): ``min ‖X Ŵᵀ − X Wᵀ‖²`` over the layer's
    sparsity set, one factorization of ``XᵀX + ρI`` per layer, the mask tightened to its
    target over the first iterations, then the exact least-squares weights on the final mask
    (:func:`~admmprune.posttraining.reconstruct.admm_reconstruct`, whose defaults these are).

    Args:
        iterations: ADMM iterations per layer.
        rho: the penalty, relative to the rescaled ``XᵀX``'s unit diagonal.
        damp: ``XᵀX`` dampening relative to its mean diagonal.
        projection: ``"layer"`` (one top-K over the layer) or ``"row"`` (every row alike).
    """

    name = "admm"
    statistic: str | None = "gram"

    def __init__(self, iterations: int = 20, rho: float = 0.6, damp: float = 0.01,
                 projection: str = "layer") -> None:
        self.iterations = iterations
        self.rho = rho
        self.damp = damp
        self.projection = projection

    def prune(self, name: str, weight: torch.Tensor, statistic: torch.Tensor | None,
              budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
        if statistic is None:
            raise OneShotError(f"{name}: ADMM reconstruction needs the inputs' XᵀX")
        keep = None if budget.nm is not None else \
            survivor_count(weight.numel(), float(budget.all_percent or 0.0))
        return admm_reconstruct(weight, statistic, keep=keep, nm=budget.nm,
                                projection=self.projection, iterations=self.iterations,
                                rho=self.rho, damp=self.damp)


METHODS: dict[str, type] = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT,
                            "admm": ADMM}


def layer_method(method: str | LayerMethod, **options: object) -> LayerMethod:
    """A method by name (with its options) or the method object itself.

    Raises:
        OneShotError: an unknown name, options for an object, or an object that is not a
            :class:`LayerMethod`.
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise OneShotError(f"unknown method {method!r}: choose one of "
                               f"{', '.join(METHODS)} or pass a LayerMethod object")
        try:
            return METHODS[method](**options)
        except TypeError as err:
            raise OneShotError(f"method {method}: {err}") from None
    if options:
        raise OneShotError("method options go to a method given by name; set them on the "
                           "method object instead")
    if not isinstance(method, LayerMethod):
        raise OneShotError(f"{type(method).__name__} is not a layer method: it needs name, "
                           "statistic and prune(name, weight, statistic, budget)")
    return method
