"""The Lightning callback: phases by epoch, exact K, zeros in weights and Adam state, resume."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from admmprune.integrations.lightning import ADMMPruning
from admmprune.runs.config import ConfigError

SCHEDULE = {"dense_epochs": 1, "k_step": 2, "epochs": 1, "retraining_epochs": 2}
EPOCHS = 5


class Blobs(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        y = torch.randint(0, 2, (64,), generator=generator)
        x = torch.randn(64, 8, generator=generator) + (2 * y - 1).unsqueeze(1).float()
        return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(tmp_path, callback, *, max_epochs=EPOCHS, ckpt_path=None, save=False, module=None,
        callbacks=(), **settings):
    pl.seed_everything(0, verbose=False)
    module = module or Blobs()
    callbacks = [callback, *callbacks]
    if save:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1,
                                         every_n_epochs=1))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=save, callbacks=callbacks,
                         default_root_dir=tmp_path, **settings)
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, trainer


def test_exact_k_zero_weights_and_zero_adam_state_at_the_end(tmp_path):
    callback = ADMMPruning(all_percent=90.0, rho=1e-2, **SCHEDULE)
    module, trainer = fit(tmp_path, callback)
    pruner = callback.pruner
    assert pruner.iteration == 2 and pruner.pruned
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep
    assert pruner.keep == pruner.total - round(0.9 * pruner.total)
    optimizer = trainer.optimizers[0]
    for p, m in zip(pruner.params, pruner.masks, strict=True):
        assert not bool(p.detach()[~m].any())
        state = optimizer.state[p]
        assert not bool(state["exp_avg"][~m].any()) and not bool(state["exp_avg_sq"][~m].any())
        assert bool(state["exp_avg_sq"][m].any())  # the kept weights did train
    assert [r.name for r in callback.report] == pruner.names
    assert sum(r.kept for r in callback.report) == pruner.keep


def test_resume_from_a_mid_admm_checkpoint_ends_with_the_same_masks(tmp_path):
    whole = ADMMPruning(all_percent=90.0, rho=1e-2, **SCHEDULE)
    fit(tmp_path / "a", whole, save=True)
    # epoch=1.ckpt: after the dense epoch and the first ADMM iteration (Z, U saved, no mask)
    checkpoint = torch.load(tmp_path / "a" / "epoch=1.ckpt", weights_only=False)
    saved = next(v for k, v in checkpoint["callbacks"].items() if "ADMMPruning" in k)
    assert saved["pruner"]["iteration"] == 1 and saved["pruner"]["masks"] is None
    resumed = ADMMPruning(all_percent=90.0, rho=1e-2, **SCHEDULE)
    fit(tmp_path / "b", resumed, ckpt_path=tmp_path / "a" / "epoch=1.ckpt")
    assert resumed.pruner.iteration == 2
    for a, b in zip(whole.pruner.masks, resumed.pruner.masks, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(whole.pruner.params, resumed.pruner.params, strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_resume_with_another_schedule_is_refused(tmp_path):
    fit(tmp_path / "a", ADMMPruning(all_percent=90.0, **SCHEDULE), save=True)
    other = ADMMPruning(all_percent=80.0, **SCHEDULE)
    with pytest.raises(ValueError, match="another pruning schedule"):
        fit(tmp_path / "b", other, ckpt_path=tmp_path / "a" / "epoch=1.ckpt")


def test_a_schedule_longer_than_max_epochs_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="needs 5 epochs.*max_epochs"):
        fit(tmp_path, ADMMPruning(all_percent=90.0, **SCHEDULE), max_epochs=4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k_step": 0}, "k_step"),
    ({"rho": -1.0}, "rho"),
    ({"all_percent": 100.0}, "all_percent"),
    ({"structure": "blocks"}, "structure"),
    ({"bogus": 1}, "unknown pruning option"),
    ({"all_percent": [50.0, 90.0]}, "one value"),
])
def test_bad_settings_are_refused_by_the_recipe_rules(kwargs, message):
    settings = {"all_percent": 90.0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        ADMMPruning(**settings)


class Recording(torch.optim.SGD):
    """SGD with lr 0 that keeps the gradients it was given at its first step."""

    grads: dict | None = None

    def step(self, closure=None):
        if closure is not None:  # Lightning's hooks (the penalty) run inside the closure
            with torch.enable_grad():
                closure()
        if self.grads is None:
            self.grads = {p: p.grad.clone() for g in self.param_groups for p in g["params"]}
        return super().step()


class TwoOptimizers(Blobs):
    """Manual optimization: one optimizer for the first layer, one for the other two; the
    loss has no gradient, so each step's gradients are the penalty alone."""

    def __init__(self, pruning: ADMMPruning) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.pruning = pruning
        self.expected: dict = {}

    def training_step(self, batch, batch_idx):
        x, _ = batch
        first, second = self.optimizers()
        self.manual_backward((self.net(x) * 0).sum())
        if not self.expected:  # the penalty's gradient rho·(W − Z + U), once
            pruner = self.pruning.pruner
            grads = torch.autograd.grad(pruner.penalty(), pruner.params)
            self.expected = dict(zip(pruner.params, grads, strict=True))
        first.step()
        second.step()
        first.zero_grad()
        second.zero_grad()

    def configure_optimizers(self):
        rest = [*self.net[2].parameters(), *self.net[4].parameters()]
        return Recording(self.net[0].parameters(), lr=0.0), Recording(rest, lr=0.0)


