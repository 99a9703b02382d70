"""The compare machinery on tiny generated data."""

import json
import re
from dataclasses import replace

import pytest

from admmprune.imports import file_sha256
from admmprune.runs.compare import (
    METHODS,
    ONE_MODEL_METHODS,
    best_methods,
    fixed_percent,
    markdown_table,
    method_config,
    method_notes,
    method_of,
    plot_compare,
    run_compare,
    summarize,
)
from admmprune.runs.config import (
    ONE_SHOT_PRUNING,
    ConfigError,
    counts_live_weights,
    load_config,
)

TINY = {"dataset": "synthetic", "train_subset": 256, "test_subset": 128, "batch_size": 64,
        "dense_epochs": 1, "k_step": 2, "epochs": 1, "retraining_epochs": 1,
        "progress": False, "threads": 1}


def tiny_config(**extra):
    return load_config("recipes/mlp.yaml", {**TINY, "model_args": {"depth": 2, "width": 32},
                                            **extra})


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def test_every_method_has_the_same_epoch_budget():
    base = tiny_config()
    budgets = {}
    for method, (_, keys) in METHODS.items():
        if method == "dense" or "retraining_epochs" in keys:
            continue  # no training / no retraining by design (Wanda, SparseGPT alone)
        percent = 50.0 if keys.get("structure") == "nm" else 95.0  # N:M: the ratio 2:4 implies
        # a method made for one model (paper: LeNet-5) is asked on that model
        model = ONE_MODEL_METHODS.get(method, (base.model,))[0]
        config = method_config(replace(base, model=model, model_args={}) if
                               model != base.model else base, method, percent)
        admm = 0 if config.pruning in ONE_SHOT_PRUNING else config.k_step * config.epochs
        budgets[method] = admm + config.retraining_epochs
    assert len(set(budgets.values())) == 1, budgets
    assert method_config(base, "magnitude", 95.0).pruning == "oneshot"
    assert method_config(base, "layerwise", 95.0).projection == "layerwise"
    assert method_config(base, "lamp", 95.0).score == "lamp"


def test_unknown_method_is_rejected():
    with pytest.raises(ConfigError, match="unknown method"):
        method_config(tiny_config(), "random", 90.0)


def test_compare_runs_every_method_from_one_dense_model(tmp_path):
    rows = run_compare(tiny_config(), ["dense", "admm", "layerwise", "magnitude", "lamp"],
                       [90.0, 97.0], tmp_path, seeds=[0])
    assert len(rows) == 1 + 4 * 2
    dense_accuracy = rows[0]["pruned_accuracy"]
    pruned = [r for r in rows if r["method"] != "dense"]
    # all methods start from the same dense weights
    assert {r["dense_accuracy"] for r in pruned} == {dense_accuracy}
    assert len({r["train_epochs"] for r in pruned}) == 1
    sizes = [784 * 32, 32 * 32, 32 * 10]
    total = sum(sizes)
    for r in pruned:
        p = r["all_percent"]
        keep = total - round(p * total / 100)
        if r["method"] == "layerwise":  # each layer rounds its own share
            keep = sum(n - round(p * n / 100) for n in sizes)
        assert r["compression"] == pytest.approx(total / keep)
        summary = json.loads((tmp_path / r["run_dir"].split("/")[-1] / "summary.json")
                             .read_text())
        assert summary["kept"] == keep and summary["complete"]
    for r in (r for r in pruned if r["method"] == "layerwise"):
        fractions = list(r["kept_per_layer"].values())
        assert max(fractions) - min(fractions) < 0.01, fractions  # rounding only
    global_97 = next(r for r in pruned if r["method"] == "admm" and r["all_percent"] == 97.0)
    fractions = list(global_97["kept_per_layer"].values())
    assert max(fractions) - min(fractions) > 0.01  # the global budget is not uniform

    for name in ["results.json", "results.csv", "results.md"]:
        assert (tmp_path / name).is_file()
    table = (tmp_path / "results.md").read_text()
    assert "| layerwise" in table and "97%" in table and "x)" in table
    written = plot_compare(rows, tmp_path)
    assert {p.name for p in written} == {"accuracy_vs_compression.png", "kept_per_layer.png",
                                         "admm_residuals.png"}


