"""Projections onto sparsity sets: the Z-step of ADMM and the masks of hard pruning.

Every function here is pure: it takes tensors and returns boolean masks, it never
touches a model.

Tie rule (used everywhere): when several entries share the score at the threshold,
the ones that come first are kept, where "first" means the order of the tensors in
the list and then row-major (flattened) order inside each tensor. This makes every
projection deterministic and exact: the number of survivors is always the requested
one, even when all scores are equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "ProjectionError",
    "survivor_count",
    "kth_largest",
    "global_topk_masks",
    "layerwise_topk_masks",
    "magnitude_scores",
    "rms_scores",
    "lamp_scores",
    "compute_scores",
    "SCORE_FUNCTIONS",
]


class ProjectionError(ValueError):
    """A projection was asked for something impossible (bad ratio, NaN scores)."""


def survivor_count(total: int, all_percent: float) -> int:
    """K = N - round(all_percent * N / 100): how many weights survive.

    ``round`` is Python's (half to even). ``all_percent`` must lie in [0, 100).
    """
    check_percent(all_percent)
    if total <= 0:
        raise ProjectionError("there are no prunable weights (N = 0)")
    keep = total - round(all_percent * total / 100.0)
    if keep <= 0:
        raise ProjectionError(
            f"all_percent={all_percent} removes all {total} weights; choose a smaller ratio"
        )
    return keep


def check_percent(all_percent: float) -> None:
    if not isinstance(all_percent, (int, float)) or not 0.0 <= float(all_percent) < 100.0:
        raise ProjectionError(
            f"all_percent must be a number in [0, 100) (the share of weights removed), "
            f"got {all_percent!r}"
        )


def kth_largest(scores: Sequence[torch.Tensor], k: int) -> float:
    """The k-th largest value over all tensors jointly (1-based k)."""
    return _select(scores, k)[0]


_NOT_FINITE = ("scores hold NaN or infinite values; the model has diverged "
               "(lower learning_rate or rho)")


def _select(scores: Sequence[torch.Tensor], k: int) -> tuple[float, int]:
    """(t, above): the k-th largest score t and how many scores are strictly above it.

    Raises ``ProjectionError`` on NaN or infinite scores.
    """
    total = sum(s.numel() for s in scores)
    if not 1 <= k <= total:
        raise ProjectionError(f"k={k} is outside [1, {total}]")
    # float64 scores are ranked in float64: rounding them to float32 would merge distinct
    # values and break the exact count of global_topk_masks.
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores) else torch.float32
    position = total - k
    if all(s.device.type == "cpu" for s in scores):
        # numpy's SIMD introselect is ~25x faster than torch.kthvalue on CPU, and
        # partitioning the concatenated copy in place keeps memory at one extra copy.
        # Everything after `position` is >= t, so counting there is a pass over K entries.
        flat = np.concatenate([s.detach().reshape(-1).to(dtype).numpy() for s in scores])
        # min and max propagate NaN and show ±inf, without np.isfinite's N-byte temporary
        if not (np.isfinite(flat.min()) and np.isfinite(flat.max())):
            raise ProjectionError(_NOT_FINITE)
        flat.partition(position)
        threshold = flat[position]
        return float(threshold), int(np.count_nonzero(flat[position:] > threshold))
    flat_t = torch.cat([s.detach().reshape(-1).to(dtype) for s in scores])
    if not bool(torch.isfinite(flat_t).all()):
        raise ProjectionError(_NOT_FINITE)
    threshold_t = torch.kthvalue(flat_t, position + 1).values
    return float(threshold_t), int((flat_t > threshold_t).sum())


def global_topk_masks(scores: Sequence[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Masks keeping exactly ``keep`` entries of largest score across all tensors jointly.

    Ties at the threshold follow the module's tie rule. Scores are expected to be
    non-negative where a fixed support must be respected (callers pass -1 for entries
    that may never be kept; they are kept only if ``keep`` exceeds the others).
    """
    if not scores:
        raise ProjectionError("no tensors to project")
    total = sum(s.numel() for s in scores)
    if not 0 <= keep <= total:
        raise ProjectionError(f"cannot keep {keep} of {total} entries")
    if keep == total or keep == 0:
        if not all(bool(torch.isfinite(s).all()) for s in scores):
            raise ProjectionError(_NOT_FINITE)
        return [torch.full_like(s, keep > 0, dtype=torch.bool) for s in scores]
    threshold, _ = _select(scores, keep)
    # Keep everything >= threshold, then, only if more entries tie at the threshold than
    # fit, drop the surplus ties from the end: one comparison pass in the usual case.
    # contiguous: `s >= threshold` keeps the strides of a non-contiguous s (channels_last,
    # transposed views), and the tie removal below writes through m.view(-1).
    masks = [(s >= threshold).contiguous() for s in scores]
    surplus = sum(int(m.count_nonzero()) for m in masks) - keep
    for s, m in zip(reversed(scores), reversed(masks), strict=True):
        if surplus <= 0:
            break
        tied = (s == threshold).reshape(-1).nonzero().squeeze(1)[-surplus:]
        m.view(-1)[tied] = False
        surplus -= tied.numel()
    return masks


