"""ADMM pruning as a Hugging Face ``TrainerCallback`` (``pip install admmprune[transformers]``).

    callback = ADMMCallback(all_percent=50, k_step=3, epochs=1, retraining_epochs=2)
    Trainer(model, args, train_dataset=data, callbacks=[callback]).train()

Phases follow the trainer's epochs (``epochs``: epochs per ADMM iteration), or its optimizer
steps (``steps_per_admm``: steps per ADMM iteration, ``dense_steps`` before; every step after
the hard prune is masked retraining).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..pruner import PrunerError
from ..runs.config import ConfigError
from .driver import DriverView, PruningDriver, PruningSchedule, pruning_config

__all__ = ["ADMMCallback", "STATE_FILE"]

STATE_FILE = "admm_pruning.pt"  # written into every checkpoint folder of the trainer


class ADMMCallback(DriverView, TrainerCallback):
    """Prune a ``Trainer``'s model by ADMM to one global ratio during ``train()``.

    The loss is unchanged: the penalty rho·(W − Z + U) enters as its gradient in
    ``on_pre_optimizer_step``, once per optimizer step (after gradient accumulation and the
    DDP all-reduce; after the trainer unscaled fp16 gradients and clipped them, so the
    penalty itself is not clipped). After the hard prune, pruned weights and their optimizer
    state are reset to exactly 0 after every step. The pruner's state is written as
    ``admm_pruning.pt`` into each checkpoint folder; ``train(resume_from_checkpoint=...)``
    restores it from ``output_dir/checkpoint-<global step>`` (pass ``resume_from`` when the
    checkpoint lives elsewhere).

    Args:
        all_percent: share of the selected weights removed, in [0, 100).
        k_step: ADMM iterations.
        epochs: trainer epochs per ADMM iteration (epoch mode); give this or
            ``steps_per_admm``.
        retraining_epochs: epoch mode: masked retraining epochs; ``num_train_epochs`` must
            cover dense_epochs + k_step·epochs + retraining_epochs.
        dense_epochs: epoch mode: dense epochs before ADMM.
        steps_per_admm: optimizer steps per ADMM iteration (step mode).
        dense_steps: step mode: dense optimizer steps before ADMM; ``max_steps`` (or the
            epochs' steps) must exceed dense_steps + k_step·steps_per_admm.
        rho: initial ADMM penalty.
        rho_growth: rho multiplier after each ADMM iteration.
        rho_max: upper bound of rho.
        p_lambda: L2 weight (p_lambda/2)·Σ‖W‖² on the pruned tensors.
        include: patterns of the tensors to prune (default: every Conv/Linear weight,
            transformers' Conv1D included; embeddings and the LM head stay dense unless
            named; see ``admmprune.selection``).
        exclude: patterns of tensors never pruned.
        resume_from: checkpoint folder to read the pruner's state from on resume (default:
            ``output_dir/checkpoint-<global step>``).
        verbose: log the selection at the start and the kept weights at the end.
        **options: further pruner keys of the recipe vocabulary: ``structure``, ``nm_n``,
            ``nm_m``, ``projection``, ``layer_percents``, ``score``, ``group_score``,
            ``adaptive_rho``, ``z_init``, ``hard_prune_support``.

    Raises:
        ConfigError: a bad setting (the recipe rules of ``admmprune.runs.config``), neither or both
            of ``epochs`` and ``steps_per_admm``, or (at ``train()``) a trainer shorter than
            the schedule.
        PrunerError: at ``train()``: the settings do not fit the model, or a resumed run
            without (or with another schedule's) pruning state.

    Attributes:
        pruner: the ``ADMMPruner`` (from ``train()`` on).
        report: kept weights per layer, set at the end of training.
    """

    def __init__(
        self,
        all_percent: float,
        k_step: int = 6,
        epochs: int | None = None,
        retraining_epochs: int = 6,
        dense_epochs: int = 0,
        *,
        steps_per_admm: int | None = None,
        dense_steps: int = 0,
        rho: float = 1e-3,
        rho_growth: float = 2.0,
        rho_max: float = 1.0,
        p_lambda: float = 0.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        resume_from: str | os.PathLike | None = None,
        verbose: bool = True,
        **options: Any,
    ) -> None:
        if "on_pre_optimizer_step" not in vars(TrainerCallback):
            raise ConfigError("ADMMCallback needs a transformers version whose TrainerCallback "
                              "has on_pre_optimizer_step (the hook that adds the penalty); "
                              "upgrade transformers")
        if (epochs is None) == (steps_per_admm is None):
            raise ConfigError("give epochs (trainer epochs per ADMM iteration) or "
                              "steps_per_admm (optimizer steps per ADMM iteration), not "
                              f"both or neither; got epochs={epochs!r}, "
                              f"steps_per_admm={steps_per_admm!r}")
        self.by_steps = steps_per_admm is not None
        per = steps_per_admm if self.by_steps else epochs
        dense = dense_steps if self.by_steps else dense_epochs
        retraining = 0 if self.by_steps else retraining_epochs
        config = pruning_config(all_percent=all_percent, k_step=k_step, per_iteration=per,
                                retraining=retraining, dense=dense, rho=rho,
                                rho_growth=rho_growth, rho_max=rho_max, p_lambda=p_lambda,
                                include=include, exclude=exclude, options=options)
        schedule = PruningSchedule(dense=dense, k_step=k_step, per_iteration=per,
                                   retraining=None if self.by_steps else retraining)
        self.resume_from = resume_from
        self._driver = PruningDriver(config, schedule, verbose=verbose)

    # -- hooks -----------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        if self.by_steps:
            # the hard prune must happen before the last step, so some retraining follows
            self.schedule.check_length(state.max_steps - 1, "optimizer steps (and one more)",
                                       "max_steps")
        else:
            self.schedule.check_length(math.ceil(state.num_train_epochs), "epochs",
                                       "num_train_epochs")
        self._driver.verbose = self._driver.verbose and state.is_world_process_zero
        self._driver.attach(kwargs["model"])
        if state.global_step > 0:  # resumed: the trainer state came from a checkpoint
            self._load(args, state)
        self._driver.catch_up(self._done(state), [kwargs["optimizer"]])

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> None:
        self._driver.catch_up(self._done(state), [kwargs["optimizer"]])
        self._driver.before_step(self._done(state), kwargs["optimizer"])

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        self._driver.after_step([kwargs["optimizer"]])
        # before the trainer saves a checkpoint at this step
        self._driver.catch_up(self._done(state), [kwargs["optimizer"]])

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._driver.catch_up(self._done(state), [kwargs["optimizer"]])

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            torch.save(self._driver.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._driver.finish()

    # -- internals -------------------------------------------------------------------------
    def _done(self, state: TrainerState) -> int:
        """Periods over: optimizer steps, or whole epochs (``state.epoch`` is fractional)."""
        if self.by_steps:
            return state.global_step
        return math.floor((state.epoch or 0.0) + 1e-6)

    def _load(self, args: TrainingArguments, state: TrainerState) -> None:
        folder = self.resume_from or os.path.join(args.output_dir,
                                                  f"checkpoint-{state.global_step}")
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise PrunerError(
                f"training resumes at step {state.global_step} but {path} does not exist: "
                "the pruner's state (Z, U, masks) cannot be restored; pass "
                "ADMMCallback(resume_from=CHECKPOINT_FOLDER) when the checkpoint lives "
                "outside output_dir")
        self._driver.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
