"""Sparse inference: pruned Linear layers run a sparse kernel where that is faster.

``sparsify(model)`` replaces each sufficiently sparse ``nn.Linear`` (or Hugging Face
``Conv1D``, GPT-2's Linear stored [in, out]) by a :class:`SparseLinear` that runs, for each
batch regime (one row, several rows), the fastest of three kernels measured on this machine:

- ``dense``: ``F.linear`` on the dense weight;
- ``csr``: torch's CSR kernels (``F.linear`` at one row, ``torch.sparse.mm`` at several);
- ``bitmask`` and ``index16``: the compact formats and kernels of
  :mod:`admmprune.export.cpu_kernels` (1/8 byte per weight + 4 per kept weight; 6 bytes per kept
  weight), where they compiled here. At batch 1 on large layers the bitmask pays from about
  50% sparsity, index16 from about 85-90%.

Which kernel a layer runs is measured either on the model as it runs (``example=``: a call
of the model, e.g. a prefill and a few decoded tokens; each layer is timed on the inputs it
really receives, then the whole example is timed dense against sparse, and the model stays
dense if it was not faster end to end) or, without an example, on random inputs of rows 1 and
``batch``. Convolutions stay dense: no sparse convolution path in CPU torch measured faster.
Inference only (no gradients through the sparse weights).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..selection import is_transposed_linear, linear_weight
from .cpu_kernels import (
    FORMATS,
    PackedWeight,
    kernel_available,
    kernel_problem,
    pack,
    packed_linear,
)

__all__ = ["KERNELS", "SparseLinear", "SparsifyReport", "sparse_layers", "sparsify",
           "sparsify_with_report"]

REGIMES = ("single", "batched")
KERNELS = ("dense", "csr", *FORMATS)
PACKED_PARTS = ("structure", "values", "row_start")  # a PackedWeight's tensors, as buffers


def _linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight [out, in], contiguous (the formats below are built from its rows)."""
    return linear_weight(module).contiguous()


def _is_linear(module: nn.Module) -> bool:
    return (type(module) is nn.Linear or is_transposed_linear(module)) \
        and module.weight.layout == torch.strided


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": said once per process
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().to_sparse_csr()


def _sparse_kernels(weight: torch.Tensor) -> tuple[str, ...]:
    """The sparse kernels that can run ``weight`` [out, in] here: the compiled ones take
    float32 only, index16 at most 65,536 columns."""
    if weight.dtype != torch.float32 or not kernel_available():
        return ("csr",)
    return ("csr", "bitmask") + (("index16",) if weight.shape[1] <= 1 << 16 else ())


