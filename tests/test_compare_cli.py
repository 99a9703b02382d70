"""``admmprune compare`` on the command line: what ratios it sweeps, and when it reuses runs."""

import pytest

import admmprune.runs.compare as compare_module
from admmprune.cli import main


class _Swept(Exception):
    pass


@pytest.fixture
def swept(monkeypatch):
    """Run ``admmprune compare`` up to the sweep and return (config, percents) it was given."""
    seen = {}

    def fake_run_compare(config, methods, percents, out_dir, **kwargs):
        seen.update(config=config, percents=list(percents))
        raise _Swept

    monkeypatch.setattr(compare_module, "run_compare", fake_run_compare)

    def run(recipe, *extra):
        with pytest.raises(_Swept):
            main(["compare", recipe, "--methods", "admm", "--out", "unused", *extra])
        return seen["config"], seen["percents"]

    return run


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def test_without_all_percent_the_recipe_ratio_is_swept(swept, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet5\ndataset: synthetic\nall_percent: 90\n")
    config, percents = swept(str(recipe))
    assert percents == [90.0] and config.all_percent == 90.0
    # a progressive recipe: its final stage's ratio
    recipe.write_text("model: lenet5\ndataset: synthetic\nall_percent: [50, 80, 95]\n"
                      "k_step: [1, 1, 2]\n")
    config, percents = swept(str(recipe))
    assert percents == [95.0]


def test_all_percent_zero_means_zero(swept, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet5\ndataset: synthetic\nall_percent: 90\n")
    config, percents = swept(str(recipe), "--all-percent", "0")
    assert percents == [0.0] and config.all_percent == 0.0
    _, percents = swept(str(recipe), "--all-percent", "0,50")
    assert percents == [0.0, 50.0]


def test_compare_refuses_a_method_that_does_not_fit_before_training(tmp_path, capsys,
                                                                    code_corpus, monkeypatch):
    import admmprune.runs.pipeline as pipeline

    monkeypatch.setattr(pipeline, "train_epoch", lambda *a, **k: pytest.fail("trained"))
    recipe = tmp_path / "gpt.yaml"
    recipe.write_text(
        "model: gpt\nmodel_args: {n_layer: 1, n_embd: 16, n_head: 2, context: 16}\n"
        f"dataset: text\ntask: language-modeling\ndata_dir: {code_corpus}\n"
        "train_subset: 64\ntest_subset: 16\nbatch_size: 16\nall_percent: 75\n")
    for method, words in (("filter", "transposed"), ("paper", "LeNet-5")):
        out = tmp_path / method
        assert main(["compare", str(recipe), "--methods", f"admm,{method}", "--out", str(out),
                     "--no-progress", "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("admmprune compare: ") and words in err, err
        assert not out.exists()
