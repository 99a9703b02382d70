"""``pruning: blockwise`` through the pipeline and ``compare``: the block engine of
``admmprune oneshot`` on a tiny two-block GPT, with and without masked retraining."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

import admmprune.runs.blockwise as blockwise
from admmprune import posttraining
from admmprune.cli import main
from admmprune.projection import survivor_count
from admmprune.runs.build import build_model, build_task, load_data
from admmprune.runs.compare import METHODS, method_config, method_of, run_compare
from admmprune.runs.config import (
    BLOCKWISE_ALLOCATIONS,
    BLOCKWISE_METHODS,
    ConfigError,
)
from admmprune.runs.pipeline import run_pipeline
from admmprune.selection import prunable_parameters

PERCENT = 75.0
TWO_BLOCKS = {"n_layer": 2, "n_embd": 16, "n_head": 2, "context": 16}


def base(corpus: Path, **overrides):
    """Two GPT blocks, 8 pruned tensors; one ADMM iteration, one retraining epoch: the
    -retrain methods retrain for 2 epochs."""
    from conftest import tiny_gpt_config

    return tiny_gpt_config(corpus, **{"pruning": "admm", "retraining_epochs": 1,
                                      "model_args": TWO_BLOCKS, **overrides})


def pruned(config, state: dict) -> dict[str, torch.Tensor]:
    names = [n for n, _ in prunable_parameters(build_model(config), config.include,
                                               config.exclude)]
    return {n: state[n] for n in names}


@pytest.fixture(scope="module")
def compared(code_corpus, tmp_path_factory):
    """One compare of dense, oneshot-admm and oneshot-admm-retrain: rows by method, the
    base config, and the output directory."""
    out = tmp_path_factory.mktemp("compare")
    config = base(code_corpus)
    rows = run_compare(config, ["dense", "oneshot-admm", "oneshot-admm-retrain"], [PERCENT],
                       out)
    return {r["method"]: r for r in rows}, config, out


def load(row: dict, name: str = "model.pt"):
    return torch.load(Path(row["run_dir"]) / name)


def test_one_shot_keeps_exactly_the_global_budget(compared):
    rows, config, _ = compared
    weights = pruned(config, load(rows["oneshot-admm"]))
    total = sum(w.numel() for w in weights.values())
    kept = sum(int((w != 0).sum()) for w in weights.values())
    assert kept == survivor_count(total, PERCENT)
    assert rows["oneshot-admm"]["compression"] == pytest.approx(total / kept)
    # the global allocation, not one ratio per layer
    shares = {round(s, 6) for s in rows["oneshot-admm"]["kept_per_layer"].values()}
    assert len(shares) > 1
    assert rows["oneshot-admm"]["train_epochs"] == 0


def test_retraining_keeps_the_one_shot_masks(compared):
    rows, config, _ = compared
    once = pruned(config, load(rows["oneshot-admm"]))
    retrained = pruned(config, load(rows["oneshot-admm-retrain"]))
    # the masks installed after pruning (admm.pt: before retraining), in pruner order
    masks = load(rows["oneshot-admm-retrain"], "admm.pt")["pruner"]["masks"]
    for (name, weight), mask in zip(retrained.items(), masks, strict=True):
        assert torch.equal(weight != 0, mask), name
        assert torch.equal(weight != 0, once[name] != 0), name  # same dense start, same masks
        assert not torch.equal(weight, once[name]), name  # the kept weights moved
    assert rows["oneshot-admm-retrain"]["train_epochs"] == config.k_step * config.epochs \
        + config.retraining_epochs
    assert rows["oneshot-admm-retrain"]["pruned_bpb"] != rows["oneshot-admm"]["pruned_bpb"]


def test_no_recovery_metric_is_the_pruned_models(compared):
    rows, config, _ = compared
    run_config = method_config(config, "oneshot-admm", PERCENT)
    data = load_data(run_config, torch.device("cpu"))
    model = build_model(run_config, data.num_classes)
    model.load_state_dict(load(rows["oneshot-admm"]))
    direct = build_task(run_config).evaluate(model, data.test, device="cpu")["bpb"]
    assert rows["oneshot-admm"]["pruned_bpb"] == pytest.approx(direct, rel=1e-9)
    assert rows["oneshot-admm"]["pruned_bpb"] != rows["dense"]["pruned_bpb"]


def test_a_resumed_retraining_ends_with_the_same_weights(compared, tmp_path,
                                                         interrupt_training):
    rows, config, out = compared
    run_config = method_config(config, "oneshot-admm-retrain", PERCENT)
    run_config.pretrained = str(out / "dense-seed0" / "dense.pt")
    interrupt_training(2)  # the second retraining epoch: after pruning was checkpointed
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run_config, run_dir=tmp_path / "run")
    interrupt_training(None)
    run_pipeline(run_config, run_dir=tmp_path / "run", resume=True)
    resumed = torch.load(tmp_path / "run" / "model.pt")
    uninterrupted = load(rows["oneshot-admm-retrain"])
    for name, weight in pruned(config, resumed).items():
        assert torch.equal(weight, uninterrupted[name]), name


def test_the_stage_is_prune_oneshot_on_the_dense_model_n_m(code_corpus, tmp_path,
                                                           monkeypatch):
    """oneshot-admm-nm: the weights the pipeline keeps are those prune_oneshot gives on the
    dense model and the calibration batches the stage read, 2 of every 4 inputs."""
    seen: list = []

    def recording(model, calibration, **options):
        batches = list(islice(calibration, options["max_batches"]))
        seen.append((batches, options))
        return posttraining.prune_oneshot(model, batches, **options)

    monkeypatch.setattr(blockwise, "prune_oneshot", recording)
    config = method_config(base(code_corpus), "oneshot-admm-nm", 50.0)
    assert config.structure == "nm" and config.allocation == "uniform"
    run_pipeline(config, run_dir=tmp_path / "run")
    (batches, options), = seen
    assert options["nm"] == (2, 4) and options["all_percent"] is None
    assert len(batches) == config.calibration_batches
    model = build_model(config)
    model.load_state_dict(torch.load(tmp_path / "run" / "dense.pt"))
    posttraining.prune_oneshot(model, batches, **{**options, "progress": False})
    final = torch.load(tmp_path / "run" / "model.pt")
    for name, weight in pruned(config, model.state_dict()).items():
        assert torch.equal(final[name], weight), name
        groups = (final[name] != 0).t().reshape(weight.shape[1], -1, 4)  # Conv1D: [in, out]
        assert (groups.sum(dim=2) == 2).all(), name


@pytest.mark.parametrize("key, value, allowed", [
    ("blockwise_method", "obs", "admm, sparsegpt, wanda, magnitude"),
    ("allocation", "random", "global, uniform, owl"),
])
def test_an_unknown_method_or_allocation_is_refused_naming_the_choices(code_corpus, key,
                                                                        value, allowed):
    with pytest.raises(ConfigError, match=f"{key} must be one of {allowed}; got '{value}'"):
        base(code_corpus, pruning="blockwise", **{key: value})


def test_compare_refuses_a_bad_value_before_anything_runs(code_corpus, tmp_path, capsys):
    from conftest import REPO

    code = main(["compare", str(REPO / "recipes" / "mlp.yaml"), "--methods",
                 "oneshot-admm", "--allocation", "best", "--out", str(tmp_path / "out")])
    assert code != 0
    assert "allocation must be one of global, uniform, owl; got 'best'" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_n_m_takes_no_allocation_of_the_budget(code_corpus):
    with pytest.raises(ConfigError, match="allocation 'global'.*structure nm.*set "
                                          "allocation: uniform"):
        base(code_corpus, pruning="blockwise", structure="nm", all_percent=50.0)


def test_the_recipe_choices_are_the_engines():
    assert set(BLOCKWISE_METHODS) == set(posttraining.METHODS)
    assert set(BLOCKWISE_ALLOCATIONS) == set(posttraining.ALLOCATIONS)


def test_every_one_shot_method_is_named_back_and_budgeted(code_corpus):
    config = base(code_corpus, k_step=3)
    oneshot = [m for m in METHODS if m.startswith("oneshot-")]
    assert {"oneshot-admm", "oneshot-admm-retrain", "oneshot-admm-owl",
            "oneshot-sparsegpt", "oneshot-wanda-retrain"} <= set(oneshot)
    for method in oneshot:
        percent = 50.0 if method.endswith("-nm") else PERCENT
        run_config = method_config(config, method, percent)
        assert run_config.pruning == "blockwise"
        epochs = 3 + config.retraining_epochs if method.endswith("-retrain") else 0
        assert run_config.retraining_epochs == epochs, method
        # a -retrain form reads as its method (as wanda-retrain reads as wanda)
        assert method_of(run_config) == method.removesuffix("-retrain"), method
    # the old calibrated methods are unchanged by the new keys
    assert method_of(method_config(config, "wanda", PERCENT)) == "wanda"


def test_a_tensor_outside_the_blocks_is_refused_before_training(code_corpus, tmp_path,
                                                                monkeypatch):
    import admmprune.runs.pipeline as pipeline

    def trained(*args, **kwargs):
        raise AssertionError("a model was trained before the method was refused")

    monkeypatch.setattr(pipeline, "train_epoch", trained)
    llama = base(code_corpus, model="llama", include=["*_proj", "lm_head"],
                 model_args={"n_layer": 1, "n_embd": 32, "n_head": 4, "n_kv_head": 2,
                             "intermediate": 48, "context": 16})
    with pytest.raises(ConfigError, match=r"method 'oneshot-admm'.*lm_head.*outside the "
                                          r"blocks"):
        run_compare(llama, ["dense", "oneshot-admm"], [PERCENT], tmp_path / "out")
    assert not (tmp_path / "out").exists()
