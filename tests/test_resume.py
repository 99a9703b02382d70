"""An interrupted and resumed run sees the batches of the uninterrupted run, epoch by epoch,
and ends with the same weights."""

from __future__ import annotations

import pytest
import torch

import admmprune.runs.pipeline as pipeline
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline

REAL_TRAIN_EPOCH = pipeline.train_epoch


def config(**overrides):
    base = dict(dataset="synthetic", model="lenet5", train_subset=192, test_subset=64,
                batch_size=32, dense_epochs=1, all_percent=95.0, k_step=2,
                retraining_epochs=2, progress=False, seed=5, augment_shift=2)
    return load_config(None, {**base, **overrides})


def recording(monkeypatch, seen: list, interrupt_at: int | None = None):
    """Wrap train_epoch: record each epoch's label order; raise KeyboardInterrupt when the
    ``interrupt_at``-th epoch (0-based) is half done, as a Ctrl-C would."""
    real = REAL_TRAIN_EPOCH

    def spy(model, batches, optimizer, **kwargs):
        epoch = len(seen)
        labels = []

        class Recorded:
            def __len__(self):
                return len(batches)

            def __iter__(self):
                for i, (x, y) in enumerate(batches):
                    if epoch == interrupt_at and i == 2:
                        raise KeyboardInterrupt
                    labels.append(y.clone())
                    yield x, y

        stats = real(model, Recorded(), optimizer, **kwargs)
        seen.append(torch.cat(labels))
        return stats

    monkeypatch.setattr(pipeline, "train_epoch", spy)


@pytest.mark.parametrize("interrupt_at", [2, 4])  # an ADMM iteration, a retraining epoch
def test_resume_sees_the_same_batches_and_ends_with_the_same_weights(
        tmp_path, monkeypatch, interrupt_at):
    straight: list = []
    recording(monkeypatch, straight)
    run_pipeline(config(), run_dir=tmp_path / "straight")

    first: list = []
    recording(monkeypatch, first, interrupt_at=interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(), run_dir=tmp_path / "resumed")
    assert len(first) == interrupt_at
    resumed: list = []
    recording(monkeypatch, resumed)
    run_pipeline(config(), run_dir=tmp_path / "resumed", resume=True)

    epochs = first + resumed
    assert len(epochs) == len(straight) == 1 + 2 + 2
    for a, b in zip(epochs, straight, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(straight[0], straight[1])  # the order does change per epoch
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_other_data_but_not_the_same_data_moved(tmp_path, monkeypatch,
                                                                 code_corpus):
    """--resume RUN --data-dir OTHER: data_dir may change (the data moved), the data may
    not. The text splits' checksums are recorded with the run and compared."""
    from dataclasses import replace

    from conftest import tiny_gpt_config

    from admmprune.runs.rundir import RunError

    config = tiny_gpt_config(code_corpus, pruning="admm", retraining_epochs=1)
    run_dir = tmp_path / "run"
    recording(monkeypatch, [], interrupt_at=1)  # in the W-step, after the dense checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run_dir=run_dir)
    monkeypatch.setattr(pipeline, "train_epoch", REAL_TRAIN_EPOCH)
    other = tmp_path / "other.txt"
    other.write_text(code_corpus.read_text().replace("def", "fed"))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(RunError, match=r"other data.*train.*changed"):
        run_pipeline(replace(config, data_dir=str(other)), run_dir=run_dir, resume=True)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    moved = tmp_path / "moved" / "corpus.txt"
    moved.parent.mkdir()
    moved.write_bytes(code_corpus.read_bytes())
    summary = run_pipeline(replace(config, data_dir=str(moved)), run_dir=run_dir, resume=True)
    assert summary["complete"]
