"""The removable units of a transformer's blocks, and how to cut them out.

Two kinds of unit: an MLP neuron (a row of the up/gate projections, the matching column of the
down projection) and an attention group (one key-value head with the query heads that read it:
its q/k/v rows and its columns of the output projection; a plain multi-head model has one query
head per group). Removing whole key-value groups keeps every group's query-to-key ratio, so a
Llama-style model with grouped-query attention runs unchanged after the cut.

Known block layouts: Llama-style (``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``:
Llama, Mistral, Qwen2 in Hugging Face transformers) and GPT-2 (``attn.c_attn``/``c_proj`` and
``mlp.c_fc``/``c_proj``, Hugging Face ``Conv1D`` layers stored [in, out]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..selection import is_transposed_linear, linear_weight
from ..unit_projection import UnitFamily, unit_rows
from .errors import OneShotError

__all__ = ["WIDTHS_KEY", "BlockUnits", "block_units", "cut_block", "shrink_to_widths",
           "unit_families", "shrink_units"]


# Modules are typed ``Any`` below: this file reads and sets the attributes of Hugging Face
# layers (``nf``, ``split_size``).


def _set(module: Any, weight_out_in: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Replaces the weight (given [out, in]) and bias, and the size attributes."""
    stored = weight_out_in.t() if is_transposed_linear(module) else weight_out_in
    module.weight = nn.Parameter(stored.contiguous().clone(),
                                 requires_grad=module.weight.requires_grad)
    if bias is not None:
        module.bias = nn.Parameter(bias.contiguous().clone(),
                                   requires_grad=module.bias.requires_grad)
    if is_transposed_linear(module):
        module.nf = weight_out_in.shape[0]
    else:
        module.out_features, module.in_features = weight_out_in.shape


def _keep_rows(module: Any, rows: torch.Tensor) -> None:
    bias = module.bias.detach()[rows] if module.bias is not None else None
    _set(module, linear_weight(module)[rows], bias)


def _keep_columns(module: Any, columns: torch.Tensor,
                  weight: torch.Tensor | None = None) -> None:
    """Keeps ``columns`` of the input; ``weight`` [out, kept] replaces them when given (a
    reconstruction)."""
    new = linear_weight(module)[:, columns] if weight is None else weight
    _set(module, new.to(module.weight.dtype), None)


@dataclass
class BlockUnits:
    """One block's units: ``neurons`` MLP neurons, ``groups`` attention groups of
    ``heads_per_group`` query heads of ``head_dim``."""

    name: str
    block: nn.Module
    layout: str  # "llama" or "gpt2"
    mlp_in: list[nn.Module]  # their output rows are the neurons
    mlp_out: nn.Module  # its input columns are the neurons
    attention: nn.Module
    o_proj: nn.Module  # its input columns are the heads' outputs
    neurons: int
    groups: int
    heads_per_group: int
    head_dim: int
    hidden: int

    def neuron_weights(self) -> int:
        return self.hidden * (len(self.mlp_in) + 1)

    def group_weights(self) -> int:
        # q and o: heads_per_group heads each; k and v: one head each
        return self.hidden * self.head_dim * (2 * self.heads_per_group + 2)

    def group_columns(self, groups: torch.Tensor) -> torch.Tensor:
        """The output projection's input columns (= the query rows) of ``groups``."""
        width = self.heads_per_group * self.head_dim
        return (groups[:, None] * width + torch.arange(width)).reshape(-1)

    def total_weights(self) -> int:
        return self.neurons * self.neuron_weights() + self.groups * self.group_weights()


