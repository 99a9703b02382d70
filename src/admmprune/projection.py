"""Projections onto sparsity sets: the Z-step of ADMM and the masks of hard pruning.

Every function here is pure: it takes tensors and returns boolean masks, it never
touches a model.

Tie rule (used everywhere): when several entries share the score at the threshold,
the ones that come first are kept, where "first" means the order of the tensors in
the list and then row-major (flattened) order inside each tensor. This makes every
projection deterministic and exact: the number of survivors is always the requested
one, even when all scores are equal.

Structured sets (``STRUCTURES``, selected by the pruner's ``structure``) keep whole groups
instead of single weights: ``filter`` (output filters: dim 0 of a Conv weight, rows of a
Linear weight), ``channel`` (input channels: dim 1 of a Conv weight, columns of a Linear
weight), ``nm`` (N of every M consecutive weights along the input dimension) and ``units``
(groups coupled across tensors, e.g. a transformer's MLP neurons: ``unit_projection``). Their
group tie rule is the same: equal group scores keep the group that comes first (tensor
order, then group index).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "live_masks",
    "nm_rows",
    "validate_nm",
    "live_topk_masks",
    "ProjectionError",
    "survivor_count",
    "kth_largest",
    "global_topk_masks",
    "layerwise_topk_masks",
    "magnitude_scores",
    "rms_scores",
    "lamp_scores",
    "compute_scores",
    "floored_topk_masks",
    "FOLDED_SCORE",
    "SCORES",
    "SHARE_SCORE",
    "OBD_SCORE",
    "SCORE_FUNCTIONS",
    "GROUP_SCORES",
    "StructureOptions",
    "STRUCTURES",
    "unstructured_masks",
    "filter_masks",
    "channel_masks",
    "nm_masks",
    "group_masks",
    "group_scores",
    "select_groups",
    "NOT_FINITE",
    "nm_survivors",
    "nm_removed_percent",
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


NOT_FINITE = ("scores hold NaN or infinite values; the model has diverged "
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
            raise ProjectionError(NOT_FINITE)
        flat.partition(position)
        threshold = flat[position]
        return float(threshold), int(np.count_nonzero(flat[position:] > threshold))
    flat_t = torch.cat([s.detach().reshape(-1).to(dtype) for s in scores])
    if not bool(torch.isfinite(flat_t).all()):
        raise ProjectionError(NOT_FINITE)
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
            raise ProjectionError(NOT_FINITE)
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


def floored_topk_masks(scores: Sequence[torch.Tensor], keep: int, floors: Sequence[int]
                       ) -> list[torch.Tensor]:
    """Masks keeping exactly ``keep`` entries of largest score across all tensors jointly,
    with tensor ``i`` keeping at least its own top ``floors[i]`` whatever the others score.

    Raises ``ProjectionError`` when the floors add up to more than ``keep``.
    """
    floors = [min(int(f), s.numel()) for f, s in zip(floors, scores, strict=True)]
    reserved_total = sum(floors)
    if reserved_total > keep:
        raise ProjectionError(f"the per-layer floors keep {reserved_total} weights, more than "
                              f"the {keep} the global ratio allows: lower min_layer_percent "
                              "or all_percent")
    reserved = [global_topk_masks([s], f)[0] for s, f in zip(scores, floors, strict=True)]
    if keep == reserved_total:
        return reserved
    # the reserved entries drop below every other score, so the rest of the budget goes to
    # the best of the others
    lowest = min(float(s.min()) for s in scores) - 1.0
    rest = global_topk_masks([torch.where(r, lowest, s) for s, r in
                              zip(scores, reserved, strict=True)], keep - reserved_total)
    return [r | m for r, m in zip(reserved, rest, strict=True)]


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


# The magnitude of each weight as the network uses it, with the scales of the normalizations
# next to its layer folded in (admmprune.channels.norms): it needs the model, not only the
# weights, so the pruner computes it and hands the projection raw scores.
FOLDED_SCORE = "folded"
# Each weight's share of its own output, |w_ij|·rms(x_j)/rms(y_i), from the activations of a
# forward pass (admmprune.channels.shares): also computed by the pruner.
SHARE_SCORE = "share"
# Optimal Brain Damage saliency, w² times the output Gauss-Newton diagonal from a batch's
# output gradients (admmprune.channels.curvature): also computed by the pruner.
OBD_SCORE = "obd"
#: every element score a pruner accepts
SCORES = (*SCORE_FUNCTIONS, FOLDED_SCORE, SHARE_SCORE, OBD_SCORE)


def compute_scores(weights: Sequence[torch.Tensor], score: str = "magnitude") -> list[torch.Tensor]:
    """Scores of the named criterion (see ``SCORE_FUNCTIONS``)."""
    try:
        return SCORE_FUNCTIONS[score](weights)
    except KeyError:
        raise ProjectionError(
            f"unknown score {score!r}; choose one of {sorted(SCORE_FUNCTIONS)}"
        ) from None


# -- structured projections ---------------------------------------------------------------------
#
# Every entry of STRUCTURES has one signature:
#
#     fn(values, keep, percents, allowed, options) -> masks
#
# ``keep``: survivors over all tensors jointly (global projection, used when ``percents`` is
# None); ``percents``: one removal percent for every tensor, or one per tensor (layer-wise
# projection); ``allowed``: boolean masks of entries that may survive (the previous hard
# prune when regrowth is off) or None; ``options``: the structure's own settings. A new
# structure is one such function and one registry line.


@dataclass(frozen=True)
class StructureOptions:
    """Settings of the structured projections (each structure reads its own)."""

    score: str = "magnitude"  # unstructured: element score (SCORE_FUNCTIONS)
    raw_scores: bool = False  # unstructured: the values are already the scores
    group_score: str = "l2"  # filter/channel: group score (GROUP_SCORES)
    nm_n: int = 2  # nm: keep N ...
    nm_m: int = 4  # ... of every M consecutive weights
    # filter/channel: tensors whose groups are all kept (the output layer's filters are
    # the model's outputs, e.g. its classes: removing one would remove a class)
    fixed: tuple[bool, ...] = ()
    # global filter or unstructured: which input columns of each tensor read which filters
    # of another (admmprune.channels.liveness.filter_readers); when given, the budget counts live
    # weights only (filter: a column whose filters are all removed is dead and zeroed too;
    # unstructured: a weight whose unit no kept weight reads is dead, see live_projection)
    readers: tuple = ()
    # global unstructured: the fewest entries each tensor keeps (min_layer_percent), or ()
    floors: tuple[int, ...] = ()
    # units: the families of coupled groups (admmprune.unit_projection.UnitFamily), e.g. a
    # transformer block's MLP neurons, each a row of up/gate and a column of down
    units: tuple = ()
    # units: every family's unit scores computed outside the projection (the ``output``
    # score reads the model: admmprune.unit_contribution), used in place of group_score
    unit_scores: tuple = ()


def unstructured_masks(values: Sequence[torch.Tensor], keep: int | None,
                       percents: float | Sequence[float] | None,
                       allowed: Sequence[torch.Tensor] | None,
                       options: StructureOptions) -> list[torch.Tensor]:
    """Single weights ranked by ``options.score``: global top-``keep`` or per-layer ratios.

    Entries outside ``allowed`` score -1, below any real score: never chosen again unless
    the budget exceeds the others. With ``options.readers`` (global only) the budget
    counts live weights only (``live_topk_masks``).
    """
    scores = list(values) if options.raw_scores else compute_scores(values, options.score)
    if allowed is not None:
        scores = [torch.where(m, s, -1.0) for s, m in zip(scores, allowed, strict=True)]
    if percents is not None:
        return layerwise_topk_masks(scores, percents)
    if options.readers:
        return live_topk_masks(scores, keep, options.readers, allowed)
    if options.floors:
        return floored_topk_masks(scores, keep, options.floors)
    return global_topk_masks(scores, keep)


def _rows(w: torch.Tensor, axis: int) -> torch.Tensor:
    """The groups of ``w`` as rows: axis 0 = output filters, axis 1 = input channels."""
    if w.dim() < 2:
        raise ProjectionError(f"structured pruning needs tensors with at least 2 dimensions, "
                              f"got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1) if axis == 0 else w.transpose(0, 1).reshape(w.shape[1], -1)


def _expand(keep_groups: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """A (groups,) boolean vector as a mask of ``like``'s shape."""
    shape = [1] * like.dim()
    shape[axis] = like.shape[axis]
    return keep_groups.view(shape).expand(like.shape).contiguous()


