"""What the trainer callbacks share: the phase schedule and the pruner's driver.

A schedule counts *periods* (the trainer's epochs, or optimizer steps): ``dense`` periods of
dense training, ``k_step`` ADMM iterations of ``per_iteration`` periods each (a Z/U-step at
the end of each), the hard prune, then masked retraining. The driver is told how many
periods are done (``catch_up``) at several points of the loop and does whatever became due
since; that makes it idempotent, so a checkpoint saved anywhere between two periods resumes
to the same masks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..masks import LayerSparsity, global_sparsity
from ..pruner import ADMMPruner, PrunerError
from ..runs.config import Config, ConfigError
from ..selection import describe_selection, format_selection
from ..tables import format_table

__all__ = ["DriverView", "PRUNER_OPTIONS", "PruningSchedule", "PruningDriver", "pruning_config",
           "format_kept"]

logger = logging.getLogger("admmprune.integrations")

# recipe keys a callback passes on to the pruner besides its named arguments
PRUNER_OPTIONS = ("structure", "nm_n", "nm_m", "projection", "layer_percents", "score",
                  "group_score", "adaptive_rho", "z_init", "hard_prune_support")
STATE_VERSION = 1


def pruning_config(*, all_percent: float, k_step: int, per_iteration: int,
                   retraining: int, dense: int, rho: float, rho_growth: float, rho_max: float,
                   p_lambda: float, include: Sequence[str] | None,
                   exclude: Sequence[str] | None, options: dict[str, Any]) -> Config:
    """The callback's settings as a validated recipe (``Config``): the pipeline's rules, one
    stage. Periods (epochs or steps) are checked as the recipe's epoch counts.

    Raises:
        ConfigError: a bad value, an unknown option, or a list (progressive stages are a
            pipeline feature).
    """
    unknown = sorted(set(options) - set(PRUNER_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown pruning option(s) {', '.join(map(repr, unknown))}; the "
                          f"callbacks accept {', '.join(PRUNER_OPTIONS)}")
    for key, value in (("all_percent", all_percent), ("k_step", k_step), ("rho", rho),
                       ("rho_growth", rho_growth), ("rho_max", rho_max),
                       ("epochs", per_iteration)):
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} takes one value in a callback (progressive stages are "
                              f"run by `admmprune prune`), got {value!r}")
    config = Config(all_percent=all_percent, k_step=k_step, epochs=per_iteration,
                    retraining_epochs=retraining, dense_epochs=dense, rho=rho,
                    rho_growth=rho_growth, rho_max=rho_max, p_lambda=p_lambda,
                    include=list(include or []), exclude=list(exclude or []), **options)
    return config.validate()


@dataclass(frozen=True)
class PruningSchedule:
    """Periods of each phase: ``dense``, then ``k_step`` × ``per_iteration`` ADMM, then
    ``retraining`` (None: whatever the trainer runs after the hard prune)."""

    dense: int
    k_step: int
    per_iteration: int
    retraining: int | None

    @property
    def admm_end(self) -> int:
        """Periods done when the hard prune is due."""
        return self.dense + self.k_step * self.per_iteration

    @property
    def total(self) -> int:
        """Periods the schedule needs at least (the hard prune happens after ``admm_end``)."""
        return self.admm_end + (self.retraining or 0)

    def iterations_due(self, done: int) -> int:
        """ADMM iterations (Z/U-steps) due once ``done`` periods are over."""
        return min(self.k_step, max(0, done - self.dense) // self.per_iteration)

    def phase(self, done: int) -> str:
        """The phase of the period that follows ``done`` finished periods."""
        if done < self.dense:
            return "dense"
        return "admm" if done < self.admm_end else "retraining"

    def check_length(self, available: float | None, unit: str, setting: str,
                     steps_per_period: int | None = None) -> None:
        """Raise ``ConfigError`` when the trainer runs fewer periods than the schedule needs.

        Args:
            available: periods the trainer runs (None: unbounded); fractional when a step
                limit ends the fit inside a period.
            unit: the periods' name, for the message.
            setting: the trainer setting that limits the fit.
            steps_per_period: when ``setting`` counts optimizer steps: the steps of one
                period, so the message says how many steps the schedule needs.
        """
        if available is None or available >= self.total:
            return
        runs, needed = f"{available:g}", self.total
        if steps_per_period is not None:
            runs += f" (at {steps_per_period} optimizer steps each)"
            needed = self.total * steps_per_period
        raise ConfigError(
            f"the pruning schedule needs {self.total} {unit} (dense {self.dense} + "
            f"k_step {self.k_step} x {self.per_iteration} + retraining "
            f"{self.retraining or 0}) but the trainer runs {runs}: set {setting} "
            f">= {needed} or shorten the schedule")


class PruningDriver:
    """Owns the ``ADMMPruner`` of a callback and moves it through the schedule.

    Args:
        config: validated settings (``pruning_config``).
        schedule: the phases, in periods.
        unit: the periods' name in messages ("epochs", "optimizer steps").
        verbose: log the selection at the start and the kept weights at the end.
        example_inputs: a batch the model accepts, for the scores that read the model
            (moved to the model's device when the pruner is built).
    """

    def __init__(self, config: Config, schedule: PruningSchedule, unit: str = "epochs",
                 verbose: bool = True, example_inputs: Any = None) -> None:
        self.config = config
        self.example_inputs = example_inputs  # for the scores that read the model
        self.schedule = schedule
        self.unit = unit
        self.verbose = verbose
        self.pruner: ADMMPruner | None = None
        self.report: list[LayerSparsity] | None = None
        self._pending: dict | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def attach(self, model: nn.Module) -> ADMMPruner:
        """Build the pruner on ``model`` (once; a state loaded before is applied now).

        Raises:
            PrunerError, SelectionError: the settings do not fit this model.
        """
        if self.pruner is None or self.pruner.model is not model:
            from ..runs.build import build_pruner  # the pipeline's construction from a recipe

            example = self.example_inputs
            if isinstance(example, torch.Tensor):
                example = example.to(next(model.parameters()).device)
            self.pruner = build_pruner(model, self.config, 0, example)
            if self.verbose:
                selection = describe_selection(model, self.config.include,
                                               self.config.exclude)
                logger.info("ADMM pruning: %s of the selected weights removed\n%s",
                            f"{self.config.all_percent:g}%", format_selection(*selection))
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)
        return self.pruner

    def catch_up(self, done: int, optimizers: Iterable[torch.optim.Optimizer] = ()) -> None:
        """Run the Z/U-steps and the hard prune that are due once ``done`` periods are over;
        nothing if they already ran (idempotent)."""
        pruner = self._attached()
        due = self.schedule.iterations_due(done)
        while not pruner.pruned and pruner.iteration < due:
            record = pruner.admm_step()
            logger.info("ADMM iteration %d/%d: primal residual %.4g, dual residual %.4g, "
                        "next rho %.4g", record["iteration"], self.schedule.k_step,
                        record["primal_residual"], record["dual_residual"],
                        record["next_rho"])
        if done >= self.schedule.admm_end and not pruner.pruned:
            pruner.hard_prune(self.config.hard_prune_support)
            for optimizer in optimizers:  # momentum of the ADMM phase, at pruned entries
                pruner.enforce(_unwrapped(optimizer))
            kept = global_sparsity(pruner.sparsity())
            logger.info("hard prune: %d of %d weights kept (%.4g%% removed)", kept["kept"],
                        kept["total"], kept["sparsity_percent"])

    def before_step(self, done: int, optimizer: Any = None) -> None:
        """The penalty's gradient, before an optimizer step of the period after ``done``:
        on the pruned tensors that ``optimizer`` steps (None: all of them), so that with
        several optimizers each tensor gets its penalty once, from its own optimizer."""
        pruner = self._attached()
        if self.schedule.phase(done) != "dense":
            stepped = None if optimizer is None else [
                p for group in _unwrapped(optimizer).param_groups for p in group["params"]]
            pruner.add_penalty_gradients(stepped)

    def after_step(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Pruned weights and their optimizer state back to exactly 0 (masked phase)."""
        pruner = self._attached()
        if pruner.pruned:
            for optimizer in optimizers:
                pruner.enforce(_unwrapped(optimizer))

    def finish(self, done: int) -> list[LayerSparsity] | None:
        """The kept weights per layer (logged when verbose), or None before any pruner.

        ``done``: periods over when training ended. Training that ended before the hard
        prune (stopped early, a limit the start could not check) leaves the model unpruned:
        that is warned (``UserWarning``) and the logged report says so.
        """
        if self.pruner is None:
            return None
        self.report = self.pruner.sparsity()
        if self.pruner.pruned:
            if self.verbose:
                logger.info("kept weights per layer:\n%s", format_kept(self.report))
            return self.report
        schedule = self.schedule
        message = (
            f"the model was NOT pruned: training ended after {done} of the "
            f"{schedule.admm_end} {self.unit} before the hard prune (dense {schedule.dense} + "
            f"k_step {schedule.k_step} x {schedule.per_iteration}; ADMM iterations done: "
            f"{self.pruner.iteration} of {schedule.k_step}), so every selected weight is kept."
            f" Let the trainer run the whole schedule ({schedule.total} {self.unit} at least)")
        warnings.warn(message, UserWarning, stacklevel=2)
        if self.verbose:
            logger.warning("%s\nweights per layer, unpruned:\n%s", message,
                           format_kept(self.report))
        return self.report

    # -- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The pruner's state (Z, U, rho, masks, iteration) and the schedule it follows."""
        if self.pruner is None:
            return {} if self._pending is None else dict(self._pending)
        return {"version": STATE_VERSION, "schedule": asdict(self.schedule),
                "all_percent": self.config.all_percent, "pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state (kept until ``attach`` when no pruner exists yet).

        Raises:
            PrunerError: the state belongs to another schedule, ratio or model.
        """
        if not state:
            return
        if state.get("version") != STATE_VERSION:
            raise PrunerError(f"pruning state of version {state.get('version')!r}; this "
                              f"admmprune reads version {STATE_VERSION}")
        saved = PruningSchedule(**state["schedule"])
        if saved != self.schedule or state["all_percent"] != self.config.all_percent:
            raise PrunerError(
                f"the checkpoint was saved with another pruning schedule ({saved}, "
                f"all_percent {state['all_percent']}); this callback has {self.schedule}, "
                f"all_percent {self.config.all_percent}: resume with the same settings")
        if self.pruner is None:
            self._pending = state
            return
        self.pruner.load_state_dict(state["pruner"])

    # -- internals -----------------------------------------------------------------------
    def _attached(self) -> ADMMPruner:
        if self.pruner is None:
            raise PrunerError("the pruning callback was used before training started (no "
                              "model attached)")
        return self.pruner


def _unwrapped(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper (Lightning's, accelerate's), holding the state."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def format_kept(report: Sequence[LayerSparsity]) -> str:
    """Kept weights per layer and in total, as a table."""
    rows = [(r.name, "x".join(map(str, r.shape)), r.kept, r.total,
             f"{100 * r.kept_fraction:.2f}%") for r in report]
    total = global_sparsity(report)
    rows.append(("total", "", total["kept"], total["total"],
                 f"{100 * total['kept'] / max(1, total['total']):.2f}%"))
    return format_table(("layer", "shape", "kept", "weights", "kept %"), rows)


class DriverView:
    """What a callback shows of its driver (``self._driver``): the pruner once built, the
    kept weights per layer at the end, and the phase schedule."""

    _driver: PruningDriver

    @property
    def pruner(self) -> ADMMPruner | None:
        return self._driver.pruner

    @property
    def report(self) -> list[LayerSparsity] | None:
        return self._driver.report

    @property
    def schedule(self) -> PruningSchedule:
        return self._driver.schedule
