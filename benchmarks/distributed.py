"""Data-parallel W-steps: LeNet-5 on real MNIST with 1 and 2 processes (gloo on the CPU).

For each process count N, N processes (spawned, one torch thread each by default) train on
the same global batches split N ways, exactly as ``torchrun ... admmprune prune`` does:
DistributedDataParallel around the model, the training set sharded by global batch. Per ADMM
iteration it times

- the W-step: one epoch of ``train_epoch`` with the ADMM penalty (images/s over all ranks);
- the ADMM bookkeeping the pipeline adds per iteration: the replica check (an exact integer
  fingerprint of the weights, one all_reduce), the Z-step and U-step (``admm_step()``, on
  every rank), and the all_gather of the RNG states a checkpoint holds;
- for comparison, what the other design would cost: broadcasting Z and U from rank 0
  (``admm_step()`` on rank 0 only, then 2 x N_weights floats sent).

The bookkeeping share is bookkeeping / (W-step + bookkeeping); the target is < 5% with two
processes. The machine's load average is printed: on a shared machine the figures move.

    .venv/bin/python benchmarks/distributed.py --data-dir ../shared/data
    .venv/bin/python benchmarks/distributed.py --train-subset 6000 --iterations 2 --worlds 1,2

The data directory is ``--data-dir``, else $ADMMPRUNE_DATA_DIR (else the download cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import admmprune  # noqa: F401  (CPU defaults before torch does any work)
from admmprune import distributed
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import build_model, build_pruner, load_data
from admmprune.runs.runstate import rng_state
from admmprune.tables import format_table
from admmprune.train import make_optimizer, train_epoch

TARGET_SHARE = 0.05


def worker(rank: int, world: int, store: str, out: str, options: dict) -> None:
    torch.set_num_threads(options["threads"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
    try:
        timings = _measure(rank, world, options)
        gathered = distributed.all_gather_objects(timings)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _measure(rank: int, world: int, options: dict) -> list[dict]:
    config = load_config(None, {"dataset": "mnist", "model": "lenet5", "seed": 0,
                                "data_dir": options["data_dir"], "progress": False,
                                "train_subset": options["train_subset"], "test_subset": 1000,
                                "batch_size": options["batch_size"], "all_percent": 98.6,
                                "rho": 1e-3, "rho_growth": 2.0, "threads": options["threads"]})
    device = torch.device("cpu")
    data = distributed.main_first(lambda: load_data(config, device, ("train",)))
    batches = data.train
    if world > 1:
        batches.shard(rank, world)
    torch.manual_seed(0)
    model = build_model(config, data.num_classes)
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(model.parameters(), "adam", config.learning_rate)
    pruner = build_pruner(model, config)
    weight = None
    if world > 1:
        weight = lambda step, n: n * world / batches.global_batch_size(step)  # noqa: E731

    def w_step(epoch: int, max_steps: int | None = None) -> dict:
        batches.set_epoch(epoch)
        return train_epoch(trained, batches, optimizer, penalty=pruner.penalty,
                           max_steps=max_steps, progress=False, loss_weight=weight)

    w_step(0, max_steps=10)  # warm-up: first-call allocations, DDP's first buckets
    # what DDP sends per optimizer step: one all-reduce of every gradient
    grads = torch.zeros(sum(p.numel() for p in model.parameters()))
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(20):
        if world > 1:
            dist.all_reduce(grads)
    allreduce = (time.perf_counter() - start) / 20
    rows = []
    for k in range(options["iterations"]):
        distributed.barrier()
        t0 = time.perf_counter()
        stats = w_step(k + 1)
        # waiting for the slowest rank belongs to the W-step (its load imbalance); without
        # this barrier the next collective, whichever it is, would absorb that wait
        distributed.barrier()
        t1 = time.perf_counter()
        same = distributed.check_synchronised(pruner.params)
        t2 = time.perf_counter()
        pruner.admm_step()
        t3 = time.perf_counter()
        distributed.all_gather_objects(rng_state())
        t4 = time.perf_counter()
        # the alternative design: Z and U computed on rank 0 and broadcast
        distributed.broadcast_tensors(pruner.z + pruner.u)
        t5 = time.perf_counter()
        rows.append({"w_step": t1 - t0, "check": t2 - t1, "zu_step": t3 - t2,
                     "rng_gather": t4 - t3, "broadcast_zu": t5 - t4, "synchronised": same,
                     "examples": stats["examples"], "allreduce": allreduce})
    return rows


def run_world(world: int, options: dict) -> list[list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.spawn(worker, args=(world, str(Path(tmp) / "store"), str(out), options),
                 nprocs=world)
        return json.loads(out.read_text())


def summarise(world: int, per_rank: list[list[dict]]) -> dict:
    """Per iteration the slowest rank's time of each part (the ranks wait for it), then the
    median over iterations."""
    iterations = len(per_rank[0])

    def part(key: str) -> float:
        return statistics.median(max(rank[i][key] for rank in per_rank)
                                 for i in range(iterations))

    examples = sum(rank[0]["examples"] for rank in per_rank)
    w_step, check, zu, rng = (part(k) for k in ("w_step", "check", "zu_step", "rng_gather"))
    bookkeeping = check + zu + rng
    return {"world": world, "images_per_s": examples / w_step, "w_step": w_step,
            "check": check, "zu": zu, "rng": rng, "bookkeeping": bookkeeping,
            "share": bookkeeping / (w_step + bookkeeping), "broadcast": part("broadcast_zu"),
            "synchronised": all(r["synchronised"] for rank in per_rank for r in rank),
            "allreduce": part("allreduce")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("ADMMPRUNE_DATA_DIR"))
    parser.add_argument("--train-subset", type=int, default=12000,
                        help="training examples per W-step epoch [default: 12000]")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch [64]")
    parser.add_argument("--iterations", type=int, default=3, help="ADMM iterations [3]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--worlds", default="1,2", help="process counts [1,2]")
    args = parser.parse_args()
    options = {"data_dir": args.data_dir, "train_subset": args.train_subset,
               "batch_size": args.batch_size, "iterations": args.iterations,
               "threads": args.threads}
    print(f"LeNet-5, MNIST train subset {args.train_subset}, global batch {args.batch_size}, "
          f"Adam, {args.iterations} ADMM iterations, {args.threads} thread(s) per process, "
          f"gloo; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = []
    for world in (int(w) for w in args.worlds.split(",")):
        results.append(summarise(world, run_world(world, options)))
    base = results[0]["images_per_s"]
    rows = [(r["world"], f"{r['images_per_s']:.0f}", f"{r['images_per_s'] / base:.2f}x",
             f"{r['w_step']:.2f}", f"{1000 * r['check']:.1f}", f"{1000 * r['zu']:.1f}",
             f"{1000 * r['rng']:.1f}", f"{100 * r['share']:.2f}%",
             f"{1000 * r['broadcast']:.1f}", f"{1000 * r['allreduce']:.1f}",
             "yes" if r["synchronised"] else "NO")
            for r in results]
    print(format_table(["processes", "W-step img/s", "speed-up", "W-step s", "check ms",
                        "Z+U ms", "RNG gather ms", "bookkeeping", "bcast Z,U ms",
                        "grad all-reduce ms/step", "replicas equal"], rows))
    print(f"load average afterwards {os.getloadavg()[0]:.1f}. bookkeeping = replica check + "
          "Z/U-step + RNG gather, as a share of an ADMM iteration (target < "
          f"{100 * TARGET_SHARE:.0f}% with 2 processes); bcast Z,U = what computing Z, U on "
          "rank 0 and broadcasting them would add instead of the check")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    main()
