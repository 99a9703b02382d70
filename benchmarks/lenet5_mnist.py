"""LeNet-5 on full MNIST: the cost of the ADMM W-step, and dense versus global ADMM.

Part (a), W-step overhead: after a short dense warm-up, plain training epochs and W-step
epochs (the same loop with ``penalty=pruner.penalty``, i.e. + (rho/2)·Σ‖W − Z + U‖²) are
timed alternately in one process, in the order plain, W, W, plain, plain, W, ... so a
load that drifts during the run hits both alike. Reports mean seconds of each, the
ratio W-step / plain (target <= 1.15) and, separately, the cost of one ``admm_step()``
(the Z-step projection and U update, run once per ADMM iteration).

Part (b), the whole job: ``run_pipeline`` with recipes/lenet5.yaml (dense training, global
ADMM, hard prune, masked retraining) in a fresh run directory under ``--output``;
prints dense and pruned accuracy, compression N/K, kept share per layer and wall time
per phase.

    .venv/bin/python benchmarks/lenet5_mnist.py --data-dir ../shared/data/mnist
    .venv/bin/python benchmarks/lenet5_mnist.py --skip-pipeline --overhead-epochs 3
    .venv/bin/python benchmarks/lenet5_mnist.py --skip-overhead --all-percent 99 \\
        --set k_step=4 --set retraining_epochs=4

The data directory is ``--data-dir``, else $ADMMPRUNE_DATA_DIR (else the download cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import admmprune
from admmprune.runs.config import Config, load_config, parse_value
from admmprune.runs.pipeline import (
    build_pruner,
    load_data,
    new_run_dir,
    resolve_device,
    run_pipeline,
)
from admmprune.tables import format_table
from admmprune.train import evaluate, make_optimizer, train_epoch

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "lenet5.yaml"
OVERHEAD_TARGET = 1.15


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], **_: object) -> None:
    print(format_table(headers, rows))


def warn_if_loaded() -> None:
    """Oversubscribed cores make torch's OpenMP workers wait on each other: say so."""
    load, cpus, threads = os.getloadavg()[0], os.cpu_count() or 1, torch.get_num_threads()
    if threads > 1 and load > cpus:
        print(f"note: load average {load:.1f} on {cpus} CPUs; with {threads} torch threads "
              "each kernel can wait for busy cores (seen: 25x slower steps); --threads 1 "
              "gives steadier figures on a shared machine")


