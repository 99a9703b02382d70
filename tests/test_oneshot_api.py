"""admmprune.oneshot: post-training pruning in one call, and `admmprune oneshot`."""

from __future__ import annotations

import json

import pytest
import torch

import admmprune
from admmprune.cli import main
from admmprune.models import create_model
from admmprune.posttraining import OneShotError, layer_shares
from admmprune.posttraining.api import curve_percents, removal_cap
from admmprune.projection import survivor_count

LLAMA = dict(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate=48, context=16)
GPT = dict(n_layer=2, n_embd=32, n_head=2, context=16)


def trained_like(name: str, args: dict) -> torch.nn.Module:
    """A small model whose layers differ in scale as trained ones do (random init gives every
    layer the same statistics)."""
    torch.manual_seed(0)
    model = create_model(name, **args).eval()
    with torch.no_grad():
        for i, (_, weight) in enumerate(admmprune.prunable_parameters(model)):
            weight.mul_(0.5 + (i % 3))
    return model


def calibration(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(256, (4, 16), generator=g) for _ in range(n)]


@pytest.mark.parametrize("name, args", [("llama", LLAMA), ("gpt", GPT)])
@pytest.mark.parametrize("method, allocation", [
    ("admm", "global"), ("admm", "uniform"), ("admm", "owl"), ("sparsegpt", "global"),
    ("sparsegpt", "uniform"), ("wanda", "global"), ("wanda", "owl"), ("wanda", "uniform"),
    ("magnitude", "global"),
])
def test_exactly_the_global_budget_survives(name, args, method, allocation):
    model = trained_like(name, args)
    total = sum(w.numel() for _, w in admmprune.prunable_parameters(model))
    result = admmprune.oneshot(model, calibration(), method=method, all_percent=70.0,
                               allocation=allocation, progress=False, **(
                                   {"iterations": 4} if method == "admm" else {}))
    assert result.total == total and result.kept == survivor_count(total, 70.0)
    kept = sum(int((w != 0).sum()) for _, w in admmprune.prunable_parameters(model))
    assert kept <= result.kept  # the model holds the records' masks (a kept weight may be 0)
    summary = result.summary()
    assert summary["allocation"] == allocation and len(summary["layers"]) == len(
        admmprune.prunable_parameters(model))
    json.dumps(summary)  # plain numbers
    if allocation == "uniform":  # the same share, up to one weight per layer of rounding
        assert all(abs(result.percents[r.name] - 70.0) * r.total / 100 < 1
                   for r in result.records)
    if allocation == "owl":
        by_block: dict[str, list[float]] = {}
        for r in result.records:  # one share per block, up to a weight of rounding per layer
            by_block.setdefault(r.block, []).append(result.percents[r.name])
        spreads = [max(p) - min(p) for p in by_block.values()]
        assert max(spreads) < 0.5
        shares = [sum(p) / len(p) for p in by_block.values()]
        assert abs(shares[0] - shares[1]) > 2 * max(spreads)  # and the blocks' shares differ


def test_the_global_allocation_prunes_harder_where_the_loss_cares_less():
    name = "model.layers.1.mlp.down_proj.weight"
    shares = []
    for scale in (1.0, 1e-3):  # 1e-3: the MLP's output barely moves the residual stream
        model = trained_like("llama", LLAMA)
        with torch.no_grad():
            model.get_parameter(name).mul_(scale)
        result = admmprune.oneshot(model, calibration(), method="sparsegpt", all_percent=60.0,
                                   allocation="global", progress=False, curve_rows=16)
        shares.append(result.percents)  # curves on 16 of the (32 or 48) rows: enough
    cap = removal_cap(60.0)  # 80: halfway to 100
    assert shares[0][name] < cap - 5 and shares[1][name] >= cap - 0.1  # the second at the cap
    assert max(max(s.values()) for s in shares) <= cap + 0.1
    assert sorted(result.seconds) == ["analysis", "prune", "sensitivity", "total"]


def test_the_removal_cap_is_halfway_to_everything_unless_set():
    assert [removal_cap(t) for t in (50.0, 70.0, 90.0, 97.0)] == [75.0, 85.0, 95.0, 98.0]
    assert removal_cap(90.0, 97.5) == 97.5
    for most in (90.0, 80.0, 100.0):
        with pytest.raises(OneShotError, match="between the target"):
            removal_cap(90.0, most)


