"""retraining_augment_shift: the final retraining's own random shift (e.g. none)."""

from __future__ import annotations

import pytest
import torch

import admmprune.runs.pipeline as pipeline
from admmprune.data.augment import RandomShift, replace_shift, takes_shift
from admmprune.data.mnist import TensorBatches
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline

REAL_TRAIN_EPOCH = pipeline.train_epoch


def config(**overrides):
    base = dict(dataset="synthetic", model="lenet5", train_subset=96, test_subset=32,
                batch_size=32, dense_epochs=1, all_percent=95.0, k_step=1,
                retraining_epochs=2, progress=False, seed=4, augment_shift=2)
    return load_config(None, {**base, **overrides})


def test_replace_shift_on_batches():
    x = torch.randn(8, 1, 6, 6)
    y = torch.arange(8)
    batches = TensorBatches(x, y, 4, shuffle=False, transform=RandomShift(2, seed=1))
    shifted = torch.cat([b for b, _ in batches])
    assert not torch.equal(shifted, x)
    replace_shift(batches, 0, seed=1)
    assert torch.equal(torch.cat([b for b, _ in batches]), x)
    replace_shift(batches, 2, seed=1)
    batches.set_epoch(0)
    assert torch.equal(torch.cat([b for b, _ in batches]), shifted)  # (seed, epoch) stream

    class Streaming:  # no transform to change
        pass

    assert takes_shift(batches) and not takes_shift(Streaming())
    with pytest.raises(ValueError, match="does not take a random shift"):
        replace_shift(Streaming(), 0, seed=1)
    other = TensorBatches(x, y, 4, shuffle=False, transform=lambda b: b.flip(-1))
    with pytest.raises(ValueError, match="does not take a random shift"):
        replace_shift(other, 0, seed=1)


def test_bad_values_are_refused():
    for bad in (-1, 1.5, "two"):
        with pytest.raises(ConfigError, match="retraining_augment_shift"):
            config(retraining_augment_shift=bad)


def _images(monkeypatch, seen: list):
    def spy(model, batches, optimizer, **kwargs):
        images = []

        class Recorded:
            def __len__(self):
                return len(batches)

            def __iter__(self):
                for x, y in batches:
                    images.append(x.clone())
                    yield x, y

        stats = REAL_TRAIN_EPOCH(model, Recorded(), optimizer, **kwargs)
        seen.append(torch.cat(images))
        return stats

    monkeypatch.setattr(pipeline, "train_epoch", spy)


def test_only_the_final_retraining_changes(tmp_path, monkeypatch):
    default: list = []
    _images(monkeypatch, default)
    run_pipeline(config(), run_dir=tmp_path / "default")
    same: list = []
    _images(monkeypatch, same)
    run_pipeline(config(retraining_augment_shift=2), run_dir=tmp_path / "same")
    plain: list = []
    _images(monkeypatch, plain)
    run_pipeline(config(retraining_augment_shift=0), run_dir=tmp_path / "plain")

    assert len(default) == len(plain) == 1 + 1 + 2
    for a, b in zip(default, same, strict=True):
        assert torch.equal(a, b)  # 2 is what augment_shift already gives
    for a, b in zip(default[:2], plain[:2], strict=True):
        assert torch.equal(a, b)  # dense and ADMM: still shifted
    # retraining: the unshifted training images, each exactly once per epoch
    data = pipeline.load_data(config(), torch.device("cpu"), ("train",)).train
    originals = sorted(map(tuple, data.x.flatten(1).tolist()))
    for epoch in plain[2:]:
        assert sorted(map(tuple, epoch.flatten(1).tolist())) == originals
    for epoch in default[2:]:
        assert sorted(map(tuple, epoch.flatten(1).tolist())) != originals
    a = torch.load(tmp_path / "default" / "admm.pt")["model"]
    b = torch.load(tmp_path / "plain" / "admm.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    a = torch.load(tmp_path / "default" / "model.pt")
    b = torch.load(tmp_path / "plain" / "model.pt")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_retraining_keeps_its_shift(tmp_path, monkeypatch):
    run_pipeline(config(retraining_augment_shift=0), run_dir=tmp_path / "straight")
    epochs = []

    def interrupted(model, batches, optimizer, **kwargs):
        epochs.append(1)
        if len(epochs) == 4:  # the second retraining epoch, as a Ctrl-C would
            raise KeyboardInterrupt
        return REAL_TRAIN_EPOCH(model, batches, optimizer, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(retraining_augment_shift=0), run_dir=tmp_path / "resumed")
    monkeypatch.setattr(pipeline, "train_epoch", REAL_TRAIN_EPOCH)
    run_pipeline(config(retraining_augment_shift=0), run_dir=tmp_path / "resumed",
                 resume=True)
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
