"""Post-training structured pruning under one global ratio: MLP neurons and attention groups
removed across all blocks, the model shrunk to a smaller dense one.

From calibration batches, one pass over the dense model gathers, per block, the Gram matrices
of the down projection's inputs (the neurons' activations) and of the output projection's
inputs (the heads' outputs). A unit's score is the mean squared norm of what it adds to the
residual stream: for neuron i, E[a_i²]·‖W_down[:, i]‖²; for an attention group, E‖O_g h_g‖²
with O_g its columns of the output projection. Every block writes into the same residual
stream, so these scores compare between blocks and between the two kinds of unit.

- ``global``: units leave in order of score per weight, lowest first, until the share of
  the blocks' unit weights removed reaches ``percent`` (every block keeps at least one neuron
  and one group); each block's widths come out of the ranking.
- ``uniform``: every block removes the same share of its neurons and of its groups.

With ``reconstruct`` (the default) the down and output projections are then refitted to
their dense outputs on the calibration data by least squares over the kept units (one
factorization per layer: W' = W G[:, S] (G[S, S] + λI)⁻¹), which recovers much of what the
removed units added.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..projection import check_percent
from ..selection import linear_weight
from ..unit_contribution import output_contributions, unit_blocks
from .blocks import find_blocks
from .errors import OneShotError
from .inputs import call_model, model_input, no_cache
from .units import WIDTHS_KEY, BlockUnits, block_units, cut_block

__all__ = ["STRUCTURED_ALLOCATIONS", "StructuredResult", "prune_units", "unit_scores"]

STRUCTURED_ALLOCATIONS = ("global", "uniform")
DAMPING = 0.01  # λ as a share of the mean diagonal of the kept units' Gram matrix


@dataclass
class _Gram:
    """Σ xᵀx of one projection's inputs over the calibration tokens."""

    matrix: torch.Tensor
    tokens: int = 0

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        if self.matrix.device != flat.device:  # a model on an accelerator: sum there
            self.matrix = self.matrix.to(flat.device)
        self.matrix += flat.t() @ flat
        self.tokens += flat.shape[0]


@torch.no_grad()
def _grams(model: nn.Module, units: list[BlockUnits], batches: Iterable
           ) -> list[tuple[_Gram, _Gram]]:
    grams = [(_Gram(torch.zeros(u.neurons, u.neurons, dtype=torch.float64)),
              _Gram(torch.zeros(u.groups * u.heads_per_group * u.head_dim,
                                u.groups * u.heads_per_group * u.head_dim,
                                dtype=torch.float64))) for u in units]
    hooks = []
    for u, (mlp, attention) in zip(units, grams, strict=True):
        hooks.append(u.mlp_out.register_forward_pre_hook(
            lambda _m, args, gram=mlp: gram.add(args[0])))
        hooks.append(u.o_proj.register_forward_pre_hook(
            lambda _m, args, gram=attention: gram.add(args[0])))
    device = next(model.parameters()).device
    try:
        with no_cache(model):
            for batch in batches:
                call_model(model, model_input(batch), device)
    finally:
        for hook in hooks:
            hook.remove()
    if not grams or grams[0][0].tokens == 0:
        raise OneShotError("no calibration batch reached the blocks")
    return grams


def _out_in(module: nn.Module) -> torch.Tensor:
    return linear_weight(module).double()


def unit_scores(units: BlockUnits, mlp: _Gram, attention: _Gram
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per neuron, per group) mean squared contribution to the residual stream."""
    neurons = torch.arange(units.neurons)[:, None]
    groups = units.group_columns(torch.arange(units.groups)).reshape(units.groups, -1)
    found = []
    for module, gram, index in ((units.mlp_out, mlp, neurons), (units.o_proj, attention, groups)):
        # [count, width, out]: each unit's columns of the [out, in] weight, transposed
        columns = _out_in(module).t()[index.reshape(-1)].reshape(*index.shape, -1)
        found.append(output_contributions(columns, unit_blocks(gram.matrix, index),
                                          gram.tokens).float())
    return found[0], found[1]


def _choose(units: list[BlockUnits], scores: list[tuple[torch.Tensor, torch.Tensor]],
            percent: float, allocation: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, the kept (neurons, groups), sorted."""
    if allocation == "uniform":
        kept = []
        for u, (neuron_scores, group_scores) in zip(units, scores, strict=True):
            chosen = []
            for s, count in ((neuron_scores, u.neurons), (group_scores, u.groups)):
                keep = max(1, count - int(count * percent / 100))
                chosen.append(s.argsort(descending=True)[:keep].sort().values)
            kept.append((chosen[0], chosen[1]))
        return kept
    total = sum(u.total_weights() for u in units)
    target = total * percent / 100
    # (score per weight, block, kind, index, weights)
    candidates = []
    for b, (u, (neuron_scores, group_scores)) in enumerate(zip(units, scores, strict=True)):
        for kind, s, weights in ((0, neuron_scores, u.neuron_weights()),
                                 (1, group_scores, u.group_weights())):
            candidates += [(float(v) / weights, b, kind, i, weights)
                           for i, v in enumerate(s.tolist())]
    candidates.sort()
    left = [[u.neurons, u.groups] for u in units]
    removed_units: list[list[set[int]]] = [[set(), set()] for _ in units]
    removed = 0
    for _, b, kind, i, weights in candidates:
        if removed >= target:
            break
        if left[b][kind] <= 1:  # a block keeps one neuron and one group
            continue
        removed_units[b][kind].add(i)
        left[b][kind] -= 1
        removed += weights
    return [tuple(torch.tensor(sorted(set(range(n)) - gone[k]), dtype=torch.long)
                  for k, n in enumerate((u.neurons, u.groups)))  # type: ignore[misc]
            for u, gone in zip(units, removed_units, strict=True)]


