"""Benchmark of what structured pruning buys once the zero filters are removed
(``admmprune.shrink``): parameters, multiply-accumulates and CPU latency at batch 1 and
batch 64, dense against shrunk, ratios measured in the same run.

    .venv/bin/python benchmarks/structured.py                      # LeNet-5 + AlexNet, 50/75/90%
    .venv/bin/python benchmarks/structured.py --layerwise         # same share in every layer
    .venv/bin/python benchmarks/structured.py --percents 90 --alexnet-image-size 227
    .venv/bin/python benchmarks/structured.py --run-dir runs/lenet5-filter-...   # a real run

Models have random weights pruned with whole output filters: the registered ``filter``
projection of ``admmprune.projection`` when there is one (its ``l2`` score, norm over
sqrt(fan-in)), else a filter-L2-norm rule here; ``--percents`` are shares of the prunable
weights removed, under one global budget (on random weights the global rule removes mostly
the widest layers, fc1 / fc6-fc7, so MACs fall little) or with ``--layerwise`` the same share
in every layer.
The classifier (the network's output) is not pruned: its classes cannot be removed. The
biases of removed filters are zeroed, as the pruner does, so the shrunk model computes the
same function (the max |diff| column checks it). AlexNet runs at ``--alexnet-image-size``
(default 115: fc6 sees 3x3x256) for speed; its LocalResponseNorm mixes neighbouring
channels, so conv1's and conv2's zero filters cannot be removed (the "kept" column).
Timings are medians of ``--repeats`` calls on ``--threads`` threads (default 1), dense and
shrunk timed alternately so that a drifting load hits both alike.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from steptiming import alternate
from torch import nn

import admmprune
from admmprune.channels.shrink import shrink
from admmprune.tables import format_table


def filter_rule() -> tuple[str, object]:
    """The projection's ``filter`` structure if registered, else the fallback below."""
    try:
        from admmprune.projection import STRUCTURES, StructureOptions
    except ImportError:
        return "filter L2 norm (benchmark's own rule)", None
    if "filter" not in STRUCTURES:
        return "filter L2 norm (benchmark's own rule)", None
    return "admmprune.projection 'filter' (group_score l2)", \
        lambda values, keep, percents: STRUCTURES["filter"](values, keep, percents, None,
                                                           StructureOptions())


def own_filter_masks(weights: list[torch.Tensor], keep: int, percents: float | None
                     ) -> list[torch.Tensor]:
    """Filters ranked by L2 norm across all layers and taken from the top until ``keep``
    weights are kept (every layer keeps its best filter); with ``percents``, every layer
    keeps its best ceil((1 - p) x filters)."""
    if percents is not None:
        masks = []
        for w in weights:
            rows = w.shape[0]
            top = w.reshape(rows, -1).norm(dim=1).argsort(descending=True)
            chosen = torch.zeros(rows, dtype=torch.bool)
            chosen[top[:max(1, math.ceil(rows * (100 - percents) / 100))]] = True
            masks.append(chosen.view(-1, *[1] * (w.dim() - 1)).expand_as(w).clone())
        return masks
    scored = []
    for layer, w in enumerate(weights):
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
        best = int(norms.argmax())
        for row, n in enumerate(norms.tolist()):
            scored.append((row != best, -n, layer, row))
    scored.sort()
    chosen = [torch.zeros(w.shape[0], dtype=torch.bool) for w in weights]
    kept = 0
    for _, _, layer, row in scored:
        if kept >= keep:
            break
        chosen[layer][row] = True
        kept += weights[layer][row].numel()
    return [c.view(-1, *[1] * (w.dim() - 1)).expand_as(w).clone()
            for c, w in zip(chosen, weights, strict=True)]


def prune_filters(model: nn.Module, percent: float, output_layer: str, layerwise: bool
                  ) -> None:
    """Zero whole filters of every prunable tensor but the output layer's (and their
    biases), removing ``percent`` % of those weights (globally, or in every layer)."""
    from admmprune.projection import survivor_count

    named = [(n, p) for n, p in admmprune.prunable_parameters(model)
             if n != f"{output_layer}.weight"]
    weights = [p.detach() for _, p in named]
    keep = survivor_count(sum(w.numel() for w in weights), percent)
    _, rule = filter_rule()
    percents = percent if layerwise else None
    masks = rule(weights, keep, percents) if rule else own_filter_masks(weights, keep,
                                                                         percents)
    with torch.no_grad():
        for (name, p), m in zip(named, masks, strict=True):
            p.mul_(m.to(p.dtype))
            bias = model.get_submodule(name.rsplit(".", 1)[0]).bias
            if bias is not None:
                bias[~m.reshape(m.shape[0], -1).any(1)] = 0


