"""SparseGPT (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot"): one-shot pruning that reconstructs each layer's outputs.

For a layer ``y = W x`` with calibration inputs ``X``, the Hessian of the reconstruction
error ``‖W X - Ŵ X‖²`` is ``H = 2 X Xᵀ``. SparseGPT walks the inputs (columns of ``W``) in
order; when it removes ``W_ij`` it adds the optimal brain surgeon correction to the columns
not yet visited, ``δ = -W_ij / [H_F⁻¹]_jj · [H_F⁻¹]_j,:`` with ``F`` the remaining columns.
The rows of the upper Cholesky factor of ``H⁻¹`` give every ``H_F⁻¹`` at once, which makes
this one factorisation plus a sweep. Which weights go is chosen per block of
``block_size`` columns by ``W_ij² / [H_F⁻¹]_jj²`` (SparseGPT's adaptive mask selection): the
layer's share is uniform, the split between rows free within a block.

The functions here are pure maths on tensors; :func:`sparsegpt_prune_model` gathers the
Hessians of a model's layers (from the dense model in one pass, or layer by layer from the
model pruned so far, as the reference implementation feeds each transformer block the
outputs of the blocks pruned before it) and rewrites the weights in place.

Layouts as in :mod:`admmprune.posttraining.wanda`: ``nn.Linear`` ``[out, in]``, HF ``Conv1D``
``[in, out]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..projection import survivor_count, validate_nm
from .activations import (
    CalibrationError,
    calibrate,
    calibrated_layers,
    check_weight_and_gram,
    input_grams,
)

__all__ = ["SparseGPTError", "hessian_inverse_factor", "sparsegpt_prune",
           "sparsegpt_prune_model"]


class SparseGPTError(CalibrationError):
    """SparseGPT cannot prune these tensors (a layout it does not know, mismatched sizes,
    bad options)."""


def hessian_inverse_factor(gram: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(XᵀX + λ I)⁻¹`` with ``λ = damp · mean(diag)``.

    Row ``j`` of ``U`` is ``[H_F⁻¹]_j,: / sqrt([H_F⁻¹]_jj)`` for ``F`` = columns j.. (the
    property the sweep uses). Inputs that never fired (zero diagonal) get a unit diagonal so
    the factorisation exists; their weights are removed first anyway, as they score 0 there.

    Raises:
        SparseGPTError: ``gram`` is not square, or ``damp`` is not positive.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise SparseGPTError(f"the Gram matrix must be square, got {tuple(gram.shape)}")
    if not damp > 0:
        raise SparseGPTError(f"damp must be > 0, got {damp!r}")
    h = gram.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * torch.diag(h).mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, *,
                    all_percent: float | None = None, nm: tuple[int, int] | None = None,
                    input_dim: int = 1, block_size: int = 128, damp: float = 0.01
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one layer by SparseGPT.

    Args:
        weight: a 2-D weight.
        gram: ``XᵀX`` of its inputs (features x features).
        all_percent: share of the layer removed (unstructured: ``round(all_percent · n /
            100)`` weights, spread over the blocks of ``block_size`` inputs by width), or
        nm: ``(N, M)``: keep N of every M consecutive inputs of a row; exactly one of the two.
        input_dim: the weight's input axis (1: ``nn.Linear``; 0: HF ``Conv1D``).
        block_size: inputs per block (mask selection and lazy updates).
        damp: Hessian dampening, relative to its mean diagonal.

    Returns:
        ``(new_weight, mask)`` in ``weight``'s layout and dtype; ``new_weight`` is zero where
        ``mask`` is False.

    Raises:
        SparseGPTError: a bad layout, sizes or options.
        ProjectionError: a ratio outside [0, 100) or a bad N:M.
    """
    if (all_percent is None) == (nm is None):
        raise SparseGPTError("give exactly one of all_percent (unstructured) and nm=(N, M)")
    check_weight_and_gram(weight, gram, input_dim, "SparseGPT", SparseGPTError)
    n_in = weight.shape[input_dim]
    if not (isinstance(block_size, int) and block_size >= 1):
        raise SparseGPTError(f"block_size must be an integer >= 1, got {block_size!r}")
    if nm is not None:
        validate_nm(*nm)
        if block_size % nm[1]:
            raise SparseGPTError(f"block_size {block_size} must be a multiple of M = {nm[1]}")
    w = (weight.t() if input_dim == 0 else weight).detach().double().clone(
        memory_format=torch.contiguous_format)  # [out, in]
    factor = hessian_inverse_factor(gram.to(w.device), damp)
    mask = torch.ones_like(w, dtype=torch.bool)
    # unstructured: the layer's removals (as a layer-wise projection counts them) spread over
    # the blocks in proportion to their widths
    to_remove = 0 if all_percent is None else w.numel() - survivor_count(w.numel(), all_percent)
    removed = 0
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        block, u = w[:, i1:i2].clone(), factor[i1:i2, i1:i2]
        errors = torch.zeros_like(block)
        block_mask = torch.ones_like(block, dtype=torch.bool)
        if all_percent is not None:
            scores = block.pow(2) / torch.diag(u).pow(2)
            count = round(to_remove * i2 / n_in) - removed
            order = torch.argsort(scores.flatten(), stable=True)[:count]
            block_mask.view(-1)[order] = False
            removed += count
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                # N:M: pick the group's removals from the weights as updated so far
                group = block[:, j:j + nm[1]].pow(2) / torch.diag(u)[j:j + nm[1]].pow(2)
                drop = max(0, group.shape[1] - nm[0])
                lowest = torch.argsort(group, dim=1, stable=True)[:, :drop]
                block_mask[:, j:j + nm[1]].scatter_(1, lowest, False)
            column = block[:, j]
            kept = torch.where(block_mask[:, j], column, torch.zeros_like(column))
            error = (column - kept) / u[j, j]
            block[:, j:] -= error.unsqueeze(1) * u[j, j:].unsqueeze(0)
            block[:, j] = kept
            errors[:, j] = error
        w[:, i1:i2] = block
        mask[:, i1:i2] = block_mask
        w[:, i2:] -= errors @ factor[i1:i2, i2:]
    w[~mask] = 0.0
    if input_dim == 0:
        w, mask = w.t(), mask.t()
    return w.to(weight.dtype).contiguous(), mask.contiguous()