def _refit(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Least-squares weights [out, kept] whose outputs on the kept inputs best match
    ``weight``'s on all inputs: W G[:, S] (G[S, S] + λI)⁻¹."""
    sub = gram[kept][:, kept]
    damp = DAMPING * torch.diagonal(sub).mean().clamp_min(1e-12)
    sub = sub + damp * torch.eye(len(kept), dtype=sub.dtype, device=sub.device)
    cross = weight @ gram[:, kept]  # [out, kept]
    return torch.linalg.solve(sub, cross.t()).t()  # sub is symmetric


@dataclass
class StructuredResult:
    """What :func:`prune_units` kept: per block, neurons and groups before and after."""

    allocation: str
    percent: float
    blocks: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(b["weights_before"] for b in self.blocks)

    @property
    def kept(self) -> int:
        return sum(b["weights_after"] for b in self.blocks)

    def widths(self) -> dict[str, dict[str, int]]:
        """Per block name, the neurons and attention groups it keeps (what a loader needs)."""
        return {b["name"]: {"neurons": b["neurons_after"], "groups": b["groups_after"]}
                for b in self.blocks}

    def summary(self) -> dict[str, Any]:
        """The record's form (the keys of the unstructured result's summary, and widths)."""
        return {"method": "units", "allocation": self.allocation, "percent": self.percent,
                "kept": self.kept, "total": self.total,
                "sparsity_percent": 100.0 * (1 - self.kept / self.total) if self.total
                else 0.0,
                "blocks": [{**b, "kept": b["weights_after"], "total": b["weights_before"]}
                           for b in self.blocks],
                "seconds": dict(self.seconds)}


@torch.no_grad()
def prune_units(model: nn.Module, calibration: Iterable, *, percent: float,
                allocation: str = "global", reconstruct: bool = True,
                pattern: str | None = None,
                blocks: Sequence[tuple[str, nn.Module]] | None = None) -> StructuredResult:
    """Remove ``percent`` of the blocks' unit weights as whole MLP neurons and attention
    groups, and shrink the model in place.

    Args:
        model: a Hugging Face (or any) causal LM whose blocks are Llama-style or GPT-2.
        calibration: token batches ``[B, T]`` or ``(x, y)`` pairs.
        percent: the share of the blocks' weights in units (q/k/v/o and the MLP) removed.
        allocation: ``"global"`` (one ranking over every block) or ``"uniform"``.
        reconstruct: refit the down and output projections by least squares.
        pattern: names the blocks (see :func:`~.blocks.find_blocks`).
        blocks: the blocks themselves, instead of ``pattern``.

    Raises:
        OneShotError: a bad percent or allocation, a block of an unknown layout, or no
            calibration data.
    """
    try:
        check_percent(float(percent))
    except Exception as err:  # ProjectionError, TypeError, ValueError
        raise OneShotError(f"bad percent: {err}") from None
    if allocation not in STRUCTURED_ALLOCATIONS:
        raise OneShotError(f"allocation must be one of {STRUCTURED_ALLOCATIONS}, got "
                           f"{allocation!r}")
    units = block_units(list(blocks) if blocks is not None else find_blocks(model, pattern))
    result = StructuredResult(allocation, float(percent))
    start = time.perf_counter()
    grams = _grams(model, units, list(calibration))
    scores = [unit_scores(u, mlp, attention) for u, (mlp, attention) in
              zip(units, grams, strict=True)]
    result.seconds["statistics"] = time.perf_counter() - start
    start = time.perf_counter()
    chosen = _choose(units, scores, float(percent), allocation)
    for u, (mlp, attention), (neurons, groups) in zip(units, grams, chosen, strict=True):
        before = (u.neurons, u.groups, u.total_weights())
        down = o = None
        if reconstruct:
            down = _refit(_out_in(u.mlp_out), mlp.matrix, neurons)
            o = _refit(_out_in(u.o_proj), attention.matrix, u.group_columns(groups))
        cut_block(u, neurons, groups, down, o)
        result.blocks.append({"name": u.name, "neurons_before": before[0],
                              "neurons_after": u.neurons, "groups_before": before[1],
                              "groups_after": u.groups, "weights_before": before[2],
                              "weights_after": u.total_weights()})
    result.seconds["prune"] = time.perf_counter() - start
    result.seconds["total"] = result.seconds["statistics"] + result.seconds["prune"]
    config = getattr(model, "config", None)
    if config is not None:  # so that a saved model records its widths (config.json)
        setattr(config, WIDTHS_KEY, result.widths())
    return result
