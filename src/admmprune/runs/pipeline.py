"""The whole job for one recipe: dense training, ADMM stages, hard prune, masked retraining.

Every finished unit of work (a dense epoch, an ADMM iteration, a retraining epoch) is
checkpointed atomically into the run directory, so an interrupted or diverged run
resumes where it stopped (``run_pipeline(..., resume=True)``) and loses at most the
unit in progress (two units if the last checkpoint was damaged: the previous one is kept).

Inside a process group (torchrun, or one the caller set up) the W-steps are data-parallel:
the model is wrapped in DistributedDataParallel for training, each rank trains on its part
of every global batch, and the ADMM bookkeeping (Z, U, rho, masks) runs on every rank on
the weights DDP keeps identical. Only rank 0 writes files; every rank resumes from the
checkpoint rank 0 chose.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distill, distributed, runtime
from ..data import DataSplits
from ..data.augment import replace_shift, takes_shift
from ..data.objects import dataset_splits
from ..imports import object_label
from ..pruner import ADMMPruner
from ..regrow import MaskRefiner
from ..selection import describe_selection, format_selection
from ..train import evaluate, lr_factor, make_optimizer, train_epoch
from .averaging import RetrainingAverage
from .build import (
    build_model,
    build_pruner,
    build_task,
    check_data,
    check_finite,
    check_pruning,
    example_inputs,
    examples_read,
    load_data,
    load_weights,
    model_record,
    resolve_device,
    state_differences,
    traces_model,
)
from .calibrated import calibrated_prune
from .config import CALIBRATED_PRUNING, ONE_SHOT_PRUNING, Config, ConfigError
from .direction import task_fields
from .rundir import (
    MODEL_FILE,
    SOURCES_FILE,
    RunDirectory,
    RunError,
    load_run_config,
    new_run_dir,
    resume_changes,
)
from .runstate import Checkpoints, Progress, restore_rng
from .sources import check_data_checksums, check_sources, run_sources

__all__ = ["STAGES", "RunError", "Run", "run_pipeline", "load_run_config", "resolve_device",
           "load_weights", "build_pruner", "load_data", "new_run_dir", "build_model",
           "with_objects", "SOURCES_FILE"]

STAGES = ("all", "admm", "retrain")


def with_objects(config: Config, model: nn.Module | None, data, task) -> Config:
    """``config`` with the objects handed to :func:`run_pipeline` in place of the model,
    dataset and task names: labels such as ``"<object ResNet>"`` that config.yaml records
    and that nothing tries to rebuild (a task given by name is just that name)."""
    changes: dict = {}
    if model is not None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got a {type(model).__name__}")
        changes["model"] = object_label(model)
    if data is not None:
        if not isinstance(data, (Mapping, DataSplits)):
            raise ConfigError(f"data must be a mapping such as {{'train': Dataset, 'test': "
                              f"Dataset}}, got a {type(data).__name__}")
        changes["dataset"] = object_label(data)
    if isinstance(task, str):
        changes["task"] = task
    elif task is not None:
        changes["task"] = object_label(task)
    if not changes:
        return config
    return dataclasses.replace(config, **changes).validate()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_processes(config: Config, world: int) -> None:
    """Refuse what cannot run data-parallel over ``world`` processes (before any work)."""
    if world == 1:
        return
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is the global batch and must "
                          f"split evenly across the {world} processes; use a "
                          f"multiple of {world} (e.g. {-(-config.batch_size // world) * world})")
    if config.pruning in CALIBRATED_PRUNING:
        raise ConfigError(f"pruning {config.pruning} scores each process's own training "
                          "batches, so the masks would differ between processes; run one process")
    if config.retraining_regrow:
        raise ConfigError("retraining_regrow grows weights by each process's own "
                          "gradients, so the masks would differ between processes; run "
                          "one process or set retraining_regrow: 0")


def apply_threads(config: Config) -> None:
    """torch's thread count: the recipe's ``threads``, else what the CPU affinity and a
    cgroup quota allow when the environment sets none."""
    if config.threads:
        torch.set_num_threads(config.threads)
    elif not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        # torch was imported before admmprune could set its thread defaults: still
        # respect the CPU affinity and cgroup quota (the wait policy cannot change now)
        torch.set_num_threads(runtime.available_cpus())


class Run:
    """One run directory and the job it holds: the phases dense -> ADMM stages -> masked
    retraining, each checkpointed. Use :func:`run_pipeline`.

    In a process group of N ranks every rank builds the same Run; rank 0 alone writes the
    run directory, and ``batch_size`` stays the global batch (``batch_size / N`` per rank).
    """

    def __init__(self, config: Config, run_dir: Path, resume: bool,
                 splits: tuple[str, ...] = ("train", "test"), *, model: nn.Module | None = None,
                 data: Mapping | DataSplits | None = None, task=None) -> None:
        config = with_objects(config, model, data, task)
        self.config = config
        self.dir = RunDirectory(run_dir)
        self.run_dir = self.dir.path
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        check_processes(config, self.world)
        self.device = resolve_device(config.device)
        self.task = build_task(config, None if isinstance(task, str) else task)
        self.progress = Progress()
        self.optimizer_state: dict | None = None
        self._metrics: dict | None = None  # test metrics of the current weights
        self._warned_non_finite = False
        self._ddp: nn.Module | None = None
        self._average: RetrainingAverage | None = None  # retraining_average_epochs' mean
        self.checkpoints = Checkpoints(self.dir, self.device, self.rank, self.world)
        if resume and not self.dir.has_checkpoint():
            # stopped before its first checkpoint: nothing to resume, the run starts over
            distributed.on_main(lambda: self._claim_unstarted(config))
            resume = False
        elif resume:
            distributed.on_main(self.dir.lock)
        else:
            distributed.on_main(lambda: self._claim(config))
        try:
            self._start(config, resume, splits, model, data)
        except BaseException:
            self.dir.close()  # releases the lock: the directory is free again
            raise

    def _claim(self, config: Config) -> None:
        """Rank 0 of a new run: lock the run directory (a second process on it refuses at
        once), checking it is fit for a new run before (nothing is created for a bad path)
        and again once locked (what another process may have written meanwhile)."""
        self.dir.check_fresh(config)
        self.dir.lock()
        try:
            self.dir.check_fresh(config)
        except RunError:
            self.dir.unlock()
            raise

    def _claim_unstarted(self, config: Config) -> None:
        """Rank 0 resuming a run that stopped before its first checkpoint (a Ctrl-C in the
        first epoch): it starts over as its config.yaml says, with the changes a resume may
        make (checked before and again once the directory is locked)."""

        def check() -> None:
            saved = self.dir.saved_config() if self.dir.unstarted() else None
            if saved is None:
                raise RunError(f"nothing to resume: {self.dir.checkpoint} does not exist")
            resume_changes(saved, config.to_dict(), retraining_started=False,
                           retrain_epochs_done=0)

        check()
        self.dir.lock()
        try:
            check()
        except RunError:
            self.dir.unlock()
            raise

    def _start(self, config: Config, resume: bool, splits: tuple[str, ...],
               model: nn.Module | None, data: Mapping | DataSplits | None) -> None:
        """Everything after the run directory is held: data, model, restored state (the
        caller's ``model`` and ``data`` objects when given)."""
        apply_threads(config)
        # Data first: an unreadable data set fails before anything is written, and the model
        # learns its class count from it.
        self._open_data(config, splits, data)
        self._open_model(config, model)
        # the user's code this run ran (every spec's module is imported by now)
        self.sources = run_sources(config)
        # one batch of every split through the model: data that does not fit it fails now,
        # not after the dense phase (on resume once the checkpoint is known to fit the model)
        if resume:
            self._restore()
            check_data(self.model, self.data, self.task, self.device, config.dataset)
        else:
            check_data(self.model, self.data, self.task, self.device, config.dataset)
            if not config.pretrained:
                check_finite(self.model, "the model's initial weights")
            self._create(config)
        if self.world > 1:
            self._train_model()  # now: building DDP (seconds, once) is no phase's time

    def _open_data(self, config: Config, splits: tuple[str, ...],
                   data: Mapping | DataSplits | None) -> None:
        """The splits (the caller's objects, or the recipe's dataset; rank 0 first: it may
        download into a shared cache), this rank's shard of the training batches."""
        if isinstance(data, DataSplits):
            self.data = data
        elif data is not None:
            self.data = dataset_splits(data, config, self.device, splits)
        else:
            self.data = distributed.main_first(lambda: load_data(config, self.device, splits))
        self.train_batches, self.test_batches = self.data.train, self.data.test
        if self.world > 1 and self.train_batches is not None:
            if not hasattr(self.train_batches, "shard"):
                raise ConfigError(f"dataset {config.dataset!r} cannot be split across "
                                  "processes (its batches have no shard()); run one process")
            self.train_batches.shard(self.rank, self.world)
        if config.retraining_augment_shift is not None and self.train_batches is not None \
                and not takes_shift(self.train_batches):
            raise ConfigError(f"retraining_augment_shift: dataset {config.dataset!r} has no "
                              "random shift to change; remove the key")

    def _open_model(self, config: Config, model: nn.Module | None) -> None:
        """The model (seeded), distillation's teacher, and the selection it is pruned by;
        the selection and per-layer ratios fail now, not after hours of dense training."""
        _seed_everything(config.seed)
        built = model if model is not None else build_model(config, self.data.num_classes)
        self.model = built.to(self.device)
        # Distillation's teacher: copied now, before pruner hooks and DDP touch the model;
        # it holds the dense weights once the dense phase is done (dense.pt on resume).
        self._teacher = distill.frozen_copy(self.model) if config.distill_weight else None
        if self.rank > 0:
            # random layers (dropout) draw their own masks for each rank's part of a batch;
            # rank 0 keeps the one-process stream (DDP gives all ranks rank 0's weights)
            _seed_everything(config.seed + 7919 * self.rank)
        self.task.bind(self.model)
        self.pruner: ADMMPruner | None = None
        # whatever would refuse this pruning after the dense phase refuses it now
        check_pruning(self.model, config, self._example())
        self.selection = describe_selection(self.model, config.include, config.exclude)

    def _create(self, config: Config) -> None:
        """A new run's files (rank 0), and what will be pruned, before the work starts."""
        distributed.on_main(lambda: self.dir.create(config))
        if self.main and self.sources:
            self.dir.write_json(SOURCES_FILE, self.sources)
        elif self.main:
            # an earlier start of this run (stopped before its first checkpoint) may have
            # recorded files this config no longer imports
            (self.run_dir / SOURCES_FILE).unlink(missing_ok=True)
        if self.main and config.progress:
            print(format_selection(*self.selection), flush=True)

    # -- bookkeeping -----------------------------------------------------------------------
    def _restore(self) -> None:
        state, fallback = self.checkpoints.load()
        progress = Progress(**state["progress"])
        changes = resume_changes(state.get("config") or {}, self.config.to_dict(),
                                 retraining_started=progress.retrain_epoch > 0 or progress.done,
                                 retrain_epochs_done=progress.retrain_epoch)
        check_sources(state.get("sources"), self.sources)
        check_data_checksums(state.get("data_checksums"), self.data.checksums)
        problems = state_differences(self.model, state["model"])
        if problems:
            raise RunError(f"the model does not fit the checkpoint of {self.run_dir}: "
                           f"{'; '.join(problems)}. Resuming needs the model the run started "
                           "with (the same module, with parameters of the same names and "
                           "shapes); start a new run (another --run-dir) for another one")
        self.model.load_state_dict(state["model"])
        self.progress = progress
        self.optimizer_state = state.get("optimizer")
        saved_world = state.get("world_size", 1)
        restore_rng(state, self.rank, self.world)
        if state.get("pruner") is not None:
            stage = min(self.progress.stage, self.config.stages - 1)
            self.pruner = build_pruner(self.model, self.config, stage, self._example())
            self.pruner.load_state_dict(state["pruner"])
        if self._teacher is not None and self.progress.dense_done:
            self._load_teacher()
        if self.main:
            # The records logged after this checkpoint describe work that is redone now,
            # also when it is the previous checkpoint (the last one was damaged): its
            # metrics_bytes drops the records of the lost unit as well.
            if state.get("metrics_bytes") is not None:
                self.dir.truncate_metrics(state["metrics_bytes"])
            if fallback is not None:
                self.log(fallback)
            if changes:
                self.dir.write_config(self.config)
                self.log({"phase": "resume", "changed": changes})
            if saved_world != self.world:
                # data order and global batches are the same; only per-rank random streams
                # (dropout) differ, so the result is not bitwise the uninterrupted one
                self.log({"phase": "resume", "world_size": [saved_world, self.world]})
        if state.get("average") is not None:
            self._average = self._new_average()
            self._average.load_state_dict(state["average"])
        if self.progress.done and self.config.retraining_epochs > self.progress.retrain_epoch:
            self.progress.done = False  # epochs added to a finished retraining
        if self.main:
            self._rebuild_missing(state)
        # no rank writes a new checkpoint before every rank has read this one
        distributed.barrier()

    def _rebuild_missing(self, state: dict) -> None:
        """A resumed run whose saved weights were deleted: rebuild each from the checkpoint
        when it still holds them (model.pt of a finished run; admm.pt before retraining;
        dense.pt before ADMM), and name the ones lost for good."""
        prog = self.progress
        admm_started = prog.stage > 0 or prog.iteration > 0 or prog.stage_pruned
        files = {  # name: (written by a finished phase, the checkpoint still holds it)
            "dense.pt": (prog.dense_done, not admm_started and not prog.admm_done),
            "admm.pt": (prog.admm_done, prog.retrain_epoch == 0 and not prog.done),
            "model.pt": (prog.done, True),
        }
        rebuilt, lost = [], []
        for name, (written, held) in files.items():
            if not written or (self.run_dir / name).is_file():
                continue
            if not held:
                lost.append(name)
            elif name == "admm.pt":
                self._save_weights(name, {"model": self.model.state_dict(),
                                          "pruner": state["pruner"]})
                rebuilt.append(name)
            else:
                self._save_weights(name, self.model.state_dict())
                rebuilt.append(name)
        if rebuilt:
            print(f"admmprune: rebuilt {', '.join(rebuilt)} from the checkpoint (missing in "
                  f"{self.run_dir})", file=sys.stderr)
            self.log({"phase": "resume", "rebuilt": rebuilt})
        if lost:
            print(f"admmprune: {', '.join(lost)} missing in {self.run_dir} and cannot be "
                  "rebuilt (the weights have changed since it was written); the run continues "
                  "without it", file=sys.stderr)

    def _example(self) -> torch.Tensor | None:
        """The inputs the pruner reads the model on (test inputs, else training inputs: every
        rank must read the same ones, or their masks would differ)."""
        if not traces_model(self.config):
            return None
        return example_inputs(self.data, self.device, examples_read(self.config))

    def _load_teacher(self) -> None:
        """The teacher of a resumed run: the dense model its run directory saved."""
        path = self.run_dir / "dense.pt"
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self._teacher.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - missing, damaged or foreign: one answer
            raise RunError(f"distill_weight needs the run's dense model as its teacher, but "
                           f"{path} cannot be loaded ({err}); start a new run (another "
                           "--run-dir)") from None

    def _distillation(self) -> distill.Distillation | None:
        """The teacher's soft loss for every epoch after the dense phase (dense training
        learns from the labels alone)."""
        if self._teacher is None or not self.progress.dense_done:
            return None
        return distill.Distillation(self._teacher, self.config.distill_weight,
                                    self.config.distill_temperature)

    def save(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Checkpoint the run (collective: every rank calls it, rank 0 writes)."""
        average = None if self._average is None else self._average.state_dict()
        self.checkpoints.save(model=self.model, pruner=self.pruner, optimizer=optimizer,
                              progress=self.progress, config=self.config, average=average,
                              sources=self.sources, data_checksums=self.data.checksums)

    def _new_average(self) -> RetrainingAverage:
        return RetrainingAverage(self.model, self.config.retraining_average_epochs,
                                 self.config.retraining_epochs)

    def log(self, record: dict) -> None:
        if self.main:
            self.dir.log(record)

    def _save_weights(self, name: str, obj: dict) -> None:
        if self.main:
            self.dir.save_weights(name, obj)
            # what the weights fit, for commands that read only the test split
            self.dir.write_json(MODEL_FILE, model_record(self.config, self.data.num_classes))

    def _train_model(self) -> nn.Module:
        """The module the W-steps run: DDP around the model in a process group (built once,
        at the end of ``__init__``: a collective every rank reaches)."""
        if self.world == 1:
            return self.model
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)
        return self._ddp

    def _check_replicas(self) -> None:
        """Before a Z-step: every rank's weights must be bitwise equal (they are, as long as
        every rank applies the same optimizer to the same all-reduced gradients); if not,
        rank 0's are copied to all, so Z, U and masks stay identical."""
        if self.world == 1:
            return
        if not distributed.check_synchronised(self.pruner.params):
            tensors = list(self.model.parameters()) + list(self.model.buffers())
            distributed.broadcast_tensors(tensors)
            self.log({"phase": "resync", "stage": self.progress.stage + 1,
                      "iteration": self.progress.iteration + 1})
            if self.main:
                print("admmprune: the ranks' weights differed before a Z-step; rank 0's "
                      "were copied to all", file=sys.stderr)

    def _timed(self, phase: str, seconds: float) -> None:
        self.progress.seconds[phase] = self.progress.seconds.get(phase, 0.0) + seconds

    def _optimizer(self, lr: float, resume_state: bool) -> torch.optim.Optimizer:
        optimizer = make_optimizer(self.model.parameters(), self.config.optimizer, lr,
                                   self.config.momentum)
        if resume_state and self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        self.optimizer_state = None
        return optimizer

    def _epoch(self, optimizer, desc, lr, schedule, *, penalty_gradients=None, enforce=False,
               phase_progress=(0, 1), refiner: MaskRefiner | None = None):
        """One training epoch; ``phase_progress=(done, total)`` epochs places it in its
        phase so the learning-rate schedule spans the whole phase."""
        done, total = phase_progress
        cfg = self.config
        self._metrics = None  # the weights change
        after = None
        if enforce:
            def after():
                self.pruner.enforce()
                if refiner is not None:
                    refiner.after_step(optimizer)
        # Every epoch's data order follows from (seed, epoch number): a resumed run sees the
        # batches the uninterrupted run would have seen.
        self.train_batches.set_epoch(self.progress.data_epoch)
        weight = None
        if self.world > 1:
            # DDP averages over ranks: a rank's share of the global batch weighs its loss,
            # so uneven parts of the last batch still give the mean over the global batch
            batches, world = self.train_batches, self.world
            weight = lambda step, n: n * world / batches.global_batch_size(step)  # noqa: E731
        stats = train_epoch(
            self._train_model(), self.train_batches, optimizer, task=self.task,
            device=self.device, penalty_gradients=penalty_gradients, after_step=after,
            max_steps=cfg.steps_per_epoch, desc=desc, progress=cfg.progress and self.main,
            amp=cfg.amp, accumulate=cfg.accumulate, loss_weight=weight,
            distill=self._distillation(),
            lr_at=lambda f: lr * lr_factor(schedule, (done + f) / total),
        )
        self.progress.data_epoch += 1
        return distributed.reduce_stats(stats)

    def test_metrics(self) -> dict:
        """The task's test metrics of the current weights, evaluated once per change of the
        weights (the end of a phase reuses its last epoch's evaluation). In a process
        group every rank evaluates the whole test set on its (identical) weights: any
        task's metrics (mAP is no mean over examples), no communication, and exactly the
        numbers one process computes for these weights."""
        if self._metrics is None:
            self._metrics = evaluate(self.model, self.test_batches, device=self.device,
                                     task=self.task, amp=self.config.amp)
            self._warn_non_finite(self._metrics)
        return self._metrics

    def _warn_non_finite(self, metrics: dict) -> None:
        """Say once per run when a test metric is NaN or infinite: the JSON files write it
        as null, marked under "non_finite", and the user should know why."""
        bad = [f"{self.task.label(k)} is {v}" for k, v in metrics.items()
               if isinstance(v, float) and not math.isfinite(v)]
        if bad and self.main and not self._warned_non_finite:
            self._warned_non_finite = True
            print(f"admmprune: warning: the test {', '.join(bad)}: the test data or the "
                  "model's outputs hold NaN or infinite values (summary.json and "
                  "metrics.jsonl write such values as null, listed under \"non_finite\")",
                  file=sys.stderr)

    def test_score(self) -> float:
        """The task's headline metric (classification: top-1 accuracy)."""
        return self.test_metrics()[self.task.metric]

    def _test_record(self) -> dict:
        return {f"test_{k}": v for k, v in self.test_metrics().items()}

    def _result(self, prefix: str) -> None:
        self.progress.results.update({f"{prefix}_{k}": v for k, v in
                                      self.test_metrics().items()})

    @staticmethod
    def _train_record(stats: dict) -> dict:
        return {f"train_{k}": v for k, v in stats.items()
                if k not in ("steps", "seconds", "examples")}

    # -- phases ----------------------------------------------------------------------------
    def dense(self) -> None:
        cfg, prog = self.config, self.progress
        if prog.dense_done:
            return
        start = time.perf_counter()
        if cfg.pretrained:
            # the recipe's own choice of file: a format read by unpickling is trusted
            load_weights(self.model, Path(cfg.pretrained), self.device, cfg.model,
                         trust_pickle=True)
        else:
            optimizer = self._optimizer(cfg.learning_rate, resume_state=True)
            for epoch in range(prog.dense_epoch, cfg.dense_epochs):
                stats = self._epoch(optimizer, f"dense {epoch + 1}/{cfg.dense_epochs}",
                                    cfg.learning_rate, cfg.dense_lr_schedule,
                                    phase_progress=(epoch, cfg.dense_epochs))
                self.log({"phase": "dense", "epoch": epoch + 1, **self._train_record(stats),
                          **self._test_record(), "seconds": stats["seconds"]})
                prog.dense_epoch = epoch + 1
                self._timed("dense", time.perf_counter() - start)
                start = time.perf_counter()
                self.save(optimizer)
        self._result("dense")
        prog.dense_done = True
        self._save_weights("dense.pt", self.model.state_dict())
        if self._teacher is not None:
            self._teacher.load_state_dict(self.model.state_dict())
        self._timed("dense", time.perf_counter() - start)
        self.save()

    def admm(self) -> None:
        cfg, prog = self.config, self.progress
        if prog.admm_done:
            return
        if self.pruner is None:
            self.pruner = build_pruner(self.model, cfg, 0, self._example())
            prog.results["prunable_weights"] = self.pruner.total
        while prog.stage < cfg.stages:
            self._admm_stage(prog.stage)
            prog.stage += 1
            prog.iteration = 0
            prog.stage_pruned = False
            prog.stage_retrain_epoch = 0
            self.save()
        prog.admm_done = True
        for key in self.task.metrics + ("loss",):
            prog.results[f"admm_{key}"] = prog.results.get(f"stage{cfg.stages}_pruned_{key}")
        self._save_weights("admm.pt", {"model": self.model.state_dict(),
                                       "pruner": self.pruner.state_dict()})
        self.save()

    def _admm_stage(self, s: int) -> None:
        cfg, prog, pruner = self.config, self.progress, self.pruner
        k_step, epochs = cfg.stage_value("k_step", s), cfg.stage_value("epochs", s)
        if cfg.pruning in ONE_SHOT_PRUNING:
            k_step = 0  # the baselines: prune the current weights at once, no W-steps
        label = f"stage {s + 1}/{cfg.stages}" if cfg.stages > 1 else "admm"
        if prog.iteration == 0 and not prog.stage_pruned:
            schedule = [cfg.stage_value(key, s) for key in ("rho", "rho_growth", "rho_max")]
            if s > 0:
                pruner.start_stage(cfg.stage_value("all_percent", s), *schedule)
            else:
                pruner.set_rho_schedule(*schedule)
        enforce = pruner.masks is not None
        if not prog.stage_pruned:
            optimizer = self._optimizer(cfg.learning_rate, resume_state=prog.iteration > 0)
            for k in range(prog.iteration, k_step):
                start = time.perf_counter()
                for e in range(epochs):
                    # cosine: the learning rate restarts at every ADMM iteration
                    stats = self._epoch(optimizer, f"{label} iter {k + 1}/{k_step}",
                                        cfg.learning_rate, cfg.admm_lr_schedule,
                                        penalty_gradients=pruner.add_penalty_gradients,
                                        enforce=enforce,
                                        phase_progress=(e, epochs))
                self._check_replicas()
                record = pruner.admm_step()
                self.log({"phase": "admm", "stage": s + 1, **record,
                          **self._train_record(stats), **self._test_record(),
                          "seconds": time.perf_counter() - start})
                prog.iteration = k + 1
                self._timed("admm", time.perf_counter() - start)
                self.save(optimizer)
            start = time.perf_counter()
            if cfg.pruning in CALIBRATED_PRUNING:
                # calibration: the first batches of this point's training order
                self.train_batches.set_epoch(prog.data_epoch)
                calibrated_prune(self.model, pruner, cfg, self.train_batches, self.device,
                                 self.task.loss)
            else:
                pruner.hard_prune(cfg.hard_prune_support)
            self._metrics = None
            self._result(f"stage{s + 1}_pruned")
            self.log({"phase": "hard_prune", "stage": s + 1,
                      "all_percent": pruner.all_percent, **pruner.summary(),
                      **self._test_record()})
            prog.stage_pruned = True
            self._timed("admm", time.perf_counter() - start)
            self.save()
        if s < cfg.stages - 1 and cfg.stage_retraining_epochs:
            self._stage_retrain(cfg.stage_retraining_epochs)

    def _stage_retrain(self, total: int) -> None:
        """Masked retraining between progressive stages (``stage_retraining_epochs``)."""
        prog = self.progress

        def finished(epoch: int, stats: dict) -> None:
            self.log({"phase": "stage_retrain", "stage": prog.stage + 1, "epoch": epoch + 1,
                      **self._train_record(stats), **self._test_record(),
                      "seconds": stats["seconds"]})
            prog.stage_retrain_epoch = epoch + 1

        self._masked_epochs("stage_retrain", prog.stage_retrain_epoch, total, finished)

    def _final_retrain(self, total: int) -> None:
        """The final masked retraining, with mask refinement and weight averaging."""
        prog = self.progress
        refiner = self._refiner(prog.retrain_epoch, total)
        swapped = [refiner.swapped if refiner is not None else 0]

        def finished(epoch: int, stats: dict) -> None:
            regrown = {}
            if refiner is not None:
                regrown = {"regrown": refiner.swapped - swapped[0]}
                swapped[0] = refiner.swapped
            if self._average is not None and self._average.covers(epoch):
                self._average.update(self.model)
            self.log({"phase": "retrain", "epoch": epoch + 1, **regrown,
                      **self._train_record(stats), **self._test_record(),
                      "seconds": stats["seconds"]})
            prog.retrain_epoch = epoch + 1

        self._masked_epochs("retrain", prog.retrain_epoch, total, finished, refiner)
        if refiner is not None:
            refiner.close()

    def _masked_epochs(self, phase: str, done: int, total: int,
                       finished: Callable[[int, dict], None],
                       refiner: MaskRefiner | None = None) -> None:
        """Epochs ``done``..``total - 1`` of masked training, each checkpointed after
        ``finished(epoch, stats)`` has logged it and advanced the progress counter."""
        cfg = self.config
        lr = cfg.retraining_learning_rate or cfg.learning_rate
        # A fresh optimizer: no momentum from the ADMM phase leaks into pruned entries.
        optimizer = self._optimizer(lr, resume_state=done > 0)
        for epoch in range(done, total):
            start = time.perf_counter()
            stats = self._epoch(optimizer, f"{phase} {epoch + 1}/{total}", lr,
                                cfg.retraining_lr_schedule, enforce=True,
                                phase_progress=(epoch, total), refiner=refiner)
            finished(epoch, stats)
            self._timed("retrain", time.perf_counter() - start)
            self.save(optimizer)

    def _refiner(self, done: int, total: int) -> MaskRefiner | None:
        """retraining_regrow's mask updates, placed ``done`` of ``total`` epochs in."""
        cfg = self.config
        if not cfg.retraining_regrow:
            return None
        batches = len(self.train_batches)
        if cfg.steps_per_epoch:
            batches = min(batches, cfg.steps_per_epoch)
        per_epoch = -(-batches // cfg.accumulate)  # optimizer steps
        return MaskRefiner(self.pruner, cfg.retraining_regrow, cfg.retraining_regrow_every,
                           cfg.retraining_regrow_until, per_epoch * total, per_epoch * done)

    def retrain(self) -> dict:
        cfg, prog = self.config, self.progress
        if not prog.admm_done:
            raise RunError(f"{self.run_dir} has not finished its ADMM stage; run "
                           "`admmprune prune --stage admm` (or resume it) first")
        if not prog.done:
            if cfg.retraining_augment_shift is not None:
                replace_shift(self.train_batches, cfg.retraining_augment_shift, cfg.seed)
            if cfg.retraining_average_epochs and self._average is None:
                self._average = self._new_average()
            self._final_retrain(cfg.retraining_epochs)
            if self._average is not None:
                self._average.apply(self.model, self.train_batches, self.device)
                self._metrics = None  # the weights change
                self.log({"phase": "average", "epochs": self._average.count,
                          **self._test_record()})
            self._result("pruned")
            prog.done = True
            self._save_weights("model.pt", self.model.state_dict())
            self.save()
        return self.summary()

    def summary(self) -> dict:
        prog = self.progress
        layers = [r.as_dict() for r in self.pruner.sparsity()] if self.pruner else []
        summary = {
            "run_dir": str(self.run_dir),
            "model": self.config.model,
            "dataset": self.config.dataset,
            "task": self.task.name,
            "metric": self.task.metric,
            "metric_labels": {k: self.task.label(k) for k in self.task.metrics},
            **task_fields(self.task),
            "all_percent": self.config.final_percent(),
            "structure": self.config.structure,
            **prog.results,
            **(self.pruner.summary() if self.pruner else {}),
            "layers": layers,
            "not_pruned": [t._asdict() for t in self.selection[1]],
            **({"sources": self.sources} if self.sources else {}),
            **({"data_checksums": self.data.checksums} if self.data.checksums else {}),
            "seconds": dict(prog.seconds),
            "wall_seconds": sum(prog.seconds.values()),
            "complete": prog.done,
        }
        if self.main:
            self.dir.write_summary(summary)
        return summary

    def close(self) -> None:
        self.dir.close()


def run_pipeline(config: Config, *, stage: str = "all", run_dir: str | Path | None = None,
                 resume: bool = False, model: nn.Module | None = None,
                 data: Mapping | DataSplits | None = None, task=None) -> dict:
    """Run (or resume) the job of ``config`` in ``run_dir``; returns the summary dict.

    ``stage="admm"`` stops after the hard prune, ``"retrain"`` needs a run directory whose
    ADMM stage is done, ``"all"`` does everything.

    Args:
        config: the recipe (:func:`~admmprune.runs.config.load_config`).
        stage: ``"all"``, ``"admm"`` or ``"retrain"``.
        run_dir: the run directory (default OUTPUT_DIR/NAME-TIMESTAMP).
        resume: continue the run in ``run_dir`` from its last checkpoint.
        model: a module to prune instead of building ``config.model``, used with the
            weights it holds (``pretrained`` still applies). config.yaml records it as
            ``"<object ClassName>"``.
        data: ``{"train": Dataset, "test": Dataset}`` (map-style datasets; optional
            ``"val"``, ``"num_classes"``, see :mod:`admmprune.data.objects`) instead of
            ``config.dataset``, streamed with the order of every epoch drawn from (seed,
            epoch); or a :class:`~admmprune.data.DataSplits`.
        task: a :class:`~admmprune.tasks.Task` instance, or a task name or import spec,
            instead of ``config.task``.

    Resuming a run started with objects needs the same objects again: a model whose
    parameter names or shapes differ from the checkpoint's is refused (RunError), as is a
    different kind of object (its class name is part of the recorded config).

    Raises:
        ConfigError: a bad stage, recipe value or object.
        RunError: the run directory cannot be used or resumed as asked.

    Called on every rank of an initialised process group (``torch.distributed``, more than
    one process), it trains data-parallel with DistributedDataParallel; the caller owns the
    group (``admmprune.distributed.init_from_env`` joins torchrun's).
    """
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if stage == "retrain" and run_dir is None:
        raise RunError("--stage retrain needs the run directory of an ADMM stage (--run-dir)")
    # one name for all ranks: the timestamp is rank 0's
    run_dir = Path(run_dir) if run_dir is not None else \
        distributed.broadcast_object(new_run_dir(config))
    run = Run(config, run_dir, resume=resume or stage == "retrain", model=model, data=data,
              task=task)
    try:
        if stage in ("all", "admm"):
            run.dense()
            run.admm()
        if stage in ("all", "retrain"):
            return run.retrain()
        return run.summary()
    finally:
        run.close()