class SparseLinear(nn.Module):
    """A Linear layer that runs kernel ``single`` on one input row and ``batched`` on
    several (each one of :data:`KERNELS`); it keeps only the weight formats those need.

    Raises:
        ValueError: for an unknown kernel, or a compiled one where it is unavailable.
    """

    def __init__(self, linear: nn.Module, single: str = "csr", batched: str = "csr") -> None:
        super().__init__()
        for kernel in (single, batched):
            if kernel not in KERNELS:
                raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
            if kernel in FORMATS and not kernel_available():
                raise ValueError(f"kernel {kernel!r} is unavailable: {kernel_problem()}")
        weight = _linear_weight(linear)  # nn.Linear or Conv1D
        self.out_features, self.in_features = weight.shape
        self.single, self.batched = single, batched
        used = {single, batched}
        self.register_buffer("weight", weight.clone() if "dense" in used else None)
        self.register_buffer("weight_csr", _to_csr(weight) if "csr" in used else None)
        for format in FORMATS:  # buffers, so that state_dict and copies carry them
            for part in PACKED_PARTS:
                self.register_buffer(f"{format}_{part}", None)
            if format in used:
                self.keep_format(format, weight)
        bias = linear.bias
        self.register_buffer("bias", bias.detach().clone()
                             if isinstance(bias, torch.Tensor) else None)
        self.density = float((weight != 0).sum()) / max(1, weight.numel())
        self._packed: dict[str, PackedWeight] = {}  # views of the buffers, built on first use

    def keep_format(self, format: str, weight: torch.Tensor) -> None:
        """Stores ``weight`` [out, in] (this layer's) in compiled format ``format``."""
        packed = pack(weight, format)
        for part in PACKED_PARTS:
            setattr(self, f"{format}_{part}", getattr(packed, part))
        self._packed = {}

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # torch's signature
        self._packed = {}  # .to(), .float(), ...: the buffers are new tensors
        return super()._apply(fn, recurse)

    def run(self, kernel: str, flat: torch.Tensor) -> torch.Tensor:
        """``flat`` [rows, in_features] through ``kernel`` (whose format this layer keeps)."""
        if kernel in FORMATS:
            packed = self._packed.get(kernel)
            if packed is None:
                packed = self._packed[kernel] = self.packed(kernel)
            return packed_linear(flat, packed, self.bias)
        if kernel == "csr":
            if flat.shape[0] == 1:
                return F.linear(flat, self.weight_csr, self.bias)
            out = torch.sparse.mm(self.weight_csr, flat.t()).t()
            return out if self.bias is None else out + self.bias
        return F.linear(flat, self.weight, self.bias)

    def packed(self, format: str) -> PackedWeight:
        """The weight in compiled format ``format`` (which this layer must keep)."""
        structure, values, row_start = (getattr(self, f"{format}_{part}")
                                        for part in PACKED_PARTS)
        if structure is None:
            raise ValueError(f"this layer keeps no {format!r} weight")
        return PackedWeight(format, structure, values, row_start, self.out_features,
                            self.in_features)

    def nbytes(self, kernel: str) -> int:
        """Bytes of weight one product with ``kernel`` reads (the speed limit at batch 1)."""
        if kernel in FORMATS:
            return self.packed(kernel).nbytes()
        kept = round(self.density * self.in_features * self.out_features)
        return 8 * kept + 8 * self.out_features if kernel == "csr" \
            else 4 * self.in_features * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the common case, without the reshapes' cost
            return self.run(self.single if x.shape[0] == 1 else self.batched, x)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = self.run(self.single if flat.shape[0] == 1 else self.batched, flat)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"density={self.density:.4f}, kernel at one row: {self.single}, "
                f"at several: {self.batched}")


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
def _fastest(linear: nn.Module, inputs: dict[str, torch.Tensor], min_gain: float,
             budget: float, repeats: int) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Per regime of ``inputs``: the kernel to run (a sparse one only where it beats dense
    by ``min_gain``) and every kernel's speed-up over dense."""
    weight = _linear_weight(linear)
    sparse = _sparse_kernels(weight)
    trial = SparseLinear(linear, "dense", "csr")
    for format in sparse[1:]:  # every format, for timing only
        trial.keep_format(format, weight)
    choice, speedups = {}, {}
    for regime, x in inputs.items():
        dense = _time(lambda x=x: trial.run("dense", x), budget, repeats)
        gains = {k: dense / _time(lambda x=x, k=k: trial.run(k, x), budget, repeats)
                 for k in sparse}
        best = max(gains, key=gains.__getitem__)
        choice[regime] = best if gains[best] >= min_gain else "dense"
        speedups[regime] = gains
    return choice, speedups


@dataclass
class SparsifyReport:
    """What :func:`sparsify_with_report` chose and measured.

    ``kernels``: per replaced layer, the kernel per regime; ``speedups``: per timed layer and
    regime, each sparse kernel's speed-up over dense on that layer; ``end_to_end``: dense
    time / sparse time of the whole example (None without an example); ``reverted``: the
    example ran slower sparse, so the model was left dense."""

    kernels: dict[str, dict[str, str]] = field(default_factory=dict)
    speedups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    end_to_end: float | None = None
    reverted: bool = False

    def counts(self) -> dict[str, int]:
        """How many layers run each kernel at one row."""
        counts: dict[str, int] = {}
        for kernels in self.kernels.values():
            counts[kernels["single"]] = counts.get(kernels["single"], 0) + 1
        return counts


def _regime(rows: int) -> str:
    return "single" if rows == 1 else "batched"


