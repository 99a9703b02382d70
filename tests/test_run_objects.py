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


class _Dicts(torch.utils.data.Dataset):
    """Items as dicts, as some libraries give them."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        x, y = self.pairs[i]
        return {"image": x, "label": y}


class _Named(_Dicts):
    """Labels as class names."""

    def __getitem__(self, i):
        x, y = self.pairs[i]
        return x, f"class{int(y)}"


def _bad_data(case: str) -> dict:
    good = splits()
    train, test = good["train"], good["test"]
    x, y = train.tensors
    tx, ty = test.tensors
    if case == "test shape":
        return {"train": train, "test": TensorDataset(tx[:, :, :20, :20], ty)}
    if case == "labels out of range":
        return {"train": TensorDataset(x, y + 1), "test": test}
    if case == "dict items":
        return {"train": _Dicts(train), "test": _Dicts(test)}
    if case == "triples":
        return {"train": TensorDataset(x, y, torch.ones(len(y))), "test": test}
    if case == "float labels":
        return {"train": TensorDataset(x, y.float()), "test": test}
    if case == "string labels":
        return {"train": _Named(train), "test": test}
    raise AssertionError(case)


@pytest.mark.parametrize("case, message", [
    ("test shape", r"'test' split does not fit the model.*inputs of shape \(16, 1, 20, 20\)"
                   r".*the 'train' split's are \(16, 1, 28, 28\)"),
    ("labels out of range", r"'train' split: label 10 is out of range: the model outputs 10 "
                            r"class scores \(labels 0\.\.9\)"),
    ("dict items", r"'train' split: an item is a dict \(keys 'image', 'label'\); a run needs "
                   r"\(input, target\) pairs"),
    ("triples", r"'train' split: an item has 3 parts; a run needs \(input, target\) pairs"),
    ("float labels", r"'train' split: labels must be integer class indices.*got torch.float32"),
    ("string labels", r"'train' split: labels must be integer class indices.*got a tuple of str"),
])
def test_data_that_does_not_fit_the_model_is_refused_before_training(tmp_path, monkeypatch,
                                                                   case, message):
    import admmprune.runs.pipeline as pipeline
    from admmprune.data import DatasetError

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "train_epoch", never)
    with pytest.raises(DatasetError, match=message):
        run_pipeline(config(), run_dir=tmp_path / "run", model=seeded_model(),
                     data=_bad_data(case))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_model_with_fewer_outputs_than_the_data_has_classes_is_refused(tmp_path):
    from admmprune.data import DatasetError

    data = {**splits(), "num_classes": 10}
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2))
    with pytest.raises(DatasetError, match=r"the model outputs 2 class scores but the data "
                                           r"has 10 classes"):
        run_pipeline(config(), run_dir=tmp_path / "run", model=model, data=data)


def test_the_check_leaves_the_run_bitwise_unchanged(tmp_path, monkeypatch):
    # the one-batch check draws nothing from the random streams the run uses (dropout here)
    import admmprune.runs.pipeline as pipeline

    def dropout_model() -> nn.Module:
        torch.manual_seed(SEED)
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.Dropout(0.5),
                             nn.ReLU(), nn.Linear(32, 10))

    run_pipeline(config(), run_dir=tmp_path / "checked", model=dropout_model(), data=splits())
    monkeypatch.setattr(pipeline, "check_data", lambda *args, **kwargs: None)
    run_pipeline(config(), run_dir=tmp_path / "unchecked", model=dropout_model(),
                 data=splits())
    a = torch.load(tmp_path / "checked" / "model.pt")
    b = torch.load(tmp_path / "unchecked" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
