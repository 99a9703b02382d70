"""benchmarks/oneshot_grid.py's reading of finished cells: the targets it checks and
``--report-only``, which must run no cell."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO


def grid_module():
    spec = importlib.util.spec_from_file_location("oneshot_grid",
                                                  REPO / "benchmarks" / "oneshot_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(method: str, target: str, seed: int, gap: float, seconds: float = 10.0,
         rss: float = 500.0) -> dict:
    return {"model": "nowhere/m", "target": target, "method": method, "seed": seed,
            "dense_bpb": 1.0, "pruned_bpb": 1.0 + gap, "seconds": seconds + 5,
            "prune_seconds": seconds, "peak_rss_mb": rss, "blocks": [0.3, 0.3],
            "layers": {"a.weight": 0.2, "b.weight": 0.4}}


CELLS = [cell("admm:uniform", "90", 0, 1.0), cell("admm:owl", "90", 0, 1.5),
         cell("sparsegpt:uniform", "90", 0, 3.0), cell("wanda:uniform", "90", 0, 4.0),
         cell("admm:global", "90", 0, 0.85, seconds=60.0, rss=800.0)]


def test_the_targets_are_checked_against_the_same_seeds_cells():
    lines = grid_module().target_checks(CELLS)
    assert lines[0] == "m seed 0: 2 of 5 targets met"
    assert "  MISS 90% vs uniform solver 0.85x (<= 0.8x)" in lines  # 0.85 > 0.8
    assert "  met  90% vs OWL solver" in lines
    assert "  MISS 90% time 6.0x SparseGPT (<= 5x)" in lines
    assert "  MISS 90% peak RSS 1.60x SparseGPT (<= 1.5x)" in lines


def test_report_only_runs_no_cell(tmp_path, capsys):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CELLS))
    # the model directory does not exist: running any cell would fail
    assert grid_module().main(["nowhere/m", "--percents", "90,80", "--nm", "--report-only",
                               "--out", str(out), "--plot", "90"]) == 0
    printed = capsys.readouterr().out
    assert "+0.8500 (0.85x)" in printed and "2 of 5 targets met" in printed
    assert (out / "allocation-90.png").stat().st_size > 0
    assert len((out / "cells.jsonl").read_text().splitlines()) == len(CELLS)
