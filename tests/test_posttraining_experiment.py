"""The commands of docs/posttraining-experiment.md, end to end in a tiny form: the doc's own
lines with a 1-block model, a few steps and a small text file."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

from admmprune.cli import main

TINY_TRAIN = ["--model-args", "{n_layer: 1, n_embd: 16, n_head: 2, context: 16}",
              "--train-subset", "48", "--test-subset", "16", "--batch-size", "16",
              "--steps-per-epoch", "2", "--dense-epochs", "1", "--no-progress"]


def doc_lines() -> list[str]:
    from conftest import REPO

    text = (REPO / "docs/posttraining-experiment.md").read_text()
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith(("admmprune ", "python benchmarks/"))]


def test_the_documented_commands_run_on_tiny_models(tmp_path, capsys):
    from conftest import REPO

    lines = doc_lines()
    assert [line.split()[1] for line in lines] == [
        "train", "export", "train", "export", "benchmarks/oneshot_grid.py", "oneshot",
        "benchmarks/oneshot_grid.py", "oneshot", "benchmarks/oneshot_grid.py"]
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    corpus.write_text(" ".join(rng.choice(["def", "x", "=", "(", ")", ":", "\n", "return"])
                           for _ in range(800)))
    data = ["--data-dir", str(corpus)]

    def here(word: str) -> str:
        return str(tmp_path / word) if word.startswith(("runs/", "models/")) else word

    for line in lines:
        argv = [here(w) for w in shlex.split(line)]
        if argv[0] == "admmprune" and argv[1] == "train":
            small = TINY_TRAIN if "gpt" in line else [
                "--model-args", "{n_layer: 1, n_embd: 16, n_head: 2, n_kv_head: 1, "
                "intermediate: 24, context: 16}", *TINY_TRAIN[2:]]
            assert main([*argv[1:], *small, *data]) == 0, capsys.readouterr().err
            assert "--dense-epochs" in line and "16" in line  # the doc's budget
        elif argv[0] == "admmprune" and argv[1] == "export":
            assert main(argv[1:]) == 0, capsys.readouterr().err
            out = Path(argv[argv.index("--out") + 1])
            assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        elif argv[0] == "python" and "units" in line:  # the structured grids
            recovered = "--recover-steps" in argv
            cmd = [sys.executable, str(REPO / argv[1]), *argv[2:], "--percents", "50",
                   "--seeds", "0", "--calibration", "4", "--test-windows", "4",
                   "--batch-size", "4", *data, *(["--recover-steps", "2"] if recovered else [])]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "OMP_NUM_THREADS": "1",
                                       "PYTHONPATH": str(REPO / "src")})
            assert done.returncode == 0, done.stderr[-3000:]
            grid = tmp_path / ("runs/grid-units-rec" if recovered else "runs/grid-units")
            cells = [json.loads(x) for x in (grid / "cells.jsonl").read_text().splitlines()]
            # 2 models x the structured methods at 50%
            assert len(cells) == 2 * (2 if recovered else 4)
            assert "units:uniform" in (grid / "table.md").read_text()
        elif argv[0] == "python":
            cmd = [sys.executable, str(REPO / argv[1]), *argv[2:], "--percents", "50",
                   "--seeds", "0", "--methods", "sparsegpt:uniform,admm:uniform,admm:global",
                   "--calibration", "4", "--test-windows", "4", "--iterations", "2",
                   "--batch-size", "4", *data]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "OMP_NUM_THREADS": "1",
                                       "PYTHONPATH": str(REPO / "src")})
            assert done.returncode == 0, done.stderr[-3000:]
            cells = [json.loads(x) for x in
                     (tmp_path / "runs/oneshot-grid/cells.jsonl").read_text().splitlines()]
            # 2 models x 2 targets (50%, 2:4): 3 cells at 50%, the uniform ones at 2:4
            assert len(cells) == 2 * (3 + 2)
            assert "gpt-pystdlib" in (tmp_path / "runs/oneshot-grid/table.md").read_text()
        elif "--structured" in argv:
            assert main([*argv[1:], *data, "--calibration", "4", "--batch-size", "4",
                         "--test-windows", "4", "--no-progress"]) == 0
            out = tmp_path / "runs/llama-units25"
            record = json.loads((out / "oneshot.json").read_text())
            assert record["structured"] and (out / "model.onnx").is_file()
        else:
            assert main([*argv[1:], *data, "--calibration", "4", "--batch-size", "4",
                         "--test-windows", "4", "--iterations", "2", "--no-progress"]) == 0
            record = json.loads((tmp_path / "runs/llama-admm70/oneshot.json").read_text())
            assert record["allocation"] == "global" and record["pruned_bpb"] > 0
