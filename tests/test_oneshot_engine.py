"""The block-by-block engine (admmprune.oneshot): exact against direct computations on the
pruned model, linear forward cost in depth, every architecture (GPT-2 Conv1D, Llama Linear /
GQA / rotary keywords, Hugging Face models with their caches, a plain module named by a
pattern), exact per-layer counts, N:M, per-layer ratios, and the lazy safetensors path equal
to the in-memory one while holding one block."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from admmprune import create_model
from admmprune.posttraining import (
    BlockError,
    Budget,
    LazyCheckpoint,
    OneShotError,
    SparseGPT,
    Wanda,
    empty_causal_lm,
    find_blocks,
    forward_groups,
    prune_blocks,
    prune_checkpoint,
    trim_heap,
)
from admmprune.posttraining.activations import calibrated_layers, input_grams
from admmprune.posttraining.inputs import capture_block_inputs
from admmprune.posttraining.sparsegpt import sparsegpt_prune, sparsegpt_prune_model
from admmprune.projection import survivor_count

VOCAB = 64


def tiny(kind: str, n_layer: int = 2) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gpt":
        return create_model("gpt", n_layer=n_layer, n_embd=32, n_head=2, context=16,
                            vocab_size=VOCAB)
    if kind == "llama":
        return create_model("llama", n_layer=n_layer, n_embd=32, n_head=4, n_kv_head=2,
                            intermediate=48, context=16, vocab_size=VOCAB)
    if kind == "hf_gpt2":  # use_cache is on by default: the engine must not grow a cache
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=n_layer, n_head=2, n_positions=16,
            bos_token_id=0, eos_token_id=0)).eval()
    if kind == "hf_llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layer,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)).eval()
    if kind == "plain":
        return Plain(n_layer)
    raise ValueError(kind)


class PlainBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Plain(nn.Module):
    """Not a transformer: an embedding, residual MLP blocks in ``stages``, a head."""

    def __init__(self, n_layer: int, width: int = 24) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, width)
        self.stages = nn.Sequential(*[PlainBlock(width) for _ in range(n_layer)])
        self.head = nn.Linear(width, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.emb(x)))


PLAIN = {"pattern": "stages.*", "exclude": ["head"]}


def options(kind: str) -> dict:
    return dict(PLAIN) if kind == "plain" else {}


def batches(count: int = 3, batch: int = 2, length: int = 16, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (batch, length), generator=g), None) for _ in range(count)]


class Recording:
    """A method that records every statistic it is given, then prunes by SparseGPT."""

    def __init__(self, inner=None) -> None:
        self.inner = inner or SparseGPT()
        self.name = self.inner.name
        self.statistic = self.inner.statistic
        self.seen: dict[str, torch.Tensor] = {}

    def prune(self, name, weight, statistic, budget):
        self.seen[name] = statistic.clone()
        return self.inner.prune(name, weight, statistic, budget)


def layers_of(model, block_name=None):
    found = calibrated_layers(model, None, ["head"] if isinstance(model, Plain) else None, "x")
    return [entry for entry in found if block_name is None
            or entry[0].startswith(block_name + ".")]


# -- blocks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [
    ("gpt", ["transformer.h.0", "transformer.h.1"]),
    ("llama", ["model.layers.0", "model.layers.1"]),
    ("hf_gpt2", ["transformer.h.0", "transformer.h.1"]),
    ("hf_llama", ["model.layers.0", "model.layers.1"]),
])
def test_blocks_of_hugging_face_models_and_the_wrappers_are_recognised(kind, expected):
    assert [name for name, _ in find_blocks(tiny(kind))] == expected


def test_blocks_of_any_module_by_pattern_or_the_longest_uniform_module_list():
    model = Plain(3)
    blocks = find_blocks(model, "stages.*")  # outermost matches only, not stages.0.fc1
    assert [n for n, _ in blocks] == ["stages.0", "stages.1", "stages.2"]
    assert all(b is model.stages[i] for i, (_, b) in enumerate(blocks))

    class Listed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.short = nn.ModuleList([nn.Linear(2, 2)])
            self.mixed = nn.ModuleList([nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)])
            self.blocks = nn.ModuleList([PlainBlock(2), PlainBlock(2)])

    assert [n for n, _ in find_blocks(Listed())] == ["blocks.0", "blocks.1"]
    with pytest.raises(BlockError, match="pattern"):
        find_blocks(model)  # a Sequential is not a ModuleList: nothing recognised
    with pytest.raises(BlockError, match="matches no module"):
        find_blocks(model, "layers.*")


# -- exactness ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_the_first_block_equals_sparsegpt_on_grams_computed_directly(kind):
    model = tiny(kind)
    dense = copy.deepcopy(model)
    data = batches()
    first = find_blocks(model)[0][0]
    direct = layers_of(dense, first)
    grams = input_grams(dense, [module for _, module, _, _ in direct], data)
    prune_blocks(model, data, "sparsegpt", all_percent=50, progress=False)
    params = dict(model.named_parameters())
    for (name, _, weight, dim), gram in zip(direct, grams, strict=True):
        expected, _ = sparsegpt_prune(weight, gram, all_percent=50, input_dim=dim)
        assert torch.equal(params[name], expected), name


@pytest.mark.parametrize("kind", ["gpt", "llama", "hf_llama"])
def test_block_order_statistics_are_the_grams_of_the_pruned_model_run_directly(kind):
    """Block i's layers see the model with blocks < i pruned and block i dense: the engine's
    statistic equals the gram a hook on that whole model measures (exact, not approximate)."""
    model = tiny(kind, n_layer=3)
    dense = copy.deepcopy(model)
    data = batches()
    method = Recording()
    prune_blocks(model, data, method, all_percent=60, progress=False)
    for block_name, _ in find_blocks(model):
        reference = copy.deepcopy(model)  # blocks < i pruned (and > i: they do not matter)
        dense_weights = dict(dense.named_parameters())
        for name, param in reference.named_parameters():
            if name.startswith(block_name + "."):
                param.data.copy_(dense_weights[name])
        entries = layers_of(reference, block_name)
        grams = input_grams(reference, [m for _, m, _, _ in entries], data)
        for (name, _, _, _), gram in zip(entries, grams, strict=True):
            assert torch.equal(method.seen[name], gram), name


@pytest.mark.parametrize("kind", ["gpt", "llama", "hf_gpt2"])
def test_sequential_statistics_are_the_grams_of_the_final_pruned_model(kind):
    """In sequential order a layer's inputs depend only on the blocks and groups pruned before
    it, so every statistic equals the gram of the final pruned model's inputs."""
    model = tiny(kind, n_layer=3)
    data = batches()
    method = Recording()
    prune_blocks(model, data, method, all_percent=60, order="sequential", progress=False)
    entries = layers_of(model)
    grams = input_grams(model, [m for _, m, _, _ in entries], data)
    assert set(method.seen) == {name for name, _, _, _ in entries}
    for (name, _, _, _), gram in zip(entries, grams, strict=True):
        assert torch.equal(method.seen[name], gram), name


