"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
Models"): pruning by weight magnitude times input activation norm, per output row.

The score of weight ``W_ij`` (output i, input feature j) is ``|W_ij| · ‖X_j‖₂``, where
``‖X_j‖₂`` is the norm of input feature j over every calibration token. Weights are compared
only within their output row (Wanda's comparison group): every row of a layer removes the
same share, so the ratio is uniform across layers. With N:M the groups are M consecutive
inputs of a row, as the pruner's ``nm`` structure groups them.

The functions here are pure maths on tensors; :mod:`admmprune.posttraining.activations` gathers the
norms with forward hooks (from the dense model in one pass, or layer by layer from the model
pruned so far), and :func:`wanda_masks` joins the two for a model.

Layouts: ``nn.Linear`` stores ``[out, in]`` (inputs on dim 1); Hugging Face's ``Conv1D``
(GPT-2) stores ``[in, out]`` (inputs on dim 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..projection import StructureOptions, nm_masks, survivor_count
from .activations import CalibrationError, calibrate, calibrated_layers, input_norms

__all__ = ["WandaError", "wanda_scores", "row_masks", "nm_row_masks", "wanda_masks"]


class WandaError(CalibrationError):
    """Wanda cannot score these tensors (a layout it does not know, mismatched sizes)."""


def _check_layout(weight: torch.Tensor, input_dim: int) -> None:
    if weight.dim() != 2 or input_dim not in (0, 1):
        raise WandaError(f"Wanda scores 2-D weights with inputs on dim 0 or 1, got shape "
                         f"{tuple(weight.shape)} and input_dim {input_dim!r}")


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor, input_dim: int = 1
                 ) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂`` in ``weight``'s layout.

    Args:
        weight: a 2-D weight.
        norms: ``‖X_j‖₂`` per input feature j (length ``weight.shape[input_dim]``).
        input_dim: the weight's input axis (1: ``nn.Linear``; 0: HF ``Conv1D``).

    Returns:
        Float32 scores of ``weight``'s shape.

    Raises:
        WandaError: not 2-D, or the norms do not match the input axis.
    """
    _check_layout(weight, input_dim)
    if norms.dim() != 1 or norms.numel() != weight.shape[input_dim]:
        raise WandaError(f"{norms.numel()} input norms for a weight of shape "
                         f"{tuple(weight.shape)} with {weight.shape[input_dim]} inputs "
                         f"(input_dim {input_dim})")
    shape = [1, 1]
    shape[input_dim] = -1
    return weight.detach().abs().float() * norms.to(weight.device, torch.float32).view(shape)


def _as_rows(scores: torch.Tensor, input_dim: int) -> torch.Tensor:
    """Scores as ``[out, in]`` (a view)."""
    return scores if input_dim == 1 else scores.t()


def row_masks(scores: torch.Tensor, all_percent: float, input_dim: int = 1) -> torch.Tensor:
    """Keep the largest scores of every output row: each row of ``n_in`` inputs keeps
    ``n_in - round(all_percent · n_in / 100)`` (equal scores: the first input).

    Args:
        scores: 2-D scores in the weight's layout.
        all_percent: share of each row removed, in [0, 100).
        input_dim: the input axis (1: Linear, 0: Conv1D).

    Returns:
        A boolean mask of ``scores``' shape.

    Raises:
        WandaError: bad layout. ProjectionError: a ratio outside [0, 100) or one that
        removes a whole row.
    """
    _check_layout(scores, input_dim)
    rows = _as_rows(scores, input_dim)
    keep = survivor_count(rows.shape[1], all_percent)
    order = torch.argsort(-rows, dim=1, stable=True)[:, :keep]
    mask = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, order, True)
    return mask if input_dim == 1 else mask.t().contiguous()


def row_masks_for_count(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep exactly ``keep`` scores of ``[out, in]`` rows, as evenly as rows allow: every row
    keeps ``keep // out`` of its largest, and the ``keep % out`` rows whose next-largest
    score is highest keep one more (Wanda's per-row comparison with an exact layer budget,
    which a share per row cannot give when ``out`` does not divide it).

    Raises:
        WandaError: not 2-D, or ``keep`` outside [0, out·in].
    """
    if scores.dim() != 2 or not 0 <= keep <= scores.numel():
        raise WandaError(f"keep {keep} of a {tuple(scores.shape)} layer: needs 2-D scores "
                         "and 0 <= keep <= their count")
    out, width = scores.shape
    base, extra = divmod(keep, out)
    order = torch.argsort(-scores, dim=1, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :base], True)
    if extra:
        following = scores.gather(1, order[:, base:base + 1]).squeeze(1)
        lucky = torch.argsort(-following, stable=True)[:extra]
        mask[lucky, order[lucky, base]] = True
    return mask


def nm_row_masks(scores: torch.Tensor, n: int = 2, m: int = 4, input_dim: int = 1
                 ) -> torch.Tensor:
    """N:M: keep the N largest scores of every M consecutive inputs of a row (the groups
    of the pruner's ``nm`` structure; a last group of r < M inputs keeps min(N, r))."""
    _check_layout(scores, input_dim)
    rows = _as_rows(scores, input_dim)
    mask = nm_masks([rows], None, None, None, StructureOptions(nm_n=n, nm_m=m))[0]
    return mask if input_dim == 1 else mask.t().contiguous()


def wanda_masks(model: nn.Module, batches: Iterable, *, all_percent: float | None = None,
                nm: tuple[int, int] | None = None, include: Sequence[str] | None = None,
                exclude: Sequence[str] | None = None, max_batches: int | None = None,
                device: torch.device | str | None = None, sequential: bool = False
                ) -> list[torch.Tensor]:
    """Wanda's masks of a model's pruned tensors from calibration batches.

    Args:
        model: the dense model (left as it is, unless ``sequential``).
        batches: calibration batches ``(x, y)`` (the training split; ``y`` is ignored).
        all_percent: share of every output row removed (unstructured), or
        nm: ``(N, M)`` for N:M sparsity along the inputs; exactly one of the two.
        include, exclude: the selection patterns of :func:`prunable_parameters`.
        max_batches: use at most this many batches.
        device: where the batches go (default: the model's device).
        sequential: False: the norms of the dense model's activations, in one pass; True:
            each layer's from the model with the layers before it pruned (their weights
            zeroed in place), as the reference implementation feeds each transformer block
            the outputs of the blocks pruned before it.

    Returns:
        One boolean mask per tensor, in :func:`prunable_parameters` order (what
        ``ADMMPruner.apply_masks`` takes).

    Raises:
        WandaError: both or neither of ``all_percent`` and ``nm``; a pruned tensor that is
        not the weight of an ``nn.Linear`` or HF ``Conv1D``.
    """
    if (all_percent is None) == (nm is None):
        raise WandaError("give exactly one of all_percent (unstructured) and nm=(N, M)")
    layers = calibrated_layers(model, include, exclude, "Wanda", WandaError)
    masks: list[torch.Tensor] = []

    @torch.no_grad()
    def prune_layer(i: int, norm: torch.Tensor) -> None:
        _, _, weight, dim = layers[i]
        scores = wanda_scores(weight, norm, dim)
        masks.append(nm_row_masks(scores, nm[0], nm[1], dim) if nm is not None
                     else row_masks(scores, float(all_percent or 0.0), dim))
        if sequential:  # the next layers' inputs come from this pruned layer
            weight.mul_(masks[-1])

    calibrate(model, [module for _, module, _, _ in layers], batches, input_norms, prune_layer,
              sequential=sequential, max_batches=max_batches, device=device)
    return masks
