"""The callback examples, run tiny (the callback benchmark: tests/test_benchmarks_smoke.py)."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def load(relative: str):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3],
                                                  REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_example_prunes_to_the_exact_budget():
    result = load("examples/lightning_module.py").main(tiny=True, all_percent=95.0)
    assert result["kept"] == result["total"] - round(0.95 * result["total"])
    assert result["accuracy"] > 0.2  # chance is 0.1


def test_huggingface_example_prunes_the_conv1d_weights_to_the_exact_budget(tmp_path):
    result = load("examples/huggingface_gpt2.py").main(tiny=True, all_percent=80.0,
                                                       output_dir=str(tmp_path))
    assert result["kept"] == result["total"] - round(0.8 * result["total"])
    assert result["loss"] < 4.0  # ln(64) = 4.16 is a uniform guess

