"""The commands of docs/lm-experiment.md, end to end in a tiny form: the doc's own command
lines with a 1-block model, a few steps and a small text file appended as overrides."""

from __future__ import annotations

import json
import random
import shlex

import pytest
import yaml

from admmprune.cli import main

TINY = ["--model-args", "{n_layer: 1, n_embd: 16, n_head: 2, context: 16}",
        "--train-subset", "48", "--test-subset", "16", "--batch-size", "16",
        "--steps-per-epoch", "2", "--dense-epochs", "1", "--k-step", "1",
        "--retraining-epochs", "1", "--calibration-batches", "1", "--seeds", "0",
        "--no-progress"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def doc_commands() -> list[list[str]]:
    from conftest import REPO

    text = (REPO / "docs/lm-experiment.md").read_text()
    return [shlex.split(line.strip())[1:] for line in text.splitlines()
            if line.strip().startswith("admmprune ")]


def test_the_documented_commands_run_on_a_tiny_model(tmp_path, capsys):
    commands = doc_commands()
    compares = [c for c in commands if c[0] == "compare" and "runs/lm" in c]
    assert len(compares) == 4 and all("recipes/gpt_pystdlib.yaml" in c for c in compares)
    split = [c for c in commands if c[0] == "compare" and "runs/lm-split" in c]
    assert len(split) == 1 and "--k-step" in split[0]
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    corpus.write_text(" ".join(rng.choice(["def", "x", "=", "(", ")", ":", "\n", "return"])
                           for _ in range(800)))
    out = tmp_path / "lm"
    # the 90% group and the 2:4 group (the 50% and 70% ones differ only in --all-percent)
    ninety = next(c for c in compares if "90" in c)
    two_four = next(c for c in compares if "admm-nm" in c[c.index("--methods") + 1])
    for command in (ninety, two_four):
        command = [str(out) if arg == "runs/lm" else arg for arg in command]
        assert main([*command, *TINY, "--data-dir", str(corpus)]) == 0
    rows = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "dense-retrain", "admm", "layerwise", "magnitude",
                       "uniform-magnitude", "wanda", "wanda-retrain", "sparsegpt",
                       "sparsegpt-retrain", "admm-nm", "wanda-nm", "wanda-nm-retrain",
                       "sparsegpt-nm"}
    assert all(r["metric"] == "bpb" and r["higher_is_better"] is False for r in rows)
    assert {r["all_percent"] for r in rows if r["method"].endswith("nm")} == {50.0}
    assert "lower is better" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_compression.png").is_file()
    # the budget-split sensitivity: its own --out, the dense model trained there again
    split_out = tmp_path / "lm-split"
    command = [str(split_out) if arg == "runs/lm-split" else arg for arg in split[0]]
    tiny = [arg for i, arg in enumerate(TINY)  # the split's own k_step and retraining
            if not {arg, TINY[i - 1]} & {"--k-step", "--retraining-epochs"}]
    assert main([*command, *tiny, "--data-dir", str(corpus)]) == 0
    admm = next(r for r in json.loads((split_out / "results.json").read_text())
                if r["method"] == "admm")
    assert admm["all_percent"] == 90.0 and admm["metric"] == "bpb"
    saved = yaml.safe_load((split_out / "admm-seed0-p90" / "config.yaml").read_text())
    assert (saved["k_step"], saved["retraining_epochs"]) == (2, 4)

    reports = [c for c in commands if c[0] == "report"]
    assert reports and all("--by-block" in c for c in reports)
    capsys.readouterr()
    report = [str(out / "admm-seed0-p90") if arg.startswith("runs/lm/") else arg
              for arg in reports[0]]
    assert main(report) == 0
    text = capsys.readouterr().out
    assert "kept weights per block and kind" in text
    assert all(kind in text for kind in ("q", "k", "v", "attn out", "mlp in", "mlp out"))
