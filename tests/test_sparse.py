"""Sparse inference: sparsify() swaps pruned Linear layers for sparse-kernel modules that match
dense; the compact formats and their compiled kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import admmprune
from admmprune.export import cpu_kernels
from admmprune.export.cpu_kernels import FORMATS, kernel_available, pack, packed_linear
from admmprune.export.sparse import (
    KERNELS,
    SparseLinear,
    sparse_layers,
    sparsify,
    sparsify_with_report,
)


def pruned_linear(inp: int, out: int, keep: float, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(inp, out)
    with torch.no_grad():
        layer.weight.masked_fill_(torch.rand_like(layer.weight) >= keep, 0)
    return layer


@pytest.mark.parametrize("single", KERNELS)
@pytest.mark.parametrize("batched", KERNELS)
def test_sparse_linear_matches_dense_in_both_regimes(single, batched):
    layer = pruned_linear(300, 200, keep=0.05)
    sparse = SparseLinear(layer, single, batched)
    with torch.no_grad():
        for shape in ((1, 300), (64, 300), (2, 5, 300), (300,)):
            x = torch.randn(*shape)
            torch.testing.assert_close(sparse(x), layer(x), atol=1e-5, rtol=1e-5)


def test_sparsify_without_calibration_replaces_only_sparse_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(pruned_linear(400, 300, keep=0.02), nn.ReLU(),
                          nn.Linear(300, 100),  # dense: stays
                          nn.ReLU(), pruned_linear(100, 10, keep=0.1, seed=1))
    x = torch.randn(64, 400)
    with torch.no_grad():
        want = model(x)
        want1 = model(x[:1])
        sparsify(model, calibrate=False)
        assert [n for n, _ in sparse_layers(model)] == ["0", "4"]
        assert {(m.single, m.batched) for _, m in sparse_layers(model)} == {("bitmask", "csr")}
        assert type(model[2]) is nn.Linear
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[:1]), want1, atol=1e-5, rtol=1e-5)


def test_calibration_keeps_sparse_where_it_measures_a_gain():
    # 99% sparse 2048x2048: every sparse kernel beats dense many times over here
    big = pruned_linear(2048, 2048, keep=0.01)
    model = nn.Sequential(big, nn.ReLU(), pruned_linear(2048, 16, keep=0.3),
                          nn.ReLU(), pruned_linear(16, 16, keep=0.4, seed=2))
    x = torch.randn(8, 2048)
    with torch.no_grad():
        want = model(x)
        sparsify(model, batch=8)
        layers = dict(sparse_layers(model))
        assert "0" in layers and layers["0"].single != "dense" \
            and layers["0"].batched != "dense"
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("sparse_seconds", "chosen"), [(0.95, "dense"), (0.5, "index16")])
def test_a_sparse_kernel_must_beat_dense_by_min_gain(monkeypatch, sparse_seconds, chosen):
    from admmprune.export import sparse

    ran: list[str] = []
    original = SparseLinear.run

    def recording_run(self, kernel, flat):
        ran.append(kernel)
        return original(self, kernel, flat)

    def fake_time(fn, budget, repeats):  # dense 1 s; csr and bitmask 2 s; index16 as given
        ran.clear()
        fn()
        return {"dense": 1.0, "index16": sparse_seconds}.get(ran[-1], 2.0)

    monkeypatch.setattr(SparseLinear, "run", recording_run)
    monkeypatch.setattr(sparse, "_time", fake_time)
    model = sparsify(nn.Sequential(pruned_linear(64, 64, keep=0.2)), batch=4, min_gain=1.1)
    if chosen == "dense":
        assert type(model[0]) is nn.Linear  # 1.05x is below min_gain
    else:
        assert (model[0].single, model[0].batched) == ("index16", "index16")


def test_sparsified_lenet5_matches_the_dense_model():
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5").eval()
    for _, p in admmprune.prunable_parameters(model):
        with torch.no_grad():
            p.masked_fill_(torch.rand_like(p) > 0.05, 0)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        want, want1 = model(x), model(x[:1])
        sparse = sparsify(model, calibrate=False)
        assert len(sparse_layers(sparse)) == 2  # fc1, fc2; convolutions stay dense
        torch.testing.assert_close(sparse(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sparse(x[:1]), want1, atol=1e-5, rtol=1e-5)
    assert admmprune.sparsify is sparsify


def test_a_bad_batch_is_refused():
    with pytest.raises(ValueError, match="batch"):
        sparsify(nn.Linear(3, 3), batch=1)


def test_gpt2_conv1d_layers_are_sparsified_and_match_dense():
    from admmprune import ADMMPruner
    from admmprune.models import create_model

    torch.manual_seed(0)
    gpt = create_model("gpt", n_layer=2, n_embd=32, n_head=2, context=16).eval()
    ADMMPruner(gpt, 90.0).hard_prune()
    tokens = torch.randint(256, (3, 16))
    with torch.no_grad():
        want, want1 = gpt(tokens), gpt(tokens[:1, :1])
        sparsify(gpt, calibrate=False)
        replaced = sparse_layers(gpt)
        # every Conv1D of the blocks (c_attn, c_proj, c_fc, mlp c_proj), stored [in, out]
        assert len(replaced) == 8
        c_fc = next(m for n, m in replaced if n.endswith("mlp.c_fc"))
        assert (c_fc.in_features, c_fc.out_features) == (32, 128)
        torch.testing.assert_close(gpt(tokens), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gpt(tokens[:1, :1]), want1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("shape", [(7, 37), (33, 1030), (5, 2100), (1, 16)])
def test_the_compiled_kernels_match_dense(shape, format):
    # bitmask: 1030 and 2100 columns cross the 1,024-column block; 37 ends in a partial word.
    # index16: rows of 0, < 16, 16-31 and > 32 kept weights take each of its loops
    assert kernel_available(), cpu_kernels.kernel_problem()
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    weight[torch.rand(shape) < 0.7] = 0
    weight[0] = 0  # an empty row
    weight[-1, :] = torch.randn(shape[1])  # a full one
    bias = torch.randn(shape[0])
    packed = pack(weight, format)
    kept = int((weight != 0).sum())
    if format == "bitmask":
        assert packed.values.numel() == kept + 16  # the padding the vector loads may touch
        assert packed.nbytes() == 2 * shape[0] * -(-shape[1] // 16) + 4 * kept
    else:
        assert packed.nbytes() == 6 * kept + 8 * (shape[0] + 1)
    for rows in (1, 3):
        x = torch.randn(rows, shape[1])
        torch.testing.assert_close(packed_linear(x, packed, bias), x @ weight.t() + bias,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(packed_linear(x, packed), x @ weight.t(), atol=1e-4,
                                   rtol=1e-4)
    wide = torch.randn(2, 2 * shape[1])[:, ::2]  # not contiguous
    torch.testing.assert_close(packed_linear(wide, packed), wide @ weight.t(), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("format", FORMATS)
def test_the_compiled_kernels_share_rows_among_threads(format):
    # large enough for the parallel path; 601 rows do not split evenly
    torch.manual_seed(0)
    weight = torch.randn(601, 2100)
    weight[torch.rand(weight.shape) < 0.7] = 0
    packed, x = pack(weight, format), torch.randn(2, 2100)
    before = torch.get_num_threads()
    try:
        for threads in (2, 3):
            torch.set_num_threads(threads)
            torch.testing.assert_close(packed_linear(x, packed), x @ weight.t(), atol=1e-4,
                                       rtol=1e-4)
    finally:
        torch.set_num_threads(before)


def test_index16_reads_columns_beyond_32767():
    # the column indices are stored in int16 and read as unsigned
    weight = torch.zeros(3, 40000)
    weight[0, 39999], weight[1, 32768], weight[2, 5] = 2.0, -1.0, 3.0
    x = torch.randn(1, 40000)
    torch.testing.assert_close(packed_linear(x, pack(weight, "index16")), x @ weight.t())
    with pytest.raises(ValueError, match="65,536"):
        pack(torch.zeros(1, 70000), "index16")


def test_the_compiled_kernels_refuse_what_they_cannot_run():
    packed = pack(torch.eye(4), "bitmask")
    with pytest.raises(ValueError, match="float32 CPU inputs"):
        packed_linear(torch.ones(1, 5), packed)
    with pytest.raises(ValueError, match="float32 CPU inputs"):
        packed_linear(torch.ones(1, 4, dtype=torch.float64), packed)
    with pytest.raises(ValueError, match="2-D float32"):
        pack(torch.eye(4, dtype=torch.bfloat16), "index16")
    with pytest.raises(ValueError, match="unknown format"):
        pack(torch.eye(4), "csc")


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """The kernel as on a machine where compiling fails."""
    monkeypatch.setenv("ADMMPRUNE_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: "/bin/false")
    cpu_kernels._library.cache_clear()
    yield
    cpu_kernels._library.cache_clear()


def test_without_a_working_compiler_sparsify_falls_back_to_csr(no_compiler):
    assert not kernel_available()
    assert "did not compile" in cpu_kernels.kernel_problem()
    layer = pruned_linear(64, 32, keep=0.1)
    with pytest.raises(ValueError, match="'index16' is unavailable"):
        SparseLinear(layer, "index16", "csr")
    model = sparsify(nn.Sequential(layer), calibrate=False)
    assert (model[0].single, model[0].batched) == ("csr", "csr")
    x = torch.randn(1, 64)
    torch.testing.assert_close(model(x), layer(x), atol=1e-5, rtol=1e-5)


def test_the_example_decides_per_layer_and_end_to_end():
    big = pruned_linear(2048, 2048, keep=0.05)
    unused = pruned_linear(2048, 2048, keep=0.05, seed=3)
    model = nn.ModuleDict({"big": big, "unused": unused})
    x = torch.randn(1, 2048)
    want = big(x).detach()
    model, report = sparsify_with_report(model, example=lambda: model["big"](x))
    assert report.end_to_end is not None and not report.reverted
    assert set(report.speedups) == {"big"}  # never called by the example: not timed
    assert set(report.speedups["big"]) == {"single"}  # the regime the example used
    assert type(model["unused"]) is nn.Linear
    assert isinstance(model["big"], SparseLinear) and model["big"].single != "dense"
    assert model["big"].batched == "dense"  # never seen: kept dense
    torch.testing.assert_close(model["big"](x), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model["big"](torch.ones(2, 2048)), big(torch.ones(2, 2048)),
                               atol=1e-4, rtol=1e-4)


def test_a_model_slower_sparse_end_to_end_is_left_dense(monkeypatch):
    import time

    layer = pruned_linear(2048, 2048, keep=0.05)
    model = nn.Sequential(layer)
    x = torch.randn(1, 2048)
    original = SparseLinear.forward

    def slow(self, inp):  # as if the layers were fast alone but not in the model
        time.sleep(0.01)
        return original(self, inp)

    monkeypatch.setattr(SparseLinear, "forward", slow)
    model, report = sparsify_with_report(model, example=lambda: model(x))
    assert report.reverted and report.end_to_end < 1 and not report.kernels
    assert model[0] is layer


def test_a_generate_call_is_an_example_with_both_regimes():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and "lm_head" not in name:
                module.weight.masked_fill_(torch.rand_like(module.weight) < 0.9, 0)
    prompt = torch.randint(64, (1, 6))
    want = model.generate(prompt, max_new_tokens=4, do_sample=False)
    model, report = sparsify_with_report(
        model, example=lambda: model.generate(prompt, max_new_tokens=4, do_sample=False),
        example_repeats=1)
    # the prompt's rows (prefill) and one row per decoded token, for every block layer
    assert len(report.speedups) == 7
    assert all(set(regimes) == {"single", "batched"} for regimes in report.speedups.values())
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False), want)


def test_a_corrupt_cached_library_is_reported_and_removed(monkeypatch, tmp_path):
    # never overwrite a library this process has loaded: its mapped pages would change
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("ADMMPRUNE_KERNEL_DIR", str(first))
    cpu_kernels._library.cache_clear()
    try:
        assert kernel_available()  # builds into first/, to learn the file's name
        (built,) = first.glob("sparse_linear-*.so")
        second.mkdir()
        corrupt = second / built.name
        corrupt.write_bytes(b"not a shared library")
        monkeypatch.setenv("ADMMPRUNE_KERNEL_DIR", str(second))
        cpu_kernels._library.cache_clear()
        assert not kernel_available()
        assert "did not load" in cpu_kernels.kernel_problem() and not corrupt.exists()
        cpu_kernels._library.cache_clear()
        assert kernel_available() and corrupt.exists()  # built again
    finally:
        cpu_kernels._library.cache_clear()
