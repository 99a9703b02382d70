"""W-step overhead of the trainer callbacks, and the penalty's gradient form against the fused
autograd node, on LeNet-5 with generated MNIST-shaped data.

1. Lightning: a training step (forward, backward, optimizer step, the hooks in between)
   under ``ADMMPruning`` in its ADMM phase against the same ``Trainer`` without it
   (target <= 1.10x).
2. The plain loop: ``loss + pruner.penalty()`` (fused node) and
   ``pruner.add_penalty_gradients()`` (gradient form) against a plain step.

    python benchmarks/callbacks.py --steps 60 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from admmprune import ADMMPruner, create_model
from admmprune.tables import format_table

TARGET = 1.10
WARMUP = 3  # first steps of every fit left out (allocator, Adam state)


def mnist_like(count: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 1, 28, 28, generator=generator),
                         torch.randint(0, 10, (count,), generator=generator))


def lightning_step_times(steps: int, batch: int, with_callback: bool) -> list[float]:
    """Seconds of each training step (batch start to batch end) of one ``fit``."""
    import lightning.pytorch as pl

    from admmprune.integrations.lightning import ADMMPruning

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = create_model("lenet5")

        def training_step(self, data, index):
            x, y = data
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class StepTimer(pl.Callback):  # listed last: its batch end follows the pruning hooks
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if with_callback:
        # one ADMM iteration over the whole fit: every timed step is a W-step (the Z-step and
        # the hard prune come at the epoch end, outside the timed steps)
        callbacks.insert(0, ADMMPruning(all_percent=98.0, k_step=1, epochs=1,
                                        retraining_epochs=0, verbose=False))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=steps + WARMUP, accelerator="cpu",
                         devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=callbacks)
    loader = DataLoader(mnist_like((steps + WARMUP) * batch), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
        trainer.fit(Module(), loader)
    return timer.times[WARMUP:]


def lightning_ratio(steps: int, batch: int, repeats: int) -> tuple[float, float, float]:
    """(plain median s, callback median s, ratio), fits alternated so drift hits both."""
    plain: list[float] = []
    pruned: list[float] = []
    for r in range(repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for with_callback in order:
            (pruned if with_callback else plain).extend(
                lightning_step_times(steps, batch, with_callback))
    p, w = statistics.median(plain), statistics.median(pruned)
    return p, w, w / p


def loop_ratios(steps: int, batch: int) -> dict[str, float]:
    """Median seconds of a plain step, a step with the fused penalty node and one with the
    gradient form, run alternately on one model."""
    torch.manual_seed(0)
    model = create_model("lenet5")
    pruner = ADMMPruner(model, all_percent=98.0, rho=1e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = mnist_like(batch).tensors

    def step(mode: str) -> None:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if mode == "fused":
            loss = loss + pruner.penalty()
        loss.backward()
        if mode == "gradient":
            pruner.add_penalty_gradients()
        optimizer.step()

    modes = ("plain", "fused", "gradient")
    for mode in modes:
        step(mode)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(steps):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            start = time.perf_counter()
            step(mode)
            times[mode].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    parser.add_argument("--batch", type=int, default=64, help="mini-batch size")
    parser.add_argument("--repeats", type=int, default=3, help="Lightning fits of each kind")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels when imported)

    for name in ("lightning.pytorch", "lightning.fabric"):  # a few lines per fit otherwise
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"LeNet-5, batch {args.batch}, {args.steps} timed steps, {args.threads} thread(s)")

    plain, pruned, ratio = lightning_ratio(args.steps, args.batch, args.repeats)
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(format_table(["Lightning step", "median ms"],
                       [["plain Trainer", f"{1e3 * plain:.2f}"],
                        ["with ADMMPruning (W-step)", f"{1e3 * pruned:.2f}"]]))
    print(f"callback W-step / plain step = {ratio:.3f} {verdict} the target <= {TARGET:.2f}")

    loop = loop_ratios(args.steps, args.batch)
    print(format_table(["plain loop step", "median ms", "/ plain"],
                       [[m, f"{1e3 * s:.2f}", f"{s / loop['plain']:.3f}"]
                        for m, s in loop.items()]))
    return {"lightning_ratio": ratio, "fused_ratio": loop["fused"] / loop["plain"],
            "gradient_ratio": loop["gradient"] / loop["plain"]}


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # a timeout keeps every line printed
    main()
