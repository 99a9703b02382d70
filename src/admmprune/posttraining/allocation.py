"""One global budget split exactly between layers: the per-layer survivor counts that
minimise the summed loss increase, given every layer's cost curve.

If removing the ``j``-th cheapest weight of layer ``l`` adds ``c_l[j]`` to the loss and each
layer's marginal costs ``c_l`` are non-decreasing (its cumulative curve is convex), then

    minimize Σ_l Σ_{j < r_l} c_l[j]   subject to   Σ_l r_l = N − K

is solved by a greedy over all marginal costs at once: remove the ``N − K`` smallest
(:func:`allocate_global`, one selection of the R-th smallest value). Every layer's removals
are then a prefix of its curve, as convexity makes them.

:func:`error_curve` measures a layer's curve, its reconstruction error ``‖X(Ŵ − W)ᵀ‖²``
after pruning it at a grid of ratios with a given solver; :func:`marginal_costs` turns such
a grid into per-weight marginals (linear interpolation, then the lower convex envelope so
that the greedy's optimality holds). :func:`counts_for_percents` turns per-layer ratios
(uniform, OWL) into integer counts that hit a budget exactly.

Pure functions on tensors and numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..projection import ProjectionError, global_topk_masks, survivor_count
from .reconstruct import admm_reconstruct, reconstruction_error
from .sparsegpt import sparsegpt_prune
from .wanda import row_masks, wanda_scores

__all__ = ["AllocationError", "SOLVERS", "allocate_global", "counts_for_percents",
           "error_curve", "marginal_costs"]

# (weight in its layout, gram, removal percent, input_dim) -> the pruned (updated) weight
Solver = Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]


class AllocationError(ValueError):
    """A budget cannot be split this way (bad counts, curves that are not convex, NaN)."""


def _check_budget(total: int, keep: int) -> None:
    if not (isinstance(keep, int) and not isinstance(keep, bool) and 0 <= keep <= total):
        raise AllocationError(f"keep must be an integer in [0, {total}], got {keep!r}")


def allocate_global(costs_per_layer: Sequence[torch.Tensor], keep: int) -> list[int]:
    """Survivors per layer that minimise the summed removal cost with exactly ``keep`` kept.

    Args:
        costs_per_layer: for every layer a 1-D tensor of non-decreasing marginal costs:
            entry ``j`` is what removing its ``(j+1)``-th weight adds (``+inf`` allowed at the
            end: removals never made). Its length is the layer's weight count.
        keep: how many weights survive over all layers.

    Returns:
        The survivor count of every layer, summing to ``keep``. Removal ``r_l = n_l − K_l``
        takes layer ``l``'s ``r_l`` first marginals. Ties at the threshold cost: the earlier
        layer (list order) gives up its weights first.

    Raises:
        AllocationError: a curve that is not 1-D, not non-decreasing or holds NaN, a budget
            out of range, or one that needs removals of infinite cost.
    """
    if not costs_per_layer:
        raise AllocationError("no layers to allocate between")
    for i, c in enumerate(costs_per_layer):
        if c.dim() != 1:
            raise AllocationError(f"layer {i}: marginal costs must be 1-D, got shape "
                                  f"{tuple(c.shape)}")
        if c.numel() > 1 and not bool((c[1:] >= c[:-1]).all()) or bool(torch.isnan(c).any()):
            raise AllocationError(f"layer {i}: marginal costs must be non-decreasing (a "
                                  f"convex curve) and not NaN; take marginal_costs' convex "
                                  f"envelope")
    sizes = [c.numel() for c in costs_per_layer]
    total = sum(sizes)
    _check_budget(total, keep)
    removals = total - keep
    if removals == 0:
        return sizes
    every = torch.cat([c.detach().double().reshape(-1) for c in costs_per_layer])
    threshold = float(torch.kthvalue(every, removals).values)
    if threshold == math.inf:
        raise AllocationError(f"removing {removals} weights needs removals the curves price "
                              f"as infinite; measure the curves further or keep more")
    removed = [int((c.double() < threshold).sum()) for c in costs_per_layer]
    left = removals - sum(removed)
    for i, c in enumerate(costs_per_layer):
        take = min(left, int((c.double() == threshold).sum()))
        removed[i] += take
        left -= take
    return [n - r for n, r in zip(sizes, removed, strict=True)]


def counts_for_percents(sizes: Sequence[int], percents: Sequence[float], keep: int
                        ) -> list[int]:
    """Integer survivor counts near ``n_l · (1 − p_l/100)`` that sum to ``keep`` exactly.

    Largest remainders: every layer gets the floor of its ideal count, then the units still
    missing go one at a time to the largest fractional parts (equal parts: the earlier
    layer); a surplus is taken back from the smallest ones. No count leaves ``[0, n_l]``.

    Args:
        sizes: weights per layer.
        percents: removal percentage per layer (uniform, OWL...), each in [0, 100].
        keep: the budget; the ideal counts must already sum to it within the layer count
            (the percents are a split of this budget, up to rounding).

    Returns:
        Survivors per layer.

    Raises:
        AllocationError: mismatched lengths, bad sizes or percents, or percents that are not
            a split of ``keep``.
    """
    if len(sizes) != len(percents) or not sizes:
        raise AllocationError(f"{len(percents)} percents for {len(sizes)} layers")
    if not all(isinstance(n, int) and n > 0 for n in sizes):
        raise AllocationError(f"sizes must be positive integers, got {list(sizes)}")
    if not all(0.0 <= float(p) <= 100.0 for p in percents):
        raise AllocationError(f"percents must lie in [0, 100], got {list(percents)}")
    _check_budget(sum(sizes), keep)
    ideal = [n * (1.0 - float(p) / 100.0) for n, p in zip(sizes, percents, strict=True)]
    if abs(sum(ideal) - keep) > len(sizes):
        raise AllocationError(f"these percents keep {sum(ideal):.1f} weights, not {keep}: "
                              f"they are not a split of this budget")
    counts = [min(n, max(0, math.floor(x))) for n, x in zip(sizes, ideal, strict=True)]
    fractions = [x - c for x, c in zip(ideal, counts, strict=True)]
    missing = keep - sum(counts)
    # largest fractional part first (earlier layer on ties); reversed order to take back
    order = sorted(range(len(sizes)), key=lambda i: (-fractions[i], i))
    step = 1 if missing > 0 else -1
    if step < 0:
        order.reverse()
    while missing:
        moved = False
        for i in order:
            if missing and 0 <= counts[i] + step <= sizes[i]:
                counts[i] += step
                missing -= step
                moved = True
        if not moved:  # unreachable: keep lies in [0, Σ n]
            raise AllocationError(f"cannot place {missing} more survivors")
    return counts


def marginal_costs(removed: Sequence[int], errors: Sequence[float], size: int
                   ) -> torch.Tensor:
    """Per-weight marginal costs of one layer from its error curve on a grid.

    The curve is the piecewise-linear interpolation of ``(removed, error)`` points (``(0, 0)``
    added when missing), replaced by its lower convex envelope; weight ``j``'s marginal is
    the envelope's slope between ``j`` and ``j + 1`` removals. Beyond the last grid point
    removals cost ``+inf``.

    Args:
        removed: removal counts where the curve was measured, increasing, in ``[0, size]``.
        errors: the error at each (e.g. from :func:`error_curve`).
        size: the layer's weight count.

    Returns:
        A float64 tensor of ``size`` non-decreasing marginals.

    Raises:
        AllocationError: mismatched or non-increasing grids, counts outside ``[0, size]``,
            non-finite errors.
    """
    points = sorted(zip((int(r) for r in removed), (float(e) for e in errors), strict=True))
    if len(points) != len(removed) or not points:
        raise AllocationError("removed and errors must be non-empty and of equal length")
    if points[0][0] != 0:
        points.insert(0, (0, 0.0))
    xs = [p[0] for p in points]
    if any(b <= a for a, b in zip(xs, xs[1:], strict=False)) or xs[-1] > size:
        raise AllocationError(f"removal counts must be distinct and within [0, {size}], got "
                              f"{list(removed)}")
    if not all(math.isfinite(p[1]) for p in points):
        raise AllocationError(f"errors must be finite, got {list(errors)}")
    hull: list[tuple[int, float]] = []
    for p in points:  # lower convex envelope (monotone chain)
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (y1 - y0) * (p[0] - x0) >= (p[1] - y0) * (x1 - x0):
                hull.pop()
            else:
                break
        hull.append(p)
    out = torch.full((size,), math.inf, dtype=torch.float64)
    for (x0, y0), (x1, y1) in zip(hull, hull[1:], strict=False):
        out[x0:x1] = (y1 - y0) / (x1 - x0)
    return out


def _admm(weight: torch.Tensor, gram: torch.Tensor, percent: float, input_dim: int
          ) -> torch.Tensor:
    return admm_reconstruct(weight, gram, keep=survivor_count(weight.numel(), percent),
                            input_dim=input_dim)[0]


def _sparsegpt(weight: torch.Tensor, gram: torch.Tensor, percent: float, input_dim: int
               ) -> torch.Tensor:
    return sparsegpt_prune(weight, gram, all_percent=percent, input_dim=input_dim)[0]


def _wanda(weight: torch.Tensor, gram: torch.Tensor, percent: float, input_dim: int
           ) -> torch.Tensor:
    norms = torch.diagonal(gram).clamp_min(0).sqrt()
    return weight * row_masks(wanda_scores(weight, norms, input_dim), percent, input_dim)


def _magnitude(weight: torch.Tensor, gram: torch.Tensor, percent: float, input_dim: int
               ) -> torch.Tensor:
    mask = global_topk_masks([weight.detach().abs()], survivor_count(weight.numel(), percent))
    return weight * mask[0]


# the layer solvers error_curve knows by name (wanda and magnitude: masks, no update)
SOLVERS: dict[str, Solver] = {"admm": _admm, "sparsegpt": _sparsegpt, "wanda": _wanda,
                              "magnitude": _magnitude}


def error_curve(weight: torch.Tensor, gram: torch.Tensor, percents: Sequence[float],
                method: str | Solver = "admm", input_dim: int = 1) -> torch.Tensor:
    """A layer's reconstruction error ``‖X(Ŵ − W)ᵀ‖² = tr((Ŵ − W) H (Ŵ − W)ᵀ)`` after pruning
    it at each removal percentage with one solver.

    Args:
        weight: the dense 2-D weight.
        gram: ``H = XᵀX`` of its calibration inputs.
        percents: removal percentages, each in [0, 100).
        method: a name in :data:`SOLVERS` or a function ``(weight, gram, percent, input_dim)
            -> pruned weight``.
        input_dim: the weight's input axis (1: ``nn.Linear``; 0: HF ``Conv1D``).

    Returns:
        A float64 tensor of one error per percentage (removed counts:
        ``n − survivor_count(n, p)``, what :func:`marginal_costs` takes).

    Raises:
        AllocationError: an unknown method. ProjectionError: a percentage outside [0, 100).
        LayerSolverError: bad shapes.
    """
    if callable(method):
        solve = method
    elif method in SOLVERS:
        solve = SOLVERS[method]
    else:
        raise AllocationError(f"method must be one of {sorted(SOLVERS)} or a function, got "
                              f"{method!r}")
    errors = []
    for p in percents:
        if not 0 <= float(p) < 100:
            raise ProjectionError(f"percents must lie in [0, 100), got {p!r}")
        errors.append(reconstruction_error(weight, solve(weight, gram, float(p), input_dim),
                                           gram, input_dim))
    return torch.tensor(errors, dtype=torch.float64)
