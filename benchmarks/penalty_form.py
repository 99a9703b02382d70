"""The two forms of the ADMM penalty in a training step, timed against a plain step.

- fused: ``loss + pruner.penalty()`` (one autograd node over all prunable tensors; what the
  pipeline uses);
- gradient: ``loss.backward()`` then ``pruner.add_penalty_gradients()`` (rho·(W − Z + U)
  added to ``.grad``; what the trainer callbacks use).

Plain, fused and gradient steps run alternately in one process (so a drifting load hits all
three alike), ``--steps`` of each after one warm-up; the table gives medians and the ratios
to the plain step. Models: AlexNet at batch 8 (227x227, 61M weights), YOLOv4 at 128x128 and
LeNet-5; ``--models`` picks, and ``--alexnet-width`` / ``--size`` make them small (the smoke
test in tests/ runs it in seconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence

import torch
from steptiming import alternate
from torch import nn

from admmprune import ADMMPruner, create_model
from admmprune.tables import format_table
from admmprune.tasks import create_task

FORMS = ("plain", "fused", "gradient")


def step_function(model: nn.Module, pruner: ADMMPruner, loss_of: Callable[[], torch.Tensor]
                  ) -> Callable[[str], None]:
    """``step(form)``: one SGD step with the penalty in ``form`` (or none: ``plain``)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def step(form: str) -> None:
        optimizer.zero_grad()
        loss = loss_of()
        if form == "fused":
            loss = loss + pruner.penalty()
        loss.backward()
        if form == "gradient":
            pruner.add_penalty_gradients()
        optimizer.step()

    return step


def classification_case(name: str, batch: int, shape: tuple[int, ...], **args
                        ) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    model = create_model(name, **args)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator)
    y = torch.randint(0, args.get("num_classes", 10), (batch,), generator=generator)
    criterion = nn.CrossEntropyLoss()
    return model, lambda: criterion(model(x), y)


def detection_case(batch: int, size: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    model = create_model("yolov4", num_classes=80, image_size=size)
    task = create_task("detection")
    task.bind(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=generator)
    targets = []
    for i in range(batch):
        centre = torch.rand(4, 2, generator=generator) * size * 0.6 + size * 0.2
        half = torch.rand(4, 2, generator=generator) * size * 0.2 + size * 0.04
        targets.append({"boxes": torch.cat((centre - half, centre + half), 1),
                        "labels": torch.randint(80, (4,), generator=generator),
                        "image_id": i, "difficult": torch.zeros(4, dtype=torch.bool)})
    model.train()
    return model, lambda: task.loss(model(x), targets)


def measure(model: nn.Module, loss_of: Callable[[], torch.Tensor], steps: int
            ) -> dict[str, list[float]]:
    pruner = ADMMPruner(model, all_percent=99.0, rho=1e-3, rho_growth=2.0)
    pruner.admm_step()  # Z and U as in the middle of ADMM
    step = step_function(model, pruner, loss_of)
    for form in FORMS:  # warm-up: momentum buffers, allocator
        step(form)
    times = alternate([lambda f=form: step(f) for form in FORMS], steps)
    return dict(zip(FORMS, times, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="alexnet,yolov4,lenet5",
                        help="comma-separated: alexnet, yolov4, lenet5 [default: %(default)s]")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each form")
    parser.add_argument("--batch", type=int, default=8, help="AlexNet batch [default: 8]")
    parser.add_argument("--yolo-batch", type=int, default=2, help="YOLOv4 batch [default: 2]")
    parser.add_argument("--size", type=int, default=128, help="YOLOv4 input size")
    parser.add_argument("--alexnet-width", type=int, default=4096,
                        help="AlexNet's fully connected width (4096: the real model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "alexnet":
            case = classification_case("alexnet", args.batch, (3, 227, 227),
                                       num_classes=1000, fc_width=args.alexnet_width)
            label = f"alexnet batch {args.batch} (fc {args.alexnet_width})"
        elif name == "yolov4":
            case = detection_case(args.yolo_batch, args.size)
            label = f"yolov4 {args.size}x{args.size} batch {args.yolo_batch}"
        elif name == "lenet5":
            case = classification_case("lenet5", 64, (1, 28, 28), num_classes=10)
            label = "lenet5 batch 64"
        else:
            parser.error(f"unknown model {name!r}: choose from alexnet, yolov4, lenet5")
        print(f"{label}: {args.steps} steps of each form ...", flush=True)
        times = measure(*case, args.steps)
        plain = statistics.median(times["plain"])
        rows.append([label, f"{plain:.3f}",
                     f"{statistics.median(times['fused']) / plain:.3f}",
                     f"{statistics.median(times['gradient']) / plain:.3f}"])
        print(format_table(["model", "plain s", "fused / plain", "gradient / plain"], rows[-1:]),
              flush=True)
    print()
    print(format_table(["model", "plain s", "fused / plain", "gradient / plain"], rows))
    print("medians of alternated steps in one process; wall-clock timings on a shared machine "
          "vary between runs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