@torch.no_grad()
def latency(dense: nn.Module, small: nn.Module, x: torch.Tensor, repeats: int
            ) -> tuple[float, float]:
    dense(x), small(x)  # warm-up
    times = alternate([lambda: dense(x), lambda: small(x)], repeats)
    return statistics.median(times[0]), statistics.median(times[1])


HEADERS = ["model, removed", "batch", "params", "shrunk", "ratio", "MACs/example", "shrunk",
           "ratio", "dense ms", "shrunk ms", "speed-up", "kept zero ch.", "out channels after",
           "max |diff|"]


def bench(label: str, model: nn.Module, shape: tuple[int, ...], repeats: int,
          rows: list, batch_sizes: Sequence[int] = (1, 64)) -> None:
    """Measure one model and print its rows at once (a timeout keeps what was measured)."""
    first = len(rows)
    model.eval()
    report = shrink(model, None, torch.randn(1, *shape))
    small = report.model
    kept = sum(report.kept.values())
    widths = "/".join(str(layer.after[0]) for layer in report.layers)
    for batch in batch_sizes:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            diff = float((small(x) - model(x)).abs().max())
        d, s = latency(model, small, x, repeats)
        rows.append((label, batch, report.params_before, report.params_after,
                     f"{report.param_ratio:.2f}x", report.macs_before, report.macs_after,
                     f"{report.mac_ratio:.2f}x", f"{1e3 * d:.3f}", f"{1e3 * s:.3f}",
                     f"{d / s:.2f}x", kept, widths, f"{diff:.1e}"))
    print(format_table(HEADERS, rows[first:]), end="\n\n", flush=True)


def run_model(run_dir: Path) -> tuple[str, nn.Module, tuple[int, ...]]:
    from admmprune.runs.pipeline import build_model, load_data, load_run_config, load_weights

    config = load_run_config(run_dir, {})
    data = load_data(config, torch.device("cpu"), splits=("test",))
    model = build_model(config, data.num_classes)
    load_weights(model, run_dir / "model.pt", torch.device("cpu"), config.model)
    x, _ = next(iter(data.test))
    return f"{config.model} {run_dir.name}", model, tuple(x.shape[1:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--percents", default="50,75,90",
                        help="removed shares of the prunable weights [default: %(default)s]")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alexnet-image-size", type=int, default=115)
    parser.add_argument("--alexnet-fc-width", type=int, default=4096,
                        help="width of AlexNet's fc6 and fc7 (smaller: a quicker run)")
    parser.add_argument("--batch", type=int, default=64,
                        help="the larger batch timed besides batch 1 [default: 64]")
    parser.add_argument("--skip-alexnet", action="store_true")
    parser.add_argument("--layerwise", action="store_true",
                        help="remove the share in every layer (default: one global budget)")
    parser.add_argument("--run-dir", type=Path, help="shrink this run's model.pt instead")
    args = parser.parse_args(argv)
    if min(args.repeats, args.threads, args.alexnet_fc_width, args.batch) < 1:
        parser.error("--repeats, --threads, --alexnet-fc-width and --batch must be >= 1")
    torch.set_num_threads(args.threads)
    batches = (1, args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n", flush=True)
    rows: list = []
    if args.run_dir:
        label, model, shape = run_model(args.run_dir)
        bench(label, model, shape, args.repeats, rows, batches)
    else:
        percents = [float(p) for p in args.percents.split(",")]
        for percent in percents:
            torch.manual_seed(0)
            lenet = admmprune.create_model("lenet5")
            prune_filters(lenet, percent, "fc2", args.layerwise)
            bench(f"LeNet-5 {percent:g}%", lenet, (1, 28, 28), args.repeats * 5, rows,
                  batches)
        size = args.alexnet_image_size
        for percent in [] if args.skip_alexnet else percents:
            torch.manual_seed(0)
            alex = admmprune.create_model("alexnet", image_size=size,
                                          fc_width=args.alexnet_fc_width)
            prune_filters(alex, percent, "fc8", args.layerwise)
            bench(f"AlexNet@{size} {percent:g}%", copy.deepcopy(alex), (3, size, size),
                  args.repeats, rows, batches)
        print(f"filters chosen by: {filter_rule()[0]}, "
              f"{'the same share in every layer' if args.layerwise else 'one global budget'}")
    print()
    print(format_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
