"""The ``output`` score of the ``units`` structure: what each unit adds to the residual stream.

A transformer's MLP neuron and attention group write into the residual stream through their
columns of one projection (the MLP's down projection, the attention's output projection).
Unit u's contribution on a token is ``O_u x_u``: its columns times its inputs to that
projection. Its mean squared norm over example tokens,

    E‖O_u x_u‖² = tr(O_u G_u O_uᵀ) / tokens,   G_u = Σ x_u x_uᵀ (the unit's block of the
                                                 projection's input Gram matrix),

is in the units of the residual stream whatever the block, so it compares between blocks and
between neurons and attention groups (for a neuron, G_u is one number: Σ a_u², and the score
is E[a_u²]·‖O[:, u]‖²). Per weight (divided by the unit's size), it is the score post-training
structured pruning ranks by (``posttraining.structured``); here the Z-step and hard prune rank
by it too, with O read from the values being projected (W + U) and G from the model as it is
at that moment.

Only the blocks G_u are gathered, never the whole Gram matrix: for a width-2048 Llama's 5632
neurons that is 5632 numbers instead of 5632².
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .unit_projection import UnitFamily, member_entries

__all__ = ["OUTPUT_UNIT_SCORE", "UnitInputs", "unit_blocks", "output_contributions",
           "read_unit_inputs", "output_unit_scores"]

OUTPUT_UNIT_SCORE = "output"


def unit_blocks(gram: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[count, width, width]: unit u's block ``gram[index[u]][:, index[u]]`` of a Gram matrix."""
    index = index.to(gram.device)
    return gram[index[:, :, None], index[:, None, :]]


def output_contributions(columns: torch.Tensor, blocks: torch.Tensor, tokens: int
                         ) -> torch.Tensor:
    """Mean squared contribution of every unit, ``tr(O_u G_u O_uᵀ) / tokens``.

    Args:
        columns: [count, width, out], unit u's columns of the output projection, transposed
            (``O_uᵀ``).
        blocks: [count, width, width], the blocks ``G_u`` (:func:`unit_blocks`).
        tokens: how many tokens the Gram sums run over.
    """
    columns = columns.to(blocks.dtype)
    return ((blocks @ columns) * columns).sum((1, 2)) / max(tokens, 1)


class UnitInputs:
    """Σ x_u x_uᵀ of one projection's inputs over tokens, for every unit at once (float64)."""

    def __init__(self, index: torch.Tensor) -> None:
        self.index = index
        width = index.shape[1]
        self.blocks = torch.zeros(index.shape[0], width, width, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        picked = flat[:, self.index.to(flat.device)]  # [tokens, count, width]
        if self.blocks.device != flat.device:  # a model on an accelerator: sum there
            self.blocks = self.blocks.to(flat.device)
        self.blocks += torch.einsum("ncw,ncv->cwv", picked, picked)
        self.tokens += flat.shape[0]


def read_unit_inputs(model: nn.Module, projections: Sequence[nn.Module],
                     indices: Sequence[torch.Tensor], example_inputs: Any) -> list[UnitInputs]:
    """The unit blocks of each projection's input Gram matrix, from one forward pass over
    ``example_inputs`` (eval mode, no gradients; the model's mode is restored).

    Args:
        projections: the output projection of each family (the module whose inputs are read).
        indices: for each, [count, width]: the input columns of every unit.

    Raises:
        RuntimeError: the forward pass failed (its own error) or never reached a projection.
    """
    from .channels.graph import observed_forward

    stats = [UnitInputs(index) for index in indices]
    handles = [module.register_forward_pre_hook(
        lambda _m, args, into=into: into.add(args[0])) for module, into in
        zip(projections, stats, strict=True)]
    observed_forward(model, example_inputs, handles)
    if any(s.tokens == 0 for s in stats):
        raise RuntimeError("the forward pass over the example inputs never reached a unit's "
                           "output projection")
    return stats


def output_unit_scores(values: Sequence[torch.Tensor], families: Sequence[UnitFamily],
                       inputs: Sequence[UnitInputs]) -> tuple[torch.Tensor, ...]:
    """Per family, every unit's contribution per weight, float64 on the CPU: ``O_u`` is read
    from ``values`` (the family's last member, its output projection), ``G_u`` from
    ``inputs`` (:func:`read_unit_inputs` over the same projections)."""
    scores = []
    for family, stats in zip(families, inputs, strict=True):
        tensor, axis, index = family.output
        columns = member_entries(values[tensor].detach(), axis, index)
        columns = columns.reshape(family.count, index.shape[1], -1)
        contribution = output_contributions(columns, stats.blocks, stats.tokens)
        scores.append((contribution / family.unit_size(values)).cpu())
    return tuple(scores)
