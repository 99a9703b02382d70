"""Torch-Pruning (torch_pruning 1.6.x) structured-pruning baseline on small HF causal LMs,
for docs/results.md section 17 (the same units as ``admmprune oneshot --structured``).

    python benchmarks/torch_pruning_units.py models/llama-pystdlib models/gpt-pystdlib \
        --percents 50 --seeds 0,1 --test-windows 1024 --recover-steps 200 --recover-lr 3e-4 \
        --out runs/tp-units.jsonl
    python benchmarks/torch_pruning_units.py --smoke      # tiny models and corpus, seconds

Removes whole MLP neurons and whole attention units (GPT-2: heads; Llama with grouped-query
attention: whole key-value groups = one k/v head and the query heads that read it), the same
ratio in every block, hidden/residual width untouched, lm_head and embeddings untouched, no
recovery unless --recover-steps (admmprune's own recovery fine-tune, the windows
``oneshot --recover-steps`` draws). Importance: torch_pruning's GroupMagnitudeImportance(p=2)
or GroupTaylorImportance (gradients of the next-token cross-entropy on the calibration batches).

How torch_pruning is used (see README.md for why):
  * the dependency graph is built by tp.pruner.BasePruner (= MetaPruner) from one calibration
    window, with two tracing-only patches that torch_pruning 1.6 needs for these models:
      - Llama: eager attention and RoPE replaced by identity while tracing (with RoPE, the
        rotate_half slice/cat/neg cycle sends get_pruning_group into an endless loop; with SDPA
        the GQA expand is invisible and k/v would be coupled to q channel-for-channel);
      - GPT-2: Conv1D layers are swapped for equivalent nn.Linear (torch_pruning does not know
        Conv1D), and attention is traced with c_attn's output split along dim 1 of a 2-D view
        (torch_pruning's split index mapping only handles dim 1; GPT-2 splits dim 2 of
        [B, T, 3C], which torch_pruning then treats as identity and couples c_proj's 256 inputs
        with c_attn's first 256 outputs only).
    The patches change only what the tracer sees; the pruned model is the stock HF model.
  * MLP neurons (both models) and GPT-2 heads (prune_num_heads=True, num_heads={c_attn: H},
    prune_head_dims=False) are chosen and removed by BasePruner.step(interactive=True), local
    (per-layer) ranking. Groups that would shrink the residual width (they contain the
    embedding) and Llama's attention width groups are skipped in the interactive loop.
  * Llama KV groups: BasePruner's own head pruning cannot remove whole KV groups (its GQA mode
    removes query heads only and never k/v; declaring each KV group a "head" makes it infer a
    wrong head_dim from k/v). So the script takes torch_pruning's dependency group rooted at
    o_proj's input channels, scores it with the same torch_pruning importance, averages the
    scores per KV group (as BasePruner does per head) and prunes the lowest groups through
    DG.get_pruning_group(o_proj, prune_linear_in_channels, idxs).prune().
Every cell is checked against the dense model with the removed units zeroed (o_proj/c_proj
columns, down_proj/mlp.c_proj inputs): the logits must agree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch
import torch_pruning as tp
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from admmprune.runs.oneshot import load_causal_lm, test_bpb, text_calibration

# ----------------------------------------------------------------------------- model layout

def arch(model: nn.Module) -> str:
    t = model.config.model_type
    if t not in ("llama", "gpt2"):
        raise SystemExit(f"unsupported model_type {t!r}")
    return t


def blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.model.layers) if arch(model) == "llama" else list(model.transformer.h)


def embeddings(model: nn.Module) -> list[nn.Module]:
    if arch(model) == "llama":
        return [model.model.embed_tokens]
    return [model.transformer.wte, model.transformer.wpe]


def _w(m: nn.Module) -> torch.Tensor:
    """weight as [out, in] for nn.Linear and Conv1D."""
    return m.weight.t() if isinstance(m, Conv1D) else m.weight


def unit_modules(block: nn.Module, kind: str) -> list[nn.Module]:
    if kind == "llama":
        a, f = block.self_attn, block.mlp
        return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, f.gate_proj, f.up_proj, f.down_proj]
    return [block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj]


def geometry(model: nn.Module) -> dict:
    """Per-block unit sizes of the dense model (weights only, biases excluded)."""
    c = model.config
    if arch(model) == "llama":
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        groups, per = c.num_key_value_heads, c.num_attention_heads // c.num_key_value_heads
        return dict(hidden=c.hidden_size, head_dim=hd, groups=groups, heads_per_group=per,
                    neurons=c.intermediate_size, neuron_w=3 * c.hidden_size,
                    group_w=c.hidden_size * hd * (2 * per + 2))
    hd = c.n_embd // c.n_head
    return dict(hidden=c.n_embd, head_dim=hd, groups=c.n_head, heads_per_group=1,
                neurons=c.n_inner or 4 * c.n_embd, neuron_w=2 * c.n_embd,
                group_w=4 * c.n_embd * hd)


def widths(model: nn.Module, g: dict) -> list[dict]:
    out = []
    for b in blocks(model):
        if arch(model) == "llama":
            a = b.self_attn
            out.append(dict(neurons=_w(b.mlp.gate_proj).shape[0],
                            q_heads=_w(a.q_proj).shape[0] // g["head_dim"],
                            kv_heads=_w(a.k_proj).shape[0] // g["head_dim"]))
        else:
            qkv = _w(b.attn.c_attn).shape[0]
            out.append(dict(neurons=_w(b.mlp.c_fc).shape[0], heads=qkv // 3 // g["head_dim"]))
    return out


def count(model: nn.Module) -> dict:
    kind = arch(model)
    unit_w = sum(_w(m).numel() for b in blocks(model) for m in unit_modules(b, kind))
    block_p = sum(p.numel() for b in blocks(model) for p in b.parameters())
    return dict(block_unit_weights=unit_w, block_params=block_p,
                model_params=sum(p.numel() for p in model.parameters()))


def plan(g: dict, percent: float, split: str) -> tuple[int, int]:
    """(neurons, groups) removed per block."""
    p = percent / 100
    groups = int(g["groups"] * p)  # the rule of admmprune's own uniform allocation
    if split == "same":  # same share of neurons and of groups (admmprune --allocation uniform)
        neurons = int(g["neurons"] * p)
    else:  # "fill": neurons make up the rest so that exactly `percent` of the weights go
        total = g["neurons"] * g["neuron_w"] + g["groups"] * g["group_w"]
        neurons = round((p * total - groups * g["group_w"]) / g["neuron_w"])
    neurons = min(max(neurons, 0), g["neurons"] - 1)
    groups = min(groups, g["groups"] - 1)
    return neurons, groups


# ----------------------------------------------------------------------------- GPT-2 Conv1D

def conv1d_to_linear(model: nn.Module) -> None:
    for b in blocks(model):
        for parent, name in ((b.attn, "c_attn"), (b.attn, "c_proj"), (b.mlp, "c_fc"),
                             (b.mlp, "c_proj")):
            c = getattr(parent, name)
            lin = nn.Linear(c.weight.shape[0], c.weight.shape[1])
            lin.weight = nn.Parameter(c.weight.detach().t().contiguous())
            lin.bias = nn.Parameter(c.bias.detach().clone())
            setattr(parent, name, lin)


def linear_to_conv1d(model: nn.Module) -> None:
    for b in blocks(model):
        for parent, name in ((b.attn, "c_attn"), (b.attn, "c_proj"), (b.mlp, "c_fc"),
                             (b.mlp, "c_proj")):
            lin = getattr(parent, name)
            out, inp = lin.weight.shape
            c = Conv1D(out, inp)
            c.weight = nn.Parameter(lin.weight.detach().t().contiguous())
            c.bias = nn.Parameter(lin.bias.detach().clone())
            setattr(parent, name, c)


# ----------------------------------------------------------------------------- tracing patches

@contextlib.contextmanager
def traceable(model: nn.Module):
    """What torch_pruning's tracer needs to see (see the module docstring)."""
    config = model.config
    saved_impl = config._attn_implementation
    config._attn_implementation = "eager"
    if arch(model) == "llama":
        import transformers.models.llama.modeling_llama as ML
        saved = ML.apply_rotary_pos_emb
        ML.apply_rotary_pos_emb = lambda q, k, *a, **kw: (q, k)
        try:
            yield
        finally:
            ML.apply_rotary_pos_emb = saved
            config._attn_implementation = saved_impl
    else:
        import transformers.models.gpt2.modeling_gpt2 as MG
        saved = MG.GPT2Attention.forward

        def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
            b, t, _ = hidden_states.shape
            qkv = self.c_attn(hidden_states).reshape(b * t, -1)
            q, k, v = qkv.split(self.split_size, dim=1)
            q, k, v = (x.reshape(b, t, -1, self.head_dim).transpose(1, 2) for x in (q, k, v))
            out, w = MG.eager_attention_forward(self, q, k, v, attention_mask,
                                                scaling=self.scaling, dropout=0.0)
            return self.c_proj(out.reshape(b, t, -1).contiguous()), w

        MG.GPT2Attention.forward = forward
        try:
            yield
        finally:
            MG.GPT2Attention.forward = saved
            config._attn_implementation = saved_impl


