"""Where a global budget went in a transformer: kept fractions grouped by block and by kind
(attention q/k/v/out, MLP in/out).

GPT-2 keeps q, k and v fused in one Conv1D ``c_attn`` of shape ``[in, 3·out]``; its mask's
output columns are split into thirds, q first. Layers of other transformer naming schemes
(``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``fc1``/``fc2``, ``up_proj``/``down_proj``)
are classified by name; anything else is its own kind, named after its module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tables import format_table

__all__ = ["GroupKept", "KINDS", "kept_by_group", "format_allocation", "run_allocation"]

KINDS = ("q", "k", "v", "attn out", "mlp in", "mlp out")

# module name (the weight's parent) -> kind; GPT-2 names first
_BY_NAME = {
    "attn.c_proj": "attn out", "mlp.c_fc": "mlp in", "mlp.c_proj": "mlp out",
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "attn out", "out_proj": "attn out",
    "fc1": "mlp in", "up_proj": "mlp in", "gate_proj": "mlp in", "fc2": "mlp out",
    "down_proj": "mlp out",
}
_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks|block)\.(\d+)\.")


@dataclass(frozen=True)
class GroupKept:
    """Kept and total weights of one kind in one block (``block`` None: outside blocks)."""
    block: int | None
    kind: str
    kept: int
    total: int

    @property
    def fraction(self) -> float:
        return self.kept / self.total if self.total else 0.0


def _block(name: str) -> int | None:
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def _parts(name: str, mask: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(kind, part of the mask) of one pruned tensor."""
    module = name.removesuffix(".weight")
    if module.endswith("c_attn"):
        if mask.dim() != 2 or mask.shape[1] % 3:
            raise ValueError(f"{name}: a fused GPT-2 c_attn is [in, 3·out], got "
                             f"{tuple(mask.shape)}")
        return list(zip(("q", "k", "v"), mask.chunk(3, dim=1), strict=True))
    for suffix, kind in _BY_NAME.items():
        if module == suffix or module.endswith("." + suffix):
            return [(kind, mask)]
    return [(module.rsplit(".", 1)[-1], mask)]


def kept_by_group(names: Sequence[str], masks: Sequence[torch.Tensor]) -> list[GroupKept]:
    """Kept weights per (block, kind) of pruned tensors.

    Args:
        names: the tensors' parameter names (``transformer.h.0.attn.c_attn.weight``...).
        masks: their masks (or the weights themselves: nonzero counts as kept).

    Returns:
        One entry per (block, kind) in order of first appearance, the block taken from
        ``h.N.``/``layers.N.``/``blocks.N.`` in the name.

    Raises:
        ValueError: names and masks differ in number, or a c_attn is not ``[in, 3·out]``.
    """
    if len(names) != len(masks):
        raise ValueError(f"{len(names)} names for {len(masks)} masks")
    sums: dict[tuple[int | None, str], list[int]] = {}
    for name, mask in zip(names, masks, strict=True):
        for kind, part in _parts(name, mask):
            entry = sums.setdefault((_block(name), kind), [0, 0])
            entry[0] += int(part.count_nonzero())
            entry[1] += part.numel()
    return [GroupKept(block, kind, kept, total) for (block, kind), (kept, total) in sums.items()]


def format_allocation(groups: Sequence[GroupKept]) -> str:
    """Blocks as rows and kinds as columns, cells the kept share in %; a last row sums each
    kind over the blocks and a last column each block over its kinds."""
    kinds = [k for k in KINDS if any(g.kind == k for g in groups)]
    kinds += list(dict.fromkeys(g.kind for g in groups if g.kind not in KINDS))
    blocks = list(dict.fromkeys(g.block for g in groups))

    def cell(selected: list[GroupKept]) -> str:
        total = sum(g.total for g in selected)
        return f"{100 * sum(g.kept for g in selected) / total:.2f}%" if total else ""

    rows = []
    for block in blocks:
        mine = [g for g in groups if g.block == block]
        rows.append(["-" if block is None else str(block)]
                    + [cell([g for g in mine if g.kind == k]) for k in kinds] + [cell(mine)])
    rows.append(["all"] + [cell([g for g in groups if g.kind == k]) for k in kinds]
                + [cell(list(groups))])
    return format_table(["block"] + kinds + ["all"], rows)


def run_allocation(run_dir: str | Path, names: Sequence[str],
                   weights: str = "model.pt") -> list[GroupKept]:
    """:func:`kept_by_group` of a finished run's pruned weights (zeros are pruned).

    Raises:
        FileNotFoundError: the run has no ``weights`` file. KeyError: a name is missing.
    """
    path = Path(run_dir) / weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"{path} lacks {', '.join(missing[:3])}")
    return kept_by_group(names, [state[n] for n in names])