def test_dense_retrain_is_the_same_budget_with_nothing_removed(tmp_path):
    rows = run_compare(tiny_config(), ["dense", "dense-retrain", "magnitude"], [90.0],
                       tmp_path, seeds=[0])
    reference = next(r for r in rows if r["method"] == "dense-retrain")
    magnitude = next(r for r in rows if r["method"] == "magnitude")
    assert reference["train_epochs"] == magnitude["train_epochs"] > 0
    assert reference["compression"] == 1.0 and reference["all_percent"] != reference["all_percent"]
    summary = json.loads((tmp_path / "dense-retrain-seed0-p0" / "summary.json").read_text())
    assert summary["kept"] == 784 * 32 + 32 * 32 + 32 * 10
    # it trained on: its weights are not the dense model's
    assert reference["pruned_accuracy"] != rows[0]["pruned_accuracy"] or \
        reference["pruned_loss"] != rows[0]["pruned_loss"]
    config = method_config(tiny_config(), "dense-retrain", 90.0)
    assert config.final_percent() == 0 and method_of(config) == "dense-retrain"
    assert method_of(method_config(tiny_config(), "magnitude", 90.0)) == "magnitude"
    # a reference competes nowhere
    assert set(best_methods(summarize(rows)).values()) == {"magnitude"}
    table = (tmp_path / "results.md").read_text()
    assert "| dense-retrain" in table


def test_finished_runs_are_reused_and_results_merge_across_invocations(tmp_path):
    config = tiny_config()
    run_compare(config, ["admm"], [90.0], tmp_path, seeds=[0])
    stamp = (tmp_path / "admm-seed0-p90" / "summary.json").stat().st_mtime_ns
    rows = run_compare(config, ["admm"], [90.0], tmp_path, seeds=[0, 1])
    assert (tmp_path / "admm-seed0-p90" / "summary.json").stat().st_mtime_ns == stamp
    assert len(rows) == 2
    merged = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["seed"] for r in merged) == [0, 1]
    assert "±" in markdown_table(merged)  # two seeds give a spread


def test_depth_sweep_gives_one_block_per_depth(tmp_path):
    rows = run_compare(tiny_config(), ["admm"], [95.0], tmp_path,
                       variants=[{"depth": 1}, {"depth": 3}])
    assert sorted(r["model_depth"] for r in rows) == [1, 3]
    assert len(rows[1]["kept_per_layer"]) == 4  # 3 hidden + classifier
    table = markdown_table(rows)
    assert "depth = 1" in table and "depth = 3" in table


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dense"])
def test_every_method_runs_from_the_default_recipe(method):
    base = load_config("recipes/lenet5.yaml")
    assert base.live_weights  # the default recipe counts live weights
    percent = fixed_percent(base, method)  # N:M methods run at the ratio N:M implies
    config = method_config(base, method, base.final_percent() if percent is None else percent)
    assert config.validate() is config
    changed = method_notes(base, method)
    if not counts_live_weights(config.projection, config.structure):
        assert not config.live_weights and "live_weights false" in changed
    else:
        assert config.live_weights and changed == ""


def test_the_table_notes_say_which_keys_a_method_changed():
    base = load_config("recipes/lenet5.yaml")
    row = {"method": "layerwise", "all_percent": 98.6, "seed": 0, "metric": "accuracy",
           "pruned_accuracy": 0.99, "compression": 71.4, "notes": method_notes(base,
                                                                               "layerwise")}
    table = markdown_table([row])
    assert "layerwise: live_weights false" in table


def test_table_cells_show_their_own_compression():
    def row(method, compression, accuracy, seed=0):
        return {"method": method, "all_percent": 98.6, "seed": seed, "metric": "accuracy",
                "pruned_accuracy": accuracy, "compression": compression}

    table = markdown_table([row("admm", 71.43, 0.9931), row("admm", 71.43, 0.9929, seed=1),
                            row("filter-layerwise", 38.7, 0.9812),
                            row("channel", 61.9, 0.9790)])
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()
             if line.startswith("|")}
    assert "(71x)" not in lines["method"] and "98.6%" in lines["method"]
    assert "71.4x" in lines["admm"] and "99.30 ± 0.01" in lines["admm"]
    assert "38.7x" in lines["filter-layerwise"] and "71" not in lines["filter-layerwise"]
    assert "61.9x" in lines["channel"]
    # cells with fewer seeds than the table's most say so; full ones do not
    assert "[1 of 2 seeds]" in lines["channel"] and "seeds]" not in lines["admm"]


