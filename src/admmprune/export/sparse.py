"""Sparse inference: pruned Linear layers run torch's sparse CSR kernels where that is faster.

``sparsify(model)`` replaces each sufficiently sparse ``nn.Linear`` (or Hugging Face
``Conv1D``, GPT-2's Linear stored [in, out]) by a
:class:`SparseLinear` that holds the weight in CSR form, after a quick calibration on random
inputs of the layer's size has measured, for each batch regime, whether the sparse kernel
beats the dense one on this machine:

- batch 1: ``F.linear(x, W_csr)``;
- batch > 1: ``torch.sparse.mm(W_csr, x.T).T`` (the fastest batched path measured here).

A layer keeps its dense weight for a regime where the sparse kernel lost, so the module is
never slower than the calibration measured. Convolutions stay dense: no sparse convolution
path in CPU torch measured faster. Inference only (no gradients through the CSR weight).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..selection import is_transposed_linear

__all__ = ["SparseLinear", "sparsify", "sparse_layers"]

REGIMES = ("single", "batched")


def _linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``F.linear`` takes it, [out, in] (a Conv1D stores it [in, out])."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    weight = weight.detach()
    return weight.t().contiguous() if is_transposed_linear(module) else weight


def _is_linear(module: nn.Module) -> bool:
    return (type(module) is nn.Linear or is_transposed_linear(module)) \
        and module.weight.layout == torch.strided


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": said once per process
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().to_sparse_csr()


class SparseLinear(nn.Module):
    """A Linear layer whose pruned weight is kept in CSR form; per regime (batch 1, batch >
    1) it runs either the sparse kernel or the dense one, as chosen by calibration."""

    def __init__(self, linear: nn.Module, sparse_single: bool = True,
                 sparse_batched: bool = True) -> None:
        super().__init__()
        weight = _linear_weight(linear)  # nn.Linear or Conv1D
        self.out_features, self.in_features = weight.shape
        self.sparse_single, self.sparse_batched = sparse_single, sparse_batched
        self.register_buffer("weight_csr", _to_csr(weight) if sparse_single or sparse_batched
                             else None)
        # the dense copy only where a regime runs dense
        self.register_buffer("weight", None if sparse_single and sparse_batched
                             else weight.clone())
        bias = linear.bias
        self.register_buffer("bias", bias.detach().clone()
                             if isinstance(bias, torch.Tensor) else None)
        self.density = float((weight != 0).sum()) / max(1, weight.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        rows = flat.shape[0]
        if rows == 1 and self.sparse_single:
            out = F.linear(flat, self.weight_csr, self.bias)
        elif rows > 1 and self.sparse_batched:
            out = torch.sparse.mm(self.weight_csr, flat.t()).t()
            if self.bias is not None:
                out = out + self.bias
        else:
            out = F.linear(flat, self.weight, self.bias)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"density={self.density:.4f}, sparse at batch 1: {self.sparse_single}, "
                f"at batch > 1: {self.sparse_batched}")


def _time(fn: Callable[[], object], budget: float, repeats: int) -> float:
    """Median seconds of ``fn`` over up to ``repeats`` calls within ``budget`` seconds."""
    fn()  # warm-up (allocations, lazy kernels)
    times: list[float] = []
    end = time.perf_counter() + budget
    while len(times) < repeats and (not times or time.perf_counter() < end):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def _calibrate(linear: nn.Module, batch: int, min_gain: float, budget: float,
               repeats: int) -> dict[str, bool | float]:
    weight = _linear_weight(linear)
    csr = _to_csr(weight)
    result: dict[str, bool | float] = {}
    for regime, rows in (("single", 1), ("batched", batch)):
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        dense = _time(lambda x=x: F.linear(x, weight), budget, repeats)
        if rows == 1:
            sparse = _time(lambda x=x: F.linear(x, csr), budget, repeats)
        else:
            sparse = _time(lambda x=x: torch.sparse.mm(csr, x.t()).t(), budget, repeats)
        result[f"{regime}_speedup"] = dense / sparse
        result[regime] = dense >= sparse * min_gain
    return result


@torch.no_grad()
def sparsify(model: nn.Module, *, calibrate: bool = True, batch: int = 64,
             min_density_gain: float = 0.5, min_gain: float = 1.1, budget: float = 0.05,
             repeats: int = 7) -> nn.Module:
    """Replace pruned ``nn.Linear`` and Hugging Face ``Conv1D`` modules of ``model`` (in
    place; returned) by :class:`SparseLinear` where it pays.

    A layer is considered when at least ``min_density_gain`` of its weights are zero. With
    ``calibrate`` each regime (batch 1, batch ``batch``) is timed dense against sparse, and
    the sparse kernel is used only where it is at least ``min_gain`` times faster; a layer
    where neither regime gains stays as it is. ``calibrate=False`` makes every considered
    layer sparse in both regimes. Outputs equal the dense ones up to float rounding (the
    sums run in another order)."""
    if batch < 2:
        raise ValueError(f"batch is the size of the batched regime and must be >= 2, got "
                         f"{batch}")
    replacements = []
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        zero = float((module.weight == 0).sum()) / max(1, module.weight.numel())
        if zero < min_density_gain:
            continue
        if calibrate:
            choice = _calibrate(module, batch, min_gain, budget, repeats)
            single, batched = bool(choice["single"]), bool(choice["batched"])
        else:
            single = batched = True
        if single or batched:
            replacements.append((name, SparseLinear(module, single, batched)))
    for name, new in replacements:
        if not name:  # the model is itself a Linear layer
            return new
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseLinear]]:
    """The :class:`SparseLinear` modules of ``model`` with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]
