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
           "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"


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


class RunDirectory:
    """The files of one run; see the README's "Command line" section for what each holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._metrics = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def create(self, config: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(),
                                                              sort_keys=False))

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
