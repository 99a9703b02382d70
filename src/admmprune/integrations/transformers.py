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
import uuid
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from .. import jsonfile
from ..pruner import PrunerError
from ..runs.config import ConfigError
from .driver import DriverView, PruningDriver, PruningSchedule, pruning_config

__all__ = ["ADMMCallback", "STATE_FILE"]

STATE_FILE = "admm_pruning.pt"  # written into every checkpoint folder of the trainer


class ADMMCallback(DriverView, TrainerCallback, ExportableState):
    """Prune a ``Trainer``'s model by ADMM to one global ratio during ``train()``.

    The loss is unchanged: the penalty rho·(W − Z + U) enters as its gradient in
    ``on_pre_optimizer_step``, once per optimizer step (after gradient accumulation and the
    DDP all-reduce; after the trainer unscaled fp16 gradients and clipped them, so the
    penalty itself is not clipped). After the hard prune, pruned weights and their optimizer
    state are reset to exactly 0 after every step. The pruner's state is written as
    ``admm_pruning.pt`` into each checkpoint folder, under a token that the checkpoint's
    ``trainer_state.json`` records too; ``train(resume_from_checkpoint=...)`` restores it
    from the folder the checkpoint was saved in (or ``resume_from``, or
    ``output_dir/checkpoint-<global step>``) and refuses a state whose token is not the
    resumed checkpoint's: the pruner's state always comes with the weights it belongs to.

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
            the folder the resumed checkpoint was saved in, else
            ``output_dir/checkpoint-<global step>``), for a checkpoint moved since.
        verbose: log the selection at the start and the kept weights at the end.
        example_inputs: a batch the model accepts, for the settings that read the model:
            ``group_score="output"`` (with ``structure="units"``), ``score`` ``"share"``,
            ``"obd"`` or ``"folded"``; moved to the model's device at the training start.
        **options: further pruner keys of the recipe vocabulary: ``structure``, ``nm_n``,
            ``nm_m``, ``projection``, ``layer_percents``, ``score``, ``group_score``,
            ``adaptive_rho``, ``z_init``, ``hard_prune_support``.

    Raises:
        ConfigError: a bad setting (the recipe rules of ``admmprune.runs.config``), neither or both
            of ``epochs`` and ``steps_per_admm``, or (at ``train()``) a trainer shorter than
            the schedule (``num_train_epochs``, or ``max_steps`` in either mode).
        PrunerError: at ``train()``: the settings do not fit the model, or a resumed run
            without the resumed checkpoint's pruning state (missing, another checkpoint's,
            another schedule's).

    Training that ends before the hard prune (stopped early) warns (``UserWarning``) that
    the model was not pruned.

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
        example_inputs: Any = None,
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
        self._driver = PruningDriver(config, schedule,
                                     unit="optimizer steps" if self.by_steps else "epochs",
                                     verbose=verbose, example_inputs=example_inputs)
        # how the trainer rebuilds this callback from a checkpoint when asked to
        # (restore_callback_states_from_checkpoint); JSON, as trainer_state.json is, and
        # never a reason for a checkpoint to fail (an odd option value becomes its str)
        settings = {
            "all_percent": all_percent, "k_step": k_step, "epochs": epochs,
            "retraining_epochs": retraining_epochs, "dense_epochs": dense_epochs,
            "steps_per_admm": steps_per_admm, "dense_steps": dense_steps, "rho": rho,
            "rho_growth": rho_growth, "rho_max": rho_max, "p_lambda": p_lambda,
            "include": list(include or []), "exclude": list(exclude or []),
            "resume_from": None if resume_from is None else os.fspath(resume_from),
            "verbose": verbose, **options}
        self._settings = jsonfile.loads(jsonfile.dumps(settings, default=str))
        self._token: str | None = None  # of the checkpoint being saved (``state``)
        self._output_dir: str | None = None
        self._step = 0

    # -- hooks -----------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        self._check_length(args, state, kwargs.get("train_dataloader"))
        self._output_dir = args.output_dir
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
        self._step = state.global_step  # the step a checkpoint saved now is named after
        # before the trainer saves a checkpoint at this step
        self._driver.catch_up(self._done(state), [kwargs["optimizer"]])

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._driver.catch_up(self._done(state), [kwargs["optimizer"]])

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        # the trainer has written the checkpoint, its trainer_state.json with ``state()``
        # (this save's token) included
        folder = _checkpoint_folder(args.output_dir, state.global_step)
        if state.is_world_process_zero and os.path.isdir(folder):
            torch.save({**self._driver.state_dict(), "checkpoint": self._token},
                       os.path.join(folder, STATE_FILE))

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._driver.finish(self._done(state))

    # -- ExportableState: what a checkpoint's trainer_state.json records of this callback --
    def state(self) -> dict:
        """A new token for the checkpoint being saved (the trainer calls this while it saves
        one), with the folder it goes to; ``on_save`` writes the same token into
        ``admm_pruning.pt``. On resume, the token of the resumed checkpoint's
        trainer_state.json tells its pruning state from any other."""
        self._token = uuid.uuid4().hex
        folder = (None if self._output_dir is None else
                  os.path.abspath(_checkpoint_folder(self._output_dir, self._step)))
        return {"args": self._settings, "attributes": {},
                "checkpoint": self._token, "folder": folder}

    # -- internals -------------------------------------------------------------------------
    def _done(self, state: TrainerState) -> int:
        """Periods over: optimizer steps, or whole epochs (``state.epoch`` is fractional)."""
        if self.by_steps:
            return state.global_step
        return math.floor((state.epoch or 0.0) + 1e-6)

    def _check_length(self, args: TrainingArguments, state: TrainerState,
                      dataloader: Any) -> None:
        """Refuse a trainer that stops before the schedule's end (``ConfigError``)."""
        if self.by_steps:
            # the hard prune must happen before the last step, so some retraining follows
            self.schedule.check_length(state.max_steps - 1, "optimizer steps (and one more)",
                                       "max_steps")
            return
        try:
            batches = len(dataloader)
        except TypeError:  # no length: epochs last as long as the data, max_steps is all
            return
        # the trainer's optimizer steps per epoch; it stops after state.max_steps of them
        per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        if args.max_steps > 0:
            self.schedule.check_length(state.max_steps / per_epoch, "epochs", "max_steps",
                                       per_epoch)
        else:
            self.schedule.check_length(state.max_steps / per_epoch, "epochs",
                                       "num_train_epochs")

    def _load(self, args: TrainingArguments, state: TrainerState) -> None:
        """The pruner's state of the checkpoint the trainer resumed from, found by the token
        its trainer_state.json records (``state()``)."""
        # loaded from the resumed checkpoint's trainer_state.json (a dict, typed as a list)
        stateful: Any = getattr(state, "stateful_callbacks", None) or {}
        recorded = stateful.get(type(self).__name__)
        entries = recorded if isinstance(recorded, list) else [recorded]
        saves = [e for e in entries if isinstance(e, dict) and e.get("checkpoint")]
        step = state.global_step
        if not saves:
            raise PrunerError(
                f"training resumes at step {step} from a checkpoint whose trainer_state.json "
                f"records no {type(self).__name__} save (saved without this callback, or by "
                "an older admmprune): the pruner's state (Z, U, rho, masks) of these weights "
                "cannot be found; resume from a checkpoint saved with the callback, or "
                "start the run again")
        tokens = {e["checkpoint"] for e in saves}
        if self.resume_from is not None:
            folders = [os.fspath(self.resume_from)]
        else:  # where the checkpoint was saved, then where this trainer would save it
            folders = [e["folder"] for e in saves if e.get("folder")]
            folders.append(_checkpoint_folder(args.output_dir, step))
        tried = []
        for folder in dict.fromkeys(folders):
            path = os.path.join(folder, STATE_FILE)
            if not os.path.isfile(path):
                tried.append(f"{path} does not exist")
                continue
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("checkpoint") in tokens:
                self._driver.load_state_dict(saved)
                return
            tried.append(f"{path} belongs to another checkpoint (another run, or another "
                         "step)")
        raise PrunerError(
            f"training resumes at step {step} but the pruner's state (Z, U, rho, masks) of "
            f"the resumed checkpoint is not found: {'; '.join(tried)}. Pass "
            "ADMMCallback(resume_from=CHECKPOINT_FOLDER), the folder given to "
            "resume_from_checkpoint, when the checkpoint was moved")


def _checkpoint_folder(output_dir: str, step: int) -> str:
    """The folder the trainer saves the checkpoint of optimizer step ``step`` in."""
    return os.path.join(output_dir, f"checkpoint-{step}")