def test_wanda_statistic_is_the_input_norm():
    model = tiny("llama")
    data = batches()
    method = Recording(inner=Wanda())
    prune_blocks(model, data, method, all_percent=50, order="sequential", progress=False)
    entries = layers_of(model)
    grams = input_grams(model, [m for _, m, _, _ in entries], data)
    for (name, _, _, _), gram in zip(entries, grams, strict=True):
        torch.testing.assert_close(method.seen[name], gram.diagonal().sqrt(), rtol=1e-12,
                                   atol=0)


def test_sequential_order_equals_layer_by_layer_calibration_when_no_layers_share_an_input():
    """Each plain block's fc1 and fc2 read different tensors: sequential order is the old
    layer-by-layer calibration of the whole model (O(layers²) passes), weight for weight."""
    engine, reference = tiny("plain", 3), tiny("plain", 3)
    data = batches()
    prune_blocks(engine, data, "sparsegpt", all_percent=70, order="sequential",
                 progress=False, **PLAIN)
    sparsegpt_prune_model(reference, data, all_percent=70, exclude=["head"], sequential=True)
    for (name, mine), theirs in zip(engine.named_parameters(), reference.parameters(),
                                    strict=True):
        assert torch.equal(mine, theirs), name


@pytest.mark.parametrize("kind, groups", [
    ("llama", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
               ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
    ("gpt", [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]]),
])
def test_sequential_groups_follow_the_forward_pass(kind, groups):
    model = tiny(kind)
    block_name, block = find_blocks(model)[0]
    entries = layers_of(model, block_name)
    inputs = capture_block_inputs(model, block, batches(1), device="cpu")
    found, calls = forward_groups(block, [m for _, m, _, _ in entries], inputs[0])
    short = [name.removeprefix(block_name + ".").removesuffix(".weight")
             for name, _, _, _ in entries]
    assert [[short[i] for i in group] for group in found] == groups
    assert calls == [1] * len(entries)


# -- cost -----------------------------------------------------------------------------------

def counter(counts: list[int], index: int):
    def hook(*_):
        counts[index] += 1
    return hook


