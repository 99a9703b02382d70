"""N:M sparsity after pruning: check the pattern, and hand 2:4 Linear weights to torch's
semi-structured sparse kernels (``torch.sparse.to_sparse_semi_structured``, CUDA only).

The pattern is the one ``structure: nm`` prunes to (``admmprune.projection.nm_masks``):
groups of M consecutive weights along the input dimension, for every output row (Conv
(out, in, kh, kw): along ``in`` for every (out, kh, kw)); a last group of r < M weights,
when the input width is not a multiple of M, may hold min(N, r) non-zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from ..projection import ProjectionError, nm_rows, validate_nm
from ..selection import prunable_parameters

__all__ = ["NMViolation", "SemiStructuredError", "SemiStructuredReport", "check_nm",
           "to_semi_structured", "NEEDS_CUDA"]

NEEDS_CUDA = "skipped: needs CUDA (torch's semi-structured sparse kernels run on NVIDIA GPUs)"


class SemiStructuredError(ValueError):
    """A request the N:M tools cannot serve (bad N, M, or input)."""


class NMViolation(NamedTuple):
    """One tensor that breaks N:M: how many groups hold more than N non-zeros, where the
    first one is (``row``: index over (out, *kernel) in row-major order, ``start``: its first
    input index) and the most non-zeros found in one group."""

    name: str
    groups: int
    row: int
    start: int
    worst: int


def _named_tensors(source: nn.Module | Mapping[str, torch.Tensor]
                   | Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    if isinstance(source, nn.Module):
        # the tensors the pruner prunes by default: Conv/Linear weights
        return list(prunable_parameters(source))
    if isinstance(source, Mapping):
        return list(source.items())
    return list(source)


@torch.no_grad()
def check_nm(source: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
             n: int = 2, m: int = 4) -> list[NMViolation]:
    """Every tensor that has a group of M consecutive input weights with more than N
    non-zeros; an empty list means the N:M pattern holds everywhere.

    ``source``: a model (its Conv/Linear weights), a mapping or pairs of (name, tensor).
    """
    try:
        validate_nm(n, m)
    except ProjectionError as err:
        raise SemiStructuredError(str(err)) from None
    violations = []
    for name, tensor in _named_tensors(source):
        if tensor.dim() < 2:
            raise SemiStructuredError(f"{name} has shape {tuple(tensor.shape)}; N:M needs "
                                      "tensors with at least 2 dimensions")
        rows = nm_rows(tensor.detach()) != 0
        width = rows.shape[1]
        groups = -(-width // m)
        # pad the last group with zeros (never counted as non-zeros)
        padded = torch.nn.functional.pad(rows.to(torch.int32), (0, groups * m - width))
        counts = padded.reshape(rows.shape[0], groups, m).sum(-1)
        bad = counts > n
        if bool(bad.any()):
            first = int(bad.reshape(-1).nonzero()[0])
            violations.append(NMViolation(name, int(bad.sum()), first // groups,
                                          first % groups * m, int(counts.max())))
    return violations


@dataclass
class SemiStructuredReport:
    """What ``to_semi_structured`` did: converted layer names, skipped ones with the reason."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def to_semi_structured(model: nn.Module, n: int = 2, m: int = 4) -> SemiStructuredReport:
    """Replace the weight of every 2:4-sparse ``nn.Linear`` on a CUDA device by torch's
    semi-structured sparse tensor (its sparse matmul kernels), in place; returns which layers
    were converted and why the others were not (on CPU: ``NEEDS_CUDA``; a weight that is
    not 2:4, a dtype or shape the kernels refuse). Conv layers are left alone: torch has no
    semi-structured convolution. The converted weights are frozen (inference only).
    """
    if (n, m) != (2, 4):
        raise SemiStructuredError(f"torch's semi-structured kernels support 2:4 only, got "
                                  f"{n}:{m}")
    report = SemiStructuredReport()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if weight.device.type != "cuda":
            report.skipped[name] = f"{NEEDS_CUDA}; the weight is on {weight.device}"
            continue
        if check_nm([(name, weight)], n, m):
            report.skipped[name] = "skipped: the weight is not 2:4 sparse (prune it with " \
                                   "structure nm first)"
            continue
        try:
            sparse = torch.sparse.to_sparse_semi_structured(weight.detach())
        except (RuntimeError, ValueError) as err:  # shape or dtype the kernels refuse
            report.skipped[name] = f"skipped: torch refused it ({err})"
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        report.converted.append(name)
    return report
