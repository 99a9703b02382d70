"""The compressed container, its encodings and quantization, dense and ONNX export, the
`admmprune export` command."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import onnxruntime  # the test extra installs it: a missing one fails, not skips
import pytest
import torch
import yaml
from conftest import make_run_dir
from torch import nn

import admmprune
from admmprune.cli import main
from admmprune.export import (
    ContainerError,
    ExportError,
    load_state_dict,
    read_manifest,
    save_compressed,
    save_dense,
    save_onnx,
    size_report,
)
from admmprune.export import encoding as enc
from admmprune.export.container import HEADER_SIZE
from admmprune.projection import global_topk_masks, magnitude_scores, survivor_count

MODEL_ARGS: dict[str, dict] = {"alexnet": {"num_classes": 10, "image_size": 67, "fc_width": 64},
                               "yolov4": {"num_classes": 10, "image_size": 64},
                               "yolov4-tiny": {"num_classes": 10, "image_size": 64},
                               "gpt": {"n_layer": 2, "n_embd": 32, "n_head": 2, "context": 16},
                               "llama": {"n_layer": 2, "n_embd": 32, "n_head": 2,
                                         "n_kv_head": 1, "intermediate": 192, "context": 16}}
# GPT's Conv1D block weights are reached by name (its LM head, the embedding, stays dense)
INCLUDE: dict[str, list[str]] = {"gpt": ["*.c_attn", "*.c_proj", "*.c_fc"],
                                 "llama": ["*_proj", "lm_head"]}


def prune(model: nn.Module, percent: float, include: list[str] | None = None) -> None:
    """Global magnitude pruning in place (pruned entries exactly +0.0)."""
    weights = [p.detach() for _, p in admmprune.prunable_parameters(model, include)]
    total = sum(w.numel() for w in weights)
    masks = global_topk_masks(magnitude_scores(weights), survivor_count(total, percent))
    for w, m in zip(weights, masks, strict=True):
        w.masked_fill_(~m, 0)


def pruned_lenet(percent: float = 99.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = admmprune.create_model("lenet5")
    # per-layer scale so global magnitude keeps some of every layer (random init would not)
    for _, p in admmprune.prunable_parameters(model):
        p.data /= p.data.abs().max()
    prune(model, percent)
    return model


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
        for k in a)


# -- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", admmprune.list_models())
def test_float32_round_trip_is_bitwise_exact_for_every_model_and_ratio(name, tmp_path):
    torch.manual_seed(0)
    model = admmprune.create_model(name, **MODEL_ARGS.get(name, {}))
    path = tmp_path / "m.apz"
    for percent in (0.0, 50.0, 99.0, 99.9):  # each ratio prunes further
        prune(model, percent, INCLUDE.get(name))
        save_compressed(model, path, model_name=name, model_args=MODEL_ARGS.get(name, {}))
        state = model.state_dict()
        loaded = load_state_dict(path)
        assert same_state(loaded, state), (name, percent)
        for key, tensor in state.items():  # bitwise, not only equal values
            if tensor.is_floating_point():
                assert torch.equal(loaded[key].view(torch.int32 if tensor.dtype ==
                                                    torch.float32 else tensor.dtype),
                                   tensor.view(torch.int32 if tensor.dtype == torch.float32
                                               else tensor.dtype))
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert path.stat().st_size < dense_bytes / 5  # 99.9%: most of the model is gone


def test_load_rebuilds_the_recorded_model_and_fills_given_modules(tmp_path):
    model = pruned_lenet(99.0).eval()
    path = save_compressed(model, tmp_path / "m.apz", model_name="lenet5")
    x = torch.randn(4, 1, 28, 28)
    rebuilt = admmprune.load(path)
    assert type(rebuilt) is type(model) and not rebuilt.training
    assert torch.equal(rebuilt(x), model(x))
    target = admmprune.create_model("lenet5")
    assert admmprune.load(path, target) is target
    assert torch.equal(target(x), model(x))
    assert torch.equal(admmprune.load(path, lambda: admmprune.create_model("lenet5"))(x),
                       model(x))


def test_arbitrary_modules_need_a_module_to_fill(tmp_path):
    model = nn.Sequential(nn.Linear(20, 30), nn.BatchNorm1d(30), nn.ReLU(), nn.Linear(30, 5))
    model[1].running_mean.uniform_()
    prune(model, 90.0)
    path = save_compressed(model, tmp_path / "any.apz")
    with pytest.raises(ExportError, match="records no registered model"):
        admmprune.load(path)
    fresh = nn.Sequential(nn.Linear(20, 30), nn.BatchNorm1d(30), nn.ReLU(), nn.Linear(30, 5))
    assert same_state(admmprune.load(path, fresh).state_dict(), model.state_dict())
    with pytest.raises(ExportError, match="does not fit"):
        admmprune.load(path, nn.Linear(20, 30))


class TiedLM(nn.Module):
    """An embedding and an LM head sharing one weight, as GPT-2 ties them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 64, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(x))))


