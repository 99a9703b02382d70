"""ADMMPruner inside a hand-written training loop: any model, any optimizer, any data.

    python examples/custom_loop.py            # a small CNN on generated data, ~10 s on a CPU

The pruner never sees the loop: add ``pruner.penalty()`` to the loss during the W-steps,
call ``pruner.admm_step()`` once per ADMM iteration, then ``hard_prune()`` and
``enforce()`` after every optimizer step of the masked retraining.
"""

from __future__ import annotations

import torch
from torch import nn

from admmprune import ADMMPruner
from admmprune.data import make_synthetic


def main(all_percent: float = 95.0, k_step: int = 4, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    data = make_synthetic(train_size=1024, test_size=512, seed=seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 13 * 13, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    criterion = nn.CrossEntropyLoss()

    def batches():
        order = torch.randperm(len(data.train_y))
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            yield data.train_x[idx], data.train_y[idx]

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            correct = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
        model.train()
        return correct

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in batches():  # a short dense warm-up
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    dense = accuracy()

    pruner = ADMMPruner(model, all_percent=all_percent, rho=1e-3, rho_growth=2.0)
    for _ in range(k_step):
        for x, y in batches():
            loss = criterion(model(x), y) + pruner.penalty()  # W-step
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        record = pruner.admm_step()  # Z-step, U-step, rho
        print(f"iteration {record['iteration']}: primal {record['primal_residual']:.3f} "
              f"dual {record['dual_residual']:.4f} rho {record['rho']:.4f}")

    pruner.hard_prune()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # fresh: no stale momentum
    for _ in range(2):
        for x, y in batches():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
            pruner.enforce()

    result = {"dense_accuracy": dense, "pruned_accuracy": accuracy(), **pruner.summary()}
    print(f"dense {100 * dense:.1f}%  pruned {100 * result['pruned_accuracy']:.1f}%  "
          f"kept {result['kept']}/{result['total']} ({result['compression']:.1f}x)")
    for layer in pruner.sparsity():
        print(f"  {layer.name:12s} kept {100 * layer.kept_fraction:6.2f}%")
    return result


if __name__ == "__main__":
    main()