def test_each_optimizer_adds_the_penalty_of_its_own_tensors_once(tmp_path):
    pruning = ADMMPruning(all_percent=90.0, rho=0.5, k_step=1, epochs=1, retraining_epochs=1,
                          verbose=False)
    module = TwoOptimizers(pruning)
    fit(tmp_path, pruning, module=module, max_epochs=2, limit_train_batches=1)
    stepped = 0
    for optimizer in module.optimizers():
        for p, grad in optimizer.optimizer.grads.items():
            if p in module.expected:  # in the ADMM phase (no mask yet): the whole penalty
                torch.testing.assert_close(grad, module.expected[p])
                stepped += 1
    assert stepped == 3


def test_a_step_limit_shorter_than_the_schedule_is_refused(tmp_path):
    # 4 steps per epoch; max_epochs unset: Lightning runs until max_steps
    with pytest.raises(ConfigError, match=r"needs 5 epochs.*runs 0.75.*max_steps=...\) >= 20"):
        fit(tmp_path, ADMMPruning(all_percent=90.0, **SCHEDULE), max_epochs=None, max_steps=3)


class StopAfter(Callback):
    """Ends the fit after ``epochs`` epochs (as early stopping would)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_a_fit_that_ends_before_the_hard_prune_warns(tmp_path, caplog):
    callback = ADMMPruning(all_percent=90.0, **SCHEDULE)
    with caplog.at_level(logging.INFO, logger="admmprune.integrations"), \
            pytest.warns(UserWarning, match="NOT pruned.*after 2 of the 3 epochs"):
        fit(tmp_path, callback, callbacks=[StopAfter(2)])
    assert not callback.pruner.pruned
    assert "NOT pruned" in caplog.text and "kept weights per layer" not in caplog.text


class BlobsWithForward(Blobs):
    def forward(self, x):
        return self.net(x)


def test_example_inputs_let_the_callback_use_a_score_that_reads_the_model(tmp_path):
    from admmprune.pruner import PrunerError

    callback = ADMMPruning(all_percent=90.0, rho=1e-2, score="obd",
                           example_inputs=torch.randn(4, 8), **SCHEDULE)
    fit(tmp_path, callback, module=BlobsWithForward())
    pruner = callback.pruner
    assert pruner.score == "obd" and pruner.pruned
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep
    without = ADMMPruning(all_percent=90.0, rho=1e-2, score="obd", **SCHEDULE)
    with pytest.raises(PrunerError, match="pass example_inputs"):
        fit(tmp_path, without, module=BlobsWithForward())