# runs of every block per n calibration batches: a statistics pass and a pass feeding the
# next block; sequential: one discovery run on one input, then the 4 groups of a Llama block
# (q/k/v, o, gate/up, down) and the feeding pass
RUNS = {"block": lambda n: 2 * n, "sequential": lambda n: 1 + 4 * n + n}


@pytest.mark.parametrize("order", sorted(RUNS))
def test_forward_cost_is_linear_in_depth(order):
    """Every block runs a fixed number of times per calibration batch (statistics passes,
    then one to feed the next block) and the model itself runs once per batch: at depth 2, 4
    and 8 the counts are exact formulas in the depth, never depth²."""
    n = 3
    for depth in (2, 4, 8):
        model = tiny("llama", n_layer=depth)
        blocks = find_blocks(model)
        counts = [0] * depth
        for i, (_, block) in enumerate(blocks):
            block.register_forward_pre_hook(counter(counts, i))
        embedded = [0]
        model.model.embed_tokens.register_forward_pre_hook(counter(embedded, 0))
        prune_blocks(model, batches(n), "sparsegpt", all_percent=50, order=order,
                     progress=False)
        expected = [RUNS[order](n)] * depth
        expected[0] += n  # the capture stops each batch at block 0's door
        expected[-1] -= n  # the last block feeds nothing
        assert counts == expected, (depth, counts)
        assert embedded == [n]  # the whole model ran once per batch, to reach block 0


# -- architectures and budgets --------------------------------------------------------------

@pytest.mark.parametrize("order", ["block", "sequential"])
@pytest.mark.parametrize("kind", ["gpt", "llama", "hf_gpt2", "hf_llama", "plain"])
def test_every_architecture_is_pruned_to_exact_counts(kind, order):
    model = tiny(kind)
    records = prune_blocks(model, batches(), "sparsegpt", all_percent=60, order=order,
                           progress=False, **options(kind))
    entries = layers_of(model)
    assert [r.name for r in records] == [name for name, _, _, _ in entries]
    for record, (name, _, weight, _) in zip(records, entries, strict=True):
        assert record.total == weight.numel()
        assert record.kept == survivor_count(weight.numel(), 60)
        assert int(weight.count_nonzero()) <= record.kept
        assert name.startswith(record.block + ".")
    with torch.no_grad():
        out = model(batches(1)[0][0])
    logits = out if isinstance(out, torch.Tensor) else out.logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_uniform_ratios_are_exact_per_layer_and_two_of_four_holds(method):
    model = tiny("gpt")
    records = prune_blocks(model, batches(), method, all_percent=70, progress=False,
                           keep_masks=True)
    for record, (_, _, weight, dim) in zip(records, layers_of(model), strict=True):
        expected = survivor_count(weight.numel(), 70)
        assert record.kept == expected == int(record.mask.sum())
        if method == "wanda":  # every output row keeps the same count, give or take one
            per_row = record.mask.sum(dim)
            assert int(per_row.max() - per_row.min()) <= 1
        assert not weight[~record.mask].any()

    model = tiny("llama")
    records = prune_blocks(model, batches(), method, nm=(2, 4), progress=False,
                           keep_masks=True)
    for record, (_, _, weight, _) in zip(records, layers_of(model), strict=True):
        groups = record.mask.reshape(weight.shape[0], -1, 4)  # Linear: inputs on dim 1
        assert (groups.sum(-1) == 2).all() and record.kept * 2 == record.total
        assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all()


def test_per_layer_ratios_by_weight_or_module_name():
    model = tiny("llama")
    entries = layers_of(model)
    percents = {name.removesuffix(".weight") if i % 2 else name: 10.0 * (i % 9)
                for i, (name, _, _, _) in enumerate(entries)}
    records = prune_blocks(model, batches(), "wanda", all_percent=percents, progress=False)
    for i, (record, (_, _, weight, _)) in enumerate(zip(records, entries, strict=True)):
        assert record.kept == survivor_count(weight.numel(), 10.0 * (i % 9))
    first = entries[0][0]
    with pytest.raises(OneShotError, match="miss 1"):
        prune_blocks(tiny("llama"), batches(), all_percent={k: v for k, v in percents.items()
                                                            if k != first}, progress=False)
    with pytest.raises(OneShotError, match="not pruned here"):
        prune_blocks(tiny("llama"), batches(), all_percent={**percents, "lm_head": 50.0},
                     progress=False)