@torch.no_grad()
def _inputs_seen(model: nn.Module, candidates: dict[str, nn.Module],
                 example: Callable[[], object]) -> dict[str, dict[str, torch.Tensor]]:
    """Per candidate layer, the first input it receives in each regime while ``example``
    runs (layers the example never reaches are left out)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []
    for name, module in candidates.items():
        def record(_module: nn.Module, args: tuple, name: str = name) -> None:
            flat = args[0].detach().reshape(-1, args[0].shape[-1])
            seen.setdefault(name, {}).setdefault(_regime(flat.shape[0]), flat.clone())
        hooks.append(module.register_forward_pre_hook(record))
    try:
        example()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@contextmanager
def _swapped(model: nn.Module, modules: dict[str, nn.Module]) -> Iterator[None]:
    """``model`` with the named submodules replaced for the duration."""
    originals = {name: model.get_submodule(name) for name in modules}
    try:
        for name, module in modules.items():
            _set_submodule(model, name, module)
        yield
    finally:
        for name, module in originals.items():
            _set_submodule(model, name, module)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def sparsify_with_report(model: nn.Module, *, example: Callable[[], object] | None = None,
                         calibrate: bool = True, batch: int = 64,
                         min_density_gain: float = 0.5, min_gain: float = 1.1,
                         budget: float = 0.05, repeats: int = 7,
                         example_repeats: int = 5) -> tuple[nn.Module, SparsifyReport]:
    """:func:`sparsify`, and a :class:`SparsifyReport` of what it chose and measured."""
    if batch < 2:
        raise ValueError(f"batch is the size of the batched regime and must be >= 2, got "
                         f"{batch}")
    candidates = {name: module for name, module in model.named_modules()
                  if _is_linear(module)
                  and float((module.weight == 0).sum()) / max(1, module.weight.numel())
                  >= min_density_gain}
    report = SparsifyReport()
    if not calibrate:
        # the bitmask at one row where it can run (it pays from the lowest sparsity); else CSR
        report.kernels = {name: {"single": _sparse_kernels(_linear_weight(m))[:2][-1],
                                 "batched": "csr"} for name, m in candidates.items()}
    else:
        if example is not None:
            seen = _inputs_seen(model, candidates, example)
        else:
            seen = {name: {regime: torch.randn(rows, _linear_weight(m).shape[1],
                                               dtype=m.weight.dtype)
                           for regime, rows in (("single", 1), ("batched", batch))}
                    for name, m in candidates.items()}
        for name, inputs in seen.items():
            choice, report.speedups[name] = _fastest(candidates[name], inputs, min_gain,
                                                     budget, repeats)
            kernels = {regime: choice.get(regime, "dense") for regime in REGIMES}
            if set(kernels.values()) != {"dense"}:
                report.kernels[name] = kernels
    replacements = {name: SparseLinear(candidates[name], **kernels)
                    for name, kernels in report.kernels.items()}
    if example is not None and calibrate and replacements:
        dense_times, sparse_times = [], []
        example()  # warm-up of both
        with _swapped(model, replacements):
            example()
        for _ in range(example_repeats):  # interleaved, so load moves both alike
            start = time.perf_counter()
            example()
            dense_times.append(time.perf_counter() - start)
            with _swapped(model, replacements):
                start = time.perf_counter()
                example()
                sparse_times.append(time.perf_counter() - start)
        report.end_to_end = statistics.median(dense_times) / statistics.median(sparse_times)
        if report.end_to_end < 1.0:
            report.reverted = True
            report.kernels, replacements = {}, {}
    if "" in replacements:  # the model is itself a Linear layer
        return replacements[""], report
    for name, new in replacements.items():
        _set_submodule(model, name, new)
    return model, report


def sparsify(model: nn.Module, *, example: Callable[[], object] | None = None,
             calibrate: bool = True, batch: int = 64, min_density_gain: float = 0.5,
             min_gain: float = 1.1, budget: float = 0.05, repeats: int = 7,
             example_repeats: int = 5) -> nn.Module:
    """Replace pruned ``nn.Linear`` and Hugging Face ``Conv1D`` modules of ``model`` (in
    place; returned) by :class:`SparseLinear` where it pays.

    Args:
        model: the pruned model (zeros are the pruned weights).
        example: a call that runs the model as it will be used, e.g.
            ``lambda: model.generate(prompt, max_new_tokens=8)``. Each layer is then timed on
            the inputs it receives there, and the whole call is timed dense against sparse
            (``example_repeats`` times, interleaved); if sparse was slower end to end, the
            model is left dense. Layers the example never calls stay dense.
        calibrate: False makes every considered layer sparse without timing (bitmask at
            one row where the kernel compiled, else CSR; CSR at several rows).
        batch: rows of the random input that stands for the batched regime (no example).
        min_density_gain: a layer is considered when at least this share of it is zero.
        min_gain: a sparse kernel must be at least this much faster than dense on a layer.
        budget, repeats: seconds and calls per timing of one kernel on one layer.

    Raises:
        ValueError: when ``batch`` < 2.

    Outputs equal the dense ones up to float rounding (the sums run in another order)."""
    return sparsify_with_report(model, example=example, calibrate=calibrate, batch=batch,
                                min_density_gain=min_density_gain, min_gain=min_gain,
                                budget=budget, repeats=repeats,
                                example_repeats=example_repeats)[0]


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseLinear]]:
    """The :class:`SparseLinear` modules of ``model`` with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]
