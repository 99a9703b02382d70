"""ADMM pruning as a Lightning callback (``pip install admmprune[lightning]``).

    trainer = Trainer(max_epochs=10, callbacks=[ADMMPruning(all_percent=90, k_step=3,
                                                            epochs=2, retraining_epochs=4)])
    trainer.fit(module)

Epochs 0 .. dense_epochs-1 train densely; then k_step ADMM iterations of ``epochs`` epochs
each (the penalty's gradient is added before every optimizer step, a Z/U-step follows each
iteration); then the hard prune and masked retraining to the end of the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from .driver import DriverView, PruningDriver, PruningSchedule, pruning_config

__all__ = ["ADMMPruning"]


class ADMMPruning(DriverView, Callback):
    """Prune the LightningModule's weights by ADMM to one global ratio during ``fit``.

    The user's loss is unchanged: the penalty rho·(W − Z + U) enters as its gradient in
    ``on_before_optimizer_step`` (after Lightning unscales AMP gradients and after the DDP
    all-reduce, once per optimizer step under gradient accumulation; before gradient
    clipping, so the penalty is clipped as it would be inside the loss); with several
    optimizers (manual optimization), each step adds the penalty of the tensors that
    optimizer steps, so every tensor gets it once per its own step. After the hard
    prune, pruned weights and their optimizer state (momentum, Adam's moments) are reset to
    exactly 0 after every optimizer step. The pruner's state (Z, U, rho, masks, iteration)
    is part of the trainer's checkpoints and restored by ``fit(ckpt_path=...)``.

    Args:
        all_percent: share of the selected weights removed, in [0, 100).
        k_step: ADMM iterations.
        epochs: training epochs per ADMM iteration.
        retraining_epochs: masked retraining epochs after the hard prune; the trainer's
            ``max_epochs`` must cover dense_epochs + k_step·epochs + retraining_epochs
            (extra epochs are masked retraining too).
        rho: initial ADMM penalty.
        rho_growth: rho multiplier after each ADMM iteration.
        rho_max: upper bound of rho.
        p_lambda: L2 weight (p_lambda/2)·Σ‖W‖² on the pruned tensors (ADMM and retraining).
        dense_epochs: epochs of dense training before ADMM starts.
        include: patterns of the tensors to prune (default: every Conv/Linear weight; see
            ``admmprune.selection``).
        exclude: patterns of tensors never pruned.
        verbose: log the selection at the start and the kept weights at the end.
        example_inputs: a batch the model accepts, for the settings that read the model:
            ``group_score="output"`` (with ``structure="units"``), ``score`` ``"share"``,
            ``"obd"`` or ``"folded"``; moved to the model's device at the training start.
        **options: further pruner keys of the recipe vocabulary: ``structure``, ``nm_n``,
            ``nm_m``, ``projection``, ``layer_percents``, ``score``, ``group_score``,
            ``adaptive_rho``, ``z_init``, ``hard_prune_support``.

    Raises:
        ConfigError: a bad setting (checked by the recipe rules of ``admmprune.runs.config``),
            here, or at ``fit`` start when ``max_epochs`` is shorter than the schedule, or
            ``max_steps`` is (automatic optimization; checked at the training start).
        PrunerError: at ``fit`` start, when the settings do not fit the model, or on
            resume from a checkpoint saved with another schedule.

    A fit that ends before the hard prune (stopped early) warns (``UserWarning``) that the
    model was not pruned.

    Attributes:
        pruner: the ``ADMMPruner`` (from ``fit`` start on).
        report: kept weights per layer, set at the end of ``fit``.
    """

    def __init__(
        self,
        all_percent: float,
        k_step: int = 6,
        epochs: int = 1,
        retraining_epochs: int = 6,
        rho: float = 1e-3,
        rho_growth: float = 2.0,
        rho_max: float = 1.0,
        p_lambda: float = 0.0,
        dense_epochs: int = 0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        verbose: bool = True,
        example_inputs: Any = None,
        **options: Any,
    ) -> None:
        config = pruning_config(all_percent=all_percent, k_step=k_step, per_iteration=epochs,
                                retraining=retraining_epochs, dense=dense_epochs, rho=rho,
                                rho_growth=rho_growth, rho_max=rho_max, p_lambda=p_lambda,
                                include=include, exclude=exclude, options=options)
        schedule = PruningSchedule(dense=dense_epochs, k_step=k_step, per_iteration=epochs,
                                   retraining=retraining_epochs)
        self._driver = PruningDriver(config, schedule, unit="epochs", verbose=verbose,
                                     example_inputs=example_inputs)

    # -- hooks -----------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the strategy setup: the module is on its device (and wrapped for DDP), and
        # a checkpoint's callback state has been handed to load_state_dict already
        max_epochs = trainer.max_epochs
        self.schedule.check_length(None if max_epochs in (None, -1) else max_epochs,
                                   "epochs", "Trainer(max_epochs=...)")
        self._driver.verbose = self._driver.verbose and trainer.is_global_zero
        self._driver.attach(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the training data is set up now: a step limit can be read as epochs. Manual
        # optimization steps as often as the module likes, so only its end is checked
        batches = trainer.num_training_batches
        if (trainer.max_steps != -1 and pl_module.automatic_optimization
                and 0 < batches < float("inf")):
            per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
            self.schedule.check_length(trainer.max_steps / per_epoch, "epochs",
                                       "Trainer(max_steps=...)", per_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._driver.catch_up(trainer.current_epoch, trainer.optimizers)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        # the penalty of the tensors this optimizer steps (one of several, possibly)
        self._driver.before_step(trainer.current_epoch, optimizer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._driver.after_step(trainer.optimizers)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before ModelCheckpoint's save at the epoch end (Lightning runs checkpoint callbacks
        # last); the epoch start catches up as well, for checkpoints saved at validation end
        self._driver.catch_up(trainer.current_epoch + 1, trainer.optimizers)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._driver.finish(trainer.current_epoch)

    # -- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self._driver.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._driver.load_state_dict(state_dict)