def test_refusals_say_what_to_do():
    with pytest.raises(OneShotError, match="exactly one"):
        prune_blocks(tiny("llama"), batches(), all_percent=50, nm=(2, 4))
    with pytest.raises(OneShotError, match="order"):
        prune_blocks(tiny("llama"), batches(), all_percent=50, order="random")
    with pytest.raises(OneShotError, match="outside the blocks"):
        prune_blocks(tiny("llama"), batches(), all_percent=50, include=["model.layers.*",
                                                                        "lm_head"])
    with pytest.raises(OneShotError, match="exclude"):
        prune_blocks(tiny("plain"), batches(), all_percent=50, pattern="stages.*")
    with pytest.raises(OneShotError, match="unknown method"):
        prune_blocks(tiny("llama"), batches(), "obs", all_percent=50)
    with pytest.raises(OneShotError, match="100"):
        prune_blocks(tiny("llama"), batches(), all_percent=100)

    class Wrong:
        name, statistic = "wrong", "gram"

        def prune(self, name, weight, statistic, budget):
            return weight[:, 1:], torch.ones_like(weight[:, 1:], dtype=torch.bool)

    with pytest.raises(OneShotError, match=r"\[out, in\]"):
        prune_blocks(tiny("llama"), batches(), Wrong(), all_percent=50, progress=False)
    with pytest.raises(BlockError, match="empty"):
        prune_blocks(tiny("llama"), [], all_percent=50, progress=False)


def test_the_method_sees_out_by_in_weights_and_its_budget():
    seen = []

    class Spy:
        name, statistic = "spy", None

        def prune(self, name, weight, statistic, budget):
            seen.append((name, tuple(weight.shape), statistic, budget))
            return weight.clone(), torch.ones_like(weight, dtype=torch.bool)

    model = tiny("gpt")
    prune_blocks(model, batches(), Spy(), all_percent=30, progress=False)
    c_attn = model.transformer.h[0].attn.c_attn.weight  # Conv1D: [in, out]
    assert seen[0] == ("transformer.h.0.attn.c_attn.weight", tuple(c_attn.t().shape), None,
                       Budget(all_percent=30.0))


def test_a_progress_bar_over_the_blocks_unless_turned_off(capsys):
    prune_blocks(tiny("llama"), batches(), "magnitude", all_percent=50, progress=True)
    assert "oneshot magnitude" in capsys.readouterr().err
    prune_blocks(tiny("llama"), batches(), "magnitude", all_percent=50, progress=False)
    assert capsys.readouterr().err == ""


# -- weights on disk ------------------------------------------------------------------------

