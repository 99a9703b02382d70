"""Post-training pruning in one call: a trained model, calibration batches, one removal ratio.

:func:`prune_oneshot` (exported as ``admmprune.oneshot``) prunes a model block by block
(:func:`~.engine.prune_blocks`) with a layer method (magnitude, Wanda, SparseGPT or ADMM
reconstruction) under one of three allocations of the budget:

- ``uniform``: every layer removes the same share;
- ``owl``: OWL's per-block shares (Yin et al. 2023) from the dense blocks' outlier ratios,
  shifted so that exactly the global budget survives (:mod:`.owl`);
- ``global``: one budget K for the whole model, split by the method itself. A first,
  dense pass measures every layer's error curve: the layer pruned by the same method at a
  grid of ratios, each result priced by :func:`~.sensitivity.weighted_error`, i.e. the
  reconstruction error weighted by how much the model's loss cares about each of the
  layer's outputs (:func:`~.sensitivity.output_sensitivities`, one backward pass over the
  calibration batches). Then the K survivors go where the sum of those costs is least
  (:func:`~.allocation.allocate_global`, exact on the curves' convex envelopes), and the
  second pass prunes block by block at those shares.

Exactly K weights survive under every allocation (N:M: N of every M, in every layer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import nn

from ..projection import ProjectionError, check_percent, survivor_count
from .allocation import AllocationError, allocate_global, counts_for_percents, marginal_costs
from .blocks import find_blocks
from .budgets import Budget
from .engine import LayerRecord, block_layers, prune_blocks
from .errors import OneShotError
from .methods import LayerMethod, layer_method
from .owl import OWLError, outlier_ratio, owl_ratios
from .sensitivity import output_sensitivities, weighted_error

__all__ = ["ALLOCATIONS", "DEFAULT_GRID", "MAX_LAYER_PERCENT", "OneShotResult",
           "curve_percents", "prune_oneshot", "layer_shares", "removal_cap"]

ALLOCATIONS = ("uniform", "owl", "global")
# offsets from the target (percent points) at which the global allocation measures each
# layer's error curve: dense near the target, where the shares settle; past the last point
# (the removal cap, :func:`removal_cap`) a layer's removals cost +inf. The greedy stops on
# the curves' vertices, so the spacing near the target is the allocation's resolution: with
# 5-point steps most layers of the Llama reference at 90% sat on a grid point (docs/results.md
# section 14); 2-point steps there cost 4 more error points per layer
DEFAULT_GRID = (-30.0, -20.0, -10.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 10.0, 20.0)
MAX_LAYER_PERCENT = 98.0


def removal_cap(target: float, most: float | None = None) -> float:
    """The most a layer may lose under the global allocation at ``target`` percent.

    By default halfway from the target to 100%, and never past :data:`MAX_LAYER_PERCENT`:
    the error curves price removals by a local (second-order) model of the loss, which
    understates the damage far past the uniform share; on the converged Llama reference at
    90% the uncapped allocation emptied two layers of the first block to 2% and lost to
    uniform ratios (docs/results.md section 14).

    Raises:
        OneShotError: ``most`` not above the target or not below 100.
    """
    if most is None:
        return min(MAX_LAYER_PERCENT, target + (100.0 - target) / 2)
    if not target < most < 100.0:
        raise OneShotError(f"max_layer_percent must lie between the target ({target:g}) and "
                           f"100, got {most:g}: no layer could take the removals the budget "
                           "needs, or every weight of one could go")
    return float(most)


def curve_percents(target: float, grid: Sequence[float] = DEFAULT_GRID,
                   most: float = MAX_LAYER_PERCENT) -> list[float]:
    """The removal percents of the error curves for a global ``target``: ``target + offset``
    for each offset of ``grid`` inside (0, ``most``), and ``most`` itself."""
    points = {round(target + offset, 6) for offset in grid if 0 < target + offset < most}
    return sorted(points | {most})


@dataclass
class OneShotResult:
    """What :func:`prune_oneshot` did.

    Attributes:
        records: one per pruned layer, in model order (kept, total, seconds, block).
        percents: the removal percent each layer was given (``{}`` for N:M).
        allocation: ``"uniform"``, ``"owl"`` or ``"global"``.
        method: the layer method's name.
        seconds: wall time per phase (``sensitivity``, ``analysis``, ``prune``, ``total``).
        outlier_ratios: OWL's per-block outlier ratios (owl only).
    """

    records: list[LayerRecord]
    percents: dict[str, float]
    allocation: str
    method: str
    seconds: dict[str, float] = field(default_factory=dict)
    outlier_ratios: list[float] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.records)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.records)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for a JSON record: totals, per-layer and per-block kept weights."""
        blocks: dict[str, list[int]] = {}
        for r in self.records:
            kept_total = blocks.setdefault(r.block, [0, 0])
            kept_total[0] += r.kept
            kept_total[1] += r.total
        return {
            "method": self.method, "allocation": self.allocation, "kept": self.kept,
            "total": self.total,
            "sparsity_percent": 100.0 * (1 - self.kept / self.total) if self.total else 0.0,
            "seconds": dict(self.seconds),
            "layers": [{"name": r.name, "block": r.block, "kept": r.kept, "total": r.total,
                        "seconds": r.seconds} for r in self.records],
            "blocks": [{"name": name, "kept": k, "total": n} for name, (k, n) in blocks.items()],
            **({"outlier_ratios": list(self.outlier_ratios)} if self.outlier_ratios else {}),
        }