@pytest.mark.parametrize("target", [50.0, 70.0, 90.0, 97.0])
def test_error_curves_are_fine_near_the_target_and_end_at_the_cap(target):
    cap = removal_cap(target)
    points = curve_percents(target, most=cap)
    assert points == sorted(set(points)) and points[-1] == cap
    assert all(0 < p <= cap for p in points)
    # the allocation's resolution: every point within 6 of the target is 2 or less apart
    near = [p for p in points if abs(p - target) <= 6]
    gaps = [b - a for a, b in zip(near, near[1:], strict=False)]
    assert target in near and max(gaps) <= 2.0 + 1e-9
    assert min(points) < target - 10  # and the curve reaches well below the target


@pytest.mark.parametrize("most", [None, 75.0])
def test_no_layer_loses_more_than_the_cap_and_the_budget_holds(most):
    model = trained_like("llama", LLAMA)
    total = sum(w.numel() for _, w in admmprune.prunable_parameters(model))
    result = admmprune.oneshot(model, calibration(), method="sparsegpt", all_percent=70.0,
                               allocation="global", progress=False, max_layer_percent=most)
    cap = removal_cap(70.0, most)
    assert max(result.percents.values()) <= cap + 1e-6
    assert result.kept == survivor_count(total, 70.0)
    if most is not None:  # a tighter cap binds: some layer sits on it
        assert max(result.percents.values()) >= cap - 0.5


def test_curves_on_sampled_rows_estimate_the_whole_layers():
    model = trained_like("llama", LLAMA)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    full = admmprune.oneshot(model, calibration(), method="sparsegpt", all_percent=60.0,
                             allocation="global", progress=False, curve_rows=None).percents
    model.load_state_dict(state)
    sampled = admmprune.oneshot(model, calibration(), method="sparsegpt", all_percent=60.0,
                                allocation="global", progress=False, curve_rows=24).percents
    assert sampled != full  # the sample changed the curves of the 32- and 48-row layers...
    # ...not the picture: no layer moves more than one grid step (10 points, + rounding)
    assert max(abs(sampled[k] - full[k]) for k in full) < 10.5
    assert sum(abs(sampled[k] - full[k]) for k in full) / len(full) < 3.0


def test_layer_shares_split_the_budget_exactly():
    sizes = [100, 300]
    assert layer_shares(sizes, 100, "uniform") == [25, 75]
    curves = [([0, 50, 100], [0.0, 1.0, 10.0]), ([0, 150, 300], [0.0, 100.0, 200.0])]
    # 300 removals: layer 0's 100 cost 0.02 and 0.18 each, layer 1's 0.67: layer 0 goes first
    assert layer_shares(sizes, 100, "global", curves=curves) == [0, 100]
    assert layer_shares(sizes, 350, "global", curves=curves) == [50, 300]  # 50 at 0.02
    owl = layer_shares(sizes, 200, "owl", block_of=[0, 1], block_outlier_ratios=[1.0, 3.0],
                       target_percent=50.0, owl_lambda=0.08)
    assert sum(owl) == 200 and owl[1] / 300 > owl[0] / 100  # more outliers: kept more
    with pytest.raises(OneShotError, match="allocation"):
        layer_shares(sizes, 100, "best")


def test_bad_requests_are_refused_before_any_work():
    model = trained_like("llama", LLAMA)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    for kwargs, match in (({"all_percent": 70.0, "nm": (2, 4)}, "exactly one"),
                          ({"nm": (2, 4), "allocation": "global"}, "N:M"),
                          ({"all_percent": 100.0}, "all_percent"),
                          ({"all_percent": 70.0, "allocation": "best"}, "allocation"),
                          ({"all_percent": 70.0, "method": "obs"}, "unknown method"),
                          ({"all_percent": 70.0, "max_layer_percent": 60.0}, "between"),
                          ({"all_percent": 70.0, "allocation": "owl",
                            "max_layer_percent": 90.0}, "drop it")):
        with pytest.raises(OneShotError, match=match):
            admmprune.oneshot(model, calibration(), progress=False, **kwargs)
    with pytest.raises(OneShotError, match="empty"):
        admmprune.oneshot(model, [], all_percent=50.0, progress=False)
    assert not calls
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nm_keeps_n_of_every_m_in_every_layer():
    model = trained_like("gpt", GPT)
    result = admmprune.oneshot(model, calibration(), method="admm", nm=(2, 4), progress=False,
                               iterations=4)
    assert result.allocation == "uniform" and result.kept * 2 == result.total


# -- the command -------------------------------------------------------------------------------

@pytest.fixture
def hf_model(tmp_path):
    from admmprune.export.huggingface import save_huggingface

    return save_huggingface(trained_like("llama", LLAMA), tmp_path / "llama")