@pytest.mark.parametrize("kind, order", [("hf_llama", "sequential"), ("hf_gpt2", "block")])
def test_a_checkpoint_pruned_from_disk_equals_the_in_memory_engine_and_holds_one_block(
        kind, order, tmp_path):
    source = tmp_path / "dense"
    tiny(kind, n_layer=3).save_pretrained(source)
    data = batches()
    in_memory = transformers.AutoModelForCausalLM.from_pretrained(source)
    expected = prune_blocks(in_memory, data, "sparsegpt", all_percent=60, order=order,
                            progress=False)

    block_bytes = {name: sum(p.numel() * p.element_size() for p in block.parameters())
                   for name, block in find_blocks(in_memory)}
    # the library's own path, step by step, to watch what is in memory
    model = empty_causal_lm(source)
    store = LazyCheckpoint(model, source, tmp_path / "stepwise")
    store.load_outside(find_blocks(model))
    materialised = []

    def count(index, name, block):
        real = [n for n, b in find_blocks(model)
                if any(p.device.type != "meta" for p in b.parameters())]
        materialised.append((name, real))

    records = prune_blocks(model, data, "sparsegpt", all_percent=60, order=order,
                           progress=False, callback=count, store=store)
    store.finish()
    assert [(r.name, r.kept) for r in records] == [(r.name, r.kept) for r in expected]
    # at every step the block being pruned is the only one in memory
    assert materialised == [(name, [name]) for name in block_bytes]
    assert store.peak_block_bytes == max(block_bytes.values())
    assert all(p.device.type == "meta" for _, b in find_blocks(model) for p in b.parameters())

    records = prune_checkpoint(source, tmp_path / "pruned", data, "sparsegpt", all_percent=60,
                               order=order, progress=False)
    assert [(r.name, r.kept) for r in records] == [(r.name, r.kept) for r in expected]
    # a sharded source (the output above): magnitude at the same ratio keeps every weight
    # SparseGPT left (as many nonzeros as it may keep, or fewer), so nothing changes
    prune_checkpoint(tmp_path / "pruned", tmp_path / "again", data, "magnitude",
                     all_percent=60, progress=False)
    for out in ("stepwise", "pruned", "again"):
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / out)
        theirs = back.state_dict()
        for name, tensor in in_memory.state_dict().items():
            assert torch.equal(theirs[name], tensor), (out, name)
    index = json.loads((tmp_path / "pruned" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3 + 1  # a shard per block, one for the rest
    assert (tmp_path / "pruned" / "config.json").is_file()


def test_a_block_read_from_a_checkpoint_leaves_no_mapping_of_the_file(tmp_path):
    # safetensors' default reader maps the whole file private and writable and hands out
    # views of that mapping: while one block lived, the whole checkpoint would sit in the
    # data segment that RLIMIT_DATA / RLIMIT_AS count (benchmarks/oneshot_memory.py)
    source = tmp_path / "dense"
    tiny("hf_llama", n_layer=3).save_pretrained(source)
    weights = str((source / "model.safetensors").resolve())
    maps = Path("/proc/self/maps")
    mapped = []

    def look(index, name, block):
        assert all(p.device.type == "cpu" for p in block.parameters())  # the block is read
        mapped.append(weights in maps.read_text())

    prune_checkpoint(source, tmp_path / "pruned", batches(), "sparsegpt", all_percent=50,
                     progress=False, callback=look)
    assert mapped == [False, False, False]
    assert weights not in maps.read_text()


def _rss_anon() -> int:
    text = Path("/proc/self/status").read_text()
    return int(next(line for line in text.splitlines() if line.startswith("RssAnon:")).split()[1])


def test_trim_heap_gives_the_freed_heap_back_to_the_system():
    # freeing a 4 MiB block raises glibc's mmap threshold past 1 MiB (unless fixed by
    # MALLOC_MMAP_THRESHOLD_): the 1 MiB tensors below come from the heap, behind a live one
    big = torch.ones(2**20)
    del big
    chunks = [torch.ones(2**18) for _ in range(64)]
    pin = torch.ones(2**18)  # above them: the heap cannot shrink past it
    before = _rss_anon()
    del chunks
    assert trim_heap()  # glibc
    assert _rss_anon() < before - 32 * 1024  # kB: most of the 64 MiB freed has left
    del pin


def test_a_checkpoint_gives_each_block_back_to_the_system_once_released(tmp_path,
                                                                       monkeypatch):
    import admmprune.posttraining.checkpoint as checkpoint

    source = tmp_path / "dense"
    tiny("hf_llama", n_layer=3).save_pretrained(source)
    trims = []
    monkeypatch.setattr(checkpoint, "trim_heap", lambda: trims.append(1) or True)
    prune_checkpoint(source, tmp_path / "pruned", batches(), all_percent=50, progress=False)
    assert len(trims) == 3


def test_a_safetensors_without_read_backends_still_reads_the_checkpoint(tmp_path, monkeypatch):
    import safetensors

    source = tmp_path / "dense"
    tiny("hf_llama").save_pretrained(source)
    expected = prune_checkpoint(source, tmp_path / "new", batches(), all_percent=50,
                                progress=False)
    real = safetensors.safe_open
    refused = []

    def before_0_8(filename, framework, device="cpu", **options):
        if options:
            refused.append(options)
            raise TypeError("safe_open() got an unexpected keyword argument 'backend'")
        return real(filename, framework, device=device)

    monkeypatch.setattr(safetensors, "safe_open", before_0_8)
    records = prune_checkpoint(source, tmp_path / "old", batches(), all_percent=50,
                               progress=False)
    assert refused and all(options == {"backend": "pread"} for options in refused)
    assert [(r.name, r.kept) for r in records] == [(r.name, r.kept) for r in expected]
    for name in ("new", "old"):
        assert (tmp_path / name / "model.safetensors.index.json").is_file()


def test_a_checkpoint_is_refused_when_the_output_exists_and_leaves_nothing_on_failure(
        tmp_path):
    source = tmp_path / "dense"
    tiny("hf_llama").save_pretrained(source)
    (tmp_path / "taken").mkdir()
    with pytest.raises(OneShotError, match="already exists"):
        prune_checkpoint(source, tmp_path / "taken", batches(), all_percent=50, progress=False)
    with pytest.raises(OneShotError, match="outside the blocks"):
        prune_checkpoint(source, tmp_path / "out", batches(), all_percent=50, progress=False,
                         include=["lm_head", "model.layers.*"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "taken"]
    with pytest.raises(OneShotError, match="config.json"):
        prune_checkpoint(tmp_path / "taken", tmp_path / "out", batches(), all_percent=50)