def layerwise_topk_masks(
    scores: Sequence[torch.Tensor], percents: float | Sequence[float]
) -> list[torch.Tensor]:
    """Per-layer projection: tensor l keeps n_l - round(p_l * n_l / 100) entries.

    ``percents`` is one removal percentage for every tensor, or one per tensor.
    """
    if isinstance(percents, (int, float)):
        percents = [float(percents)] * len(scores)
    if len(percents) != len(scores):
        raise ProjectionError(
            f"got {len(percents)} per-layer ratios for {len(scores)} prunable tensors"
        )
    return [
        global_topk_masks([s], survivor_count(s.numel(), p))[0]
        for s, p in zip(scores, percents, strict=True)
    ]


def magnitude_scores(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """|w|: the classic global magnitude criterion."""
    return [w.detach().abs() for w in weights]


def rms_scores(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """|w| divided by the layer's RMS, so layers with large weights do not dominate."""
    out = []
    for w in weights:
        magnitude = w.detach().abs()
        rms = magnitude.pow(2).mean().sqrt()
        out.append(magnitude / rms if float(rms) > 0 else magnitude)
    return out


def lamp_scores(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """LAMP scores (Lee et al. 2021): w_u^2 / sum of w_v^2 over all v with |w_v| >= |w_u|.

    Inside a layer the weights are sorted by magnitude (stable, so equal magnitudes
    keep row-major order); the largest weight of every layer scores exactly 1.
    """
    out = []
    for w in weights:
        squared = w.detach().reshape(-1).float().pow(2)
        order = torch.argsort(squared, stable=True)
        sorted_sq = squared[order]
        # suffix sums: the squared mass of the weight itself and all larger ones
        suffix = sorted_sq.flip(0).cumsum(0).flip(0)
        # `suffix == 0` (not `suffix > 0`) so NaN weights give NaN scores, which the
        # projection then reports, instead of silently scoring 0
        sorted_scores = torch.where(suffix == 0, torch.zeros_like(suffix), sorted_sq / suffix)
        scores = torch.empty_like(squared)
        scores[order] = sorted_scores
        out.append(scores.view_as(w))
    return out


SCORE_FUNCTIONS = {
    "magnitude": magnitude_scores,
    "rms": rms_scores,
    "lamp": lamp_scores,
}


def compute_scores(weights: Sequence[torch.Tensor], score: str = "magnitude") -> list[torch.Tensor]:
    """Scores of the named criterion (see ``SCORE_FUNCTIONS``)."""
    try:
        return SCORE_FUNCTIONS[score](weights)
    except KeyError:
        raise ProjectionError(
            f"unknown score {score!r}; choose one of {sorted(SCORE_FUNCTIONS)}"
        ) from None