@pytest.mark.parametrize("bits", [32, 4])
def test_a_tied_tensor_is_stored_once(bits, tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    prune(model, 50.0, include=["body"])
    path = save_compressed(model, tmp_path / "tied.apz", bits=bits, include=["body"])
    entries = {e["name"]: e for e in read_manifest(path)["tensors"]}
    assert entries["head.weight"]["layout"] == "shared"
    assert entries["head.weight"]["of"] == "embed.weight"
    assert entries["head.weight"]["segments"] == []
    table = 64 * 16 * 4
    assert table < read_manifest(path)["payload_bytes"] < 2 * table  # one copy, not two
    state = load_state_dict(path)
    assert list(state) == list(model.state_dict())  # every name, as the state dict has them
    assert state["head.weight"] is state["embed.weight"]
    loaded = admmprune.load(path, TiedLM())
    assert loaded.head.weight is loaded.embed.weight  # the module's tie stays
    x = torch.randint(64, (2, 5))
    with torch.no_grad():
        assert torch.equal(loaded.embed.weight, model.embed.weight)  # stored exactly
        if bits == 32:
            assert torch.equal(loaded(x), model(x))
    report = size_report(path)
    shared = next(r for r in report["layers"] if r["name"] == "head.weight")
    assert shared["stored_bytes"] == 0 and "embed.weight" in shared["encoding"]


def test_a_language_model_stores_its_tied_head_once(tmp_path):
    torch.manual_seed(0)
    model = admmprune.create_model("gpt", **MODEL_ARGS["gpt"])
    prune(model, 90.0, INCLUDE["gpt"])
    path = save_compressed(model, tmp_path / "gpt.apz", include=INCLUDE["gpt"],
                           model_name="gpt", model_args=MODEL_ARGS["gpt"])
    stored = {r["name"]: r["stored_bytes"] for r in size_report(path)["layers"]}
    assert stored["transformer.wte.weight"] == 256 * 32 * 4  # the table, once
    assert stored["lm_head.weight"] == 0
    rebuilt = admmprune.load(path)
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    assert same_state(rebuilt.state_dict(), model.state_dict())


def test_masks_choose_the_stored_entries_and_must_cover_the_weights(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    mask = torch.rand(8, 8) > 0.5
    model[0].weight.data[~mask] = 0
    model[0].weight.data[0, 0] = 0.0
    mask[0, 0] = True  # a survivor that happens to be zero is kept as a survivor
    path = save_compressed(model, tmp_path / "m.apz", masks={"0.weight": mask})
    assert read_manifest(path)["tensors"][0]["nnz"] == int(mask.sum())
    assert same_state(load_state_dict(path), model.state_dict())
    with pytest.raises(ExportError, match="outside its mask"):
        save_compressed(model, tmp_path / "m.apz", masks={"0.weight": torch.zeros(8, 8)})
    with pytest.raises(ExportError, match="names no tensor"):
        save_compressed(model, tmp_path / "m.apz", masks={"fc.weight": mask})


# -- quantization -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 6, 5, 4])
def test_quantized_export_keeps_the_pattern_with_at_most_2_pow_bits_values(bits, tmp_path):
    model = pruned_lenet(98.0)
    path = save_compressed(model, tmp_path / "q.apz", bits=bits, model_name="lenet5")
    loaded = load_state_dict(path)
    pruned = {n for n, _ in admmprune.prunable_parameters(model)}
    for key, tensor in model.state_dict().items():
        if key in pruned:
            assert torch.equal(loaded[key] != 0, tensor != 0), key
            assert len(torch.unique(loaded[key][loaded[key] != 0])) <= 2 ** bits
            error = (loaded[key] - tensor).abs().max()
            assert error < (tensor.max() - tensor.min()) / 2 ** bits, key
        else:  # biases stay as they are
            assert torch.equal(loaded[key], tensor), key
    assert path.stat().st_size < (tmp_path / "q.apz").stat().st_size + 1
    full = save_compressed(model, tmp_path / "f.apz")
    assert path.stat().st_size < full.stat().st_size


def test_quantize_is_lossless_with_few_distinct_values_and_never_makes_zeros():
    values = np.array([0.5, -1.0, 0.5, 2.0], dtype=np.float32)
    codebook, codes = enc.quantize(values, 4)
    assert np.array_equal(codebook[codes], values)
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000).astype(np.float32)
    values[values == 0] = 1.0
    codebook, codes = enc.quantize(values, 2)
    assert len(codebook) == 4 and np.all(codebook != 0)
    # every value goes to its nearest centroid
    nearest = np.argmin(np.abs(values[:, None] - codebook[None, :]), axis=1)
    assert np.array_equal(codebook[nearest], codebook[codes])


def test_kmeans_starts_linear_and_converges():
    values = np.concatenate([np.full(10, -1.0), np.full(10, 0.1), np.full(10, 3.0)])
    centroids, codes = enc.kmeans_1d(values, 3)
    assert np.allclose(centroids, [-1.0, 0.1, 3.0])
    assert list(np.bincount(codes)) == [10, 10, 10]


# -- encodings --------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 3, 4, 5, 7, 8, 11, 16, 32])
def test_bit_packing_round_trips(width):
    rng = np.random.default_rng(width)
    values = rng.integers(0, 1 << width, size=1001, dtype=np.int64)
    data = enc.pack_uint(values, width)
    assert len(data) == (1001 * width + 7) // 8
    assert np.array_equal(enc.unpack_uint(data, width, 1001), values)


@pytest.mark.parametrize("spec", [{"encoding": "bitmask"}, {"encoding": "csr", "count_width": 8},
                                  {"encoding": "relative", "width": 2},
                                  {"encoding": "relative", "width": 5}])
def test_position_encodings_round_trip_with_filler_entries(spec):
    rng = np.random.default_rng(1)
    shape = (40, 300)
    positions = np.sort(rng.choice(12000, 150, replace=False))
    positions[-1] = 11999  # last entry, long gap before it
    if spec["encoding"] == "relative":
        spec = {**spec, "entries": enc.relative_count(positions, spec["width"])}
        assert spec["entries"] > len(positions)  # gaps longer than 2**width - 2 need fillers
    segments = enc.encode_positions(positions, shape, spec)
    assert np.array_equal(enc.decode_positions(segments, shape, spec, 150), positions)


def test_the_smallest_encoding_is_chosen_per_tensor():
    shape = (100, 1000)
    every = np.arange(100_000)
    assert enc.choose_positions(every, shape, 32)[0]["encoding"] == "dense"
    half = every[::2]
    assert enc.choose_positions(half, shape, 32)[0]["encoding"] == "bitmask"
    rare = every[::997]
    spec, size = enc.choose_positions(rare, shape, 32)
    assert spec["encoding"] == "relative" and size < 100_000 / 8
    clustered = np.arange(0, 100_000, 1000)  # one survivor per row, column 0
    assert enc.choose_positions(clustered, shape, 4)[0]["encoding"] in ("csr", "relative")
    spec, size = enc.choose_positions(clustered, shape, 4)
    for other in ("bitmask",):
        assert size <= enc.choose_positions(clustered, shape, 4, allow_dense=False)[1]
        assert spec["encoding"] != other


# -- refusing bad files ------------------------------------------------------------------------

@pytest.fixture
def good_file(tmp_path):
    return save_compressed(pruned_lenet(99.0), tmp_path / "m.apz", model_name="lenet5")


def test_a_truncated_file_is_refused(good_file):
    data = good_file.read_bytes()
    for size in (len(data) - 1, len(data) // 2, HEADER_SIZE + 3):
        good_file.write_bytes(data[:size])
        with pytest.raises(ContainerError, match="truncated"):
            admmprune.load(good_file)
    good_file.write_bytes(data[:20])
    with pytest.raises(ContainerError, match="truncated"):
        admmprune.load(good_file)
    good_file.write_bytes(data + b"\0")
    with pytest.raises(ContainerError, match="longer than written"):
        admmprune.load(good_file)


def test_a_flipped_byte_anywhere_after_the_header_fields_is_refused(good_file):
    data = bytearray(good_file.read_bytes())
    for where in (40, HEADER_SIZE, HEADER_SIZE + 10, len(data) // 2, len(data) - 1):
        damaged = bytearray(data)
        damaged[where] ^= 0x01
        good_file.write_bytes(bytes(damaged))
        with pytest.raises(ContainerError, match="corrupt"):
            admmprune.load(good_file)


def test_a_flipped_length_or_magic_byte_is_refused(good_file):
    data = good_file.read_bytes()
    for where, message in ((0, "not an admmprune compressed model"), (17, "truncated|longer"),
                           (25, "truncated|longer")):
        damaged = bytearray(data)
        damaged[where] ^= 0x01
        good_file.write_bytes(bytes(damaged))
        with pytest.raises(ContainerError, match=message):
            admmprune.load(good_file)


def test_another_format_version_is_refused_with_what_to_do(good_file):
    data = bytearray(good_file.read_bytes())
    data[8:12] = struct.pack("<I", 2)
    good_file.write_bytes(bytes(data))
    with pytest.raises(ContainerError, match="version 2.*reads version 1.*upgrade"):
        admmprune.load(good_file)


def test_other_files_are_named_for_what_they_are(tmp_path):
    model = pruned_lenet(99.0)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ContainerError, match="torch.save file"):
        admmprune.load(tmp_path / "model.pt", model)
    (tmp_path / "empty.apz").write_bytes(b"")
    with pytest.raises(ContainerError, match="not an admmprune"):
        admmprune.load(tmp_path / "empty.apz", model)
    with pytest.raises(ExportError, match="does not exist"):
        admmprune.load(tmp_path / "missing.apz")
    with pytest.raises(ExportError, match="bits must be one of"):
        save_compressed(model, tmp_path / "x.apz", bits=3)


def test_loading_never_unpickles(good_file, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = admmprune.load(good_file)
    assert isinstance(model, nn.Module)
    manifest = read_manifest(good_file)
    assert json.dumps(manifest) and manifest["version"] == 1 and manifest["bits"] == 32
    assert [t["name"] for t in manifest["tensors"]] == list(model.state_dict())


# -- size report, dense, onnx ------------------------------------------------------------------

def test_size_report_adds_up(good_file):
    report = size_report(good_file)
    rows, total = report["layers"], report["total"]
    assert total["dense_bytes"] == 431080 * 4
    assert sum(r["stored_bytes"] for r in rows) == total["payload_bytes"]
    assert total["file_bytes"] == good_file.stat().st_size
    fc1 = next(r for r in rows if r["name"] == "fc1.weight")
    assert fc1["ratio"] > 20 and fc1["encoding"] != "raw"


def test_dense_safetensors_loads_into_the_unpruned_architecture(tmp_path):
    from safetensors.torch import load_file

    model = pruned_lenet(99.0)
    path = save_dense(model, tmp_path / "m.safetensors", model_name="lenet5")
    fresh = admmprune.create_model("lenet5")
    fresh.load_state_dict(load_file(str(path)))  # anyone, without admmprune
    assert same_state(fresh.state_dict(), model.state_dict())
    assert same_state(admmprune.load(path).state_dict(), model.state_dict())


def test_onnx_output_matches_pytorch(tmp_path):
    model = pruned_lenet(99.0).eval()
    x = torch.randn(3, 1, 28, 28)
    result = save_onnx(model, tmp_path / "m.onnx", x[:1])
    assert result["max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]  # dynamic batch
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ExportError, match="ONNX"):
        admmprune.load(tmp_path / "m.onnx")


# -- the command -------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path, pruned_lenet(99.0).state_dict(), test_subset=256)


def test_export_command_writes_next_to_the_run_and_reports_sizes(run_dir, capsys):
    assert main(["export", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "total" in out and "smaller" in out
    model = admmprune.load(run_dir / "model.apz")
    assert same_state(model.state_dict(), torch.load(run_dir / "model.pt"))



def test_eval_reads_the_projects_own_exported_files(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    want = capsys.readouterr().out.splitlines()[0].split(": ", 1)[1]
    for extra, name in (((), "model.apz"), (("--format", "dense"), "model.safetensors")):
        assert main(["export", str(run_dir), *extra]) == 0
        capsys.readouterr()
        assert main(["eval", str(run_dir), "--weights", str(run_dir / name)]) == 0, \
            capsys.readouterr().err
        assert capsys.readouterr().out.splitlines()[0].split(": ", 1)[1] == want, name
    assert main(["export", str(run_dir), "--bits", "4"]) == 0
    assert main(["eval", str(run_dir), "--weights", str(run_dir / "model-4bit.apz")]) == 0
    # a damaged file says what it is, not that it is a pickle
    damaged = run_dir.parent / "damaged.apz"
    data = bytearray((run_dir / "model.apz").read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--weights", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "is corrupt" in err and "pickle" not in err


def test_report_shows_the_sizes_of_exported_files(run_dir, capsys):
    import json

    assert main(["export", str(run_dir)]) == 0
    (run_dir / "summary.json").write_text(json.dumps({"model": "lenet5",
                                                      "dataset": "synthetic"}))
    capsys.readouterr()
    assert main(["report", str(run_dir), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "model.apz:" in out and "fc1.weight" in out and "total" in out


def test_quantized_export_reports_metrics_before_and_after(run_dir, capsys):
    assert main(["export", str(run_dir), "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "before quantization:" in out and "after 4-bit quantization:" in out
    assert (run_dir / "model-4bit.apz").is_file()


def test_export_command_dense_and_errors(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "dense", "--out",
                 str(tmp_path / "d.safetensors")]) == 0
    assert (tmp_path / "d.safetensors").is_file()
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


# -- centroid fine-tuning (trained quantization) -----------------------------------------------

def test_centroid_gradient_is_the_sum_of_its_members_gradients():
    from admmprune.export.finetune import centroid_gradient

    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    positions = torch.tensor([0, 2, 3, 5])  # entries 1 and 4 (grads 2, 5) are pruned
    codes = torch.tensor([1, 0, 1, 2])
    got = centroid_gradient(grad, positions, codes, 4)
    assert torch.equal(got, torch.tensor([3.0, 1.0 + 4.0, 6.0, 0.0]))  # 4th: no member
    # the same as autograd through W = scatter(centroids[codes]) for a real loss
    torch.manual_seed(0)
    centroids = torch.randn(4, requires_grad=True)
    x = torch.randn(5, 3)
    w = torch.zeros(6).index_put((positions,), centroids[codes]).reshape(2, 3)
    w.retain_grad()
    (x @ w.T).square().sum().backward()
    assert torch.allclose(centroid_gradient(w.grad, positions, codes, 4), centroids.grad)


def test_finetuning_moves_only_the_centroids(tmp_path):
    from admmprune.export.finetune import finetune_centroids, quantize_weights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.BatchNorm1d(40), nn.ReLU(), nn.Linear(40, 3))
    for _, p in admmprune.prunable_parameters(model):
        p.data /= p.data.abs().max()  # so that both layers keep survivors
    prune(model, 70.0)
    pattern = {n: p.detach() != 0 for n, p in admmprune.prunable_parameters(model)}
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k not in pattern}
    quantized = quantize_weights(model, 4)
    assert sorted(quantized) == sorted(pattern)
    start = {n: q.centroids.clone() for n, q in quantized.items()}
    x, y = torch.randn(64, 12), torch.randint(3, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    history = finetune_centroids(model, quantized, batches, epochs=3, lr=1e-2)
    assert len(history) == 3 and history[-1]["steps"] == 4
    state = model.state_dict()
    for key, value in frozen.items():  # biases, batch norm affine and running statistics
        assert torch.equal(state[key], value), key
    for name, q in quantized.items():
        w = state[name]
        assert torch.equal(w != 0, pattern[name])
        assert len(torch.unique(w[w != 0])) <= 16
        assert not torch.equal(q.centroids, start[name])  # they did move
        assert torch.equal(w.view(-1)[q.positions], q.centroids[q.codes])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    # the trained codebooks go into the file unchanged
    path = save_compressed(model, tmp_path / "t.apz", bits=4, masks=pattern)
    assert same_state(load_state_dict(path), state)


def test_export_finetunes_keeps_the_pattern_and_the_file_loads(run_dir, capsys):
    # dead units kept: this checks that only the centroids move (test_liveness drops them)
    keep = ["--dead-units", "keep"]
    assert main(["export", str(run_dir), "--bits", "4", "--out", str(run_dir / "plain.apz"),
                 *keep]) == 0
    assert main(["export", str(run_dir), "--bits", "4", "--finetune-epochs", "2",
                 "--finetune-lr", "1e-3", *keep]) == 0
    out = capsys.readouterr().out
    assert "before quantization:" in out and "after 4-bit quantization:" in out
    assert "after fine-tuning the centroids (2 epochs, Adam lr 0.001):" in out
    assert "training loss:" in out
    original = torch.load(run_dir / "model.pt")
    tuned = admmprune.load(run_dir / "model-4bit.apz").state_dict()  # loads as a module
    plain = load_state_dict(run_dir / "plain.apz")
    pruned = {n for n, _ in admmprune.prunable_parameters(admmprune.create_model("lenet5"))}
    for key, tensor in original.items():
        if key in pruned:
            assert torch.equal(tuned[key] != 0, tensor != 0), key
            assert len(torch.unique(tuned[key][tuned[key] != 0])) <= 16, key
        else:
            assert torch.equal(tuned[key], tensor), key  # only the centroids move
    assert any(not torch.equal(tuned[k], plain[k]) for k in pruned)
    meta = read_manifest(run_dir / "model-4bit.apz")["metadata"]
    assert meta["finetune_epochs"] == 2 and meta["finetune_lr"] == 1e-3


def test_finetuning_lowers_the_training_loss_that_quantization_raised(tmp_path):
    from admmprune.cli.export import _train_loss, export_run
    from admmprune.runs.config import Config
    from admmprune.runs.pipeline import load_data
    from admmprune.train import train_epoch

    run = tmp_path / "trained"
    run.mkdir()
    settings = {"model": "lenet5", "dataset": "synthetic", "train_subset": 256,
                "test_subset": 128, "device": "cpu", "progress": False}
    (run / "config.yaml").write_text(yaml.safe_dump(settings))
    config = Config(**settings)
    data = load_data(config, torch.device("cpu"))
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5")
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for epoch in range(5):  # 20 steps: a model that fits the data, so 4 bits cost something
        data.train.set_epoch(epoch)
        train_epoch(model, data.train, optimizer, progress=False)
    prune(model, 50.0)
    torch.save(model.state_dict(), run / "model.pt")
    pruned_loss = _train_loss(model.eval(), config, data, torch.device("cpu"))
    summary = export_run(run, bits=4, finetune_epochs=3, finetune_lr=1e-3)
    tune = summary["finetune"]
    assert tune["train_before"] > pruned_loss  # quantization hurts here
    assert tune["train_after"] < tune["train_before"]  # not higher; measured 0.1145 -> 0.0116
    assert len(tune["history"]) == 3 and summary["finetuned"]["loss"] > 0


def test_finetuning_needs_quantized_values_and_sane_arguments(run_dir, capsys):
    assert main(["export", str(run_dir), "--finetune-epochs", "1"]) == 2
    assert "--bits 8, 6, 5 or 4" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--bits", "4", "--finetune-epochs", "-1"]) == 2
    assert "finetune_epochs must be" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--bits", "4", "--finetune-epochs", "1",
                 "--finetune-lr", "0"]) == 2
    assert "finetune_lr must be" in capsys.readouterr().err