def test_a_finished_run_of_another_config_is_not_reused(tmp_path):
    config = tiny_config(live_weights=True)
    run_compare(config, ["admm"], [90.0], tmp_path, seeds=[0])
    summary = tmp_path / "admm-seed0-p90" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    # the case: following the advice `--live-weights false` into the same --out
    with pytest.raises(ConfigError, match=r"live_weights: saved True, now False.*another --out"):
        run_compare(replace(config, live_weights=False), ["admm"], [90.0], tmp_path)
    with pytest.raises(ConfigError, match=r"admm-seed0-p90.*rho: saved 0.001, now 0.002"):
        run_compare(replace(config, rho=2e-3), ["admm"], [90.0], tmp_path)
    # the dense model is shared: a key it trains with differs
    with pytest.raises(ConfigError, match=r"dense-seed0.*learning_rate"):
        run_compare(replace(config, learning_rate=2e-3), ["admm"], [90.0], tmp_path)
    # keys that change how a run executes, not its results, do not count; nor does another
    # ratio for the shared dense model
    rows = run_compare(replace(config, threads=2, progress=True, workers=0), ["admm"],
                       [90.0], tmp_path)
    assert summary.stat().st_mtime_ns == stamp and len(rows) == 1


def test_runs_made_from_a_copied_dense_model_merge_into_one_out(tmp_path):
    """Two sweeps run side by side in two --out folders sharing a copy of one dense run;
    their runs gathered into a third folder are reused there, not refused."""
    import shutil

    config = tiny_config()
    run_compare(config, ["admm"], [90.0], tmp_path / "a", seeds=[0])
    shutil.copytree(tmp_path / "a" / "dense-seed0", tmp_path / "b" / "dense-seed0")
    run_compare(config, ["magnitude"], [90.0], tmp_path / "b", seeds=[0])
    merged = tmp_path / "all"
    for source, name in (("a", "dense-seed0"), ("a", "admm-seed0-p90"),
                         ("b", "magnitude-seed0-p90")):
        shutil.copytree(tmp_path / source / name, merged / name)
    stamps = {p: p.stat().st_mtime_ns for p in merged.glob("*/summary.json")}
    rows = run_compare(config, ["dense", "admm", "magnitude"], [90.0], merged, seeds=[0])
    assert {r["method"] for r in rows} == {"dense", "admm", "magnitude"}
    assert {p: p.stat().st_mtime_ns for p in merged.glob("*/summary.json")} == stamps
    # other weights under the same name are still refused
    dense = merged / "dense-seed0" / "dense.pt"
    dense.write_bytes(dense.read_bytes()[:-1] + b"x")
    with pytest.raises(ConfigError, match="pretrained"):
        run_compare(config, ["admm"], [90.0], merged, seeds=[0])


def test_the_ignored_keys_are_recipe_keys():
    from dataclasses import fields

    from admmprune.runs.compare import DENSE_UNUSED, REUSE_IGNORED
    from admmprune.runs.config import Config

    names = {f.name for f in fields(Config)}
    assert REUSE_IGNORED <= names and DENSE_UNUSED <= names
    assert {"threads", "progress", "workers", "data_dir"} <= REUSE_IGNORED
    assert not {"seed", "dense_epochs", "learning_rate", "steps_per_epoch"} & DENSE_UNUSED


@pytest.fixture
def no_training(monkeypatch):
    """Training of any kind fails the test: what is refused must be refused before it."""
    import admmprune.runs.pipeline as pipeline

    def trained(*args, **kwargs):
        raise AssertionError("a model was trained before the method was refused")

    monkeypatch.setattr(pipeline, "train_epoch", trained)


def tiny_gpt(corpus, **overrides):
    """A one-block GPT: 4 prunable tensors (c_attn, attn c_proj, c_fc, mlp c_proj), as many as
    LeNet-5 has."""
    from conftest import tiny_gpt_config

    return tiny_gpt_config(corpus, **{"pruning": "admm", "retraining_epochs": 1, **overrides})


def test_paper_ratios_are_lenet5s_and_refused_for_another_model(code_corpus, tmp_path,
                                                                no_training):
    from admmprune.runs.build import build_model
    from admmprune.selection import prunable_parameters

    gpt = tiny_gpt(code_corpus)
    assert len(prunable_parameters(build_model(gpt), gpt.include, gpt.exclude)) == 4
    for call in (lambda: run_compare(gpt, ["admm", "paper"], [75.0], tmp_path / "out"),
                 lambda: method_config(gpt, "paper", 75.0),
                 lambda: fixed_percent(gpt, "paper")):
        with pytest.raises(ConfigError, match=r"'paper'.*LeNet-5.*model lenet5.*'gpt'.*drop"):
            call()
    assert not (tmp_path / "out").exists()
    # the model it was tuned for: the paper's 71.2x
    lenet5 = load_config("recipes/lenet5.yaml")
    assert 100 / (100 - fixed_percent(lenet5, "paper")) == pytest.approx(71.2, abs=0.05)
    assert method_config(lenet5, "paper", 98.6).layer_percents == [80.0, 92.0, 99.1, 93.0]


