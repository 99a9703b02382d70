"""Data-parallel training: N processes see the global batches of one process, split; two
gloo processes on the CPU end with the masks and (within float rounding) the weights of one
process, identical on both ranks; resume works under DDP; torchrun drives the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO
from torch.utils.data import Dataset

import admmprune.runs.pipeline as pipeline
from admmprune.data.augment import RandomShift
from admmprune.data.loader import StreamBatches
from admmprune.data.mnist import TensorBatches
from admmprune.distributed import fingerprint, shard_bounds
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline

# SGD: rounding differences between one and two processes stay at rounding size (Adam's
# normalisation can blow tiny differences of near-zero gradients up to a learning rate).
# 203 examples: the last global batch of 11 splits 5 / 6, so its loss needs weighting.
SETTINGS = dict(dataset="synthetic", model="lenet5", train_subset=203, test_subset=64,
                batch_size=32, dense_epochs=1, all_percent=95.0, k_step=2,
                retraining_epochs=2, progress=False, seed=7, augment_shift=2, threads=1,
                optimizer="sgd", learning_rate=0.05)


# -- the partition ------------------------------------------------------------------------
def test_shard_bounds_partition_every_batch_in_order():
    for size in range(1, 40):
        for world in (1, 2, 3, 4):
            parts = [shard_bounds(size, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == size
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1
    assert shard_bounds(64, 1, 4) == (16, 32)  # a full batch: batch_size / world each


def _epoch(batches, epoch):
    batches.set_epoch(epoch)
    return list(batches)


@pytest.mark.parametrize("world", [2, 3])
def test_tensor_batches_shards_are_the_one_process_batches_split(world):
    x = torch.randn(103, 1, 28, 28)
    y = torch.arange(103)

    def make():
        return TensorBatches(x, y, 12, shuffle=True, seed=4, transform=RandomShift(2, 4))

    whole = make()
    shards = [make() for _ in range(world)]
    for r, batches in enumerate(shards):
        batches.shard(r, world)
    for epoch in (0, 5):
        expected = _epoch(whole, epoch)
        parts = [_epoch(b, epoch) for b in shards]
        assert all(len(p) == len(expected) == len(b) for p, b in zip(parts, shards,
                                                                      strict=True))
        for step, (ex, ey) in enumerate(expected):
            xs = torch.cat([p[step][0] for p in parts])
            ys = torch.cat([p[step][1] for p in parts])
            assert torch.equal(ys, ey) and torch.equal(xs, ex)  # augmentation included
            assert shards[0].global_batch_size(step) == len(ey)
    assert not torch.equal(_epoch(whole, 0)[0][1], _epoch(whole, 1)[0][1])


def test_a_last_batch_smaller_than_the_world_is_dropped_and_odd_batches_refused():
    batches = TensorBatches(torch.randn(33, 2), torch.arange(33), 16, shuffle=False)
    assert len(batches) == 3
    batches.shard(0, 2)
    assert len(batches) == 2  # one example left over: one rank would get nothing
    assert [len(y) for _, y in batches] == [8, 8]
    with pytest.raises(ValueError, match="multiple of 3"):
        batches.shard(0, 3)


class Items(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return torch.full((2,), float(index)), index


def test_stream_batches_shards_are_the_one_process_batches_split():
    whole = StreamBatches(Items(50), 8, shuffle=True, seed=2)
    shards = [StreamBatches(Items(50), 8, shuffle=True, seed=2) for _ in range(2)]
    for r, batches in enumerate(shards):
        batches.shard(r, 2)
    expected = _epoch(whole, 3)
    parts = [_epoch(b, 3) for b in shards]
    assert len(expected) == len(parts[0]) == len(parts[1]) == 7
    for step, (_, ey) in enumerate(expected):
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), ey)
        assert len(parts[0][step][1]) == len(ey) // 2


def test_fingerprint_sees_one_flipped_bit():
    tensors = [torch.randn(100, 10), torch.ones(5, dtype=torch.bool)]
    before = fingerprint(tensors)
    tensors[0].view(torch.int32)[3, 4] ^= 1
    assert not torch.equal(before, fingerprint(tensors))


# -- two processes ------------------------------------------------------------------------
def _worker(rank: int, world: int, store: str, out: str) -> None:
    """One rank: refuses an indivisible global batch, is interrupted (Ctrl-C on every rank)
    in ADMM iteration 2, resumes, and saves what it holds at the end."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world)
    try:
        try:
            run_pipeline(load_config(None, {**SETTINGS, "batch_size": 33}),
                         run_dir=f"{out}/odd")
        except ConfigError as err:
            with open(f"{out}/error{rank}.txt", "w") as handle:
                handle.write(str(err))
        real_epoch, real_close = pipeline.train_epoch, pipeline.Run.close
        epochs = []

        def interrupting(*args, **kwargs):
            epochs.append(1)
            if len(epochs) == 3:  # dense, ADMM 1, then Ctrl-C in ADMM 2
                raise KeyboardInterrupt
            return real_epoch(*args, **kwargs)

        def close(self):
            pruner = self.pruner
            torch.save({"model": self.model.state_dict(), "z": pruner.z, "u": pruner.u,
                        "masks": pruner.masks, "rho": pruner.rho,
                        "data_epoch": self.progress.data_epoch}, f"{out}/rank{rank}.pt")
            real_close(self)

        pipeline.train_epoch = interrupting
        pipeline.Run.close = close
        try:
            run_pipeline(load_config(None, SETTINGS), run_dir=f"{out}/run")
        except KeyboardInterrupt:
            pass
        pipeline.train_epoch = real_epoch
        run_pipeline(load_config(None, SETTINGS), run_dir=f"{out}/run", resume=True)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_and_resume_under_ddp(tmp_path):
    one = tmp_path / "one"
    run_pipeline(load_config(None, SETTINGS), run_dir=one)

    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert "multiple of 2" in (tmp_path / f"error{rank}.txt").read_text()
    assert not (tmp_path / "odd").exists()

    # every rank holds the same weights, Z, U, masks and rho, bit for bit
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in r0["model"]:
        assert torch.equal(r0["model"][name], r1["model"][name]), name
    for key in ("z", "u", "masks"):
        assert all(torch.equal(a, b) for a, b in zip(r0[key], r1[key], strict=True)), key
    assert r0["rho"] == r1["rho"] and r0["data_epoch"] == r1["data_epoch"] == 5

    # and the result of one process with the same global batch
    two = tmp_path / "run"
    single, double = torch.load(one / "model.pt"), torch.load(two / "model.pt")
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=0, atol=1e-6)
        assert torch.equal(double[name] != 0, single[name] != 0), name  # same masks
    admm_one, admm_two = (torch.load(d / "admm.pt")["pruner"] for d in (one, two))
    assert all(torch.equal(a, b) for a, b in zip(admm_one["masks"], admm_two["masks"],
                                                  strict=True))
    assert admm_one["rho"] == admm_two["rho"]

    # torchrun -m admmprune: the CLI path, bitwise the run the Python API resumed above
    cli = tmp_path / "cli"
    args = [a for k, v in SETTINGS.items() if k != "progress"
            for a in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "admmprune", "prune", *args, "--no-progress", "--run-dir", str(cli)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compression") == 1  # the summary, printed by rank 0 only
    by_cli = torch.load(cli / "model.pt")
    for name in by_cli:
        assert torch.equal(by_cli[name], double[name]), name