@torch.no_grad()
def sparsegpt_prune_model(model: nn.Module, batches: Iterable, *,
                          all_percent: float | None = None, nm: tuple[int, int] | None = None,
                          include: Sequence[str] | None = None,
                          exclude: Sequence[str] | None = None, max_batches: int | None = None,
                          device: torch.device | str | None = None, block_size: int = 128,
                          damp: float = 0.01, sequential: bool = False) -> list[torch.Tensor]:
    """Prune a model's selected layers by SparseGPT in place.

    Args:
        model: the dense model (its pruned weights are overwritten).
        batches: calibration batches ``(x, y)`` (the training split; ``y`` is ignored).
        all_percent, nm, block_size, damp: as :func:`sparsegpt_prune`, for every layer.
        include, exclude: the selection patterns of :func:`prunable_parameters`.
        max_batches: use at most this many batches.
        device: where the batches go (default: the model's device).
        sequential: False: every layer's ``XᵀX`` from the dense model, in one pass; True:
            each layer's from the model with the layers before it already pruned.

    Returns:
        One boolean mask per tensor, in :func:`prunable_parameters` order (what
        ``ADMMPruner.apply_masks`` takes).

    Raises:
        SparseGPTError: as :func:`sparsegpt_prune`, or a pruned tensor that is not the
        weight of an ``nn.Linear`` or HF ``Conv1D``.
    """
    if (all_percent is None) == (nm is None):
        raise SparseGPTError("give exactly one of all_percent (unstructured) and nm=(N, M)")
    layers = calibrated_layers(model, include, exclude, "SparseGPT", SparseGPTError)
    masks: list[torch.Tensor] = []

    def prune_layer(i: int, gram: torch.Tensor) -> None:
        weight, dim = layers[i][2], layers[i][3]
        new_weight, mask = sparsegpt_prune(weight, gram, all_percent=all_percent, nm=nm,
                                           input_dim=dim, block_size=block_size, damp=damp)
        weight.copy_(new_weight)
        masks.append(mask)

    calibrate(model, [module for _, module, _, _ in layers], batches, input_grams, prune_layer,
              sequential=sequential, max_batches=max_batches, device=device)
    return masks
