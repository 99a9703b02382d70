"""A run directory on disk: its config, metrics log, checkpoint and saved weights.

Everything is written so that a crash at any moment leaves the previous state readable:
checkpoints and weights go through a temporary file and an atomic rename.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Config, apply_overrides

__all__ = ["RunError", "RunDirectory", "new_run_dir", "load_run_config", "atomic_save",
           "CHECKPOINT", "RESUME_SAFE_KEYS", "resume_changes"]

CHECKPOINT = "checkpoint.pt"
# What a run writes; a fresh run refuses a directory holding anything else.
RUN_FILES = {"config.yaml", "metrics.jsonl", CHECKPOINT, "dense.pt", "admm.pt", "model.pt",
             "summary.json", "admm_residuals.png", "accuracy.png", "kept_per_layer.png"}
# Keys a resumed run may change: where and how fast it runs, and epochs to add. Everything
# else defines what the run is (model, data, ratio, selection, optimisation) and is refused.
RESUME_SAFE_KEYS = {"threads", "device", "progress", "workers", "data_dir", "val_labels",
                    "download", "output_dir", "retraining_epochs"}
# Retraining keys that may still change while retraining has not started (--stage retrain
# after --stage admm: the user chooses how to retrain once ADMM is done).
RETRAIN_KEYS = {"retraining_epochs", "retraining_learning_rate", "retraining_lr_schedule"}


class RunError(RuntimeError):
    """A run cannot proceed (missing checkpoint, wrong run directory...)."""


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, then rename: a crash mid-write never corrupts ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def new_run_dir(config: Config) -> Path:
    """OUTPUT_DIR/NAME-TIMESTAMP, with a suffix if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / f"{config.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def _same_config(path: Path, config: Config) -> bool:
    try:
        return yaml.safe_load(path.read_text()) == config.to_dict()
    except (OSError, yaml.YAMLError):
        return False


def load_run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The resolved config a run directory was started with, plus ``overrides``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RunError(f"{path} is not valid YAML ({err}); the run directory is damaged") \
            from None
    if not isinstance(saved, dict):
        raise RunError(f"{path} does not hold a mapping of recipe keys; the run directory is "
                       "damaged")
    config = Config()
    apply_overrides(config, saved)
    apply_overrides(config, overrides or {})
    return config.validate()


def resume_changes(saved: dict, new: dict, retraining_started: bool, retrain_epochs_done: int
                   ) -> dict:
    """The keys ``new`` changes relative to the config ``saved`` with a run, as
    {key: [old, new]}; raises RunError when a change would alter what the run is."""
    changes = {k: [saved.get(k), v] for k, v in new.items() if saved.get(k, v) != v}
    allowed = RESUME_SAFE_KEYS | (set() if retraining_started else RETRAIN_KEYS)
    refused = sorted(set(changes) - allowed)
    if refused:
        listed = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise RunError(
            f"resuming cannot change what the run is ({listed}); only "
            f"{', '.join(sorted(allowed))} may change. Start a new run (another --run-dir) "
            "for a different configuration")
    if "retraining_epochs" in changes and changes["retraining_epochs"][1] < retrain_epochs_done:
        raise RunError(f"retraining_epochs {changes['retraining_epochs'][1]} is fewer than the "
                       f"{retrain_epochs_done} retraining epochs already done")
    return changes


class RunDirectory:
    """The files of one run; see the README's "Command line" section for what each holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._metrics = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def check_fresh(self, config: Config) -> None:
        """Refuse a directory a new run must not write into: a file, an unwritable place,
        or a directory holding anything but an unstarted run of this very config."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"run directory {self.path} is a file; choose another --run-dir")
        if self.checkpoint.exists():
            raise RunError(f"{self.path} already holds a run; resume it (--resume) or "
                           "choose another directory")
        if self.path.is_dir():
            # Allowed: an empty directory, or one where a run of this very config wrote its
            # config and failed before finishing any work (nothing to lose).
            present = sorted(p.name for p in self.path.iterdir())
            unstarted = set(present) <= {"config.yaml", "metrics.jsonl"} and (
                not (self.path / "metrics.jsonl").exists()
                or (self.path / "metrics.jsonl").stat().st_size == 0)
            same_config = (self.path / "config.yaml").is_file() and _same_config(
                self.path / "config.yaml", config)
            if present and not (unstarted and same_config):
                foreign = [n for n in present if n not in RUN_FILES]
                shown = ", ".join((foreign or present)[:5])
                raise RunError(f"{self.path} already holds files ({shown}) that are not an "
                               "unstarted run of this config; choose another --run-dir (or "
                               "resume that run with --resume)")
        parent = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"cannot write the run directory {self.path}: {parent} is not "
                           "writable; choose another --run-dir or output_dir")

    def create(self, config: Config) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory {self.path}: {err}") from None
        self.write_config(config)

    def write_config(self, config: Config) -> None:
        tmp = self.path / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        os.replace(tmp, self.path / "config.yaml")

    def metrics_size(self) -> int:
        path = self.path / "metrics.jsonl"
        if self._metrics is not None:
            self._metrics.flush()
        return path.stat().st_size if path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop records logged after the checkpoint that holds ``size``: the work they
        describe was lost with the process and is done (and logged) again."""
        path = self.path / "metrics.jsonl"
        if path.is_file() and path.stat().st_size > size:
            with path.open("r+b") as handle:
                handle.truncate(size)

    def load_checkpoint(self, device: torch.device) -> dict:
        try:
            return torch.load(self.checkpoint, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise RunError(f"cannot read {self.checkpoint} ({err}); the file is corrupt, "
                           "start a new run") from None

    def save_checkpoint(self, state: dict) -> None:
        atomic_save(state, self.checkpoint)

    def save_weights(self, name: str, obj: Any) -> Path:
        path = self.path / name
        atomic_save(obj, path)
        return path

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (flushed at once: a crash keeps it)."""
        if self._metrics is None:
            self._metrics = (self.path / "metrics.jsonl").open("a")
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def write_summary(self, summary: dict) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