def parse_set(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(value)


def build_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = dict(args.set)
    if args.all_percent is not None:
        overrides["all_percent"] = args.all_percent
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.device is not None:
        overrides["device"] = args.device
    overrides["output_dir"] = args.output
    overrides.setdefault("progress", args.progress)
    return load_config(args.recipe, overrides)


# --------------------------------------------------------------------------- part (a)


def w_step_overhead(config: Config, epochs: int, steps: int | None, warmup_steps: int,
                    progress: bool) -> None:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    print(f"== (a) W-step overhead: LeNet-5, {config.dataset}, batch {config.batch_size}, "
          f"{config.optimizer} lr {config.learning_rate:g}, device {device}, "
          f"{torch.get_num_threads()} torch thread(s), load average "
          f"{os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    data = load_data(config, device)
    train_batches, test_batches = data.train, data.test
    print(f"data: {train_batches.x.shape[0]} training / {test_batches.x.shape[0]} test "
          f"examples, {len(train_batches)} steps per full epoch "
          f"(loaded in {time.perf_counter() - start:.1f} s)")

    model = admmprune.create_model("lenet5").to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.learning_rate,
                               config.momentum)

    def epoch(penalty: Any, max_steps: int | None, desc: str) -> dict:
        return train_epoch(model, train_batches, optimizer, device=device, penalty=penalty,
                           max_steps=max_steps, desc=desc, progress=progress)

    start = time.perf_counter()
    warm = epoch(None, warmup_steps, "dense warm-up")
    # the live-weight and filter projections trace the model on a batch, as the pipeline does
    pruner = build_pruner(model, config, 0, next(iter(test_batches))[0][:2].to(device))
    # A few W-steps too, so neither timed loop pays first-call costs.
    epoch(pruner.penalty, max(1, warmup_steps // 10), "W-step warm-up")
    accuracy = evaluate(model, test_batches, device=device)["accuracy"]
    print(f"warm-up: {warm['steps']} dense steps + {max(1, warmup_steps // 10)} W-steps in "
          f"{time.perf_counter() - start:.1f} s, test accuracy {accuracy:.4f}; pruner: "
          f"{pruner.total:,} prunable weights, all_percent {pruner.all_percent:g}, "
          f"K = {pruner.keep:,}, rho {pruner.rho:g}")

    plain: list[float] = []
    wstep: list[float] = []
    step_counts: set[int] = set()
    for i in range(epochs):
        order = ("plain", "W") if i % 2 == 0 else ("W", "plain")  # ABBA: cancels drift
        for kind in order:
            stats = epoch(pruner.penalty if kind == "W" else None, steps,
                          f"{kind} epoch {i + 1}/{epochs}")
            (wstep if kind == "W" else plain).append(stats["seconds"])
            step_counts.add(stats["steps"])
            print(f"  round {i + 1}: {kind:5s} epoch {stats['seconds']:7.2f} s "
                  f"({stats['steps']} steps, train loss {stats['loss']:.4f})", flush=True)
    n_steps = step_counts.pop() if len(step_counts) == 1 else None

    # The Z-step / U-step, once per ADMM iteration: time a few and take the median.
    admm_times = []
    for _ in range(5):
        start = time.perf_counter()
        pruner.admm_step()
        admm_times.append(time.perf_counter() - start)
    admm_step = statistics.median(admm_times)

    mean_plain, mean_w = statistics.fmean(plain), statistics.fmean(wstep)
    ratio = mean_w / mean_plain
    pair_ratio = statistics.median(w / p for w, p in zip(wstep, plain, strict=True))
    print()
    rows = []
    for name, times in (("plain epoch", plain), ("W-step epoch", wstep)):
        per_step = f"{1e3 * statistics.fmean(times) / n_steps:.2f}" if n_steps else "-"
        rows.append([name, str(len(times)), f"{statistics.fmean(times):.2f}",
                     f"{min(times):.2f}", f"{max(times):.2f}", per_step])
    rows.append(["admm_step() (Z+U)", str(len(admm_times)), f"{admm_step:.4f}",
                 f"{min(admm_times):.4f}", f"{max(admm_times):.4f}", "-"])
    print_table(["", "n", "mean s", "min s", "max s", "ms/step"], rows)
    print()
    verdict = "meets" if ratio <= OVERHEAD_TARGET else "MISSES"
    print_table(["overhead", "value"], [
        ["W-step / plain (ratio of means)", f"{ratio:.3f}"],
        ["W-step / plain (median of round ratios)", f"{pair_ratio:.3f}"],
        ["(W-step epoch + admm_step) / plain", f"{(mean_w + admm_step) / mean_plain:.3f}"],
    ])
    print(f"W-step / plain = {ratio:.3f} {verdict} the target of <= {OVERHEAD_TARGET} "
          "(epochs interleaved in one process; a loaded machine adds noise to both)")


# --------------------------------------------------------------------------- part (b)


def pipeline(config: Config) -> None:
    run_dir = new_run_dir(config)
    print(f"== (b) dense versus global ADMM: recipe {config.name}, all_percent "
          f"{config.final_percent():g}, dense_epochs {config.dense_epochs}, k_step "
          f"{config.k_step}, epochs {config.epochs}, retraining_epochs "
          f"{config.retraining_epochs}, {torch.get_num_threads()} torch thread(s), load "
          f"average {os.getloadavg()[0]:.2f}")
    print(f"run directory: {run_dir}", flush=True)
    start = time.perf_counter()
    summary = run_pipeline(config, run_dir=run_dir)
    wall = time.perf_counter() - start

    dense, pruned = summary.get("dense_accuracy"), summary.get("pruned_accuracy")
    admm_acc = summary.get("admm_accuracy")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f} %"

    print()
    print_table(["result", "value"], [
        ["dense test accuracy", pct(dense)],
        ["after hard prune (before retraining)", pct(admm_acc)],
        ["pruned test accuracy (after retraining)", pct(pruned)],
        ["accuracy change (pruned - dense)",
         "-" if dense is None or pruned is None else f"{100 * (pruned - dense):+.2f} points"],
        ["prunable weights N", f"{summary['total']:,}"],
        ["kept weights K", f"{summary['kept']:,}"],
        ["removed", f"{summary['sparsity_percent']:.2f} %"],
        ["compression N/K", f"{summary['compression']:.1f}x"],
    ])
    print()
    print_table(["layer", "shape", "weights", "kept", "kept %"], [
        [layer["name"], "x".join(map(str, layer["shape"])), f"{layer['total']:,}",
         f"{layer['kept']:,}", f"{100 * layer['kept_fraction']:.2f}"]
        for layer in summary["layers"]
    ], align_left=2)
    print()
    seconds = summary["seconds"]
    rows = [[phase, f"{seconds[phase]:.1f}"] for phase in ("dense", "admm", "retrain")
            if phase in seconds]
    rows.append(["sum of phases", f"{summary['wall_seconds']:.1f}"])
    rows.append(["total incl. data loading and setup", f"{wall:.1f}"])
    print_table(["phase", "wall s"], rows)
    print(f"summary: {Path(summary['run_dir']) / 'summary.json'}")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="LeNet-5 / MNIST benchmarks: (a) time of a W-step epoch versus a plain "
                    "epoch, interleaved; (b) the dense + global ADMM pipeline of a recipe.")
    parser.add_argument("--data-dir", default=None,
                        help="directory holding the MNIST files (default: $ADMMPRUNE_DATA_DIR, "
                             "then the download cache)")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help=f"recipe of both parts (default: {DEFAULT_RECIPE.name})")
    parser.add_argument("--all-percent", type=float, default=None,
                        help="override the recipe's all_percent (share of weights removed)")
    parser.add_argument("--set", type=parse_set, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a recipe key (repeatable), e.g. --set k_step=4; "
                             "applies to both parts (e.g. train_subset)")
    parser.add_argument("--device", default=None, help="override the recipe's device")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's default, here "
                             f"{torch.get_num_threads()})")
    parser.add_argument("--output", default="runs/bench",
                        help="parent of the pipeline's run directory (default: runs/bench)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    group = parser.add_argument_group("part (a): W-step overhead")
    group.add_argument("--overhead-epochs", type=int, default=2,
                       help="timed epochs of each kind, interleaved (default: 2)")
    group.add_argument("--steps", type=int, default=None,
                       help="cap on steps per timed epoch (default: full epochs)")
    group.add_argument("--warmup-steps", type=int, default=300,
                       help="dense training steps before timing (default: 300)")
    group.add_argument("--skip-overhead", action="store_true", help="run only part (b)")
    group = parser.add_argument_group("part (b): dense versus global ADMM")
    group.add_argument("--skip-pipeline", action="store_true", help="run only part (a)")
    args = parser.parse_args(argv)
    if args.overhead_epochs < 1:
        parser.error("--overhead-epochs must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be >= 1")
    if args.skip_overhead and args.skip_pipeline:
        parser.error("--skip-overhead and --skip-pipeline leave nothing to run")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    config = build_config(args)
    warn_if_loaded()
    if not args.skip_overhead:
        w_step_overhead(config, args.overhead_epochs, args.steps, args.warmup_steps,
                        args.progress)
    if not args.skip_pipeline:
        if not args.skip_overhead:
            print()
        pipeline(config)
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    sys.exit(main())
