"""YOLOv4-tiny through the same pipeline and commands as classification: a generated set of
real MNIST digits, global ADMM, eval, report and compare showing mAP."""

from __future__ import annotations

import json

import pytest
from conftest import DETECTION_SMALL, REPO

from admmprune.cli import main

SMALL = DETECTION_SMALL


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def test_yolov4_tiny_prunes_and_reports_map(tmp_path, digit_set, capsys):
    digits = digit_set
    run_dir = tmp_path / "run"
    assert main(["prune", "recipes/yolov4_tiny_digits.yaml", "--data-dir", str(digits),
                 "--all-percent", "80", "--run-dir", str(run_dir), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "mAP@0.5" in out and "mAP@0.5:0.95" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["metric"] == "map50"
    for phase in ("dense", "admm", "pruned"):
        assert 0 <= summary[f"{phase}_map"] <= summary[f"{phase}_map50"] <= 1
    assert summary["kept"] == summary["total"] - round(0.8 * summary["total"])
    # every convolution of yolov4-tiny but the first and the two that feed the YOLO heads
    assert len(summary["layers"]) == 18
    assert {t["name"] for t in summary["not_pruned"]} == {
        "module_list.0.conv.weight", "module_list.29.conv.weight", "module_list.36.conv.weight"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert all("test_map50" in r for r in records if r["phase"] != "resume")

    assert main(["eval", str(run_dir)]) == 0
    assert f"mAP@0.5 {100 * summary['pruned_map50']:.2f}%" in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "accuracy.png").stat().st_size > 1000


def test_compare_ranks_detection_by_map(tmp_path, digit_set):
    digits = digit_set
    out = tmp_path / "cmp"
    assert main(["compare", "recipes/yolov4_tiny_digits.yaml", "--methods", "dense,admm",
                 "--all-percent", "80", "--data-dir", str(digits), "--out", str(out),
                 *SMALL]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["metric"] for r in rows} == {"map50"}
    assert all("pruned_map50" in r for r in rows)
    assert (out / "results.md").read_text().startswith("Test map50 (%)")


def test_detector_default_exclusion_is_overridable_by_name(capsys):
    assert main(["inspect", "yolov4-tiny", "--include",
                 "[module_list.0.conv, 'module_list.1*']"]) == 0
    out = capsys.readouterr().out
    pruned, _, skipped = out.partition("not pruned")
    assert "module_list.0.conv.weight" in pruned  # named exactly: pruned
    assert "module_list.29.conv.weight" not in pruned  # not named: stays dense
