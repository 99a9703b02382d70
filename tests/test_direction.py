"""Compare, report and tradeoff rank by the task's direction: lower bits per byte is better;
every printer shows each metric in its own unit."""

import json
import re

from admmprune.runs.compare import (
    best_methods,
    format_rows,
    markdown_table,
    plot_compare,
    summarize,
    table_caption,
)
from admmprune.runs.direction import best_index, format_value, higher_is_better
from admmprune.runs.records import (
    RunResult,
    format_tradeoff,
    pool_results,
    read_results,
    write_results,
)
from admmprune.runs.report import format_summary


def fake_row(method, value, *, metric="bpb", higher=False, seed=0, percent=90.0):
    return {"method": method, "all_percent": percent, "seed": seed, "metric": metric,
            "higher_is_better": higher, "percent_metrics": [] if metric == "bpb" else [metric],
            f"dense_{metric}": 1.5, f"admm_{metric}": value, f"pruned_{metric}": value,
            "compression": 10.0, "sparsity_percent": 90.0, "train_epochs": 3,
            "kept_per_layer": {}, "wall_seconds": 1.0, "run_dir": f"/runs/{method}-{seed}"}


def test_lower_bpb_is_picked_and_labelled_best():
    rows = [fake_row("admm", 1.9), fake_row("magnitude", 2.5),
            fake_row("admm", 2.0, seed=1), fake_row("magnitude", 2.6, seed=1)]
    assert best_methods(summarize(rows)) == {((), 90.0): "admm"}
    table = markdown_table(rows)
    admm_line = next(line for line in table.splitlines() if line.startswith("| admm"))
    magnitude_line = next(line for line in table.splitlines() if line.startswith("| magnitude"))
    assert "**1.9500 ± 0.0707 (10.0x)**" in admm_line  # not a percentage, and in bold
    assert "**" not in magnitude_line
    assert "lower is better" in table_caption(rows)
    assert "%" not in table_caption(rows).split("after")[0]
    assert "lower is better" in format_rows(rows) and "1.9000" in format_rows(rows)


def test_higher_accuracy_is_still_best():
    rows = [fake_row("admm", 0.90, metric="accuracy", higher=True),
            fake_row("magnitude", 0.95, metric="accuracy", higher=True)]
    assert best_methods(summarize(rows)) == {((), 90.0): "magnitude"}
    assert "**95.00 (10.0x)**" in markdown_table(rows)
    assert "higher is better" in table_caption(rows)


def test_compare_plot_of_a_lower_is_better_metric(tmp_path):
    rows = [fake_row("admm", 1.9), fake_row("magnitude", 2.5)]
    written = plot_compare(rows, tmp_path)
    assert (tmp_path / "accuracy_vs_compression.png") in written


def test_direction_of_old_records_comes_from_the_task():
    assert higher_is_better({"task": "language-modeling"}) is False
    assert higher_is_better({"task": "classification"}) is True
    assert higher_is_better({}) is True  # before tasks: accuracy
    assert format_value({"task": "language-modeling"}, "bpb", 1.23456) == "1.2346"
    assert format_value({}, "accuracy", 0.991) == "99.10%"
    assert best_index([2.0, 1.5, 1.5, 3.0], higher=False) == 1
    assert best_index([2.0, 1.5, 3.0], higher=True) == 2


def test_report_of_a_language_model_run():
    summary = {"model": "gpt", "dataset": "text", "task": "language-modeling",
               "metric": "bpb", "metric_labels": {"bpb": "bits per byte"},
               "higher_is_better": False, "percent_metrics": [],
               "dense_bpb": 1.75, "admm_bpb": 2.5, "pruned_bpb": 1.875}
    text = format_summary(summary)
    assert "lower is better" in text
    assert "1.8750" in text and "187.50%" not in text


def test_tradeoff_best_seed_of_a_lower_is_better_metric(tmp_path):
    results = [RunResult("gpt", 0, "gpt", 10.0, 2.0, 1.5, "bpb", False),
               RunResult("gpt", 1, "gpt", 10.0, 1.8, 1.5, "bpb", False)]
    (point,) = pool_results(results)
    assert point.best == 1.8 and point.worst == 2.0
    line = format_tradeoff([point]).splitlines()[-1]
    assert line.split()[-2:] == ["2.0000", "1.8000"]  # worst, best
    path = write_results(results, tmp_path / "r.csv")
    assert read_results(path) == results


def test_one_formatter_shows_each_metric_in_its_unit():
    from admmprune.tasks import create_task, format_metric

    assert format_metric(0.99123, percent=True) == "99.12%"
    assert format_metric(0.99123, percent=True, unit=False) == "99.12"
    assert format_metric(7.91716, percent=False) == "7.9172"
    assert format_metric(None, percent=False) == "-"
    language, classes = create_task("language-modeling"), create_task("classification")
    assert language.format("bpb", 7.91716) == "7.9172"
    assert language.format("perplexity", 240.5) == "240.5000"
    assert classes.format("accuracy", 0.5) == "50.00%" and classes.format("loss", 0.5) == "0.5000"


def test_every_printer_shows_bits_per_byte_and_perplexity_as_numbers(code_corpus, tmp_path,
                                                                     capsys):
    from admmprune.cli import main

    run_dir = tmp_path / "lm"
    assert main(["prune", "--model", "gpt", "--model-args",
                 "{n_layer: 1, n_embd: 16, n_head: 2, context: 16}", "--dataset", "text",
                 "--task", "language-modeling", "--data-dir", str(code_corpus), "--include",
                 '["*.c_attn", "*.c_proj", "*.c_fc"]', "--train-subset", "64",
                 "--test-subset", "16", "--batch-size", "16", "--dense-epochs", "1",
                 "--all-percent", "80", "--k-step", "1", "--retraining-epochs", "1",
                 "--no-progress", "--threads", "1", "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    bpb = f"bits per byte {summary['pruned_bpb']:.4f}"
    printed = {"prune": capsys.readouterr().out}
    for command in (["eval"], ["report", "--no-plots"], ["export", "--bits", "4"]):
        assert main([command[0], str(run_dir), *command[1:]]) == 0
        printed[command[0]] = capsys.readouterr().out
    for command, out in printed.items():
        assert re.search(r"(bits per byte|perplexity|loss[^0-9]*) +[0-9.]+%", out) is None, \
            (command, out)
    table_row = rf"pruned bits per byte +{summary['pruned_bpb']:.4f}\n"
    assert re.search(table_row, printed["prune"]) and re.search(table_row, printed["report"])
    assert bpb in printed["eval"]
    assert f"before quantization: loss (nats/token) {summary['pruned_loss']:.4f}  " \
           f"perplexity {summary['pruned_perplexity']:.4f}  {bpb}" in printed["export"]
