"""AlexNet at full size (61M prunable weights, 227x227) on this CPU: what ADMM costs per step
and in memory, and whether data loading keeps up.

(a) ``pruner.penalty()`` forward + backward (the fused single-node penalty) against the
    plain per-tensor formula ``admm.admm_penalty`` on AlexNet's eight Conv/Linear weights,
    timed alternately, median of ``--repeats``.
(b) ``pruner.admm_step()``: scores, exact global top-K projection, U update, residuals and
    the rho update (target <= 1.0 s).
(c) Memory of the ADMM state (Z, U, the cached Z − U, the masks and their complements
    after the hard prune) against the float32 weights.
(d) One real training step (SGD, momentum 0.9) at ``--batch`` x 3 x 227 x 227, plain
    against W-step (plain + penalty), alternated in one run, median of ``--steps`` each
    (target ratio <= 1.10).
(e) Data loading: ``--images`` generated JPEGs (ImageNet-like 500x375) through the
    imagefolder dataset with Caffe preprocessing and 1 or 2 worker processes: images/s of
    loading alone against AlexNet's plain training rate from (d), and of training epochs fed
    by the loader against the same steps fed from memory (the honest "keeps up" figure on 2
    cores, where workers and training share the CPU).

    .venv/bin/python benchmarks/alexnet.py
    .venv/bin/python benchmarks/alexnet.py --steps 5 --batch 16 --threads 2 --skip-data
    .venv/bin/python benchmarks/alexnet.py --image-size 67 --fc-width 32 --classes 10  # tiny

Wall-clock figures: on a machine shared with other jobs they vary from run to run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from steptiming import alternate, plain_vs_wstep, print_wstep_table, timed
from torch import nn

import admmprune
from admmprune import ADMMPruner, admm
from admmprune.data import StreamBatches
from admmprune.data.imagefolder import ImageFolderDataset
from admmprune.tables import format_table
from admmprune.train import train_epoch

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
    x = torch.randn(batch, 3, model.image_size, model.image_size, generator=generator)
    y = torch.randint(0, model.fc8.out_features, (batch,), generator=generator)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(with_penalty: bool) -> None:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        if with_penalty:
            loss = loss + pruner.penalty()
        loss.backward()
        optimizer.step()

    return plain_vs_wstep(step, steps)


def nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def write_jpegs(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth content, so JPEG sizes are photo-like rather than noise-sized
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(
            folder / f"img{i:05d}.JPEG", quality=90)


def loading_rate(dataset, batch: int, workers: int, epochs: int = 2) -> float:
    batches = StreamBatches(dataset, batch, shuffle=True, seed=0, workers=workers)
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _ in batches:
            seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def fed_epoch(model: nn.Module, batches, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    stats = train_epoch(model, batches, optimizer, max_steps=steps, progress=False)
    return stats["examples_per_second"]


def bench_loading(model: nn.Module, batch: int, images: int, train_rate: float
                  ) -> list[list[str]]:
    rows = [["AlexNet plain training (part d)", f"{train_rate:.1f}", "1.00"]]
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), images)
        size = model.image_size
        dataset = ImageFolderDataset(Path(tmp) / "train", train=True, crop=size,
                                     resize=max(size, 256))
        for workers in (1, 2):
            rate = loading_rate(dataset, batch, workers)
            rows.append([f"loading alone, {workers} worker(s)", f"{rate:.1f}",
                         f"{rate / train_rate:.2f}"])
        steps = max(4, images // batch)
        generator = torch.Generator().manual_seed(1)
        memory_batches = [(torch.rand(batch, 3, size, size, generator=generator) * 255 - 117,
                           torch.randint(model.fc8.out_features, (batch,), generator=generator))
                          for _ in range(steps)]
        from_memory = fed_epoch(model, memory_batches, steps)
        rows.append(["training epoch fed from memory", f"{from_memory:.1f}", "1.00"])
        for workers in (1, 2):
            fed = fed_epoch(model, StreamBatches(dataset, batch, shuffle=True, workers=workers),
                            steps)
            rows.append([f"training epoch fed by {workers} worker(s)", f"{fed:.1f}",
                         f"{fed / from_memory:.2f}"])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of the penalty and of admm_step (default: 5)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed training steps of each kind (default: 3)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--all-percent", type=float, default=99.0)
    parser.add_argument("--skip-step", action="store_true", help="skip parts (d) and (e)")
    parser.add_argument("--skip-data", action="store_true", help="skip part (e)")
    parser.add_argument("--images", type=int, default=96,
                        help="generated JPEGs for part (e) (default: 96)")
    group = parser.add_argument_group("size (defaults: Caffe's AlexNet, 61M prunable weights)")
    group.add_argument("--image-size", type=int, default=227, help="input side (default: 227)")
    group.add_argument("--fc-width", type=int, default=4096,
                       help="width of fc6 and fc7 (default: 4096)")
    group.add_argument("--classes", type=int, default=1000, help="outputs of fc8 "
                       "(default: 1000)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.steps, args.batch, args.threads, args.fc_width,
           args.classes, args.images) < 1:
        parser.error("--repeats, --steps, --batch, --threads, --fc-width, --classes and "
                     "--images must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    try:
        model = admmprune.create_model("alexnet", image_size=args.image_size,
                                       fc_width=args.fc_width, num_classes=args.classes)
    except ValueError as err:
        parser.error(str(err))
    print(f"alexnet {args.image_size}x{args.image_size}, fc width {args.fc_width}, "
          f"{args.classes} classes: torch {torch.__version__}, {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    pruner = ADMMPruner(model, all_percent=args.all_percent, rho=1e-3, rho_growth=2.0)
    shapes = [tuple(p.shape) for p in pruner.params]
    expected = [shape for _, shape, _ in ALEXNET_SHAPES]
    if shapes != expected:
        print(f"note: prunable shapes {shapes} differ from Caffe's AlexNet {expected}",
              flush=True)
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

    if not args.skip_step:
        pruner = ADMMPruner(model, all_percent=args.all_percent, rho=1e-3, rho_growth=2.0)
        pruner.admm_step()
        print(f"\ntraining step, batch {args.batch} x 3 x {args.image_size} x "
              f"{args.image_size}, SGD momentum, "
              f"{args.steps} of each, alternated ...", flush=True)
        plain, wstep = bench_step(model, pruner, args.batch, args.steps)
        p_med = print_wstep_table(plain, wstep)
        if not args.skip_data:
            print()
            print(format_table(["data", "images/s", "ratio"],
                               bench_loading(model, args.batch, args.images,
                                             train_rate=args.batch / p_med)))
            print("ratio >= 1 for 'loading alone' means the loader outpaces plain training; "
                  "the fed epochs show what is left when both share this machine's cores.")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; wall-clock timings on a shared "
          "machine vary between runs")
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