def _l2_group(rows: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(rows.float(), dim=1).double() / math.sqrt(rows.shape[1])


def _l1_group(rows: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(rows.float(), ord=1, dim=1).double() / rows.shape[1]


def _lamp_group(rows: torch.Tensor) -> torch.Tensor:
    squared = torch.linalg.vector_norm(rows.float(), dim=1).double().pow(2)
    count = squared.numel()
    # ascending order with equal norms in DEscending index order, so that among equal norms
    # the first group has the smallest suffix and the highest score (the tie rule)
    order = count - 1 - torch.argsort(squared.flip(0), stable=True)
    sorted_sq = squared[order]
    suffix = sorted_sq.flip(0).cumsum(0).flip(0)
    # `suffix == 0` so NaN norms stay NaN and are reported
    sorted_scores = torch.where(suffix == 0, torch.zeros_like(suffix), sorted_sq / suffix)
    scores = torch.empty_like(squared)
    scores[order] = sorted_scores
    return scores


# Group scores, computed inside one layer, comparable across layers: l2 = ‖g‖₂/√size (the
# RMS of the group), l1 = mean |g|, lamp = ‖g‖² / Σ{‖h‖² : ‖h‖ >= ‖g‖} over the layer's
# groups (its best group scores 1).
GROUP_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l2": _l2_group,
    "l1": _l1_group,
    "lamp": _lamp_group,
}


def group_scores(weights: Sequence[torch.Tensor], axis: int = 0, score: str = "l2"
                 ) -> list[torch.Tensor]:
    """Float64 score of every group (filter: ``axis=0``, input channel: ``axis=1``)."""
    if score not in GROUP_SCORES:
        raise ProjectionError(f"unknown group score {score!r}; choose one of "
                              f"{sorted(GROUP_SCORES)}")
    out = []
    for w in weights:
        scores = GROUP_SCORES[score](_rows(w.detach(), axis))
        if not bool(torch.isfinite(scores).all()):
            raise ProjectionError(NOT_FINITE)
        out.append(scores)
    return out


def select_groups(scores: Sequence[torch.Tensor], sizes: Sequence[int], keep: int
                  ) -> list[torch.Tensor]:
    """Groups kept under the budget rule (see ``group_masks``); one bool vector per layer."""
    kept = [torch.zeros(s.numel(), dtype=torch.bool) for s in scores]
    for k, s in zip(kept, scores, strict=True):
        if s.numel():
            k[int(torch.argmax(s))] = True  # every layer keeps its best group (first on ties)
    need = keep - sum(sz for sz, s in zip(sizes, scores, strict=True) if s.numel())
    if need <= 0:
        return kept
    flat = torch.cat([s.cpu() for s in scores])
    size = torch.cat([torch.full((s.numel(),), sz, dtype=torch.int64)
                      for s, sz in zip(scores, sizes, strict=True)])
    taken = torch.cat(kept)
    # descending score, equal scores in (tensor, group) order: stable sort of -score
    order = torch.argsort(-flat, stable=True)
    order = order[~taken[order]]
    reached = torch.cumsum(size[order], 0)
    # the shortest prefix of the ranking whose weights reach the budget
    last = int(torch.searchsorted(reached, torch.tensor([need]))[0])
    taken[order[: last + 1]] = True
    return list(torch.split(taken, [s.numel() for s in scores]))


def group_masks(values: Sequence[torch.Tensor], keep: int | None,
                percents: float | Sequence[float] | None,
                allowed: Sequence[torch.Tensor] | None, options: StructureOptions,
                axis: int = 0) -> list[torch.Tensor]:
    """Keep whole groups (``axis`` 0: output filters, 1: input channels).

    Budget rule (global, ``keep`` weights): groups are ranked by ``options.group_score``
    across all tensors (equal scores: tensor order, then group index). Every tensor first
    keeps its best group; then groups are taken down the ranking until the kept WEIGHTS
    (a group costs its size) reach ``keep``. Hence ``kept >= keep`` (never more removed than
    requested) and ``kept - keep < size of the last group taken`` (at most the largest
    group size minus 1), unless the best groups alone already exceed ``keep``. Exactly
    ``keep`` is impossible in general (a knapsack); the ranking prefix keeps the rule
    monotone: a kept group never scores below a removed one, except a layer's best group.

    Layer-wise (``percents``): tensor l keeps its ceil(keep_l / group size) best groups,
    keep_l = n_l - round(p_l n_l / 100), and at least one group even when keep_l is 0.

    Groups with no allowed entry score -1 (never chosen again while others remain); the
    returned masks are also intersected with ``allowed``.
    """
    if not values:
        raise ProjectionError("no tensors to project")
    scores = group_scores(values, axis, options.group_score)
    if allowed is not None:
        scores = [torch.where(_rows(a, axis).any(1).to(s.device), s, -1.0)
                  for s, a in zip(scores, allowed, strict=True)]
    sizes = [v.numel() // v.shape[axis] for v in values]
    fixed = list(options.fixed) or [False] * len(values)
    if len(fixed) != len(values):
        raise ProjectionError(f"got {len(fixed)} fixed flags for {len(values)} tensors")
    # fixed tensors rank first: all their groups are kept and count against the budget
    scores = [torch.full_like(s, math.inf) if f else s
              for s, f in zip(scores, fixed, strict=True)]
    if percents is None:
        total = sum(v.numel() for v in values)
        if keep is None or not 0 <= keep <= total:
            raise ProjectionError(f"cannot keep {keep} of {total} entries")
        if axis == 0 and options.readers:
            return _live_filter_masks(values, scores, sizes, keep, allowed, options.readers)
        chosen = select_groups(scores, sizes, keep)
    else:
        if isinstance(percents, (int, float)):
            percents = [float(percents)] * len(values)
        if len(percents) != len(values):
            raise ProjectionError(f"got {len(percents)} per-layer ratios for {len(values)} "
                                  "prunable tensors")
        for p in percents:
            check_percent(p)
        # a layer whose ratio leaves no weight still keeps its best group
        chosen = [torch.ones(s.numel(), dtype=torch.bool) if f else
                  select_groups([s], [sz], v.numel() - round(p * v.numel() / 100.0))[0]
                  for s, sz, v, p, f in zip(scores, sizes, values, percents, fixed,
                                            strict=True)]
    masks = [_expand(c.to(v.device), v, axis) for c, v in zip(chosen, values, strict=True)]
    if allowed is not None:
        masks = [m & a.to(m.device, torch.bool) for m, a in zip(masks, allowed, strict=True)]
    return masks


def _live_columns(chosen: Sequence[torch.Tensor], readers, values: Sequence[torch.Tensor]
                  ) -> list[torch.Tensor | None]:
    """Per tensor, its input columns still fed by a kept filter (None: all of them)."""
    live: list[torch.Tensor | None] = []
    for j, entries in enumerate(readers):
        if not entries:
            live.append(None)
            continue
        columns = values[j].shape[1]
        mapped = torch.zeros(columns, dtype=torch.bool)
        feeding = torch.zeros(columns, dtype=torch.long)
        for i, cols, filters in entries:
            mapped[cols] = True
            feeding.index_add_(0, cols, chosen[i][filters].long())
        live.append(~mapped | (feeding > 0))
    return live


def _live_count(chosen, live, values) -> int:
    total = 0
    for c, col, v in zip(chosen, live, values, strict=True):
        per_filter = v.numel() // v.shape[0]
        if col is not None:
            per_filter = per_filter // v.shape[1] * int(col.sum())
        total += int(c.sum()) * per_filter
    return total


def _live_filter_masks(values, scores, sizes, keep: int, allowed, readers
                       ) -> list[torch.Tensor]:
    """Global filter masks whose LIVE weights reach ``keep``: the smallest budget K' >= keep
    for the ranking rule of ``group_masks`` such that, once the columns of removed filters
    are dropped from their readers, at least ``keep`` weights remain (live weights grow
    with K', so a bisection finds it). Dead columns are removed from the masks."""
    if len(readers) != len(values):
        raise ProjectionError(f"got readers for {len(readers)} tensors, not {len(values)}")

    def live_at(budget: int):
        chosen = select_groups(scores, sizes, budget)
        live = _live_columns(chosen, readers, values)
        return chosen, live, _live_count(chosen, live, values)

    low, high = keep, sum(v.numel() for v in values)
    best = live_at(high)
    while low < high:
        middle = (low + high) // 2
        attempt = live_at(middle)
        if attempt[2] >= keep:
            high, best = middle, attempt
        else:
            low = middle + 1
    chosen, live, _ = best
    masks = []
    for c, col, v in zip(chosen, live, values, strict=True):
        mask = _expand(c.to(v.device), v, 0)
        if col is not None:
            mask = mask & _expand(col.to(v.device), v, 1)
        masks.append(mask)
    if allowed is not None:
        masks = [m & a.to(m.device, torch.bool) for m, a in zip(masks, allowed, strict=True)]
    return masks


def filter_masks(values: Sequence[torch.Tensor], keep: int | None,
                 percents: float | Sequence[float] | None,
                 allowed: Sequence[torch.Tensor] | None,
                 options: StructureOptions) -> list[torch.Tensor]:
    """Whole output filters (dim 0) survive; budget rule in ``group_masks``."""
    return group_masks(values, keep, percents, allowed, options, axis=0)


def channel_masks(values: Sequence[torch.Tensor], keep: int | None,
                  percents: float | Sequence[float] | None,
                  allowed: Sequence[torch.Tensor] | None,
                  options: StructureOptions) -> list[torch.Tensor]:
    """Whole input channels (dim 1: Conv input channels, Linear columns) survive."""
    return group_masks(values, keep, percents, allowed, options, axis=1)


def validate_nm(n: int, m: int) -> None:
    """Raise ProjectionError unless N and M are integers with 1 <= N < M."""
    if not (isinstance(n, int) and isinstance(m, int) and not isinstance(n, bool)
            and not isinstance(m, bool) and 1 <= n < m):
        raise ProjectionError(f"N:M sparsity needs integers 1 <= N < M, got N={n!r}, M={m!r}")


def nm_rows(w: torch.Tensor) -> torch.Tensor:
    """(out, in, *kernel) as rows along ``in``: (out·kernel, in), ``in`` innermost as in a
    channels_last implicit GEMM; a Linear (out, in) is itself."""
    if w.dim() < 2:
        raise ProjectionError(f"N:M pruning needs tensors with at least 2 dimensions, got "
                              f"shape {tuple(w.shape)}")
    return w.movedim(1, -1).reshape(-1, w.shape[1])


def nm_survivors(shape: Sequence[int], n: int = 2, m: int = 4) -> int:
    """Weights an N:M projection keeps in a tensor of this shape (remainder groups of r < M
    keep min(N, r))."""
    validate_nm(n, m)
    width = shape[1]
    rows = math.prod(shape) // width if width else 0
    return rows * ((width // m) * n + min(n, width % m))


def nm_removed_percent(shapes: Sequence[Sequence[int]], n: int = 2, m: int = 4) -> float:
    """The removal percent an N:M projection implies for these tensors."""
    total = sum(math.prod(s) for s in shapes)
    if total <= 0:
        raise ProjectionError("there are no prunable weights (N = 0)")
    return 100.0 * (total - sum(nm_survivors(s, n, m) for s in shapes)) / total


def _top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Mask of the n largest along the last dim; equal scores keep the first."""
    order = torch.argsort(-scores, dim=-1, stable=True)[..., :n]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True)


def nm_masks(values: Sequence[torch.Tensor], keep: int | None,
             percents: float | Sequence[float] | None,
             allowed: Sequence[torch.Tensor] | None,
             options: StructureOptions) -> list[torch.Tensor]:
    """N:M: in every group of M consecutive weights along the input dimension keep the N of
    largest |w| (equal magnitudes: the first). Conv (out, in, kh, kw): groups run along
    ``in`` for every (out, kh, kw), the layout of a channels_last implicit GEMM (NVIDIA's
    ASP does the same). When ``in`` is not a multiple of M, the last group of r < M weights
    keeps min(N, r). The ratio is fixed by N, M and the shapes (``nm_removed_percent``), so
    ``keep`` and ``percents`` are ignored."""
    n, m = options.nm_n, options.nm_m
    validate_nm(n, m)
    masks = []
    for i, v in enumerate(values):
        rows = nm_rows(v.detach()).abs()
        if not bool(torch.isfinite(rows).all()):
            raise ProjectionError(NOT_FINITE)
        if allowed is not None:
            rows = torch.where(nm_rows(allowed[i].to(rows.device, torch.bool)), rows, -1.0)
        width = rows.shape[1]
        full = width // m * m
        parts = []
        if full:
            parts.append(_top_n(rows[:, :full].reshape(rows.shape[0], -1, m), n)
                         .reshape(rows.shape[0], full))
        if width > full:
            parts.append(_top_n(rows[:, full:], min(n, width - full)))
        mask_rows = torch.cat(parts, dim=1)
        moved = [v.shape[0], *v.shape[2:], v.shape[1]]
        mask = mask_rows.reshape(moved).movedim(-1, 1).contiguous()
        if allowed is not None:
            mask &= allowed[i].to(mask.device, torch.bool)
        masks.append(mask)
    return masks


# name -> projection; the pruner's ``structure`` chooses one
STRUCTURES: dict[str, Callable[..., list[torch.Tensor]]] = {
    "unstructured": unstructured_masks,
    "filter": filter_masks,
    "channel": channel_masks,
    "nm": nm_masks,
}


def _units(values: Sequence[torch.Tensor], keep: int | None,
           percents: float | Sequence[float] | None, allowed: Sequence[torch.Tensor] | None,
           options: StructureOptions) -> list[torch.Tensor]:
    """Whole units spanning several tensors (a transformer's MLP neurons and attention
    groups): ``admmprune.unit_projection.unit_masks``, which builds on the group rule here
    (imported when called, so that neither module needs the other to load)."""
    from .unit_projection import unit_masks

    return unit_masks(values, keep, percents, allowed, options)


STRUCTURES["units"] = _units


# -- live weights ----------------------------------------------------------------------------
# A global top-K projection whose K counts live weights only.
#
# At high ratios plain global top-K keeps weights that cannot change the network's output:
# a weight of unit u is dead when no kept weight reads u's output (at 266.7x on LeNet-5, 64
# of the 1,614 kept weights sit in fc1 rows whose fc2 columns are all pruned). They cost
# budget and buy nothing. ``live_topk_masks`` drops them and gives their places to the
# next-ranked weights that are live, so the masks hold exactly ``keep`` live weights.
#
# Which columns read which units comes from ``admmprune.channels.liveness.filter_readers`` (built
# with ``strict=True``, so that a unit with any reader not understood there is never called
# dead). Pure functions: tensors in, boolean masks out.

Readers = Sequence[Sequence[tuple[int, torch.Tensor, torch.Tensor]]]


def _columns_used(mask: torch.Tensor) -> torch.Tensor:
    """Which input columns (dim 1) of a Conv/Linear weight mask hold a kept entry."""
    return mask.reshape(mask.shape[0], mask.shape[1], -1).any(dim=2).any(dim=0)


def _dead_units(masks: Sequence[torch.Tensor], readers: Readers) -> list[torch.Tensor | None]:
    """Per tensor, its output units that no kept column reads (None: units of a tensor with
    no mapped readers are never dead; they may feed the model's output)."""
    read: list[torch.Tensor | None] = [None] * len(masks)
    for j, entries in enumerate(readers):
        if not entries:
            continue
        used = _columns_used(masks[j])
        for i, columns, units in entries:
            if read[i] is None:
                read[i] = torch.zeros(masks[i].shape[0], dtype=torch.bool, device=used.device)
            columns, units = columns.to(used.device), units.to(used.device)
            read[i][units[used[columns]]] = True
    return [None if r is None else ~r for r in read]


def live_masks(masks: Sequence[torch.Tensor], readers: Readers
               ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """(masks without their dead weights, dead units per tensor). A unit is dead when no
    kept weight reads it; its weights go, which can leave the units it read unread too,
    so this repeats until nothing changes."""
    if len(readers) != len(masks):
        raise ProjectionError(f"got readers for {len(readers)} tensors, not {len(masks)}")
    live = [m.clone() for m in masks]
    while True:
        dead = _dead_units(live, readers)
        changed = False
        for mask, units in zip(live, dead, strict=True):
            if units is not None and bool(mask[units].any()):
                mask[units] = False
                changed = True
        if not changed:
            return live, dead


def _count(masks: Sequence[torch.Tensor]) -> int:
    return sum(int(m.count_nonzero()) for m in masks)


def _safe_additions(live: Sequence[torch.Tensor], dead: Sequence[torch.Tensor | None]
                    ) -> list[torch.Tensor]:
    """Entries that would add exactly one live weight: not kept and in a live unit's row.
    A unit such an entry starts to read had its weights dropped already, so nothing else
    comes back to life with it."""
    out = []
    for mask, units in zip(live, dead, strict=True):
        ok = ~mask
        if units is not None:
            ok = ok & ~units.view(-1, *([1] * (mask.dim() - 1)))
        out.append(ok)
    return out


def live_topk_masks(scores: Sequence[torch.Tensor], keep: int, readers: Readers,
                    allowed: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Masks of at most ``keep`` (and, unless too few entries are live or allowed,
    exactly ``keep``) live entries, chosen by score.

    The largest budget K' whose top-K' by score holds at most ``keep`` live weights is
    found by bisection (live weights never decrease as K' grows: a weight more can only
    give a unit a reader); its dead weights are dropped, and the shortfall is filled with
    the best-scored entries that add one live weight each. Entries outside ``allowed``
    are never chosen.
    """
    total = sum(s.numel() for s in scores)
    if not 0 <= keep <= total:
        raise ProjectionError(f"cannot keep {keep} of {total} entries")

    def permitted(masks):
        if allowed is None:
            return masks
        return [m & a.to(m.device, torch.bool) for m, a in zip(masks, allowed, strict=True)]

    def live_at(budget: int):
        # a forbidden entry must not keep the unit it reads alive: fence before counting
        return live_masks(permitted(global_topk_masks(scores, budget)), readers)

    low, high = keep, total
    best = live_at(low)
    while low < high:
        middle = (low + high + 1) // 2
        attempt = live_at(middle)
        if _count(attempt[0]) <= keep:
            low, best = middle, attempt
        else:
            high = middle - 1
    live, dead = best
    short = keep - _count(live)
    if short <= 0:
        return live
    candidates = permitted(_safe_additions(live, dead))
    available = _count(candidates)
    if available == 0:
        return live
    # candidates keep their scores; everything else ranks below any of them
    floor = min(float(s.min()) for s in scores) - 1.0
    ranked = [torch.where(c, s, torch.full_like(s, floor)) for s, c in
              zip(scores, candidates, strict=True)]
    extra = global_topk_masks(ranked, min(short, available))
    return [m | (e & c) for m, e, c in zip(live, extra, candidates, strict=True)]