class _Probe:
    """A layer "method" that prunes nothing: it measures, on the dense model's statistics,
    what a global or OWL allocation needs, and hands every weight back as it was."""

    statistic: str | None = "gram"

    def __init__(self, method: LayerMethod, grid: Sequence[float] | None,
                 sensitivities: Mapping[str, torch.Tensor] | None, owl_m: float | None,
                 curve_rows: int | None = None, seed: int = 0) -> None:
        self.name = f"{method.name} (analysis)"
        self.method = method
        self.grid = grid
        self.sensitivities = sensitivities
        self.owl_m = owl_m
        self.curve_rows = curve_rows
        self.generator = torch.Generator().manual_seed(seed)
        self.curves: dict[str, tuple[list[int], list[float]]] = {}
        self.scores: dict[str, torch.Tensor] = {}

    def prune(self, name: str, weight: torch.Tensor, statistic: torch.Tensor | None,
              budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
        assert statistic is not None
        if self.grid is not None and self.sensitivities is not None:
            rows, sensitivity = weight, self.sensitivities[name]
            if self.curve_rows is not None and weight.shape[0] > self.curve_rows:
                # the curve of a random sample of rows, scaled to the layer: rows share the
                # inputs' XᵀX, so the sample's error per row estimates the layer's
                chosen = torch.randperm(weight.shape[0], generator=self.generator)[
                    :self.curve_rows].sort().values
                rows, sensitivity = weight[chosen], sensitivity[chosen.to(sensitivity.device)]
            scale = weight.shape[0] / rows.shape[0]
            # the probe gathers XᵀX; a method that reads the inputs' square sums (Wanda)
            # gets its diagonal, which they are
            given = torch.diagonal(statistic) if self.method.statistic == "norms" \
                else statistic
            removed, errors = [], []
            for percent in self.grid:
                pruned, _ = self.method.prune(name, rows, given, Budget(all_percent=percent))
                removed.append(weight.numel() - survivor_count(weight.numel(), percent))
                errors.append(scale * weighted_error(pruned.double() - rows.double(), statistic,
                                                     sensitivity))
            self.curves[name] = (removed, errors)
        if self.owl_m is not None:  # Wanda's scores |W_ij|·‖X_j‖ on the dense inputs
            norms = torch.diagonal(statistic).clamp_min(0).sqrt()
            self.scores[name] = (weight.double().abs() * norms).float()
        return weight, torch.ones_like(weight, dtype=torch.bool)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _output_size(module: nn.Module, input_dim: int) -> int:
    return int(_weight(module).shape[0 if input_dim == 1 else 1])


def layer_shares(sizes: Sequence[int], keep: int, allocation: str, *,
                 curves: Sequence[tuple[Sequence[int], Sequence[float]]] | None = None,
                 block_of: Sequence[int] | None = None,
                 block_outlier_ratios: Sequence[float] | None = None,
                 target_percent: float | None = None, owl_lambda: float = 0.08
                 ) -> list[int]:
    """Survivors per layer summing to ``keep`` exactly, by ``allocation``.

    Args:
        sizes: weights per layer.
        keep: the global budget K.
        allocation: ``"uniform"``, ``"owl"`` or ``"global"``.
        curves: (global) per layer, ``(removal counts, costs)`` measured on a grid.
        block_of: (owl) the block index of every layer.
        block_outlier_ratios: (owl) per block.
        target_percent: (owl) the global removal percent.
        owl_lambda: (owl) OWL's λ.

    Raises:
        OneShotError: an unknown allocation or missing measurements.
    """
    total = sum(sizes)
    if allocation == "uniform":
        percent = 100.0 * (total - keep) / total
        return counts_for_percents(sizes, [percent] * len(sizes), keep)
    if allocation == "global":
        if curves is None or len(curves) != len(sizes):
            raise OneShotError("the global allocation needs an error curve per layer")
        try:
            costs = [marginal_costs(r, e, n) for (r, e), n in zip(curves, sizes, strict=True)]
            return allocate_global(costs, keep)
        except AllocationError as err:
            raise OneShotError(f"the global allocation failed: {err}") from None
    if allocation == "owl":
        if block_of is None or block_outlier_ratios is None or target_percent is None:
            raise OneShotError("the OWL allocation needs the blocks' outlier ratios")
        block_sizes = [0] * len(block_outlier_ratios)
        for b, n in zip(block_of, sizes, strict=True):
            block_sizes[b] += n
        try:
            per_block = owl_ratios(block_outlier_ratios, target_percent, owl_lambda,
                                   sizes=block_sizes, most=MAX_LAYER_PERCENT)
        except OWLError as err:
            raise OneShotError(str(err)) from None
        return counts_for_percents(sizes, [per_block[b] for b in block_of], keep)
    raise OneShotError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got "
                       f"{allocation!r}")


