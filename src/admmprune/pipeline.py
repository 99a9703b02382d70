"""The whole job for one recipe: dense training, ADMM stages, hard prune, masked retraining.

Every finished unit of work (a dense epoch, an ADMM iteration, a retraining epoch) is
checkpointed atomically into the run directory, so an interrupted or diverged run
resumes where it stopped (``run_pipeline(..., resume=True)``) and loses at most the
unit in progress.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .config import Config, ConfigError, apply_overrides
from .data import IDX_SPECS, TensorBatches, load_mnist, make_synthetic, mnist_loaders
from .models import create_model, weights_loader
from .pruner import ADMMPruner
from .train import evaluate, lr_factor, make_optimizer, train_epoch

__all__ = ["STAGES", "RunError", "Run", "run_pipeline", "load_run_config", "resolve_device",
           "load_weights", "build_pruner", "load_data", "new_run_dir"]

STAGES = ("all", "admm", "retrain")
CHECKPOINT = "checkpoint.pt"


class RunError(RuntimeError):
    """A run cannot proceed (missing checkpoint, wrong run directory...)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available; "
                          "use device=cpu or auto")
    return device


def load_data(config: Config, device: torch.device) -> tuple[TensorBatches, TensorBatches]:
    """Training and test batches for the configured dataset, held on ``device``."""
    if config.dataset in IDX_SPECS:
        data = load_mnist(config.data_dir, download=config.download,
                          train_subset=config.train_subset, test_subset=config.test_subset,
                          spec=IDX_SPECS[config.dataset])
    elif config.dataset == "synthetic":
        data = make_synthetic(train_size=config.train_subset or 2000,
                              test_size=config.test_subset or 500, seed=config.seed)
    else:
        raise ConfigError(f"unknown dataset {config.dataset!r}")
    # The whole set fits in memory (MNIST: 190 MB); moving it once avoids per-batch copies.
    data = dataclasses.replace(data, **{name: getattr(data, name).to(device) for name in
                                        ("train_x", "train_y", "test_x", "test_y")})
    return mnist_loaders(data, config.batch_size, config.seed, config.augment_shift)


def build_pruner(model: nn.Module, config: Config, stage: int = 0) -> ADMMPruner:
    return ADMMPruner(
        model,
        all_percent=config.stage_value("all_percent", stage),
        rho=config.stage_value("rho", stage),
        rho_growth=config.stage_value("rho_growth", stage),
        rho_max=config.stage_value("rho_max", stage),
        adaptive_rho=config.adaptive_rho,
        p_lambda=config.p_lambda,
        projection=config.projection,
        layer_percents=config.layer_percents,
        score=config.score,
        include=config.include,
        exclude=config.exclude,
        z_init=config.z_init,
        allow_regrowth=config.allow_regrowth,
    )


def new_run_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / f"{config.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def load_run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The resolved config a run directory was started with, plus ``overrides``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    config = Config()
    apply_overrides(config, yaml.safe_load(path.read_text()) or {})
    apply_overrides(config, overrides or {})
    return config.validate()


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, then rename: a crash mid-write never corrupts ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Progress:
    """How far a run got; saved in every checkpoint."""

    dense_epoch: int = 0
    dense_done: bool = False
    stage: int = 0
    iteration: int = 0
    stage_pruned: bool = False
    stage_retrain_epoch: int = 0
    admm_done: bool = False
    retrain_epoch: int = 0
    done: bool = False
    results: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


