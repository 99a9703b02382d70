"""Shared fixtures. Real MNIST comes from $ADMMPRUNE_DATA_DIR (test.sh sets it to
../shared/data/mnist when that exists); tests that need it fail, not skip, without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def real_mnist_dir() -> Path | None:
    candidates = [os.environ.get("ADMMPRUNE_DATA_DIR"), REPO.parent / "shared/data/mnist"]
    for candidate in candidates:
        for folder in (Path(candidate), Path(candidate) / "mnist") if candidate else ():
            if (folder / "t10k-labels-idx1-ubyte.gz").exists():
                return folder
    return None


@pytest.fixture
def mnist_dir() -> Path:
    found = real_mnist_dir()
    if found is None:
        pytest.fail("real MNIST not found: set ADMMPRUNE_DATA_DIR to a directory holding the "
                    "four IDX files (run the tests through ./test.sh)")
    return found


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests are small; more threads only add contention on a 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fashion_dir() -> Path:
    candidates = [os.environ.get("ADMMPRUNE_DATA_DIR"), REPO.parent / "shared/data"]
    for candidate in candidates:
        folder = Path(candidate) / "fashion-mnist" if candidate else None
        if folder is not None and (folder / "t10k-labels-idx1-ubyte.gz").exists():
            return folder
    pytest.fail("real Fashion-MNIST not found: set ADMMPRUNE_DATA_DIR to a directory holding "
                "fashion-mnist/ (run the tests through ./test.sh)")


# Command-line overrides that make a yolov4-tiny detection run take seconds.
DETECTION_SMALL = ["--image-size", "64", "--batch-size", "8", "--workers", "0",
                   "--dense-epochs", "1", "--k-step", "1", "--retraining-epochs", "1",
                   "--no-progress", "--threads", "1", "--hsv", "0", "--scale-jitter", "0"]


@pytest.fixture(scope="session")
def digit_set(tmp_path_factory) -> Path:
    """A small detection set of real MNIST digits (24 training, 8 validation canvases)."""
    from admmprune.cli import main

    found = real_mnist_dir()
    if found is None:
        pytest.fail("real MNIST not found: set ADMMPRUNE_DATA_DIR (run the tests through "
                    "./test.sh)")
    out = tmp_path_factory.mktemp("det") / "digits"
    assert main(["make-detection-set", "--out", str(out), "--mnist-dir", str(found),
                 "--train-images", "24", "--val-images", "8", "--canvas", "64",
                 "--seed", "3"]) == 0
    return out


def make_run_dir(parent: Path, state: dict, test_subset: int = 64) -> Path:
    """A finished-looking LeNet-5 run directory on synthetic data: config.yaml + model.pt
    holding ``state`` (what export, shrink and report read)."""
    import yaml

    run = parent / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"model": "lenet5", "dataset": "synthetic", "train_subset": 64,
         "test_subset": test_subset, "device": "cpu", "progress": False}))
    torch.save(state, run / "model.pt")
    return run


@pytest.fixture
def interrupt_training(monkeypatch):
    """``interrupt_training(n)``: the pipeline's n-th training epoch raises KeyboardInterrupt
    (a Ctrl-C); ``interrupt_training(None)`` lets every epoch run again."""
    import admmprune.runs.pipeline as pipeline

    real = pipeline.train_epoch

    def arm(call: int | None) -> None:
        if call is None:
            monkeypatch.setattr(pipeline, "train_epoch", real)
            return
        calls = []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, "train_epoch", interrupted)

    return arm


@pytest.fixture(scope="session")
def code_corpus(tmp_path_factory) -> Path:
    """A small generated text of Python-like words (1,500 of them), for language-model runs."""
    import random

    rng = random.Random(0)
    words = ["def", "return", "self", "import", "class", "for", "in", "if", "x", "y", "=",
             "(", ")", ":", "\n", "    "]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(1500)))
    return path
