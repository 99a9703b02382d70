"""AlexNet at full size (61M weights, 227x227) on this CPU: what ADMM costs per step and in
memory, and whether data loading keeps up.

1. W-step / plain step: one SGD step of AlexNet at ``--batch`` with and without
   ``pruner.penalty()`` (the ADMM term over all 61M conv+fc weights), timed alternately in
   one process (plain, W, W, plain, plain, W, ...) so drifting load hits both; medians.
   Target: ratio <= 1.10.
2. Z-step: ``pruner.admm_step()`` (scores, global top-K projection, U update, residuals) on
   the 61M weights; median of ``--repeats``. Target <= 1.0 s.
3. ADMM state memory: Z, U and the masks against the weights themselves.
4. Data loading: ``--images`` generated JPEGs (ImageNet-like 500x375) through the
   imagefolder dataset with Caffe preprocessing and 1 or 2 worker processes: images/s of
   loading alone, and of whole training epochs fed by the loader against the same steps fed
   from memory (the honest "keeps up" figure on 2 cores, where workers and training share
   the CPU).

    .venv/bin/python benchmarks/alexnet.py                 # about 2-4 minutes here
    .venv/bin/python benchmarks/alexnet.py --batch 16 --threads 2 --skip-data
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from admmprune import ADMMPruner, create_model
from admmprune.data import StreamBatches
from admmprune.data.imagefolder import ImageFolderDataset
from admmprune.report import format_table
from admmprune.train import train_epoch

STEP_TARGET = 1.10
ZSTEP_TARGET = 1.0


def caffe_batch(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 227, 227, generator=generator) * 255 - 117
    return x, torch.randint(1000, (batch,), generator=generator)


def step_ratio(model: torch.nn.Module, pruner: ADMMPruner, batch: int, repeats: int
               ) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    x, y = caffe_batch(batch, 0)

    def step(with_penalty: bool) -> float:
        start = time.perf_counter()
        loss = criterion(model(x), y)
        if with_penalty:
            loss = loss + pruner.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up: allocator, optimizer state
    times: dict[bool, list[float]] = {False: [], True: []}
    pattern = [False, True, True, False]
    for i in range(2 * repeats):
        kind = pattern[i % 4]
        times[kind].append(step(kind))
    plain, wstep = statistics.median(times[False]), statistics.median(times[True])
    return {"plain": plain, "wstep": wstep, "ratio": wstep / plain}


def zstep_seconds(pruner: ADMMPruner, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pruner.admm_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def state_bytes(pruner: ADMMPruner) -> dict:
    weights = sum(p.numel() * p.element_size() for p in pruner.params)
    z = sum(t.numel() * t.element_size() for t in pruner.z)
    u = sum(t.numel() * t.element_size() for t in pruner.u)
    masks = sum(p.numel() for p in pruner.params)  # one bool byte per weight after hard_prune
    return {"weights": weights, "Z": z, "U": u, "masks (after hard prune)": masks}


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


def fed_epoch(model, batches, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    stats = train_epoch(model, batches, optimizer, max_steps=steps, progress=False)
    return stats["examples_per_second"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6, help="steps of each kind")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=96, help="generated JPEGs")
    parser.add_argument("--skip-data", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("alexnet")
    pruner = ADMMPruner(model, all_percent=95.24, rho=1e-3)
    print(f"AlexNet: {pruner.total:,} prunable weights, batch {args.batch}, "
          f"{args.threads} thread(s)\n")

    s = step_ratio(model, pruner, args.batch, args.repeats)
    z = zstep_seconds(pruner, 3)
    print(format_table(["measure", "value", "target"], [
        ("plain step (s, median)", f"{s['plain']:.3f}", ""),
        ("W-step (s, median)", f"{s['wstep']:.3f}", ""),
        ("W-step / plain", f"{s['ratio']:.3f}", f"<= {STEP_TARGET}"),
        ("admm_step: Z-step + U-step (s)", f"{z:.3f}", f"<= {ZSTEP_TARGET}"),
    ]))
    memory = state_bytes(pruner)
    print()
    print(format_table(["ADMM state", "MB", "x weights"], [
        (k, f"{v / 2**20:.1f}", f"{v / memory['weights']:.2f}") for k, v in memory.items()]))
    train_rate = args.batch / s["plain"]
    if args.skip_data:
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        dataset = ImageFolderDataset(Path(tmp) / "train", train=True)
        rows = [("AlexNet plain training (from memory)", f"{train_rate:.1f}", "1.00")]
        for workers in (1, 2):
            rate = loading_rate(dataset, args.batch, workers)
            rows.append((f"loading alone, {workers} worker(s)", f"{rate:.1f}",
                         f"{rate / train_rate:.2f}"))
        steps = max(4, args.images // args.batch)
        memory_batches = [caffe_batch(args.batch, i) for i in range(steps)]
        from_memory = fed_epoch(model, memory_batches, steps)
        rows.append(("training epoch fed from memory", f"{from_memory:.1f}", "1.00"))
        for workers in (1, 2):
            fed = fed_epoch(model, StreamBatches(dataset, args.batch, shuffle=True,
                                                 workers=workers), steps)
            rows.append((f"training epoch fed by {workers} worker(s)", f"{fed:.1f}",
                         f"{fed / from_memory:.2f}"))
    print()
    print(format_table(["data", "images/s", "ratio"], rows))
    print("\nratio >= 1 for 'loading alone' means the loader outpaces training; the fed "
          "epochs show what is left when both share this machine's cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
