"""run_pipeline with the caller's objects: model=, data=, task= instead of names."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from admmprune.models import create_model
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.runs.rundir import RunError
from admmprune.tasks import create_task

SEED = 4


def splits() -> dict:
    g = torch.Generator().manual_seed(11)
    y = torch.randint(10, (64,), generator=g)
    x = torch.randn(64, 1, 28, 28, generator=g) + y.view(-1, 1, 1, 1).float() / 3
    return {"train": TensorDataset(x[:48], y[:48]), "test": TensorDataset(x[48:], y[48:])}


def config(**keys):
    # the registered path: the built-in lenet5 (no dropout: the run draws no random numbers
    # after building it) on this module's data through a dataset spec
    base = dict(model="lenet5", dataset="test_run_objects:splits", batch_size=16,
                dense_epochs=1, k_step=2, retraining_epochs=1, all_percent=85.0, workers=0,
                progress=False, device="cpu", seed=SEED)
    return load_config(None, {**base, **keys})


def seeded_model(in_channels: int = 1) -> nn.Module:
    torch.manual_seed(SEED)  # what the registered path does before building the model
    return create_model("lenet5", in_channels=in_channels)


def masks(run_dir) -> list[torch.Tensor]:
    return torch.load(run_dir / "admm.pt")["pruner"]["masks"]


def test_objects_give_the_masks_of_the_registered_model(tmp_path):
    run_pipeline(config(), run_dir=tmp_path / "registered")
    summary = run_pipeline(config(), run_dir=tmp_path / "objects", model=seeded_model(),
                           data=splits(), task=create_task("classification"))
    registered, objects = masks(tmp_path / "registered"), masks(tmp_path / "objects")
    assert len(registered) == len(objects) == 4
    for a, b in zip(registered, objects, strict=True):
        assert torch.equal(a, b)
    a = torch.load(tmp_path / "registered" / "model.pt")
    b = torch.load(tmp_path / "objects" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["kept"] == summary["total"] - round(0.85 * summary["total"])
    recorded = yaml.safe_load((tmp_path / "objects" / "config.yaml").read_text())
    assert (recorded["model"], recorded["dataset"], recorded["task"]) == \
        ("<object LeNet5>", "<object dict>", "<object Classification>")


def test_resume_with_objects_needs_the_same_objects(tmp_path, interrupt_training):
    run_pipeline(config(), run_dir=tmp_path / "straight", model=seeded_model(), data=splits())
    run_dir = tmp_path / "run"
    interrupt_training(2)  # Ctrl-C in the first W-step
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(), run_dir=run_dir, model=seeded_model(), data=splits())
    interrupt_training(None)

    with pytest.raises(RunError, match=r"does not fit the checkpoint.*conv1.weight: shape "
                                       r"\(20, 3, 5, 5\) here, \(20, 1, 5, 5\) saved"):
        run_pipeline(config(), run_dir=run_dir, resume=True, model=seeded_model(in_channels=3),
                     data=splits())
    with pytest.raises(RunError, match=r"resuming cannot change.*model: '<object LeNet5>' "
                                       r"-> '<object Linear>'"):
        run_pipeline(config(), run_dir=run_dir, resume=True, model=nn.Linear(2, 2),
                     data=splits())
    from admmprune.data import DatasetError

    with pytest.raises(DatasetError, match=r"handed to run_pipeline\(data=\.\.\.\)"):
        run_pipeline(config(dataset="<object dict>"), run_dir=run_dir, resume=True,
                     model=seeded_model())

    run_pipeline(config(), run_dir=run_dir, resume=True, model=seeded_model(), data=splits())
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(run_dir / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise the uninterrupted run


def test_bad_objects_are_refused_with_a_message(tmp_path):
    from admmprune.data import DatasetError
    from admmprune.runs.config import ConfigError

    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        run_pipeline(config(), run_dir=tmp_path / "a", model=object())
    with pytest.raises(DatasetError, match="no 'test' split"):
        run_pipeline(config(), run_dir=tmp_path / "b", data={"train": splits()["train"]})
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(())

    with pytest.raises(DatasetError, match="IterableDataset"):
        run_pipeline(config(), run_dir=tmp_path / "c", data={**splits(), "train": Stream()})