@pytest.mark.parametrize("method, model_args, match", [
    # GPT-2's Conv1D stores weights [in, out]: no whole filters or channels to remove
    ("filter", None, "filter.*transposed.*c_attn"),
    ("channel", None, "channel.*transposed.*c_attn"),
    # 18 inputs do not split into groups of 4
    ("admm-nm", {"n_layer": 1, "n_embd": 18, "n_head": 2, "context": 16}, "nm 2:4"),
])
def test_a_method_the_model_cannot_take_is_refused_before_training(
        code_corpus, tmp_path, no_training, method, model_args, match):
    extra = {"model_args": model_args} if model_args else {}
    base = tiny_gpt(code_corpus, **extra)
    with pytest.raises(ConfigError, match=f"method {method!r}.*{match}"):
        run_compare(base, ["dense", "admm", method], [75.0], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no dense model, no run directory


def test_a_calibrated_method_on_convolutions_is_refused_before_training(tmp_path,
                                                                       no_training):
    base = load_config("recipes/lenet5.yaml", {**TINY, "live_weights": False})
    with pytest.raises(ConfigError, match=r"method 'wanda'.*conv1.weight.*nn.Linear"):
        run_compare(base, ["admm", "wanda"], [90.0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prune_refuses_a_structure_the_model_cannot_take_before_training(code_corpus,
                                                                        tmp_path, no_training):
    from admmprune.runs.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="structure 'filter'.*transposed"):
        run_pipeline(tiny_gpt(code_corpus, structure="filter"), run_dir=tmp_path / "run")


USER_NET = """
from torch import nn


def net(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, num_classes))
"""


def test_runs_made_with_other_code_are_not_reused(tmp_path):
    """The imported model file edited after a sweep: neither the finished runs nor the
    shared dense model are mixed into a table with runs of the new code."""
    path = tmp_path / "compare_sources_user.py"
    path.write_text(USER_NET)
    config = load_config(None, {**TINY, "model": "compare_sources_user:net",
                                "imports": [str(path)]})
    out = tmp_path / "out"
    run_compare(config, ["admm", "magnitude"], [90.0], out, seeds=[0])
    assert json.loads((out / "admm-seed0-p90" / "sources.json").read_text()) != {}
    path.write_text(USER_NET.replace("nn.ReLU()", "nn.Sigmoid()"))
    changed = re.escape(f"{path.resolve()} changed")
    with pytest.raises(ConfigError, match=rf"dense-seed0.*other code.*{changed}"):
        run_compare(config, ["dense", "admm", "magnitude", "lamp"], [90.0], out, seeds=[0])
    assert not (out / "lamp-seed0-p90").exists()
    # a finished method run is checked too, not only the dense model
    (out / "dense-seed0" / "sources.json").write_text(json.dumps(
        {str(path.resolve()): file_sha256(path)}))
    with pytest.raises(ConfigError, match=rf"admm-seed0-p90.*other code.*{changed}"):
        run_compare(config, ["admm"], [90.0], out, seeds=[0])


def test_the_dense_model_starts_from_the_recipes_pretrained_weights(tmp_path):
    """`compare --pretrained W`: the shared dense model is W (trained on for dense_epochs),
    and every method prunes it, not a freshly initialised network."""
    import torch

    from admmprune.runs.build import build_model

    config = tiny_config(dense_epochs=0)
    model = build_model(config, num_classes=10)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))  # unlike any initialisation
    weights = tmp_path / "trained.pt"
    torch.save(model.state_dict(), weights)
    run_compare(replace(config, pretrained=str(weights)), ["magnitude"], [90.0],
                tmp_path / "out", seeds=[0])
    dense = torch.load(tmp_path / "out" / "dense-seed0" / "dense.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(dense[name], value), name
    # the method's hard prune kept the largest of those weights
    pruned = torch.load(tmp_path / "out" / "magnitude-seed0-p90" / "admm.pt",
                        weights_only=True)["model"]
    first = next(n for n in _weight_names(model) if n.endswith("weight"))
    kept = pruned[first] != 0
    assert torch.equal(pruned[first][kept], dense[first][kept])
    # another pretrained file under the same --out is another dense model: refused
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, other)
    with pytest.raises(ConfigError, match="pretrained"):
        run_compare(replace(config, pretrained=str(other)), ["magnitude"], [90.0],
                    tmp_path / "out", seeds=[0])


def _weight_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dim() > 1]
