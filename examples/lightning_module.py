"""A LightningModule pruned by ADMM through the ``ADMMPruning`` callback (admmprune[lightning]).

    python examples/lightning_module.py           # a small CNN on generated digits, ~20 s
    python examples/lightning_module.py --tiny    # a few seconds

The module is ordinary Lightning code: no penalty in its loss, no masks. The callback
trains densely for ``dense_epochs``, runs ``k_step`` ADMM iterations of ``epochs`` epochs,
hard-prunes and retrains with the mask, and logs the kept weights per layer at the end.
"""

from __future__ import annotations

import argparse
import logging

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from admmprune.data import make_synthetic
from admmprune.integrations.lightning import ADMMPruning


class SmallCNN(pl.LightningModule):
    def __init__(self, learning_rate: float = 2e-3) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * 13 * 13, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


def main(tiny: bool = False, all_percent: float = 95.0, seed: int = 0) -> dict:
    pl.seed_everything(seed, verbose=False)
    size = 256 if tiny else 2048
    data = make_synthetic(train_size=size, test_size=512, seed=seed)
    loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=64,
                        shuffle=True)
    schedule = dict(dense_epochs=1, k_step=2, epochs=1, retraining_epochs=1) if tiny else \
        dict(dense_epochs=2, k_step=4, epochs=1, retraining_epochs=3)
    pruning = ADMMPruning(all_percent=all_percent, rho=1e-2, rho_growth=2.0, **schedule)
    trainer = pl.Trainer(max_epochs=pruning.schedule.total, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[pruning])
    model = SmallCNN()
    trainer.fit(model, loader)
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    kept = sum(r.kept for r in pruning.report)
    total = sum(r.total for r in pruning.report)
    print(f"kept {kept} of {total} weights ({100 * (1 - kept / total):.2f}% removed); "
          f"test accuracy {accuracy:.3f}")
    return {"kept": kept, "total": total, "accuracy": accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds")
    parser.add_argument("--all-percent", type=float, default=95.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(tiny=args.tiny, all_percent=args.all_percent)