def test_oneshot_command_writes_a_loadable_directory_and_its_record(hf_model, code_corpus,
                                                                    tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(["oneshot", str(hf_model), "--method", "admm", "--all-percent", "60",
                 "--data-dir", str(code_corpus), "--calibration", "8", "--batch-size", "4",
                 "--test-windows", "8", "--iterations", "4", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "admm (global allocation), 60% removed" in printed and "bits per byte" in printed
    record = json.loads((out / "oneshot.json").read_text())
    result = record["result"]
    assert result["kept"] == survivor_count(result["total"], 60.0)
    assert record["pruned_bpb"] > 0 and record["dense_bpb"] > 0 and record["peak_rss_mb"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    kept = sum(int((model.get_parameter(layer["name"]) != 0).sum())
               for layer in result["layers"])
    assert kept <= result["kept"]
    assert sum(layer["kept"] for layer in result["layers"]) == result["kept"]


def test_oneshot_structured_writes_a_smaller_model_that_loads_and_runs_in_onnx(
        hf_model, code_corpus, tmp_path, capsys):
    from admmprune.export.huggingface import load_huggingface

    out = tmp_path / "units"
    assert main(["oneshot", str(hf_model), "--structured", "--all-percent", "40",
                 "--data-dir", str(code_corpus), "--calibration", "8", "--batch-size", "4",
                 "--test-windows", "8", "--onnx", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "units (global allocation), 40% removed" in printed
    assert "kept neurons / attention groups per block" in printed
    record = json.loads((out / "oneshot.json").read_text())
    assert record["structured"] and record["onnx_max_abs_diff"] < 1e-4
    assert record["result"]["sparsity_percent"] >= 38
    model = load_huggingface(out)
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n
                 and "norm" not in n)
    assert blocks == record["result"]["kept"]  # the model is smaller, not masked
    assert (out / "model.onnx").is_file()


def test_a_recovery_fine_tune_keeps_the_pruned_weights_zero(hf_model, code_corpus, tmp_path,
                                                            capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "recovered"
    assert main(["oneshot", str(hf_model), "--method", "magnitude", "--all-percent", "60",
                 "--data-dir", str(code_corpus), "--calibration", "8", "--batch-size", "4",
                 "--test-windows", "8", "--recover-steps", "3", "--recover-lr", "1e-3",
                 "--out", str(out), "--no-progress"]) == 0
    assert "after 3 recovery steps" in capsys.readouterr().out
    record = json.loads((out / "oneshot.json").read_text())
    assert record["recovery"]["steps"] == 3
    assert record["pruned_bpb"] != record["pruned_bpb_before_recovery"]
    model = AutoModelForCausalLM.from_pretrained(out)
    kept = sum(int((model.get_parameter(layer["name"]) != 0).sum())
               for layer in record["result"]["layers"])
    assert kept <= record["result"]["kept"]  # the fine-tune grew nothing back


@pytest.mark.parametrize("args, match", [
    (["--all-percent", "60", "--recover-steps", "-1"], "steps >= 0"),
    (["--all-percent", "60", "--structured", "--method", "wanda"], "--structured"),
    (["--all-percent", "60", "--structured", "--allocation", "owl"], "global or uniform"),
    (["--nm", "2:4", "--structured"], "--structured"),
    (["--all-percent", "60", "--no-reconstruct"], "--structured"),
    (["--all-percent", "60", "--nm", "2:4"], "exactly one"),
    (["--nm", "2-4"], "N:M"),
    (["--all-percent", "60", "--allocation", "owl", "--nm", "2:4"], "exactly one"),
    (["--all-percent", "60", "--calibration", "100000"], "windows"),
    (["--all-percent", "60", "--method", "wanda", "--iterations", "3"], "admm"),
    (["--all-percent", "60", "--no-eval", "--dense-bpb", "2.0"], "--no-eval"),
])
def test_oneshot_command_refuses_bad_requests(hf_model, code_corpus, tmp_path, capsys, args,
                                              match):
    assert main(["oneshot", str(hf_model), "--data-dir", str(code_corpus), "--no-progress",
                 "--out", str(tmp_path / "o"), *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_given_dense_bpb_replaces_only_the_dense_measurement(hf_model, code_corpus):
    from admmprune.runs.oneshot import run_oneshot

    options = dict(method="magnitude", all_percent=50.0, calibration=4, batch_size=4,
                   data_dir=str(code_corpus), test_windows=8, progress=False)
    measured = run_oneshot(hf_model, None, **options)
    given = run_oneshot(hf_model, None, dense_bpb=123.0, **options)
    assert not measured["dense_bpb_given"] and given["dense_bpb_given"]
    assert given["dense_bpb"] == 123.0 and measured["dense_bpb"] != 123.0
    assert given["pruned_bpb"] == pytest.approx(measured["pruned_bpb"], rel=1e-9)


def test_oneshot_command_needs_a_model_directory_and_a_new_out(hf_model, code_corpus,
                                                              tmp_path, capsys):
    assert main(["oneshot", str(tmp_path / "nothing"), "--all-percent", "50"]) == 2
    assert "no Hugging Face model directory" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["oneshot", str(hf_model), "--all-percent", "50", "--data-dir",
                 str(code_corpus), "--out", str(tmp_path / "taken")]) == 2
    assert "taken" in capsys.readouterr().err


def test_the_readme_post_training_commands_run_in_tiny_form(tmp_path, code_corpus, capsys):
    """Every README line with `admmprune oneshot` or `runs/gpt`: a tiny gpt run stands for
    runs/gpt, the generated corpus for the data."""
    from conftest import REPO, tiny_gpt_config
    from test_readme_commands import _argv, readme_commands

    from admmprune.runs.pipeline import run_pipeline

    lines = [c for c in readme_commands() if "oneshot" in c or "runs/gpt" in c]
    assert len(lines) >= 3
    run_dir = tmp_path / "runs" / "gpt"
    config = tiny_gpt_config(code_corpus, pruning="admm", model_args={
        "n_layer": 2, "n_embd": 16, "n_head": 2, "context": 16})
    run_pipeline(config, run_dir=run_dir)
    for line in sorted(lines, key=lambda c: "oneshot" in c):  # the export first
        argv = [str(tmp_path / w) if w.startswith("runs/gpt") else w for w in _argv(line)]
        if argv[0] == "oneshot":
            argv += ["--data-dir", str(code_corpus), "--calibration", "4", "--batch-size",
                     "4", "--test-windows", "4", "--no-progress"]
            if "sparsegpt" not in argv and "--structured" not in argv:
                argv += ["--iterations", "2"]
        if argv[0] == "compare":  # the recipe's model and budget, shrunk to seconds
            argv[1] = str(REPO / argv[1])
            argv[argv.index("--out") + 1] = str(tmp_path / "cmp")
            argv += ["--model-args", "{n_layer: 1, n_embd: 16, n_head: 2, context: 16}",
                     "--data-dir", str(code_corpus), "--train-subset", "64", "--test-subset",
                     "16", "--dense-epochs", "1", "--steps-per-epoch", "2", "--k-step", "1",
                     "--epochs", "1", "--retraining-epochs", "1", "--calibration-batches",
                     "2", "--no-progress"]
        if argv[0] == "prune":  # from the tiny run's weights instead of the reference's
            argv[1] = str(REPO / argv[1])
            argv[argv.index("--pretrained") + 1] = str(run_dir / "model.pt")
            argv += ["--model-args", "{n_layer: 2, n_embd: 16, n_head: 2, context: 16}",
                     "--data-dir", str(code_corpus), "--train-subset", "64", "--test-subset",
                     "16", "--steps-per-epoch", "2", "--k-step", "1", "--epochs", "1",
                     "--retraining-epochs", "1", "--no-progress"]
        assert main(argv) == 0, (line, capsys.readouterr().err)
    assert (tmp_path / "runs" / "gpt-admm70" / "oneshot.json").is_file()
    compared = (tmp_path / "cmp" / "results.md").read_text()
    assert "oneshot-admm-retrain" in compared and "oneshot-wanda" in compared
    assert (tmp_path / "runs" / "gpt-sparsegpt24" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "gpt-units" / "model-shrunk" / "model.onnx").is_file()


def test_curves_by_another_method_keep_the_budget_and_unknown_ones_are_refused():
    model = trained_like("llama", LLAMA)
    result = admmprune.oneshot(model, calibration(), method="admm", all_percent=70.0,
                               curve_method="sparsegpt", progress=False, iterations=4)
    assert result.allocation == "global" and result.kept == survivor_count(result.total, 70.0)
    with pytest.raises(OneShotError, match="unknown method"):
        admmprune.oneshot(model, calibration(), all_percent=70.0, curve_method="obs",
                          progress=False)


def test_the_recorded_peak_memory_is_the_jobs_own_not_its_parents():
    # Linux's ru_maxrss survives fork + exec: a small job started by a benchmark holding a
    # large model would record the benchmark's peak (llmcompressor_check.py runs such jobs)
    import os
    import subprocess
    import sys

    held = bytearray(1 << 30)
    held[::4096] = b"\1" * len(held[::4096])  # touched, so resident
    child = subprocess.run(
        [sys.executable, "-c", "import resource\nfrom admmprune.runs.oneshot import peak_rss_mb"
         "\nprint(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    del held
    own, inherited = (float(v) for v in child.stdout.split())
    assert inherited > 1024  # the fault this guards against is still there to see
    assert 0 < own < 1024
