"""What a checkpoint holds and how every rank gets the same one: the run's progress, the
random-number states, and the choice of the newest intact checkpoint file.

Split from :mod:`admmprune.runs.pipeline` (the phases) so that what a bitwise resume needs is in
one place: model, pruner (Z, U, rho, masks), optimizer, progress (including the data epoch),
config, the RNG states of every rank, and the length of metrics.jsonl at the checkpoint.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import distributed
from .config import Config
from .rundir import RunDirectory, RunError, load_checked

__all__ = ["Progress", "Checkpoints", "rng_state", "set_rng_state", "restore_rng"]


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
    data_epoch: int = 0  # training epochs started so far: the data order of the next one
    results: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states, in a form torch.save keeps."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    # a checkpoint loaded with map_location=cuda holds these on the GPU; they are CPU states
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def restore_rng(state: dict, rank: int, world: int) -> None:
    """This rank's saved generator states (rank 0's when the process count changed)."""
    per_rank = state.get("rng_ranks")
    if per_rank is not None and len(per_rank) == world:
        set_rng_state(per_rank[rank])
    elif state.get("rng") is not None:
        set_rng_state(state["rng"])


class Checkpoints:
    """Saving and loading a run's checkpoint, the same file on every rank."""

    def __init__(self, directory: RunDirectory, device: torch.device, rank: int = 0,
                 world: int = 1) -> None:
        self.dir = directory
        self.device = device
        self.rank, self.world = rank, world
        self.main = rank == 0

    def save(self, *, model: nn.Module, pruner, optimizer: torch.optim.Optimizer | None,
             progress: Progress, config: Config, average: dict | None = None,
             sources: dict[str, str] | None = None,
             data_checksums: dict[str, str] | None = None) -> None:
        """Collective: every rank calls it (their RNG states are gathered), rank 0 writes."""
        rng = distributed.all_gather_objects(rng_state())
        if not self.main:
            return
        self.dir.save_checkpoint({
            "model": model.state_dict(),
            "pruner": None if pruner is None else pruner.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "average": average,
            "progress": dataclasses.asdict(progress),
            "config": config.to_dict(),
            "rng": rng[0],
            "rng_ranks": rng if self.world > 1 else None,
            "world_size": self.world,
            "metrics_bytes": self.dir.metrics_size(),
            "sources": dict(sources or {}),  # the user's files the run imported: sha256
            "data_checksums": dict(data_checksums or {}),  # what the dataset read: sha256
        })

    def load(self) -> tuple[dict, dict | None]:
        """(state of the newest intact checkpoint, a metrics record when it is not the last
        one written); rank 0 chooses the file, every rank reads it."""
        chosen = state = error = fallback = None
        if self.main:
            try:
                state, path, problems = self.dir.load_checkpoint(self.device)
            except RunError as err:
                error = err
            else:
                chosen = path.name
                if path != self.dir.checkpoint:
                    print(f"admmprune: resuming from {path.name}, one unit of work back: "
                          f"{'; '.join(problems)}", file=sys.stderr)
                    fallback = {"phase": "resume", "checkpoint": path.name,
                                "skipped": problems}
        chosen = distributed.broadcast_object(chosen)
        if error is not None:
            raise error
        if chosen is None:
            raise RunError(f"rank 0 found no intact checkpoint in {self.dir.path}; the files "
                           "are corrupt, start a new run (another --run-dir)")
        if not self.main:
            state = load_checked(self.dir.path / chosen, self.device)
        return state, fallback
