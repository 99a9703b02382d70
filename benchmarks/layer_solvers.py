"""Benchmark of the one-shot layer solvers on random layers with correlated inputs.

For each input family, layer shape and sparsity, prunes one dense layer by magnitude (top-K of
|W| in the layer, no update), Wanda (top of |W|·‖X_j‖ per row, no update), SparseGPT and the
ADMM reconstruction of ``admmprune.posttraining.reconstruct``, and prints the relative
reconstruction error ``‖X(Ŵ − W)ᵀ‖² / ‖XWᵀ‖²``, its ratio to SparseGPT's and the wall time
of the call (best of ``--repeats``). Every method keeps the same count per layer (2:4: the
same N:M set).

Input families (``X`` is tokens x inputs, ``tokens = --tokens-per-input · inputs``):
``spectrum``: a random rotation with a decaying spectrum (σ_k ∝ (1 + k)^-0.7), log-normal
feature scales and 1/64 of the features 20x larger (the outlier features of transformer
activations); ``mixing``: a Gaussian mixing matrix and log-normal feature scales.

    .venv/bin/python benchmarks/layer_solvers.py                  # 256x256, 704x256, 256x704
    .venv/bin/python benchmarks/layer_solvers.py --shapes 256x256 --percents 70 --repeats 3
    .venv/bin/python benchmarks/layer_solvers.py --smoke          # seconds, tiny layers

Measured on the project's 2-core CPU (shared with other jobs; 1 thread, default options,
``--seeds 2``, 27 s in all), shapes 256x256, 704x256 and 256x704:

    ADMM's error / SparseGPT's: spectrum 0.38-0.50 at 50-90%, 0.59 at 2:4;
                                mixing 0.42-0.57 at 50-70%, 0.79-0.82 at 90%, 0.50-0.51 at 2:4
    Wanda's (no update) / ADMM's: 1.3-10.5x;  magnitude's / ADMM's: 4.5-160x
    ADMM's time / SparseGPT's: 1.5-6.7x, median 3x, the most at 2:4 (3-6.7x: the N:M
    projection sorts every group at every iteration); 0.04-0.54 s per layer against
    0.02-0.11 s

ADMM costs 20 products ``[out, in] x [in, in]`` in float32 plus its final update's 20-45 in
float64, which dominate on wide inputs, against SparseGPT's one sweep.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable

import torch

from admmprune.posttraining.reconstruct import admm_reconstruct, reconstruction_error
from admmprune.posttraining.sparsegpt import sparsegpt_prune
from admmprune.posttraining.wanda import nm_row_masks, row_masks, wanda_scores
from admmprune.projection import StructureOptions, global_topk_masks, nm_masks, survivor_count
from admmprune.tables import format_table

METHODS = ("magnitude", "wanda", "sparsegpt", "admm")
FAMILIES = ("spectrum", "mixing")


def correlated_inputs(family: str, inputs: int, tokens: int, seed: int) -> torch.Tensor:
    """Calibration inputs ``[tokens, inputs]`` (float64) with a non-identity covariance."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(0.5 * torch.randn(inputs, generator=g, dtype=torch.float64))
    gaussian = torch.randn(tokens, inputs, generator=g, dtype=torch.float64)
    if family == "spectrum":
        rotation, _ = torch.linalg.qr(torch.randn(inputs, inputs, generator=g,
                                                  dtype=torch.float64))
        spectrum = (1.0 + torch.arange(inputs, dtype=torch.float64)) ** -0.7
        outliers = torch.randperm(inputs, generator=g)[: max(1, inputs // 64)]
        scales[outliers] *= 20.0
        return gaussian @ (rotation * spectrum) @ rotation.t() * scales
    if family == "mixing":
        scales = torch.exp(torch.randn(inputs, generator=g, dtype=torch.float64))
        mixing = torch.randn(inputs, inputs, generator=g, dtype=torch.float64)
        return gaussian @ mixing * scales
    raise ValueError(f"unknown input family {family!r}; choose from {FAMILIES}")


Pruner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pruners(percent: float | None, nm: tuple[int, int] | None, iterations: int
            ) -> dict[str, Pruner]:
    """method -> (weight, gram) -> pruned weight, all at one budget."""
    def magnitude(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if nm is not None:
            options = StructureOptions(nm_n=nm[0], nm_m=nm[1])
            return w * nm_masks([w], None, None, None, options)[0]
        return w * global_topk_masks([w.abs()], survivor_count(w.numel(), float(percent)))[0]

    def wanda(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        scores = wanda_scores(w, torch.diagonal(h).sqrt())
        mask = nm_row_masks(scores, *nm) if nm is not None else row_masks(scores, percent)
        return w * mask

    def sparsegpt(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return sparsegpt_prune(w, h, all_percent=percent, nm=nm)[0]

    def admm(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        keep = None if nm is not None else survivor_count(w.numel(), float(percent))
        return admm_reconstruct(w, h, keep=keep, nm=nm, iterations=iterations)[0]

    return {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt, "admm": admm}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        try:
            out, inputs = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {part!r}; use OUTxIN, e.g. 704x256") \
                from None
        shapes.append((out, inputs))
    return shapes


def parse_sparsities(text: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    for item in items:
        if ":" in item:
            n, m = item.split(":")
            if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
                raise argparse.ArgumentTypeError(f"bad N:M {item!r}")
        elif not 0 <= float(item) < 100:
            raise argparse.ArgumentTypeError(f"bad percent {item!r}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes(
        "256x256,704x256,256x704"), help="layer shapes OUTxIN, comma-separated")
    parser.add_argument("--percents", type=parse_sparsities,
                        default=parse_sparsities("50,70,90,2:4"),
                        help="removal percents and N:M patterns, comma-separated")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"input families, comma-separated ({', '.join(FAMILIES)})")
    parser.add_argument("--tokens-per-input", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="time: best of this many")
    parser.add_argument("--iterations", type=int, default=20, help="ADMM iterations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny layers, one percent and 2:4, a few ADMM iterations")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shapes, args.percents = [(16, 32)], ["70", "2:4"]
        args.iterations, args.seeds, args.repeats = 6, 1, 1
    torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    print(f"layer solvers, torch {torch.__version__}, {args.threads} thread(s), "
          f"{os.cpu_count()} CPU(s), tokens = {args.tokens_per_input} x inputs; relative "
          f"error ‖X(Ŵ−W)ᵀ‖²/‖XWᵀ‖², time of one call (s)", flush=True)

    headers = ["input", "shape", "sparsity", *(f"{m} err" for m in METHODS),
               "admm / sparsegpt", *(f"{m} s" for m in METHODS)]
    rows = []
    for family in families:
        for out, inputs in args.shapes:
            for sparsity in args.percents:
                nm = tuple(int(v) for v in sparsity.split(":")) if ":" in sparsity else None
                percent = None if nm is not None else float(sparsity)
                methods = pruners(percent, nm, args.iterations)  # type: ignore[arg-type]
                errors = {m: 0.0 for m in METHODS}
                times = {m: math.inf for m in METHODS}
                for seed in range(args.seeds):
                    x = correlated_inputs(family, inputs, args.tokens_per_input * inputs, seed)
                    gram = x.t() @ x
                    g = torch.Generator().manual_seed(1000 + seed)
                    weight = torch.randn(out, inputs, generator=g) / math.sqrt(inputs)
                    dense = reconstruction_error(weight, torch.zeros_like(weight), gram)
                    for name, prune in methods.items():
                        for _ in range(args.repeats):
                            start = time.perf_counter()
                            pruned = prune(weight, gram)
                            times[name] = min(times[name], time.perf_counter() - start)
                        errors[name] += reconstruction_error(weight, pruned, gram) / dense
                errors = {m: e / args.seeds for m, e in errors.items()}
                label = f"{sparsity}%" if nm is None else sparsity
                row = [family, f"{out}x{inputs}", label, *(errors[m] for m in METHODS),
                       errors["admm"] / errors["sparsegpt"], *(round(times[m], 3)
                                                               for m in METHODS)]
                rows.append(row)
                print(f"{family} {out}x{inputs} {label}: " + ", ".join(
                    f"{m} {errors[m]:.4g} ({times[m]:.3f} s)" for m in METHODS), flush=True)
    print()
    print(format_table(headers, rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
