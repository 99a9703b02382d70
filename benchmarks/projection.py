"""Benchmark of the global projection (the ADMM Z-step and the hard prune).

Times ``global_topk_masks(magnitude_scores(weights), K)`` -- scores, exact global
threshold and masks with exactly K survivors -- on float32 weights split over tensors
shaped like AlexNet's eight Conv/Linear layers (61.1M weights), scaled to each requested
size. Reports best and median of ``--repeats`` runs and the peak extra resident memory
of one call relative to the size of the weights.

    .venv/bin/python benchmarks/projection.py                  # 1M, 8M, 64M at 99 %
    .venv/bin/python benchmarks/projection.py --sizes 64M --repeats 5
    .venv/bin/python benchmarks/projection.py --threads 1,2

Target: 64M weights in <= 1.5 s (best of 3) on a CPU.

``--threads 1,2`` times every thread count on the same weights, interleaved run by run,
so their ratio is fair even on a machine whose load changes. On a machine shared with
other jobs torch's element-wise kernels with 2+ threads can be several times slower
than with 1 (OpenMP workers wait for busy cores).

Peak memory: on Linux the peak resident set (VmHWM) is reset before each measured call
(``/proc/self/clear_refs``), so the figure is the call's own peak above the resident
size just before it. Elsewhere the fallback is the growth of ``ru_maxrss``, which only
sees growth beyond the process's earlier peak (a lower bound). The estimate column is
what the algorithm must hold: |w| scores (4 B/weight), their concatenated copy that is
partitioned in place (4 B) and the boolean masks (1 B), i.e. 2.25x the weights.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from admmprune.projection import (
    global_topk_masks,
    magnitude_scores,
    survivor_count,
)
from admmprune.tables import format_table

# (kind, shape) of AlexNet's prunable tensors: 5 convolutions and 3 linear layers.
ALEXNET_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("conv1", (64, 3, 11, 11)),
    ("conv2", (192, 64, 5, 5)),
    ("conv3", (384, 192, 3, 3)),
    ("conv4", (256, 384, 3, 3)),
    ("conv5", (256, 256, 3, 3)),
    ("fc6", (4096, 9216)),
    ("fc7", (4096, 4096)),
    ("fc8", (1000, 4096)),
]
ALEXNET_TOTAL = sum(math.prod(shape) for _, shape in ALEXNET_SHAPES)
ESTIMATED_EXTRA_BYTES_PER_WEIGHT = 4 + 4 + 1  # scores, partitioned copy, masks
MIB = 1 << 20


def parse_size(text: str) -> int:
    """'1M' -> 1_048_576, '500K' -> 512_000, '2G', or a plain integer."""
    text = text.strip().upper()
    factors = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1] in factors:
            value = int(float(text[:-1]) * factors[text[-1]])
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 1M, 8M, 64M") from None
    if value < len(ALEXNET_SHAPES):
        raise argparse.ArgumentTypeError(f"size {text!r} is too small")
    return value


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def parse_threads(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad thread counts {text!r}; use e.g. 1,2") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def format_size(n: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n / MIB:.2f}M"


def scaled_shapes(total: int) -> list[tuple[str, tuple[int, ...]]]:
    """AlexNet's shapes with both channel dimensions scaled by sqrt(total / 61.1M).

    The input channels of conv1 (3) and the kernel sizes are kept; the resulting total
    is within a few percent of ``total`` (the exact N is reported).
    """
    factor = math.sqrt(total / ALEXNET_TOTAL)
    out = []
    for name, shape in ALEXNET_SHAPES:
        dims = list(shape)
        dims[0] = max(1, round(dims[0] * factor))
        if dims[1] > 3:
            dims[1] = max(1, round(dims[1] * factor))
        out.append((name, tuple(dims)))
    return out


def make_weights(shapes: Sequence[tuple[str, tuple[int, ...]]], seed: int) -> list[torch.Tensor]:
    """Kaiming-normal float32 weights: each layer has its own scale, as in a real model."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for _, shape in shapes:
        fan_in = math.prod(shape[1:])
        w = torch.randn(shape, generator=generator, dtype=torch.float32)
        weights.append(w.mul_(math.sqrt(2.0 / fan_in)))
    return weights


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _read_status_kib("VmHWM") is not None


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if platform.system() == "Darwin" else usage * 1024  # KiB on Linux


def peak_extra_bytes(fn: Callable[[], object]) -> tuple[int, str]:
    """(peak resident bytes above the resident size before ``fn()``, method used)."""
    if _reset_peak_rss():
        before = (_read_status_kib("VmRSS") or 0) * 1024
        result = fn()
        peak = (_read_status_kib("VmHWM") or 0) * 1024
        del result
        return max(0, peak - before), "VmHWM"
    before = _maxrss_bytes()
    result = fn()
    after = _maxrss_bytes()
    del result
    return max(0, after - before), "ru_maxrss (lower bound)"


def check_masks(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], keep: int
                ) -> None:
    """Exactly ``keep`` survivors, and no removed score above a kept one."""
    kept = sum(int(m.sum()) for m in masks)
    assert kept == keep, f"projection kept {kept} weights, expected K = {keep}"
    min_kept = min(float(s[m].min()) for s, m in zip(scores, masks, strict=True) if m.any())
    removed = [float(s[~m].max()) for s, m in zip(scores, masks, strict=True) if not m.all()]
    assert not removed or max(removed) <= min_kept, "a removed weight outscores a kept one"



