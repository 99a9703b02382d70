"""Benchmark of what pruning buys at inference: file sizes per format and CPU latency of the
dense model against ``admmprune.sparsify`` (sparse Linear kernels where calibration measured a
gain), at batch 1 and batch 64, ratios measured in the same run.

    .venv/bin/python benchmarks/inference.py                       # LeNet-5 250x + AlexNet
    .venv/bin/python benchmarks/inference.py --lenet-run runs/lenet5-250x-...   # a real run
    .venv/bin/python benchmarks/inference.py --skip-alexnet --repeats 20
    .venv/bin/python benchmarks/inference.py --alexnet-image-size 67 --alexnet-fc-width 32 \
        --alexnet-percents 90 --batch 4 --repeats 1                  # small, seconds

Models: LeNet-5 from a run directory's model.pt (``--lenet-run``), else random weights
pruned to 250x (99.6%) by global LAMP scores (plain magnitude on random initial weights
would empty fc1: its init scale is the smallest); AlexNet (227x227, 1000 classes) with
random weights pruned by global LAMP scores at 90/95/99% (plain magnitude would empty
fc6, the layer with the smallest initial scale, and time an empty layer). Timings are medians of
``--repeats`` calls on one thread (``--threads``); on a machine shared with other jobs
they move, but dense and sparse are timed interleaved so their ratio is fair.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

import admmprune
from admmprune.channels.liveness import drop_dead_units
from admmprune.export import save_compressed, save_dense, save_onnx
from admmprune.export.sparse import sparse_layers, sparsify
from admmprune.projection import compute_scores, global_topk_masks, survivor_count
from admmprune.tables import format_table


def prune(model: nn.Module, percent: float, score: str) -> None:
    weights = [p.detach() for _, p in admmprune.prunable_parameters(model)]
    total = sum(w.numel() for w in weights)
    masks = global_topk_masks(compute_scores(weights, score), survivor_count(total, percent))
    for w, m in zip(weights, masks, strict=True):
        w.masked_fill_(~m, 0)


def file_sizes(model: nn.Module, name: str, args: dict, example: torch.Tensor,
               bits: list[int], onnx: bool) -> dict[str, int]:
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "model.pt")
        sizes["model.pt (torch.save)"] = (tmp / "model.pt").stat().st_size
        save_dense(model, tmp / "m.safetensors", model_name=name, model_args=args)
        sizes["dense safetensors"] = (tmp / "m.safetensors").stat().st_size
        if onnx:
            try:
                save_onnx(model, tmp / "m.onnx", example)
                sizes["onnx"] = (tmp / "m.onnx").stat().st_size
            except Exception as err:  # noqa: BLE001 - report and go on
                print(f"onnx: {err}", file=sys.stderr)
        for b in bits:
            path = save_compressed(model, tmp / f"m{b}.apz", bits=b, model_name=name,
                                   model_args=args)
            sizes[f"compressed {b}-bit"] = path.stat().st_size
        # what `admmprune export --bits <32` writes: dead units dropped first (same outputs)
        pruned = copy.deepcopy(model)
        report = drop_dead_units(pruned, torch.randn(8, *example.shape[1:]))
        for b in bits:
            path = save_compressed(pruned, tmp / f"d{b}.apz", bits=b, model_name=name,
                                   model_args=args)
            sizes[f"compressed {b}-bit, {report.total_units} dead units dropped"] = \
                path.stat().st_size
    return sizes


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def latency(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, repeats: int
            ) -> tuple[float, float]:
    """Median seconds, dense and sparse, timed in alternating rounds."""
    d, s = [], []
    for _ in range(3):
        d.append(timed(lambda: dense(x), max(1, repeats // 3)))
        s.append(timed(lambda: sparse(x), max(1, repeats // 3)))
    return statistics.median(d), statistics.median(s)


SIZE_HEADERS = ["model", "format", "bytes", "vs model.pt"]
TIME_HEADERS = ["model", "what", "batch", "dense ms", "sparse ms", "speed-up", "max |diff|"]


def bench(label: str, model: nn.Module, name: str, args: dict, shape: tuple[int, ...],
          layers: list[str], repeats: int, bits: list[int], onnx: bool,
          size_rows: list, time_rows: list, batch_sizes: Sequence[int] = (1, 64)) -> None:
    """Measure one model and print its rows at once (a timeout keeps what was measured)."""
    first_size, first_time = len(size_rows), len(time_rows)
    model.eval()
    example = torch.randn(1, *shape)
    sizes = file_sizes(model, name, args, example, bits, onnx)
    reference = sizes["model.pt (torch.save)"]
    for fmt, size in sizes.items():
        size_rows.append((label, fmt, size, f"{reference / size:.1f}x"))
    print(format_table(SIZE_HEADERS, size_rows[first_size:]), end="\n\n", flush=True)
    sparse = sparsify(copy.deepcopy(model))
    chosen = {n: (m.single, m.batched) for n, m in sparse_layers(sparse)}
    for batch in batch_sizes:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            err = float((sparse(x) - model(x)).abs().max())
        d, s = latency(model, sparse, x, repeats)
        time_rows.append((label, "whole model", batch, f"{1e3 * d:.3f}", f"{1e3 * s:.3f}",
                          f"{d / s:.2f}x", f"{err:.1e}"))
        for layer in layers:
            dense_layer = model.get_submodule(layer)
            xl = torch.randn(batch, dense_layer.in_features)
            forced = sparsify(copy.deepcopy(dense_layer), calibrate=False)
            d, s = latency(dense_layer, forced, xl, repeats)
            used = chosen.get(layer, ("dense", "dense"))[0 if batch == 1 else 1]
            time_rows.append((label, f"{layer} (kernel chosen: {used}; timed: the "
                              f"{getattr(forced, 'single' if batch == 1 else 'batched', 'dense')}"
                              " one)",
                              batch, f"{1e3 * d:.3f}", f"{1e3 * s:.3f}", f"{d / s:.2f}x", ""))
    print(format_table(TIME_HEADERS, time_rows[first_time:]), end="\n\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lenet-run", type=Path, help="run directory of a LeNet-5 run")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-alexnet", action="store_true")
    parser.add_argument("--alexnet-percents", default="90,95,99")
    parser.add_argument("--alexnet-image-size", type=int, default=227,
                        help="AlexNet's input side [default: 227; 67 is the smallest]")
    parser.add_argument("--alexnet-fc-width", type=int, default=4096,
                        help="width of AlexNet's fc6 and fc7 [default: 4096]")
    parser.add_argument("--batch", type=int, default=64,
                        help="the larger batch timed besides batch 1 [default: 64]")
    args = parser.parse_args(argv)
    if min(args.repeats, args.threads, args.alexnet_fc_width, args.batch) < 1:
        parser.error("--repeats, --threads, --alexnet-fc-width and --batch must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = (1, args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n", flush=True)
    size_rows: list = []
    time_rows: list = []

    lenet = admmprune.create_model("lenet5")
    if args.lenet_run:
        state = torch.load(args.lenet_run / "model.pt", map_location="cpu", weights_only=True)
        lenet.load_state_dict(state)
        kept = sum(int((p != 0).sum()) for _, p in admmprune.prunable_parameters(lenet))
        total = sum(p.numel() for _, p in admmprune.prunable_parameters(lenet))
        label = f"LeNet-5 {args.lenet_run.name} ({total / kept:.0f}x)"
    else:
        prune(lenet, 99.6, "lamp")
        label = "LeNet-5 random, 250x"
    bench(label, lenet, "lenet5", {}, (1, 28, 28), ["fc1", "fc2"], args.repeats * 5,
          [32, 8, 4], True, size_rows, time_rows, batches)

    if not args.skip_alexnet:
        for percent in (float(p) for p in args.alexnet_percents.split(",")):
            torch.manual_seed(0)
            size = args.alexnet_image_size
            alex_args = {"image_size": size, "fc_width": args.alexnet_fc_width}
            alex = admmprune.create_model("alexnet", **alex_args)
            prune(alex, percent, "lamp")
            bench(f"AlexNet random, {percent:g}%", alex, "alexnet", alex_args, (3, size, size),
                  ["fc6", "fc7"], args.repeats, [32, 4], False, size_rows, time_rows, batches)

    print("all models:\n")
    print(format_table(SIZE_HEADERS, size_rows))
    print()
    print(format_table(TIME_HEADERS, time_rows))
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
