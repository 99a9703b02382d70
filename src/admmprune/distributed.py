"""Data-parallel training across processes: torchrun / ``torch.distributed`` helpers.

One process per device (``torchrun --nproc_per_node=N -m admmprune prune RECIPE``, or a
process group the caller set up before :func:`~admmprune.runs.pipeline.run_pipeline`). Every
process holds the whole model, Z, U and the masks; DistributedDataParallel averages the
gradients of the W-steps, so the weights stay bitwise identical on every rank and the
Z-step, U-step, rho schedule and hard prune run on every rank without communication
(:func:`check_synchronised` verifies it once per ADMM iteration).

Batches: the global batch ``batch_size`` is split across ranks (:func:`shard_bounds`), so
one process sees exactly today's batches and N processes see the same global batches.

Only rank 0 writes files and prints; :func:`on_main` runs such work on rank 0 and raises its
error on every rank, so no rank is left waiting in a collective for a rank that failed.

Nothing here imports the rest of admmprune: data, training and pipeline modules use it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "init_from_env", "shutdown", "is_distributed", "rank",
           "world_size", "local_rank", "is_main", "env_world_size", "backend",
           "device_for", "shard_bounds", "broadcast_object", "all_gather_objects", "on_main",
           "main_first", "barrier", "fingerprint", "check_synchronised", "broadcast_tensors",
           "reduce_stats"]

T = TypeVar("T")


class DistributedError(RuntimeError):
    """The process group cannot be set up or used as asked."""


# -- the process group --------------------------------------------------------------------
def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer"
                               ) from None


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...):
    gloo for a CPU ``device``, nccl for CUDA (each process on ``cuda:LOCAL_RANK``);
    ``"auto"`` is CUDA when available.

    Returns True when this call created the group (the caller then owns its teardown,
    :func:`shutdown`); False when there is nothing to join (WORLD_SIZE 1 or unset) or a
    group exists already (the caller's).
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise DistributedError("this build of torch has no torch.distributed; run one "
                               "process (plain `admmprune ...`) instead of torchrun")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} "
                               "is not set; start the processes with torchrun")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise DistributedError("device cuda was asked for but CUDA is not available; "
                                   "use device=cpu (gloo) or auto")
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shutdown(owned: bool) -> None:
    """Destroy the process group if :func:`init_from_env` created it (``owned``)."""
    if owned and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """A process group with more than one process is active (one process: today's path)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine: LOCAL_RANK (torchrun), else the global rank
    modulo the number of visible GPUs."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return rank() % count if count else rank()


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def device_for(device: torch.device) -> torch.device:
    """The device this rank trains on: a CUDA device becomes ``cuda:LOCAL_RANK``; an
    explicit other index is refused (two ranks on one GPU would deadlock nccl)."""
    if not is_distributed():
        return device
    if device.type == "cuda":
        local = local_rank()
        if device.index is not None and device.index != local:
            raise DistributedError(
                f"device {device} was asked for, but under torchrun every process uses "
                f"cuda:LOCAL_RANK (this one cuda:{local}); set device to cuda or auto "
                "(CUDA_VISIBLE_DEVICES chooses the GPUs)")
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if backend() == "nccl":
        raise DistributedError("the process group uses nccl, which needs CUDA tensors, but the "
                               f"device is {device}; use the gloo backend for CPU training")
    return device


def _comm_device() -> torch.device:
    # nccl moves CUDA tensors only; gloo is used with CPU tensors here
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" \
        else torch.device("cpu")


# -- the data partition -------------------------------------------------------------------
def shard_bounds(size: int, rank: int, world: int) -> tuple[int, int]:
    """The slice ``[lo, hi)`` of a global batch of ``size`` examples that ``rank`` of
    ``world`` trains on: contiguous, in order, sizes differing by at most one.

    A full global batch (``batch_size`` divisible by ``world``) splits into equal parts
    of ``batch_size / world``; the last, shorter batch of an epoch as evenly as it can.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    return rank * size // world, (rank + 1) * size // world


# -- collectives (no-ops in one process) --------------------------------------------------
def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if backend() == "nccl"
                               else None)
    return box[0]


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _shared_outcome(fn: Callable[[], T], everyone_after: bool) -> T | None:
    if not is_distributed():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            error = err
    shared = broadcast_object(_portable(error))
    if shared is not None:
        if error is not None:
            raise error
        raise shared
    if everyone_after and not is_main():
        result = fn()
    return result


def _portable(error: BaseException | None) -> BaseException | None:
    """``error`` if it survives pickling (to raise the same type on every rank), else a
    DistributedError with its message."""
    if error is None:
        return None
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001
        return DistributedError(f"rank 0: {type(error).__name__}: {error}")


def on_main(fn: Callable[[], T]) -> None:
    """Run ``fn`` on rank 0 only (writing files); if it raises, every rank raises the same
    error (rather than waiting forever in the next collective)."""
    _shared_outcome(fn, everyone_after=False)


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (e.g. loading data that rank 0 may
    have to download into a shared cache first); an error of rank 0 is raised on all."""
    return _shared_outcome(fn, everyone_after=True)


# -- replicas stay identical --------------------------------------------------------------
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@torch.no_grad()
def fingerprint(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An exact integer fingerprint of ``tensors``: per tensor, the sum of its bit patterns
    as integers (int64; order-independent, so every rank computes the same value for the
    same bits, whatever its threads). Equal bits give equal fingerprints; a flip of any
    bit changes it."""
    sums = []
    for t in tensors:
        bits = t.detach().contiguous().reshape(-1)
        if bits.dtype == torch.bool:
            bits = bits.to(torch.int8)
        bits = bits.view(_INT_OF_SIZE[bits.element_size()])
        sums.append(bits.sum(dtype=torch.int64))
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.int64)


def check_synchronised(tensors: Sequence[torch.Tensor]) -> bool:
    """True when every rank holds bitwise the same ``tensors`` (one small all_reduce)."""
    if not is_distributed():
        return True
    fp = fingerprint(tensors).to(_comm_device())
    both = torch.cat([fp, -fp])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)  # max(fp) and -min(fp) at once
    n = fp.numel()
    return bool(torch.equal(both[:n], -both[n:]))


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values."""
    if not is_distributed():
        return
    for t in tensors:
        if t.device == _comm_device() or backend() != "nccl":
            dist.broadcast(t, src)
        else:  # a CPU tensor (e.g. a mask kept there) through the GPU for nccl
            moved = t.to(_comm_device())
            dist.broadcast(moved, src)
            t.copy_(moved)


def reduce_stats(stats: dict) -> dict:
    """Training statistics of one epoch over all ranks: means weighted by each rank's
    ``examples``, summed counts, this rank's seconds (the ranks run in lock step)."""
    if not is_distributed():
        return stats
    means = sorted(k for k, v in stats.items() if isinstance(v, float)
                   and k not in ("seconds", "examples_per_second"))
    n = float(stats["examples"])
    values = torch.tensor([n] + [stats[k] * n for k in means], dtype=torch.float64,
                          device=_comm_device())
    dist.all_reduce(values)
    total = float(values[0])
    out = dict(stats)
    out.update({k: float(v) / max(total, 1.0) for k, v in zip(means, values[1:].tolist(),
                                                             strict=True)})
    out["examples"] = int(total)
    out["examples_per_second"] = total / stats["seconds"] if stats["seconds"] > 0 else 0.0
    return out
