"""Shared fixtures. Real MNIST (and Fashion-MNIST) is found the way run.sh finds it:
$ADMMPRUNE_DATA_DIR, else ../shared/data next to the clone (scripts/env.sh), else the cache
~/.cache/admmprune (or $ADMMPRUNE_CACHE_DIR), else a download into that cache with checksums.
Tests that need it fail, not skip, when none of these works."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

import admmprune.data.mnist as mnist_module
from admmprune.data import (
    FASHION_MNIST,
    IDX_SPECS,
    MNIST,
    DatasetError,
    IDXSpec,
    default_cache_dir,
    find_mnist,
)

REPO = Path(__file__).resolve().parents[1]
# a run of the default recipe on generated data in a second: the CLI tests' smallest job
TINY_SYNTHETIC = ["--dataset", "synthetic", "--train-subset", "128", "--test-subset", "64",
                  "--dense-epochs", "1", "--k-step", "1", "--retraining-epochs", "1",
                  "--no-progress", "--threads", "1", "--all-percent", "90"]
SHARED_DATA = REPO.parent / "shared" / "data"  # the project's machines: offline, no download


def real_idx_dir(spec: IDXSpec = MNIST, shared: Path = SHARED_DATA) -> Path | None:
    """The folder holding ``spec``'s four IDX files, or None.

    Args:
        spec: the IDX set (MNIST or FASHION_MNIST).
        shared: the data folder scripts/env.sh uses when $ADMMPRUNE_DATA_DIR is unset.

    Returns:
        The folder; None when the configured location lacks the files (a location named on
        purpose is not passed over) or when the download failed.
    """
    configured = os.environ.get("ADMMPRUNE_DATA_DIR")
    if not configured and (shared / "mnist").is_dir():
        configured = str(shared)
    try:
        return find_mnist(configured or default_cache_dir(spec), spec)
    except DatasetError:
        if configured:
            return None
    try:  # looked up at call time, so a test can stand in for the network
        return Path(mnist_module.download_mnist(default_cache_dir(spec), spec=spec))
    except (DatasetError, OSError):
        return None


@functools.cache
def _real_dir(spec_name: str) -> Path | None:
    # Looked up once, with the environment of the first caller: test modules that clear
    # $ADMMPRUNE_DATA_DIR or point the cache elsewhere must not start a download.
    return real_idx_dir(IDX_SPECS[spec_name])


def real_mnist_dir() -> Path | None:
    return _real_dir(MNIST.name)


def _not_found(title: str) -> str:
    return (f"real {title} not found: $ADMMPRUNE_DATA_DIR, {SHARED_DATA}, the cache "
            f"{default_cache_dir().parent} and the download all failed; set "
            "ADMMPRUNE_DATA_DIR to a directory holding the IDX files, or allow the download")


# Session scope: set up before any test's own (function-scoped) environment changes.
@pytest.fixture(scope="session")
def _real_mnist() -> Path | None:
    return real_mnist_dir()


@pytest.fixture(scope="session")
def _real_fashion() -> Path | None:
    return _real_dir(FASHION_MNIST.name)


@pytest.fixture
def mnist_dir(_real_mnist) -> Path:
    found = _real_mnist
    if found is None:
        pytest.fail(_not_found("MNIST"))
    return found


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests are small; more threads only add contention on a 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fashion_dir(_real_fashion) -> Path:
    found = _real_fashion
    if found is None:
        pytest.fail(_not_found("Fashion-MNIST"))
    return found


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
        pytest.fail(_not_found("MNIST"))
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


def tiny_gpt_config(corpus: Path, **overrides):
    """A one-block GPT on ``corpus`` pruned once by a calibrated method (Wanda by default),
    without retraining: the recipe of the Wanda and SparseGPT pipeline tests."""
    from admmprune.runs.config import load_config

    base = dict(model="gpt", model_args={"n_layer": 1, "n_embd": 16, "n_head": 2,
                                         "context": 16},
                dataset="text", task="language-modeling", data_dir=str(corpus),
                include=["*.c_attn", "*.c_proj", "*.c_fc"], train_subset=64, test_subset=16,
                batch_size=16, dense_epochs=1, all_percent=75.0, k_step=1, pruning="wanda",
                calibration_batches=2, retraining_epochs=0, progress=False, threads=1)
    return load_config(None, {**base, **overrides})


@pytest.fixture
def in_repo(monkeypatch) -> Path:
    """The repository as the working directory (recipes/ resolves as in the README)."""
    monkeypatch.chdir(REPO)
    return REPO


def tiny_llama() -> torch.nn.Module:
    """A 2-block Llama with grouped-query attention (4 query heads, 2 key-value heads),
    width 32, MLP 48, seeded (needs transformers)."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2() -> torch.nn.Module:
    """A 2-block GPT-2 (Conv1D weights), width 32, 4 heads, seeded (needs transformers)."""
    import transformers

    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=32)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()
