"""The accuracy-against-compression plot: pooling seeds, published points, refusals."""

import json

import pytest
import yaml

from admmprune.cli import main
from admmprune.runs.records import (
    PUBLISHED,
    plot_tradeoff,
    pool_results,
    read_results,
    run_results,
    tradeoff_points,
    write_results,
)


def _run(parent, name, seed, compression, accuracy, model="lenet5", dense=0.9935, dirname=None,
         **keys):
    run_dir = parent / (dirname or f"{name}-{seed}-{compression}")
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": name, "seed": seed,
                                                          "model": model, **keys}))
    (run_dir / "summary.json").write_text(json.dumps({
        "metric": "accuracy", "task": "classification", "compression": compression,
        "pruned_accuracy": accuracy, "dense_accuracy": dense}))
    return run_dir


def test_seeds_pool_per_name_and_compression(tmp_path):
    runs = [_run(tmp_path, "rec-s0", 0, 250.0, 0.9910),
            _run(tmp_path, "rec-s1", 1, 250.0, 0.9890),
            _run(tmp_path, "rec", 2, 250.0, 0.9903),
            _run(tmp_path, "rec", 0, 71.42857, 0.9930),
            _run(tmp_path, "other", 0, 250.0, 0.9800)]
    points = tradeoff_points(runs, model="lenet5")
    by_key = {(p.label, p.compression): p for p in points}
    assert set(by_key) == {("rec", 250.0), ("rec", 71.4), ("other", 250.0)}
    pooled = by_key[("rec", 250.0)]
    assert sorted(pooled.seeds) == [0, 1, 2]
    assert pooled.mean == pytest.approx((99.10 + 98.90 + 99.03) / 3)
    assert min(pooled.accuracies) == pytest.approx(98.90)
    assert [p.compression for p in points] == sorted(p.compression for p in points)
    renamed = tradeoff_points(runs, renames={"rec": "mine", "other": "mine"})
    assert {(p.label, p.compression, len(p.seeds)) for p in renamed} == {
        ("mine", 250.0, 4), ("mine", 71.4, 1)}


def test_refuses_another_model_and_unfinished_runs(tmp_path):
    run = _run(tmp_path, "mlp", 0, 50.0, 0.98, model="lenet300")
    with pytest.raises(ValueError, match="--published lenet300"):
        tradeoff_points([run], model="lenet5")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(FileNotFoundError, match="not finished"):
        tradeoff_points([unfinished])


def test_plot_and_cli(tmp_path, capsys):
    runs = [_run(tmp_path, "rec", s, 250.0, 0.990 + s / 1000) for s in range(3)]
    out = plot_tradeoff(tradeoff_points(runs), tmp_path / "a.png", PUBLISHED["lenet5"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["tradeoff", *map(str, runs), "--published", "lenet5",
                 "--out", str(tmp_path / "b.png")]) == 0
    text = capsys.readouterr().out
    assert "Sparse VD" in text and "0,1,2" in text and "99.10" in text
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert main(["tradeoff", *map(str, runs), "--rename", "rec=the record recipe",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert "the record recipe" in capsys.readouterr().out
    assert main(["tradeoff", str(runs[0]), "--rename", "rec", "--out",
                 str(tmp_path / "d.png")]) == 2
    assert "NAME=LABEL" in capsys.readouterr().err
    wrong = _run(tmp_path, "l300", 0, 68.0, 0.98, model="lenet300")
    assert main(["tradeoff", str(wrong), "--published", "lenet5",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert not (tmp_path / "c.png").exists()


def test_results_csv_round_trip_and_plot_without_run_dirs(tmp_path, capsys):
    runs = [_run(tmp_path, "rec-s0", 0, 250.0, 0.9910),
            _run(tmp_path, "rec-s1", 1, 250.0, 0.9890)]
    kept = write_results(run_results(runs), tmp_path / "kept" / "results.csv")
    assert read_results(kept) == run_results(runs)
    # the run directories are gone; the CSV and a new run still make the same pooled point
    for run in runs:
        for f in run.iterdir():
            f.unlink()
        run.rmdir()
    new = _run(tmp_path, "rec-s2", 2, 250.0, 0.9903)
    csv_out = tmp_path / "all.csv"
    assert main(["tradeoff", str(new), "--results", str(kept), "--published", "lenet5",
                 "--out", str(tmp_path / "p.png"), "--save-results", str(csv_out)]) == 0
    assert "0,1,2" in capsys.readouterr().out
    (point,) = pool_results(read_results(csv_out))
    assert sorted(point.seeds) == [0, 1, 2]
    assert point.mean == pytest.approx((99.10 + 98.90 + 99.03) / 3)


@pytest.mark.parametrize("text, message", [
    ("name,seed\nrec,0\n", "header"),
    ("name,seed,model,compression,accuracy,dense\nrec,zero,lenet5,250,99.1,99.4\n", "line 2"),
    ("name,seed,model,compression,accuracy,dense\nrec,0,lenet5,250,99.1\n", "line 2"),
    ("name,seed,model,compression,accuracy,dense\nrec,0,lenet5,250,0.991,99.4\n"
     "rec,1,lenet5,250,991,99.4\n", "line 3.*percent"),
    ("name,seed,model,compression,accuracy,dense\nrec,0,lenet5,nan,99.1,99.4\n", "line 2"),
])
def test_bad_results_files_are_refused_with_the_line(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_results(bad)
    assert main(["tradeoff", "--results", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_tradeoff_needs_something_to_plot(tmp_path, capsys):
    assert main(["tradeoff", "--out", str(tmp_path / "x.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert main(["tradeoff", "--results", str(tmp_path / "missing.csv"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_compare_runs_pool_per_method(tmp_path, capsys):
    """compare's run directories of one recipe and seed: one point per method, not one
    point "seeds 0,0,0,0"."""
    methods = {"admm": {}, "layerwise": {"projection": "layerwise"},
               "magnitude": {"pruning": "oneshot"}, "lamp": {"score": "lamp"},
               "filter-layerwise": {"structure": "filter", "projection": "layerwise"}}
    runs = [_run(tmp_path, "lenet5", seed, 71.43, 0.99 - i / 1000, dirname=f"{m}-seed{seed}-p98p6",
                 **keys) for i, (m, keys) in enumerate(methods.items()) for seed in (0, 1)]
    points = tradeoff_points(runs)
    assert sorted(p.method for p in points) == sorted(methods)
    assert all(p.label == "lenet5" and p.seeds == (0, 1) for p in points)
    csv_out = tmp_path / "r.csv"
    assert main(["tradeoff", *map(str, runs), "--out", str(tmp_path / "t.png"),
                 "--save-results", str(csv_out)]) == 0
    out = capsys.readouterr().out
    assert "filter-layerwise" in out and "0,0" not in out
    header = csv_out.read_text().splitlines()[0]
    assert header.split(",")[-1] == "method"
    assert sorted(p.method for p in pool_results(read_results(csv_out))) == sorted(methods)


def test_results_csv_without_a_method_column_still_reads(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("name,seed,model,compression,accuracy,dense\n"
                   "rec,0,lenet5,250,99.1,99.4\nrec,1,lenet5,250,99.0,99.4\n")
    (point,) = pool_results(read_results(old))
    assert point.seeds == (0, 1) and point.method == ""
