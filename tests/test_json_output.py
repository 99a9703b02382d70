"""Every JSON file and line admmprune writes is valid JSON: a NaN or infinite number is written
as null and marked in the object that holds it (``"non_finite"``), never as bare ``NaN``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from admmprune.cli import main
from admmprune.jsonfile import NON_FINITE, dumps, loads
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.runs.report import read_summary

SRC = Path(__file__).resolve().parents[1] / "src" / "admmprune"


def strict(text: str):
    """json.loads as a strict parser (RFC 8259) sees it: bare NaN/Infinity are errors."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_null_and_marked_and_read_back():
    value = {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf, "e": 2},
             "rows": [{"x": math.nan}], "ok": 1.5}
    text = dumps(value)
    parsed = strict(text)
    assert parsed["a"] is None and parsed["b"] == [1.0, None]
    assert parsed[NON_FINITE] == {"a": "NaN", "b[1]": "Infinity"}
    assert parsed["c"] == {"d": None, "e": 2, NON_FINITE: {"d": "-Infinity"}}
    assert parsed["rows"] == [{"x": None, NON_FINITE: {"x": "NaN"}}]
    back = loads(text)
    assert math.isnan(back["a"]) and back["b"] == [1.0, math.inf]
    assert back["c"] == {"d": -math.inf, "e": 2} and math.isnan(back["rows"][0]["x"])
    assert NON_FINITE not in back and back["ok"] == 1.5
    assert strict(dumps({"plain": 1})) == {"plain": 1}  # nothing added when all is finite
    with pytest.raises(ValueError, match="outside any JSON object"):
        dumps([math.nan])
    with pytest.raises(ValueError, match=NON_FINITE):
        dumps({"x": math.nan, NON_FINITE: 1})


def test_no_module_writes_json_but_through_the_one_writer():
    writers = re.compile(r"\bjson\.dumps?\(")
    found = [f"{path.relative_to(SRC)}:{n}" for path in sorted(SRC.rglob("*.py"))
             if path.name != "jsonfile.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if writers.search(line)]
    assert not found, found


def _data() -> dict:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (48,), generator=g)
    x = torch.randn(48, 1, 4, 4, generator=g)
    test_x = x[32:].clone()
    test_x[3] = float("nan")  # one test image holds NaN: the test loss is NaN
    return {"train": TensorDataset(x[:32], y[:32]), "test": TensorDataset(test_x, y[32:]),
            "num_classes": 3}


def test_nan_in_the_test_inputs_leaves_valid_json_and_a_warning(tmp_path, capsys):
    config = load_config(None, dict(batch_size=16, dense_epochs=1, k_step=1,
                                    retraining_epochs=1, all_percent=50.0, workers=0,
                                    progress=False, device="cpu", threads=1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    run_dir = tmp_path / "run"
    run_pipeline(config, run_dir=run_dir, model=model, data=_data())
    assert "test loss is nan" in capsys.readouterr().err.lower()

    summary = strict((run_dir / "summary.json").read_text())
    assert summary["dense_loss"] is None and summary["pruned_loss"] is None
    assert summary[NON_FINITE]["dense_loss"] == "NaN"
    assert isinstance(summary["pruned_accuracy"], float)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = strict(line)
        if "test_loss" in record:
            assert record["test_loss"] is None and record[NON_FINITE]["test_loss"] == "NaN"
    assert math.isnan(read_summary(run_dir)["dense_loss"])  # read back as the number it was

    assert main(["report", str(run_dir), "--json", "--no-plots"]) == 0
    printed = strict(capsys.readouterr().out)
    assert printed[NON_FINITE]["pruned_loss"] == "NaN"