def prune_oneshot(model: nn.Module, calibration: Iterable, *, method: str | LayerMethod = "admm",
                  all_percent: float | None = None, nm: tuple[int, int] | None = None,
                  allocation: str | None = None, include: Sequence[str] | None = None,
                  exclude: Sequence[str] | None = None, pattern: str | None = None,
                  order: str = "sequential", max_batches: int | None = None,
                  device: torch.device | str | None = None, progress: bool = True,
                  grid: Sequence[float] = DEFAULT_GRID, curve_rows: int | None = 32,
                  max_layer_percent: float | None = None,
                  curve_method: str | LayerMethod | None = None, owl_m: float = 5.0,
                  owl_lambda: float = 0.08,
                  loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                  keep_masks: bool = False, **method_options: Any) -> OneShotResult:
    """Prune a trained model in place from calibration batches alone, block by block.

    Args:
        model: the trained model (a Hugging Face causal LM, the project's gpt/llama, or any
            module whose blocks ``pattern`` names).
        calibration: token batches ``[B, T]`` or ``(x, y)`` pairs (read several times: a
            list, or anything iterable more than once).
        method: ``"admm"`` (layer-wise ADMM reconstruction), ``"sparsegpt"``, ``"wanda"``,
            ``"magnitude"`` or a :class:`~.methods.LayerMethod`.
        all_percent: the share of all selected weights removed (one global budget), or
        nm: ``(N, M)`` in every layer; exactly one.
        allocation: how the budget is split between layers: ``"global"`` (the default for
            ``admm``), ``"uniform"`` (the default for the others and the only one with
            ``nm``) or ``"owl"``.
        include, exclude: the selection patterns (:func:`admmprune.prunable_parameters`).
        pattern: names the blocks (see :func:`~.blocks.find_blocks`).
        order: ``"sequential"`` (each group of a block's layers calibrated on the block
            with the groups before it pruned) or ``"block"``.
        max_batches: use at most this many calibration batches.
        device: where batches go (default: the model's).
        progress: progress bars over the blocks.
        grid: (global) offsets from ``all_percent`` at which the error curves are measured
            (:func:`curve_percents`).
        max_layer_percent: (global) the most any layer loses (None: halfway from
            ``all_percent`` to 100%, at most :data:`MAX_LAYER_PERCENT`; :func:`removal_cap`).
        curve_rows: (global) measure each curve on this many of the layer's output rows,
            drawn at random (seeded) and scaled to the layer (None: every row); the curves
            cost about ``curve_rows / rows`` of a full solve per point.
        curve_method: (global) the layer method that measures the curves (None: ``method``
            itself; ``"sparsegpt"`` is cheaper than ``"admm"``).
        owl_m, owl_lambda: (owl) the outlier threshold M and the spread λ.
        loss_fn: (global) the calibration loss ``loss_fn(model(x), y)`` whose gradients
            weigh each layer's outputs (None: next-token cross-entropy; see
            :func:`~.sensitivity.output_sensitivities`).
        keep_masks: keep every layer's boolean mask in its record (``records[i].mask``, in
            the weight's layout, on the CPU).
        **method_options: options of a method given by name (e.g. ``iterations=30``).

    Returns:
        A :class:`OneShotResult`.

    Raises:
        OneShotError: bad options (checked before any work), or what the engine refuses.
    """
    started = time.perf_counter()
    layer = layer_method(method, **method_options)
    if allocation is None:
        allocation = "global" if layer.name == "admm" and nm is None else "uniform"
    if allocation not in ALLOCATIONS:
        raise OneShotError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got "
                           f"{allocation!r}")
    if (all_percent is None) == (nm is None):
        raise OneShotError("give exactly one of all_percent and nm=(N, M)")
    if nm is not None:
        if allocation != "uniform":
            raise OneShotError(f"N:M keeps N of every M weights in every layer: there is no "
                               f"share to allocate ({allocation!r}); use allocation='uniform'")
    else:
        try:
            check_percent(float(all_percent))  # type: ignore[arg-type]
        except (ProjectionError, TypeError, ValueError) as err:
            raise OneShotError(f"bad all_percent: {err}") from None
    if max_layer_percent is not None:
        if allocation != "global":
            raise OneShotError(f"max_layer_percent caps the global allocation's shares; the "
                               f"{allocation!r} allocation sets its own: drop it")
        removal_cap(float(all_percent), max_layer_percent)  # type: ignore[arg-type]
    batches = list(islice(calibration, max_batches))
    if not batches:
        raise OneShotError("no calibration batch: the calibration data is empty")
    blocks = find_blocks(model, pattern)
    per_block = block_layers(model, blocks, include, exclude, layer.name)
    layers = [(name, module, dim, b) for b, entries in enumerate(per_block)
              for name, module, dim in entries]
    if not layers:
        raise OneShotError("no layer to prune inside the blocks: check include/exclude")
    sizes = [int(_weight(module).numel()) for _, module, _, _ in layers]
    seconds: dict[str, float] = {}
    if nm is not None:
        budget: dict[str, float] | None = None
        outliers: list[float] = []
    else:
        keep = survivor_count(sum(sizes), float(all_percent))  # type: ignore[arg-type]
        budget, outliers = _shares(model, batches, layer, layers, sizes, keep, allocation,
                                   all_percent=float(all_percent),  # type: ignore[arg-type]
                                   include=include, exclude=exclude, pattern=pattern,
                                   device=device, progress=progress, grid=grid,
                                   most=max_layer_percent, curve_rows=curve_rows, owl_m=owl_m,
                                   curve_method=layer_method(curve_method)
                                   if curve_method is not None else layer,
                                   owl_lambda=owl_lambda, loss_fn=loss_fn, seconds=seconds)
    start = time.perf_counter()
    records = prune_blocks(model, batches, layer, all_percent=budget, nm=nm, include=include,
                           exclude=exclude, pattern=pattern, order=order, device=device,
                           progress=progress, keep_masks=keep_masks)
    seconds["prune"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - started
    return OneShotResult(records, dict(budget or {}), allocation, layer.name, seconds,
                         outliers)


def _shares(model: nn.Module, batches: list, layer: LayerMethod, layers: list, sizes: list[int],
            keep: int, allocation: str, *, all_percent: float, include, exclude, pattern,
            device, progress: bool, grid: Sequence[float], most: float | None,
            curve_rows: int | None,
            curve_method: LayerMethod, owl_m: float, owl_lambda: float,
            loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None,
            seconds: dict[str, float]) -> tuple[dict[str, float], list[float]]:
    """``({weight name: removal percent}, outlier ratios)`` under ``allocation``."""
    outliers: list[float] = []
    curves = None
    if allocation != "uniform":
        sensitivities = None
        if allocation == "global":
            start = time.perf_counter()
            found = output_sensitivities(
                model, [(module, _output_size(module, dim)) for _, module, dim, _ in layers],
                batches, loss_fn=loss_fn, device=device)
            sensitivities = {name: g for (name, _, _, _), g in zip(layers, found, strict=True)}
            seconds["sensitivity"] = time.perf_counter() - start
        probe = _Probe(curve_method, curve_percents(
            all_percent, grid, removal_cap(all_percent, most)) if allocation == "global"
                       else None, sensitivities,
                       owl_m if allocation == "owl" else None, curve_rows)
        start = time.perf_counter()
        with torch.no_grad():
            prune_blocks(model, batches, probe, all_percent=0.0, include=include,
                         exclude=exclude, pattern=pattern, order="block", device=device,
                         progress=progress)
        seconds["analysis"] = time.perf_counter() - start
        if allocation == "global":
            curves = [probe.curves[name] for name, _, _, _ in layers]
        else:
            n_blocks = max(b for _, _, _, b in layers) + 1
            outliers = [outlier_ratio([probe.scores[name] for name, _, _, b in layers
                                       if b == block], m=owl_m)
                        for block in range(n_blocks)]
    counts = layer_shares(sizes, keep, allocation, curves=curves,
                          block_of=[b for _, _, _, b in layers],
                          block_outlier_ratios=outliers or None, target_percent=all_percent,
                          owl_lambda=owl_lambda)
    percents = {name: 100.0 * (n - k) / n
                for (name, _, _, _), n, k in zip(layers, sizes, counts, strict=True)}
    return percents, outliers