@dataclass
class Result:
    size: int
    tensors: int
    keep: int
    threads: int
    times: list[float]
    peak_extra: int
    memory_method: str

    @property
    def weight_bytes(self) -> int:
        return self.size * 4


def bench_size(target: int, all_percent: float, repeats: int, seed: int,
               threads: Sequence[int]) -> list[Result]:
    """One ``Result`` per thread count; the thread counts alternate run by run."""
    shapes = scaled_shapes(target)
    weights = make_weights(shapes, seed)
    total = sum(w.numel() for w in weights)
    keep = survivor_count(total, all_percent)

    def project() -> list[torch.Tensor]:
        return global_topk_masks(magnitude_scores(weights), keep)

    # First call: peak memory and a full correctness check, untimed (it also warms up).
    torch.set_num_threads(threads[0])
    peak, method = peak_extra_bytes(project)
    check_masks(magnitude_scores(weights), project(), keep)

    results = [Result(size=total, tensors=len(weights), keep=keep, threads=t, times=[],
                      peak_extra=peak, memory_method=method) for t in threads]
    for _ in range(repeats):
        for result in results:
            torch.set_num_threads(result.threads)
            start = time.perf_counter()
            masks = project()
            result.times.append(time.perf_counter() - start)
            kept = sum(int(m.sum()) for m in masks)
            assert kept == keep, f"projection kept {kept} weights, expected K = {keep}"
            del masks
    return results


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], **_: object) -> None:
    print(format_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    default_threads = torch.get_num_threads()
    parser = argparse.ArgumentParser(
        description="Time the global top-K projection (|w| scores, exact K survivors) on "
                    "AlexNet-shaped float32 weights of several sizes.")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1M,8M,64M"),
                        help="comma-separated weight counts, K/M/G = 2^10/2^20/2^30 "
                             "(default: 1M,8M,64M)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per size (default: 3)")
    parser.add_argument("--all-percent", type=float, default=99.0,
                        help="share of weights removed, in [0, 100) (default: 99)")
    parser.add_argument("--threads", type=parse_threads, default=[default_threads],
                        help="comma-separated torch thread counts, timed alternately "
                             f"(default: torch's default, here {default_threads})")
    parser.add_argument("--target", type=float, default=1.5,
                        help="target seconds (best run) for the largest size (default: 1.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--show-shapes", action="store_true",
                        help="print the tensor shapes used for every size")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    print(f"global projection benchmark: all_percent={args.all_percent:g}, "
          f"repeats={args.repeats}, threads {','.join(map(str, args.threads))}, "
          f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if max(args.threads) > 1 and load > cpus:
        print(f"note: load average {load:.1f} on {cpus} CPUs; torch kernels with several "
              "threads wait for busy cores here, compare with --threads 1,"
              f"{max(args.threads)}")
    results: list[tuple[int, Result]] = []
    for target in sorted(args.sizes):
        if args.show_shapes:
            shapes = ", ".join(f"{n}{list(s)}" for n, s in scaled_shapes(target))
            print(f"  {format_size(target)}: {shapes}")
        for result in bench_size(target, args.all_percent, args.repeats, args.seed,
                                 args.threads):
            results.append((target, result))
            print(f"  {format_size(target)} with {result.threads} thread(s): best "
                  f"{min(result.times):.3f} s", flush=True)
    torch.set_num_threads(default_threads)

    print()
    headers = ["size", "N", "tensors", "K", "threads", "best s", "median s", "M weights/s",
               "peak extra MiB", "x weights", "estimate x"]
    rows = []
    for target, r in results:
        best = min(r.times)
        rows.append([
            format_size(target), f"{r.size:,}", str(r.tensors), f"{r.keep:,}", str(r.threads),
            f"{best:.3f}", f"{statistics.median(r.times):.3f}", f"{r.size / best / 1e6:.0f}",
            f"{r.peak_extra / MIB:.0f}", f"{r.peak_extra / r.weight_bytes:.2f}",
            f"{ESTIMATED_EXTRA_BYTES_PER_WEIGHT / 4:.2f}",
        ])
    print_table(headers, rows)
    print(f"\nsurvivor count == K asserted on every run; peak memory of the first call via "
          f"{results[0][1].memory_method} (measured with {args.threads[0]} thread(s)), "
          "relative to the float32 weights (4 B each).")

    if len(args.threads) > 1:
        print("\nthread-count ratios (median time / median time with "
              f"{args.threads[0]} thread(s), runs interleaved):")
        rows = []
        for target in sorted(args.sizes):
            same = [r for t, r in results if t == target]
            base = statistics.median(same[0].times)
            rows.append([format_size(target),
                         *(f"{statistics.median(r.times) / base:.2f}" for r in same)])
        print_table(["size", *(f"{t} thr" for t in args.threads)], rows)

    largest_target = max(args.sizes)
    print()
    for target, r in results:
        if target != largest_target:
            continue
        best = min(r.times)
        verdict = "meets" if best <= args.target else "MISSES"
        print(f"{format_size(target)} with {r.threads} thread(s): best {best:.3f} s {verdict} "
              f"the target of <= {args.target:g} s")
    print("(wall-clock timings; a loaded machine inflates them)")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
