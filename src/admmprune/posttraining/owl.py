"""OWL, outlier-weighed layerwise sparsity (Yin et al. 2023, "Outlier Weighed Layerwise
Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity"): per-block
removal ratios that prune blocks with more outlier weights less.

For every block (a transformer layer) the *layer outlier distribution* (LOD) is the share, in
percent, of the block's Wanda scores ``|W_ij| · ‖X_j‖`` that exceed ``M`` times their mean,
over all the block's pruned linear layers together (:func:`outlier_ratio`). The ratios, as
OWL's reference code sets them (:func:`owl_ratios`):

    a_l = (LOD_l − min LOD) / (max LOD − min LOD) · 2λ         in [0, 2λ]
    S_l = S − (a_l − mean(a))                                   (fractions; S the target)

so the block ratios spread over at most ``2λ`` around the target and their unweighted mean
is ``S``. With blocks of equal size (every block of a transformer) that is also the ratio
of the weights removed; with ``sizes`` given the shift is chosen instead so that the
size-weighted mean is ``S`` (the project's rule: one removal ratio for the whole model),
keeping OWL's spread. The integer per-layer counts that make the budget exact come from
:func:`admmprune.posttraining.allocation.counts_for_percents`.

Pure functions on tensors and numbers; gathering the scores is the engine's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..projection import check_percent
from .activations import CalibrationError

__all__ = ["OWLError", "outlier_ratio", "owl_ratios"]


class OWLError(CalibrationError):
    """OWL cannot set ratios from these values (empty, non-finite, or ratios out of range)."""


def outlier_ratio(scores: torch.Tensor | Sequence[torch.Tensor], m: float = 5.0) -> float:
    """OWL's layer outlier distribution: the percentage of ``scores`` strictly above ``m``
    times their mean (one block's Wanda scores, all its layers pooled as one set).

    Args:
        scores: one tensor, or several (a block's layers), of non-negative scores.
        m: the outlier threshold relative to the mean (OWL's M; 5 for LLaMA in the paper).

    Returns:
        The outlier share in percent, in [0, 100].

    Raises:
        OWLError: no scores, non-finite scores, or ``m`` not positive.
    """
    tensors = [scores] if isinstance(scores, torch.Tensor) else list(scores)
    if not tensors or sum(t.numel() for t in tensors) == 0:
        raise OWLError("no scores to count outliers in")
    if not m > 0:
        raise OWLError(f"the outlier threshold m must be > 0, got {m!r}")
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    if not bool(torch.isfinite(flat).all()):
        raise OWLError("scores hold NaN or infinite values")
    threshold = flat.mean() * m
    return 100.0 * float((flat > threshold).sum()) / flat.numel()


def _capped(percents: torch.Tensor, weights: torch.Tensor, target: float, most: float
            ) -> torch.Tensor:
    """``percents`` with every block above ``most`` set to ``most`` and the others raised
    together so that the size-weighted mean stays ``target`` (repeated until none exceeds)."""
    capped = torch.zeros_like(percents, dtype=torch.bool)
    for _ in range(percents.numel()):
        over = (percents > most) & ~capped
        if not bool(over.any()):
            break
        capped |= over
        free = ~capped
        if not bool(free.any()):
            raise OWLError(f"no block can take more than {most}% at target {target}%")
        percents = torch.where(capped, torch.full_like(percents, most), percents)
        missing = target * weights.sum() - (percents * weights).sum()
        percents = torch.where(free, percents + missing / weights[free].sum(), percents)
    return percents


def owl_ratios(block_outlier_ratios: Sequence[float], target_percent: float,
               lam: float = 0.08, sizes: Sequence[int] | None = None,
               most: float | None = None) -> list[float]:
    """Per-block removal percentages from the blocks' outlier ratios.

    Args:
        block_outlier_ratios: :func:`outlier_ratio` of every block, in block order.
        target_percent: the overall removal ratio S, in percent.
        lam: OWL's λ, a fraction (0.08: the ratios span at most ±8 points around S).
        sizes: the prunable weights of every block. None (the default, OWL as published):
            the unweighted mean of the ratios is S. Given: the ratios are shifted together so
            that their size-weighted mean is S, i.e. S% of all the weights go (identical to
            the default when every block has the same size).
        most: with ``sizes``: no block removes more than this percent; the share a block
            would remove above it goes to the other blocks alike (at high targets OWL's
            spread would otherwise push a block past 100%).

    Returns:
        One removal percentage per block. Equal outlier ratios give S everywhere.

    Raises:
        OWLError: no blocks, non-finite values, ``lam`` negative, sizes that do not match, or
            a resulting ratio outside [0, 100) (lower ``lam``).
        ProjectionError: ``target_percent`` outside [0, 100).
    """
    check_percent(target_percent)
    ratios = torch.tensor([float(r) for r in block_outlier_ratios], dtype=torch.float64)
    if ratios.numel() == 0:
        raise OWLError("no blocks to set ratios for")
    if not bool(torch.isfinite(ratios).all()):
        raise OWLError(f"outlier ratios must be finite, got {list(block_outlier_ratios)}")
    if not lam >= 0:
        raise OWLError(f"lam must be >= 0, got {lam!r}")
    spread = ratios.max() - ratios.min()
    # equal outlier ratios carry no information: uniform (OWL's code would divide by zero)
    normalized = (ratios - ratios.min()) / spread * 2 * lam if spread > 0 \
        else torch.zeros_like(ratios)
    if sizes is None:
        centre = normalized.mean()
    else:
        weights = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
        if weights.numel() != ratios.numel() or not bool((weights > 0).all()):
            raise OWLError(f"sizes must give one positive count per block ({ratios.numel()}), "
                           f"got {list(sizes)}")
        centre = (normalized * weights).sum() / weights.sum()
    percents = target_percent - 100.0 * (normalized - centre)
    if most is not None and sizes is not None:
        percents = _capped(percents, weights, target_percent, most)
    if not bool(((percents >= 0) & (percents < 100)).all()):
        raise OWLError(f"OWL ratios {[round(float(p), 3) for p in percents]} leave [0, 100) "
                       f"at target {target_percent}% and lam {lam}; lower lam")
    return [float(p) for p in percents]
