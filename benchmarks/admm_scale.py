"""The pruner at AlexNet scale (61M prunable weights): W-step penalty, Z-step, state memory.

(a) ``pruner.penalty()`` forward + backward (the fused single-node penalty) against the
    plain per-tensor formula ``admm.admm_penalty`` on AlexNet's eight Conv/Linear weights,
    timed alternately, median of ``--repeats``.
(b) ``pruner.admm_step()``: scores, exact global top-K projection, U update, residuals and
    the rho update (target <= 1.0 s).
(c) Memory of the ADMM state (Z, U, the cached Z − U, the masks and their complements
    after the hard prune) against the float32 weights.
(d) If the model registry has ``alexnet``: one real training step (SGD, momentum 0.9) at
    ``--batch`` x 3 x 227 x 227, plain against W-step (plain + penalty), alternated in one
    run, median of ``--steps`` each (target ratio <= 1.10).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/admm_scale.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/admm_scale.py --steps 5 --threads 2

Wall-clock figures: on a machine shared with other jobs they vary from run to run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

import admmprune
from admmprune import ADMMPruner, admm
from admmprune.report import format_table

# Caffe's AlexNet (grouped conv2, conv4, conv5): 60,954,656 prunable weights.
ALEXNET_SHAPES: list[tuple[str, tuple[int, ...], int]] = [
    ("conv1", (96, 3, 11, 11), 1),
    ("conv2", (256, 48, 5, 5), 2),
    ("conv3", (384, 256, 3, 3), 1),
    ("conv4", (384, 192, 3, 3), 2),
    ("conv5", (256, 192, 3, 3), 2),
    ("fc6", (4096, 9216), 1),
    ("fc7", (4096, 4096), 1),
    ("fc8", (1000, 4096), 1),
]
MIB = 1 << 20


class Stand_in(nn.Module):  # noqa: N801
    """Conv/Linear modules with AlexNet's weight shapes (never run forward)."""

    def __init__(self) -> None:
        super().__init__()
        for name, shape, groups in ALEXNET_SHAPES:
            if len(shape) == 4:
                layer = nn.Conv2d(shape[1] * groups, shape[0], shape[2], groups=groups,
                                  bias=False)
            else:
                layer = nn.Linear(shape[1], shape[0], bias=False)
            self.add_module(name, layer)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: Sequence[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Times of each function, run in the order 0,1,1,0,0,1,... so drifting load hits all."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            times[i].append(timed(fns[i]))
    return times


def bench_penalty(pruner: ADMMPruner, repeats: int) -> list[list[float]]:
    params = pruner.params

    def fused() -> None:
        for p in params:
            p.grad = None
        pruner.penalty().backward()

    def naive() -> None:
        for p in params:
            p.grad = None
        total = admm.admm_penalty(params, pruner.z, pruner.u, pruner.rho)
        if pruner.p_lambda:
            total = total + admm.weight_decay_penalty(params, pruner.p_lambda)
        total.backward()

    fused()
    fused_grads = [p.grad.clone() for p in params[-1:]]
    naive()
    torch.testing.assert_close(params[-1].grad, fused_grads[0], rtol=1e-4, atol=1e-7)
    return alternate([fused, naive], repeats)


def bench_step(model: nn.Module, pruner: ADMMPruner, batch: int, steps: int
               ) -> list[list[float]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 227, 227, generator=generator)
    y = torch.randint(0, 1000, (batch,), generator=generator)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(with_penalty: bool) -> None:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        if with_penalty:
            loss = loss + pruner.penalty()
        loss.backward()
        optimizer.step()

    step(True)  # warm-up: momentum buffers, allocator
    step(False)
    return alternate([lambda: step(False), lambda: step(True)], steps)


def nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of the penalty and of admm_step (default: 5)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed training steps of each kind (default: 3)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--all-percent", type=float, default=99.0)
    parser.add_argument("--skip-step", action="store_true", help="skip part (d)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.steps, args.batch, args.threads) < 1:
        parser.error("--repeats, --steps, --batch and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    have_alexnet = "alexnet" in admmprune.list_models()
    model = admmprune.create_model("alexnet") if have_alexnet else Stand_in()
    print(f"admm_scale: torch {torch.__version__}, {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, model "
          f"{'alexnet (registry)' if have_alexnet else 'stand-in with AlexNet shapes'}")
    pruner = ADMMPruner(model, all_percent=args.all_percent, rho=1e-3, rho_growth=2.0)
    shapes = [tuple(p.shape) for p in pruner.params]
    expected = [shape for _, shape, _ in ALEXNET_SHAPES]
    if shapes != expected:
        print(f"note: prunable shapes {shapes} differ from Caffe's AlexNet {expected}")
    total = pruner.total
    print(f"N = {total:,} prunable weights, K = {pruner.keep:,}", flush=True)
    with torch.no_grad():  # make U non-zero, as after a few iterations
        for p in pruner.params:
            p.add_(torch.randn_like(p), alpha=1e-3)
    pruner.admm_step()

    rows = []
    fused, naive = bench_penalty(pruner, args.repeats)
    f_med, n_med = statistics.median(fused), statistics.median(naive)
    rows.append(["penalty fwd+bwd, fused (pruner.penalty)", f"{f_med:.3f}", f"{min(fused):.3f}",
                 f"{n_med / f_med:.1f}x faster"])
    rows.append(["penalty fwd+bwd, plain formula (admm_penalty)", f"{n_med:.3f}",
                 f"{min(naive):.3f}", ""])
    for p in pruner.params:
        p.grad = None
    step_times = [timed(pruner.admm_step) for _ in range(args.repeats)]
    s_med = statistics.median(step_times)
    rows.append(["admm_step (Z-step, U-step, residuals, rho)", f"{s_med:.3f}",
                 f"{min(step_times):.3f}",
                 "meets <= 1.0 s" if s_med <= 1.0 else "MISSES <= 1.0 s"])
    print()
    print(format_table(["operation", "median s", "best s", "note"], rows), flush=True)

    weight_bytes = nbytes([p.detach() for p in pruner.params])
    anchors = pruner._anchors()
    mem = [("Z", nbytes(pruner.z)), ("U", nbytes(pruner.u)), ("Z - U (penalty cache)",
                                                              nbytes(anchors))]
    pruner.hard_prune()
    enforcer = pruner._enforcer
    mem.append(("masks (bool)", nbytes(pruner.masks)))
    mem.append(("mask complements (bool, enforce)", nbytes(enforcer._removed)))
    mem.append(("total", sum(b for _, b in mem)))
    print()
    print(format_table(["ADMM state", "MiB", "x weights"],
                       [[name, f"{b / MIB:.0f}", f"{b / weight_bytes:.2f}"] for name, b in mem]))
    print(f"(weights: {weight_bytes / MIB:.0f} MiB float32; Z, U and the cache exist until the "
          "hard prune, the masks after it)")

    if have_alexnet and not args.skip_step:
        pruner = ADMMPruner(model, all_percent=args.all_percent, rho=1e-3, rho_growth=2.0)
        pruner.admm_step()
        print(f"\ntraining step, batch {args.batch} x 3 x 227 x 227, SGD momentum, "
              f"{args.steps} of each, alternated ...", flush=True)
        plain, wstep = bench_step(model, pruner, args.batch, args.steps)
        p_med, w_med = statistics.median(plain), statistics.median(wstep)
        ratio = w_med / p_med
        print(format_table(
            ["step", "median s", "best s", "runs"],
            [["plain", f"{p_med:.3f}", f"{min(plain):.3f}", " ".join(f"{t:.2f}" for t in plain)],
             ["W-step (plain + penalty)", f"{w_med:.3f}", f"{min(wstep):.3f}",
              " ".join(f"{t:.2f}" for t in wstep)]]))
        verdict = "meets" if ratio <= 1.10 else "MISSES"
        print(f"W-step / plain = {ratio:.3f} (medians; best/best {min(wstep) / min(plain):.3f})"
              f" {verdict} the target <= 1.10")
    elif not have_alexnet:
        print("\n(no 'alexnet' in the model registry: training-step comparison skipped)")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; wall-clock timings on a shared "
          "machine vary between runs")
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.exit(main())