def _llama(name: str, block: Any) -> BlockUnits:
    attention, mlp = block.self_attn, block.mlp
    head_dim = int(attention.head_dim)
    queries = linear_weight(attention.q_proj).shape[0] // head_dim
    keys = linear_weight(attention.k_proj).shape[0] // head_dim
    return BlockUnits(name, block, "llama", [mlp.gate_proj, mlp.up_proj], mlp.down_proj,
                      attention, attention.o_proj, linear_weight(mlp.down_proj).shape[1], keys,
                      queries // keys, head_dim, linear_weight(mlp.down_proj).shape[0])


def _gpt2(name: str, block: Any) -> BlockUnits:
    attention, mlp = block.attn, block.mlp
    head_dim = int(attention.head_dim)
    heads = linear_weight(attention.c_attn).shape[0] // (3 * head_dim)
    return BlockUnits(name, block, "gpt2", [mlp.c_fc], mlp.c_proj, attention,
                      attention.c_proj, linear_weight(mlp.c_proj).shape[1], heads, 1, head_dim,
                      linear_weight(mlp.c_proj).shape[0])


def block_units(blocks: list[tuple[str, nn.Module]]) -> list[BlockUnits]:
    """The units of each block.

    Raises:
        OneShotError: a block of another layout.
    """
    found = []
    for name, block in blocks:
        attention = getattr(block, "self_attn", None)
        if attention is not None and all(hasattr(attention, p) for p in
                                         ("q_proj", "k_proj", "v_proj", "o_proj")) \
                and all(hasattr(getattr(block, "mlp", None), p) for p in
                        ("gate_proj", "up_proj", "down_proj")):
            found.append(_llama(name, block))
        elif hasattr(getattr(block, "attn", None), "c_attn") \
                and hasattr(getattr(block, "mlp", None), "c_fc"):
            found.append(_gpt2(name, block))
        else:
            raise OneShotError(f"structured pruning knows Llama-style blocks (self_attn."
                               f"q/k/v/o_proj, mlp.gate/up/down_proj) and GPT-2 blocks "
                               f"(attn.c_attn, mlp.c_fc); {name} ({type(block).__name__}) "
                               "is neither")
    return found


def cut_block(units: BlockUnits, neurons: torch.Tensor, groups: torch.Tensor,
              mlp_out_weight: torch.Tensor | None = None,
              o_proj_weight: torch.Tensor | None = None) -> None:
    """Keeps only ``neurons`` and ``groups`` (sorted index tensors, neither empty) of the
    block, in place; the ``*_weight`` arguments ([out, kept]) replace the kept columns of the
    down and output projections (a reconstruction)."""
    if neurons.numel() == 0 or groups.numel() == 0:
        raise OneShotError(f"{units.name}: a block keeps at least one neuron and one group")
    for module in units.mlp_in:
        _keep_rows(module, neurons)
    _keep_columns(units.mlp_out, neurons, mlp_out_weight)
    columns = units.group_columns(groups)
    _keep_columns(units.o_proj, columns, o_proj_weight)
    attention: Any = units.attention
    if units.layout == "llama":
        _keep_rows(attention.q_proj, columns)
        kv_rows = (groups[:, None] * units.head_dim + torch.arange(units.head_dim)).reshape(-1)
        _keep_rows(attention.k_proj, kv_rows)
        _keep_rows(attention.v_proj, kv_rows)
    else:  # c_attn's outputs are [q | k | v], each hidden wide
        hidden = units.groups * units.head_dim
        _keep_rows(attention.c_attn, torch.cat([columns + part * hidden for part in range(3)]))
        attention.num_heads = int(groups.numel())
        attention.split_size = int(columns.numel())
    units.neurons, units.groups = int(neurons.numel()), int(groups.numel())


WIDTHS_KEY = "admmprune_widths"  # in a shrunk model's config: its per-block widths


def shrink_to_widths(model: nn.Module, widths: dict[str, dict[str, int]]) -> None:
    """Cuts each named block of a freshly built ``model`` to its recorded widths (the first
    ``neurons`` neurons and ``groups`` groups: a state dict of the shrunk model then fits).

    Raises:
        OneShotError: a recorded block that ``model`` lacks.
    """
    modules = dict(model.named_modules())
    missing = [name for name in widths if name not in modules]
    if missing:
        raise OneShotError(f"the recorded widths name blocks this model lacks: {missing[:3]}")
    for units in block_units([(name, modules[name]) for name in widths]):
        width = widths[units.name]
        cut_block(units, torch.arange(int(width["neurons"])), torch.arange(int(width["groups"])))


def unit_families(model: nn.Module, names: list[str], pattern: str | None = None
                  ) -> tuple[UnitFamily, ...]:
    """The MLP neurons and attention groups of ``model``'s blocks as families of the ``units``
    projection, over the prunable tensors ``names`` (full parameter names, in the pruner's
    order): two families per block.

    Args:
        model: a model with Llama-style or GPT-2 blocks (``find_blocks``).
        names: the pruned weights; every unit tensor of every block must be among them.
        pattern: names the blocks (``find_blocks``), None to find them.

    Raises:
        BlockError: no blocks found.
        OneShotError: a block of another layout, or a unit tensor that is not pruned.
    """
    from .blocks import find_blocks

    position = {name: i for i, name in enumerate(names)}
    module_names = {id(m): n for n, m in model.named_modules()}

    def member(module: nn.Module, rows: bool, index: torch.Tensor
               ) -> tuple[int, int, torch.Tensor]:
        name = f"{module_names[id(module)]}.weight"
        if name not in position:
            raise OneShotError(f"structure 'units' removes whole neurons and attention "
                               f"groups, which span {name}, but that weight is not pruned: "
                               "include every q/k/v/o and MLP projection of the blocks")
        # rows of the [out, in] view are dim 1 of a weight stored [in, out] (Conv1D)
        axis = int(rows == is_transposed_linear(module))
        return position[name], axis, index

    families = []
    for u in block_units(find_blocks(model, pattern)):
        neurons = torch.arange(u.neurons)[:, None]
        families.append(UnitFamily(f"{u.name} MLP neurons", u.neurons, tuple(
            [member(m, True, neurons) for m in u.mlp_in] + [member(u.mlp_out, False, neurons)])))
        groups = torch.arange(u.groups)
        queries = u.group_columns(groups).reshape(u.groups, -1)
        heads = (groups[:, None] * u.head_dim + torch.arange(u.head_dim)).reshape(u.groups, -1)
        attention: Any = u.attention
        if u.layout == "llama":
            attention_members = [member(attention.q_proj, True, queries),
                                 member(attention.k_proj, True, heads),
                                 member(attention.v_proj, True, heads)]
        else:  # c_attn's outputs are [q | k | v], each hidden wide
            width = u.groups * u.head_dim
            qkv = torch.cat([queries + part * width for part in range(3)], dim=1)
            attention_members = [member(attention.c_attn, True, qkv)]
        attention_members.append(member(u.o_proj, False, queries))
        families.append(UnitFamily(f"{u.name} attention groups", u.groups,
                                   tuple(attention_members)))
    return tuple(families)


def shrink_units(model: nn.Module, pattern: str | None = None) -> dict[str, dict[str, int]]:
    """Cuts every block of a units-pruned ``model`` to the neurons and attention groups that
    hold any nonzero weight, in place, and records the widths in ``model.config`` (when it
    has one) so that a saved model rebuilds (``WIDTHS_KEY``). A removed unit is all zeros,
    so it added nothing: the cut model computes what the masked one did. A block whose units
    are all zero keeps its first neuron and group (zeros too).

    Returns:
        Per block name, the neurons and groups it keeps.

    Raises:
        BlockError, OneShotError: no blocks of a known layout.
    """
    from .blocks import find_blocks

    named = list(model.named_parameters())
    values = [p.detach() for _, p in named]
    families = unit_families(model, [n for n, _ in named], pattern)
    widths = {}
    for i, u in enumerate(block_units(find_blocks(model, pattern))):
        kept = []
        for family in families[2 * i: 2 * i + 2]:
            alive = torch.nonzero(unit_rows(values, family).ne(0).any(1).cpu()).reshape(-1)
            kept.append(alive if alive.numel() else torch.zeros(1, dtype=torch.long))
        cut_block(u, kept[0], kept[1])
        widths[u.name] = {"neurons": u.neurons, "groups": u.groups}
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, WIDTHS_KEY, widths)
    return widths
