"""Forward cost of the block-by-block engine against depth: SparseGPT at a uniform 50% on
Llama models of 2, 4, 8 and 16 blocks (random weights and tokens: the cost does not depend on
them), timing the whole call and every block.

Each block runs over the calibration set a fixed number of times (a statistics pass and a
pass that feeds the next block), so seconds per block stay flat as the model deepens; the
old layer-by-layer calibration ran the whole model once per layer (quadratic in depth).

    python benchmarks/oneshot_depth.py                       # width 256, 32 x 128 tokens
    python benchmarks/oneshot_depth.py --depths 2,4,8,16,32 --order sequential
    python benchmarks/oneshot_depth.py --smoke               # a tiny run, seconds

Target: seconds per block at the deepest model within 1.5x of the shallowest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from admmprune import create_model
from admmprune.posttraining import find_blocks, prune_blocks
from admmprune.tables import format_table

TARGET = 1.5


def run(depth: int, args: argparse.Namespace) -> dict[str, float]:
    """Prune one model of ``depth`` blocks; seconds in all, per block, and block runs."""
    torch.manual_seed(0)
    model = create_model("llama", n_layer=depth, n_embd=args.width, n_head=args.heads,
                         n_kv_head=args.kv_heads, intermediate=args.intermediate,
                         context=args.context)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (args.calibration, args.context), generator=g)
    batches = list(tokens.split(args.batch))
    runs = [0]
    for _, block in find_blocks(model):
        block.register_forward_pre_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    ends: list[float] = []
    start = time.perf_counter()
    prune_blocks(model, batches, "sparsegpt", all_percent=50, order=args.order,
                 progress=False, callback=lambda *_: ends.append(time.perf_counter()))
    total = time.perf_counter() - start
    # a block's time: from the previous block's end (the first: from the start, capture
    # included) to its own
    blocks = [b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)]
    return {"total": total, "per_block": total / depth,
            "median_block": statistics.median(blocks), "runs": runs[0]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="2,4,8,16", help="blocks of each model")
    parser.add_argument("--width", type=int, default=256, help="hidden size")
    parser.add_argument("--heads", type=int, default=4, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    parser.add_argument("--intermediate", type=int, default=704, help="MLP width")
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--calibration", type=int, default=32, help="calibration sequences")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--order", choices=("block", "sequential"), default="block")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.depths, args.width, args.heads, args.kv_heads = "2,4", 32, 4, 2
        args.intermediate, args.context, args.calibration, args.batch = 48, 16, 4, 2
    torch.set_num_threads(args.threads)
    depths = [int(d) for d in args.depths.split(",")]
    print(f"Llama width {args.width}, MLP {args.intermediate}, {args.calibration} x "
          f"{args.context} calibration tokens in batches of {args.batch}; SparseGPT 50%, "
          f"order {args.order}, {args.threads} thread(s)", flush=True)
    rows = []
    results = {}
    for depth in depths:
        result = run(depth, args)
        results[depth] = result
        rows.append([str(depth), f"{result['total']:.2f}", f"{result['per_block']:.3f}",
                     f"{result['median_block']:.3f}", f"{result['runs'] / depth:.1f}"])
        print(f"depth {depth}: {result['total']:.2f} s, {result['per_block']:.3f} s/block",
              flush=True)
    print(format_table(["blocks", "total s", "s/block", "median block s",
                        "block runs / block"], rows), flush=True)
    ratio = results[depths[-1]]["per_block"] / results[depths[0]]["per_block"]
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"s/block at {depths[-1]} blocks / at {depths[0]} blocks = {ratio:.2f}: {verdict} the "
          f"target <= {TARGET}", flush=True)
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