class Run:
    """One run directory and the job it holds. Use :func:`run_pipeline`."""

    def __init__(self, config: Config, run_dir: Path, resume: bool) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        self.progress = Progress()
        self.optimizer_state: dict | None = None
        self._accuracy: float | None = None  # cached test accuracy of the current weights
        checkpoint = self.run_dir / CHECKPOINT
        if resume:
            if not checkpoint.is_file():
                raise RunError(f"nothing to resume: {checkpoint} does not exist")
        elif checkpoint.exists():
            raise RunError(f"{self.run_dir} already holds a run; resume it (--resume) or "
                           "choose another directory")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(),
                                                                 sort_keys=False))
        if config.threads:
            torch.set_num_threads(config.threads)
        _seed_everything(config.seed)
        try:
            self.model = create_model(config.model, **config.model_args).to(self.device)
        except TypeError as err:
            raise ConfigError(f"model_args do not fit model {config.model!r}: {err}") from None
        self.pruner: ADMMPruner | None = None
        if resume:
            self._restore(checkpoint)
        self.train_batches, self.test_batches = load_data(config, self.device)
        self.metrics = (self.run_dir / "metrics.jsonl").open("a")

    # -- bookkeeping -----------------------------------------------------------------------
    def _restore(self, checkpoint: Path) -> None:
        try:
            state = torch.load(checkpoint, map_location=self.device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise RunError(f"cannot read {checkpoint} ({err}); the file is corrupt, start a "
                           "new run") from None
        self.model.load_state_dict(state["model"])
        self.progress = Progress(**state["progress"])
        self.optimizer_state = state.get("optimizer")
        if state.get("pruner") is not None:
            stage = min(self.progress.stage, self.config.stages - 1)
            self.pruner = build_pruner(self.model, self.config, stage)
            self.pruner.load_state_dict(state["pruner"])

    def save(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        _atomic_save({
            "model": self.model.state_dict(),
            "pruner": None if self.pruner is None else self.pruner.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "progress": self.progress.__dict__,
            "config": self.config.to_dict(),
        }, self.run_dir / CHECKPOINT)

    def log(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def _timed(self, phase: str, seconds: float) -> None:
        self.progress.seconds[phase] = self.progress.seconds.get(phase, 0.0) + seconds

    def _optimizer(self, lr: float, resume_state: bool) -> torch.optim.Optimizer:
        optimizer = make_optimizer(self.model.parameters(), self.config.optimizer, lr,
                                   self.config.momentum)
        if resume_state and self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        self.optimizer_state = None
        return optimizer

    def _epoch(self, optimizer, desc, lr, schedule, *, penalty=None, enforce=False,
               phase_progress=(0, 1)):
        """One training epoch; ``phase_progress=(done, total)`` epochs places it in its
        phase so the learning-rate schedule spans the whole phase."""
        done, total = phase_progress
        self._accuracy = None  # the weights change
        after = (lambda: self.pruner.enforce()) if enforce else None
        return train_epoch(
            self.model, self.train_batches, optimizer, device=self.device, penalty=penalty,
            after_step=after, max_steps=self.config.steps_per_epoch, desc=desc,
            progress=self.config.progress,
            lr_at=lambda f: lr * lr_factor(schedule, (done + f) / total),
        )

    def test_accuracy(self) -> float:
        """Test accuracy of the current weights, evaluated once per change of the weights
        (the end of a phase reuses its last epoch's evaluation)."""
        if self._accuracy is None:
            self._accuracy = evaluate(self.model, self.test_batches,
                                      device=self.device)["accuracy"]
        return self._accuracy

    # -- phases ----------------------------------------------------------------------------
    def dense(self) -> None:
        cfg, prog = self.config, self.progress
        if prog.dense_done:
            return
        start = time.perf_counter()
        if cfg.pretrained:
            load_weights(self.model, Path(cfg.pretrained), self.device, cfg.model)
        else:
            optimizer = self._optimizer(cfg.learning_rate, resume_state=True)
            for epoch in range(prog.dense_epoch, cfg.dense_epochs):
                stats = self._epoch(optimizer, f"dense {epoch + 1}/{cfg.dense_epochs}",
                                    cfg.learning_rate, cfg.dense_lr_schedule,
                                    phase_progress=(epoch, cfg.dense_epochs))
                accuracy = self.test_accuracy()
                self.log({"phase": "dense", "epoch": epoch + 1, "train_loss": stats["loss"],
                          "train_accuracy": stats["accuracy"], "test_accuracy": accuracy,
                          "seconds": stats["seconds"]})
                prog.dense_epoch = epoch + 1
                self._timed("dense", time.perf_counter() - start)
                start = time.perf_counter()
                self.save(optimizer)
        prog.results["dense_accuracy"] = self.test_accuracy()
        prog.dense_done = True
        torch.save(self.model.state_dict(), self.run_dir / "dense.pt")
        self._timed("dense", time.perf_counter() - start)
        self.save()

    def admm(self) -> None:
        cfg, prog = self.config, self.progress
        if prog.admm_done:
            return
        if self.pruner is None:
            self.pruner = build_pruner(self.model, cfg, 0)
            prog.results["prunable_weights"] = self.pruner.total
        while prog.stage < cfg.stages:
            self._admm_stage(prog.stage)
            prog.stage += 1
            prog.iteration = 0
            prog.stage_pruned = False
            prog.stage_retrain_epoch = 0
            self.save()
        prog.admm_done = True
        prog.results["admm_accuracy"] = prog.results.get(f"stage{cfg.stages}_pruned_accuracy")
        torch.save({"model": self.model.state_dict(), "pruner": self.pruner.state_dict()},
                   self.run_dir / "admm.pt")
        self.save()

    def _admm_stage(self, s: int) -> None:
        cfg, prog, pruner = self.config, self.progress, self.pruner
        k_step, epochs = cfg.stage_value("k_step", s), cfg.stage_value("epochs", s)
        if cfg.pruning == "oneshot":
            k_step = 0  # the baseline: hard prune the current weights, no W-steps
        label = f"stage {s + 1}/{cfg.stages}" if cfg.stages > 1 else "admm"
        if prog.iteration == 0 and not prog.stage_pruned:
            if s > 0:
                pruner.start_stage(cfg.stage_value("all_percent", s))
            pruner.rho = float(cfg.stage_value("rho", s))
            pruner.rho_growth = float(cfg.stage_value("rho_growth", s))
            pruner.rho_max = float(cfg.stage_value("rho_max", s))
        enforce = pruner.masks is not None
        if not prog.stage_pruned:
            optimizer = self._optimizer(cfg.learning_rate, resume_state=prog.iteration > 0)
            for k in range(prog.iteration, k_step):
                start = time.perf_counter()
                for e in range(epochs):
                    # cosine: the learning rate restarts at every ADMM iteration
                    stats = self._epoch(optimizer, f"{label} iter {k + 1}/{k_step}",
                                        cfg.learning_rate, cfg.admm_lr_schedule,
                                        penalty=pruner.penalty, enforce=enforce,
                                        phase_progress=(e, epochs))
                record = pruner.admm_step()
                accuracy = self.test_accuracy()
                self.log({"phase": "admm", "stage": s + 1, **record,
                          "train_loss": stats["loss"], "test_accuracy": accuracy,
                          "seconds": time.perf_counter() - start})
                prog.iteration = k + 1
                self._timed("admm", time.perf_counter() - start)
                self.save(optimizer)
            start = time.perf_counter()
            pruner.hard_prune(cfg.hard_prune_support)
            self._accuracy = None
            accuracy = self.test_accuracy()
            prog.results[f"stage{s + 1}_pruned_accuracy"] = accuracy
            self.log({"phase": "hard_prune", "stage": s + 1,
                      "all_percent": pruner.all_percent, **pruner.summary(),
                      "test_accuracy": accuracy})
            prog.stage_pruned = True
            self._timed("admm", time.perf_counter() - start)
            self.save()
        if s < cfg.stages - 1 and cfg.stage_retraining_epochs:
            self._retrain("stage_retrain", cfg.stage_retraining_epochs, "stage_retrain_epoch")

    def _retrain(self, phase: str, total: int, counter: str) -> None:
        cfg, prog = self.config, self.progress
        lr = cfg.retraining_learning_rate or cfg.learning_rate
        done = getattr(prog, counter)
        # A fresh optimizer: no momentum from the ADMM phase leaks into pruned entries.
        optimizer = self._optimizer(lr, resume_state=done > 0)
        for epoch in range(done, total):
            start = time.perf_counter()
            stats = self._epoch(optimizer, f"{phase} {epoch + 1}/{total}", lr,
                                cfg.retraining_lr_schedule, enforce=True,
                                phase_progress=(epoch, total))
            accuracy = self.test_accuracy()
            stage = {"stage": prog.stage + 1} if phase == "stage_retrain" else {}
            self.log({"phase": phase, **stage, "epoch": epoch + 1,
                      "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                      "test_accuracy": accuracy, "seconds": stats["seconds"]})
            setattr(prog, counter, epoch + 1)
            self._timed("retrain", time.perf_counter() - start)
            self.save(optimizer)

    def retrain(self) -> dict:
        cfg, prog = self.config, self.progress
        if not prog.admm_done:
            raise RunError(f"{self.run_dir} has not finished its ADMM stage; run "
                           "`admmprune prune --stage admm` (or resume it) first")
        if not prog.done:
            self._retrain("retrain", cfg.retraining_epochs, "retrain_epoch")
            prog.results["pruned_accuracy"] = self.test_accuracy()
            prog.done = True
            torch.save(self.model.state_dict(), self.run_dir / "model.pt")
            self.save()
        return self.summary()

    def summary(self) -> dict:
        prog = self.progress
        layers = [r.as_dict() for r in self.pruner.sparsity()] if self.pruner else []
        summary = {
            "run_dir": str(self.run_dir),
            "model": self.config.model,
            "dataset": self.config.dataset,
            "all_percent": self.config.final_percent(),
            **prog.results,
            **(self.pruner.summary() if self.pruner else {}),
            "layers": layers,
            "seconds": dict(prog.seconds),
            "wall_seconds": sum(prog.seconds.values()),
            "complete": prog.done,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.metrics.close()


def load_weights(model: nn.Module, path: Path, device: torch.device,
                 model_name: str | None = None) -> None:
    """Fill ``model`` from ``path``: a format registered for ``model_name`` by its suffix
    (Caffe .npy, darknet .weights), else a PyTorch state dict read with weights_only=True."""
    if not path.is_file():
        raise RunError(f"pretrained checkpoint {path} does not exist")
    loader = weights_loader(model_name, path) if model_name else None
    if loader is not None:
        try:
            loader(model, path)
        except ValueError as err:
            raise RunError(f"cannot load {path} into {model_name}: {err}") from None
        model.to(device)
        return
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise RunError(f"cannot read pretrained checkpoint {path}: {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RunError(f"{path} does not fit model: {err}") from None


def run_pipeline(config: Config, *, stage: str = "all", run_dir: str | Path | None = None,
                 resume: bool = False) -> dict:
    """Run (or resume) the job of ``config`` in ``run_dir``; returns the summary dict.

    ``stage="admm"`` stops after the hard prune, ``"retrain"`` needs a run directory whose
    ADMM stage is done, ``"all"`` does everything.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if stage == "retrain" and run_dir is None:
        raise RunError("--stage retrain needs the run directory of an ADMM stage (--run-dir)")
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(config)
    run = Run(config, run_dir, resume=resume or stage == "retrain")
    try:
        if stage in ("all", "admm"):
            run.dense()
            run.admm()
        if stage in ("all", "retrain"):
            return run.retrain()
        return run.summary()
    finally:
        run.close()