# ----------------------------------------------------------------------------- pruning

def make_importance(name: str):
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise SystemExit(f"unknown importance {name!r}")


def taylor_gradients(model: nn.Module, batches: list[torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.enable_grad():
        for x in batches:
            loss = model(x, labels=x).loss  # HF shifts labels: next-token cross-entropy
            (loss / len(batches)).backward()


def dedup(group):
    """Drop repeated indices from a group's items. torch_pruning's GQA index mapping (the
    reverse of repeat_kv's expand) maps each of the n_rep query heads onto the same k/v
    channels, so k_proj/v_proj get every index n_rep times; LinearPruner would then set
    out_features wrong and DG.check_pruning_group refuses the group as over-pruning."""
    for i in range(len(group)):
        item = group[i]
        seen, keep = set(), []
        for j, v in enumerate(item.idxs):
            if v not in seen:
                seen.add(v)
                keep.append(j)
        if len(keep) < len(item.idxs):
            new = tp._helpers.GroupItem(item.dep, [item.idxs[j] for j in keep])
            new.root_idxs = [item.root_idxs[j] for j in keep]
            group[i] = new
    return group


def prune(model: nn.Module, batches: list[torch.Tensor], importance_name: str,
          neurons: int, groups: int) -> dict:
    """Prune in place; returns what was removed (indices in dense numbering) and notes."""
    kind = arch(model)
    g = geometry(model)
    seconds = {}
    if kind == "gpt2":
        conv1d_to_linear(model)
    imp = make_importance(importance_name)
    bl = blocks(model)
    if kind == "llama":
        mlp_roots = {m: side for b in bl for m, side in
                     ((b.mlp.gate_proj, "out"), (b.mlp.up_proj, "out"), (b.mlp.down_proj, "in"))}
        attn_roots, num_heads = {}, {}
    else:
        mlp_roots = {m: side for b in bl for m, side in ((b.mlp.c_fc, "out"), (b.mlp.c_proj, "in"))}
        attn_roots = {m: side for b in bl
                      for m, side in ((b.attn.c_proj, "in"), (b.attn.c_attn, "out"))}
        num_heads = {b.attn.c_attn: g["groups"] for b in bl}
    # ratios so that torch_pruning's rounding gives exactly the planned counts:
    # n_pruned = n - int(n * (1 - r)) and n_heads = ceil(r * H)
    ratio = (neurons - 0.5) / g["neurons"] if neurons > 0 else 0.0
    head_ratio = (groups - 0.5) / g["groups"] if (groups > 0 and kind == "gpt2") else 0.0

    start = time.perf_counter()
    with traceable(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RMSNorm weights come out as "unwrapped parameters"
        pruner = tp.pruner.BasePruner(
            model, example_inputs=batches[0][:1], importance=imp, global_pruning=False,
            pruning_ratio=ratio, ignored_layers=[model.lm_head, *embeddings(model)],
            num_heads=num_heads, prune_num_heads=bool(num_heads), prune_head_dims=False,
            head_pruning_ratio=head_ratio, output_transform=lambda o: o.logits)
    seconds["trace"] = time.perf_counter() - start
    DG = pruner.DG
    names = {m: n for n, m in model.named_modules()}

    if importance_name == "taylor":
        start = time.perf_counter()
        taylor_gradients(model, batches)
        seconds["gradients"] = time.perf_counter() - start

    start = time.perf_counter()
    removed = {"neurons": {}, "channels": {}}  # block index -> sorted dense indices
    skipped, emb = [], set(embeddings(model))
    block_of = {m: i for i, b in enumerate(bl) for m in b.modules()}
    for group in pruner.step(interactive=True):
        root = group[0].dep.target.module
        side = "out" if DG.is_out_channel_pruning_fn(group[0].dep.handler) else "in"
        idxs = sorted(int(i) for i in group[0].idxs)
        touches_emb = any(dep.target.module in emb for dep, _ in group)
        if not touches_emb and mlp_roots.get(root) == side:
            removed["neurons"][block_of[root]] = idxs
            group.prune()
        elif not touches_emb and attn_roots.get(root) == side:
            if side == "out":  # c_attn rows: q,k,v of the same channel -> c_proj channel
                idxs = sorted({i % g["hidden"] for i in idxs})
            removed["channels"][block_of[root]] = idxs
            group.prune()
        else:
            skipped.append(f"{names.get(root, type(root).__name__)}:{side}:{len(idxs)}"
                           f"{':embedding' if touches_emb else ''}")

    if kind == "llama" and groups > 0:
        # whole KV groups, through torch_pruning's dependency graph and importance
        planned = []
        for i, b in enumerate(bl):
            o = b.self_attn.o_proj
            width = g["heads_per_group"] * g["head_dim"]
            full = DG.get_pruning_group(o, tp.prune_linear_in_channels,
                                        list(range(o.in_features)))
            scores = imp(full).view(g["groups"], width).mean(1)
            drop = scores.argsort()[:groups].sort().values.tolist()
            idxs = [d * width + j for d in drop for j in range(width)]
            grp = dedup(DG.get_pruning_group(o, tp.prune_linear_in_channels, idxs))
            if not DG.check_pruning_group(grp):
                raise RuntimeError(f"torch_pruning refuses the KV-group pruning of block {i}")
            planned.append((i, idxs, grp, [round(float(s), 4) for s in scores]))
        for i, idxs, grp, _scores in planned:  # build all groups first, then prune
            removed["channels"][i] = idxs
            grp.prune()
    seconds["select_and_prune"] = time.perf_counter() - start

    for m in model.modules():  # torch_pruning counts GQA-mapped duplicates in *_features
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
    if kind == "gpt2":
        linear_to_conv1d(model)
        for b in bl:
            b.attn.split_size = b.attn.c_attn.weight.shape[1] // 3
            b.attn.num_heads = b.attn.split_size // b.attn.head_dim
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return dict(removed=removed, skipped_groups=skipped, seconds=seconds,
                tp_ratio=ratio, tp_head_ratio=head_ratio)


@torch.no_grad()
def masked_dense_diff(model_dir: str, pruned: nn.Module, removed: dict, x: torch.Tensor
                      ) -> float:
    """Max |logit difference| between the pruned model and the dense one with the removed
    units' outputs zeroed (their columns of down_proj/mlp.c_proj and o_proj/attn.c_proj)."""
    dense = load_causal_lm(model_dir)
    kind = arch(dense)
    for i, b in enumerate(blocks(dense)):
        down = b.mlp.down_proj if kind == "llama" else b.mlp.c_proj
        o = b.self_attn.o_proj if kind == "llama" else b.attn.c_proj
        for m, idxs in ((down, removed["neurons"].get(i, [])), (o, removed["channels"].get(i, []))):
            if idxs:
                _w(m)[:, idxs] = 0  # _w is a view for Conv1D too
    return float((dense(x).logits - pruned(x).logits).abs().max())


# ----------------------------------------------------------------------------- driver

def smoke_models(directory: Path) -> list[str]:
    """A tiny Llama (grouped-query attention) and GPT-2 saved as Hugging Face directories,
    and a small corpus beside them."""
    llama = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=32)
    gpt = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=32, bos_token_id=None, eos_token_id=None)
    paths = []
    for name, config, cls in (("llama-smoke", llama, transformers.LlamaForCausalLM),
                              ("gpt-smoke", gpt, transformers.GPT2LMHeadModel)):
        torch.manual_seed(0)
        cls(config).save_pretrained(directory / name)
        paths.append(str(directory / name))
    (directory / "corpus.txt").write_text("def f(x):\n    return x + 1\n" * 200)
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="Hugging Face model directories")
    ap.add_argument("--percents", default="25,50")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--importances", default="magnitude,taylor")
    ap.add_argument("--split", choices=("fill", "same"), default="fill",
                    help="fill: KV groups/heads int(H*p), neurons fill up to exactly p of the "
                         "block weights (default); same: int(n*p) neurons and int(H*p) groups "
                         "(admmprune's uniform rule)")
    ap.add_argument("--data", default=None,
                    help="the corpus [default: $ADMMPRUNE_DATA_DIR/pystdlib]")
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--test-windows", type=int, default=512)
    ap.add_argument("--out", help="append every cell as a JSON line here")
    ap.add_argument("--smoke", action="store_true", help="tiny Llama and GPT-2, seconds")
    ap.add_argument("--recover-steps", type=int, default=0)
    ap.add_argument("--recover-lr", type=float, default=3e-4)
    args = ap.parse_args(argv)
    if args.smoke:
        smoke = tempfile.mkdtemp(prefix="tp-smoke-")
        args.models = smoke_models(Path(smoke))
        args.data = str(Path(smoke) / "corpus.txt")
        args.percents, args.seeds, args.calibration, args.batch_size = "50", "0", 4, 4
        args.context, args.test_windows = 16, 4
        args.recover_steps = args.recover_steps and 2
    elif not args.models:
        ap.error("give model directories, or --smoke")
    percents = [float(p) for p in args.percents.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    importances = args.importances.split(",")
    torch.manual_seed(0)
    versions = dict(torch=torch.__version__, transformers=transformers.__version__,
                    torch_pruning=metadata.version("torch-pruning"))
    print("versions", json.dumps(versions), flush=True)
    out = open(args.out, "a") if args.out else open(os.devnull, "w")
    for model_dir in args.models:
        dense_bpb = None
        for seed in seeds:
            batches, test = text_calibration(args.data, args.context, args.calibration,
                                             args.batch_size, seed, args.test_windows)
            if dense_bpb is None:  # the test windows do not depend on the seed
                model = load_causal_lm(model_dir)
                start = time.perf_counter()
                dense_bpb = test_bpb(model, test, args.batch_size)
                dense_eval_s = time.perf_counter() - start
                dense_count = count(model)
                g = geometry(model)
                print(f"dense {Path(model_dir).name}: bpb {dense_bpb:.4f} ({dense_eval_s:.1f}s) "
                      f"{json.dumps(dense_count)} geometry {json.dumps(g)}", flush=True)
            for importance in importances:
                for percent in percents:
                    row = dict(model=Path(model_dir).name, model_dir=str(model_dir),
                               importance=importance, percent=percent, seed=seed,
                               split=args.split, dense_bpb=dense_bpb, versions=versions)
                    try:
                        model = load_causal_lm(model_dir)
                        neurons, groups = plan(g, percent, args.split)
                        start = time.perf_counter()
                        info = prune(model, batches, importance, neurons, groups)
                        prune_s = time.perf_counter() - start
                        model.eval()
                        start = time.perf_counter()
                        bpb = test_bpb(model, test, args.batch_size)
                        eval_s = time.perf_counter() - start
                        after = count(model)
                        kept = widths(model, g)
                        want_n, want_h = g["neurons"] - neurons, g["groups"] - groups
                        key = "kv_heads" if arch(model) == "llama" else "heads"
                        ok = all(k["neurons"] == want_n and k[key] == want_h for k in kept)
                        diff = masked_dense_diff(model_dir, model, info["removed"],
                                                 test[0][:4]) if not args.recover_steps else 0.0
                        if args.recover_steps:
                            from admmprune.posttraining.recovery import recover
                            from admmprune.runs.oneshot import RECOVERY_SEED_OFFSET
                            training, _ = text_calibration(
                                args.data, args.context, args.recover_steps * args.batch_size,
                                args.batch_size, seed + RECOVERY_SEED_OFFSET, None)
                            row["pruned_bpb_before_recovery"] = bpb
                            start = time.perf_counter()
                            model.requires_grad_(True)
                            losses = recover(model, training, learning_rate=args.recover_lr,
                                             progress=False)
                            model.eval()
                            row["recovery"] = dict(steps=args.recover_steps, lr=args.recover_lr,
                                                   first_loss=losses[0], last_loss=losses[-1],
                                                   seconds=time.perf_counter() - start)
                            bpb = test_bpb(model, test, args.batch_size)
                        row.update(
                            pruned_bpb=bpb, gap=bpb - dense_bpb,
                            removed_pct=100 * (1 - after["block_unit_weights"]
                                               / dense_count["block_unit_weights"]),
                            planned=dict(neurons_removed=neurons, groups_removed=groups),
                            widths_as_planned=ok, kept=kept, before=dense_count, after=after,
                            masked_dense_max_abs_logit_diff=diff,
                            removed_channels={str(k): v for k, v in
                                              info["removed"]["channels"].items()},
                            skipped_groups=info["skipped_groups"],
                            tp_pruning_ratio=info["tp_ratio"],
                            tp_head_pruning_ratio=info["tp_head_ratio"],
                            seconds=dict(prune_total=prune_s, **info["seconds"], eval=eval_s))
                        if not ok:
                            row["error"] = "kept widths differ from the plan"
                        if not diff < 1e-3:
                            row["error"] = f"pruned != masked dense (max diff {diff:.3g})"
                    except Exception as err:  # report, do not hide
                        row["error"] = f"{type(err).__name__}: {err}"
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    if "pruned_bpb" in row:
                        print(f"{row['model']} {importance:9s} {percent:4.0f}% seed {seed}: "
                              f"dense {dense_bpb:.4f} pruned {row['pruned_bpb']:.4f} "
                              f"gap {row['gap']:+.4f} removed {row['removed_pct']:.2f}% "
                              f"kept {kept} maskdiff {diff:.1e} "
                              f"{prune_s:.1f}s+{eval_s:.1f}s"
                              f"{'  ERROR ' + row['error'] if 'error' in row else ''}",
                              flush=True)
                    else:
                        print(f"{row['model']} {importance} {percent}% seed {seed}: "
                              f"ERROR {row['error']}", flush=True)
    out.close()


if __name__ == "__main__":
    main()
