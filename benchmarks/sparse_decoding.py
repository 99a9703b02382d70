"""Benchmark of what pruning buys a decoding transformer on this CPU: decode tokens/s (batch 1,
KV cache) and prefill tokens/s of dense against ``admmprune.sparsify`` at unstructured
50/70/90%, and against the smaller dense models a structured 25/50% shrink gives, at 1 and 2
threads, with the memory-traffic limit of each case.

    .venv/bin/python benchmarks/sparse_decoding.py                  # references + width 2048
    .venv/bin/python benchmarks/sparse_decoding.py --models models/llama-pystdlib --threads 1
    .venv/bin/python benchmarks/sparse_decoding.py --smoke          # tiny, seconds

Models: each Hugging Face directory of ``--models`` (default: the two converged references,
models/gpt-pystdlib and models/llama-pystdlib), and a Llama of width 2048 (MLP 5632, 32 heads of
64, 4 key-value heads, ``--wide-layers`` blocks, vocabulary 256) built from a config. Weights are
pruned per layer by magnitude (speed does not depend on which weights go); the LM head and
embeddings stay dense. ``sparsify`` chooses each layer's kernel by timing it inside the
model's own example (a prefill of ``--prompt`` tokens and ``--new-tokens`` decoded tokens)
at the thread count being measured, and keeps the model dense if it was slower end to end.

Structured rows are Llama models whose MLP width and head count are cut by the ratio (what a
shrink of removed neurons and heads leaves); their weights are random, as only speed is
measured. GPT-2's head size is tied to its width, so its structured rows cut the MLP only.
``--uneven 29,30,45,97`` adds a row whose blocks keep those percents of their neurons and
key-value groups (in block order; Llama only), as a global allocation leaves them: blocks of
unequal widths against the equal ones above.

Traffic limit: the bytes of weight one decoded token reads, dense / this case (every block
layer in the smaller of the bitmask and index16 formats; the smaller model for structured).
Batch-1 decoding of a large model is bound by it, so a measured speed-up near it is as good as
a kernel gets.

Timings are medians of ``--repeats`` runs, dense and the case interleaved so that load on a
shared machine moves both alike.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from admmprune.export.cpu_kernels import FORMATS, kernel_available, kernel_problem, pack
from admmprune.export.sparse import SparseLinear, sparsify_with_report
from admmprune.selection import is_transposed_linear, linear_weight
from admmprune.tables import format_table

REFERENCES = ["models/gpt-pystdlib", "models/llama-pystdlib"]


def wide_llama(layers: int, hidden: int = 2048, intermediate: int = 5632, heads: int = 32,
               kv_heads: int = 4) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=hidden // heads,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def structured(model: nn.Module, ratio: float) -> nn.Module:
    """A model of the widths a structured shrink by ``ratio`` leaves (random weights)."""
    config = copy.deepcopy(model.config)
    keep = 1 - ratio / 100
    if config.model_type == "llama":
        config.intermediate_size = max(1, round(config.intermediate_size * keep))
        group = config.num_attention_heads // config.num_key_value_heads
        kv_heads = max(1, round(config.num_key_value_heads * keep))
        config.head_dim = config.hidden_size // config.num_attention_heads
        config.num_key_value_heads, config.num_attention_heads = kv_heads, kv_heads * group
    else:  # GPT-2: heads are hidden // n_head wide, so only the MLP shrinks
        config.n_inner = max(1, round((config.n_inner or 4 * config.n_embd) * keep))
    torch.manual_seed(0)
    return type(model)(config).eval()


def uneven(model: nn.Module, kept_percents: Sequence[float]) -> nn.Module:
    """A Llama whose block i keeps ``kept_percents[i]`` of its MLP neurons and key-value
    groups (at least one of each), as :func:`admmprune.posttraining.units.shrink_to_widths`
    cuts a shrunk model (random weights)."""
    from admmprune.posttraining.units import shrink_to_widths

    config = model.config
    if config.model_type != "llama" or len(kept_percents) != config.num_hidden_layers:
        raise SystemExit(f"--uneven needs a Llama and one percent per block "
                         f"({config.num_hidden_layers}), got {list(kept_percents)}")
    torch.manual_seed(0)
    small = type(model)(copy.deepcopy(config)).eval()
    shrink_to_widths(small, {
        f"model.layers.{i}": {"neurons": max(1, round(config.intermediate_size * p / 100)),
                              "groups": max(1, round(config.num_key_value_heads * p / 100))}
        for i, p in enumerate(kept_percents)})
    return small


def block_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv1D layers of the blocks (not the LM head)."""
    return [(name, m) for name, m in model.named_modules()
            if (type(m) is nn.Linear or is_transposed_linear(m)) and "lm_head" not in name]


@torch.no_grad()
def prune_per_layer(model: nn.Module, percent: float) -> None:
    for _, layer in block_linears(model):
        weight = layer.weight
        drop = int(weight.numel() * percent / 100)
        if drop:
            cut = weight.abs().flatten().kthvalue(drop).values
            weight.masked_fill_(weight.abs() <= cut, 0)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weight one decoded token reads: every parameter except the embedding table
    (one row of it), each SparseLinear in its one-row format."""
    total = 0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            total += module.nbytes(module.single)
            total += 0 if module.bias is None else 4 * module.bias.numel()
        elif isinstance(module, nn.Embedding):
            total += 4 * module.embedding_dim
        else:
            total += sum(4 * p.numel() for p in module.parameters(recurse=False))
    return total


def compact_limit(model: nn.Module) -> float:
    """Dense bytes per token / bytes with every block layer in its smaller compact format."""
    dense = weight_bytes(model)
    saved = sum(4 * layer.weight.numel()
                - min(pack(linear_weight(layer).contiguous(), f).nbytes() for f in FORMATS)
                for _, layer in block_linears(model))
    return dense / (dense - saved)


def decode_run(model: nn.Module, prompt: torch.Tensor, new_tokens: int
               ) -> Callable[[], tuple[float, float]]:
    """A call that prefills ``prompt`` and decodes ``new_tokens`` greedily; returns the
    seconds of the prefill and of the decoding."""
    # transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"

    @torch.no_grad()
    def run() -> tuple[float, float]:
        start = time.perf_counter()
        out = model(prompt, use_cache=True)
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            token = out.logits[:, -1:].argmax(-1)
            out = model(token, use_cache=True, **{name: getattr(out, name)})
        return prefilled - start, time.perf_counter() - prefilled
    return run


def speeds(runs: dict[str, Callable[[], tuple[float, float]]], repeats: int, prompt: int,
           new_tokens: int) -> dict[str, tuple[float, float]]:
    """Median prefill and decode tokens/s per run, the runs interleaved."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: (prompt / statistics.median(t[0] for t in ts),
                   new_tokens / statistics.median(t[1] for t in ts))
            for name, ts in times.items()}


def cases(model: nn.Module, label: str, args: argparse.Namespace, threads: int,
          emit: Callable[[dict], None]) -> None:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(model.config.vocab_size, (1, args.prompt), generator=generator)
    dense_run = decode_run(model, prompt, args.new_tokens)
    for percent in args.percents:
        pruned = copy.deepcopy(model)
        prune_per_layer(pruned, percent)
        limit = compact_limit(pruned)
        example_run = decode_run(pruned, prompt, min(args.new_tokens, 4))
        pruned, report = sparsify_with_report(pruned, example=example_run,
                                              example_repeats=args.repeats)
        measured = speeds({"dense": dense_run,
                           "case": decode_run(pruned, prompt, args.new_tokens)},
                          args.repeats, args.prompt, args.new_tokens)
        emit({"model": label, "threads": threads, "case": f"unstructured {percent:g}%",
              "dense": measured["dense"], "sparse": measured["case"], "limit": limit,
              "kernels": report.counts(), "end_to_end_at_choice": report.end_to_end,
              "reverted": report.reverted})
        del pruned
        gc.collect()
    shapes = [(f"structured {ratio:g}%", lambda ratio=ratio: structured(model, ratio))
              for ratio in args.structured]
    if args.uneven and model.config.model_type == "llama":
        shapes.append((f"structured uneven {'/'.join(f'{p:g}' for p in args.uneven)}% kept",
                       lambda: uneven(model, args.uneven)))
    for case, build in shapes:
        small = build()
        measured = speeds({"dense": dense_run,
                           "case": decode_run(small, prompt, args.new_tokens)},
                          args.repeats, args.prompt, args.new_tokens)
        emit({"model": label, "threads": threads, "case": case,
              "dense": measured["dense"], "sparse": measured["case"],
              "limit": weight_bytes(model) / weight_bytes(small), "kernels": {},
              "end_to_end_at_choice": None, "reverted": False})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=REFERENCES,
                        help="Hugging Face causal-LM directories (default: the references)")
    parser.add_argument("--wide-layers", type=int, default=4,
                        help="blocks of the width-2048 Llama (0: leave it out)")
    parser.add_argument("--percents", default="50,70,90")
    parser.add_argument("--structured", default="25,50")
    parser.add_argument("--uneven", default="",
                        help="per-block kept percents of a Llama's neurons and key-value "
                        "groups, e.g. 29,30,45,97 (one per block; Llama models only)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompt", type=int, default=64, help="prefill tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON lines here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny: a width-64 Llama only, 90%% and 50%% structured, 1 thread")
    args = parser.parse_args(argv)
    for name in ("percents", "structured", "uneven"):
        setattr(args, name, [float(v) for v in getattr(args, name).split(",") if v])
    threads = [int(v) for v in args.threads.split(",")]
    if args.smoke:
        args.models, args.percents, args.structured, threads = [], [90.0], [50.0], [1]
        args.uneven = [25.0]
        args.prompt, args.new_tokens, args.repeats = 4, 2, 1
    print(f"compiled sparse kernels: {'available' if kernel_available() else kernel_problem()}",
          flush=True)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        (dense_prefill, dense_decode), (prefill, decode) = row["dense"], row["sparse"]
        print(f"{row['model']} {row['threads']} thread(s) {row['case']}: decode "
              f"{decode:.1f} tok/s ({decode / dense_decode:.2f}x dense {dense_decode:.1f}), "
              f"prefill {prefill:.0f} tok/s ({prefill / dense_prefill:.2f}x), traffic limit "
              f"{row['limit']:.2f}x, kernels at one row {row['kernels']}"
              + (" (reverted to dense: slower end to end)" if row["reverted"] else ""),
              flush=True)
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")

    from transformers import AutoModelForCausalLM

    models: list[tuple[str, Callable[[], nn.Module]]] = [
        (Path(d).name, lambda d=d: AutoModelForCausalLM.from_pretrained(d).eval())
        for d in args.models]
    if args.smoke:
        models.append(("llama-64", lambda: wide_llama(1, 64, 176, 4, 2)))
    elif args.wide_layers:
        models.append((f"llama-2048x{args.wide_layers}", lambda: wide_llama(args.wide_layers)))
    for label, build in models:
        model = build()
        for count in threads:
            cases(model, label, args, count, emit)
        del model
        gc.collect()
    table = [[r["model"], str(r["threads"]), r["case"],
              f"{r['sparse'][1]:.1f} ({r['sparse'][1] / r['dense'][1]:.2f}x)",
              f"{r['sparse'][0]:.0f} ({r['sparse'][0] / r['dense'][0]:.2f}x)",
              f"{r['limit']:.2f}x"] for r in rows]
    print(format_table(["model", "threads", "case", "decode tok/s (x dense)",
                        "prefill tok/s (x dense)", "traffic limit"], table), flush=True)
    slower = [r for r in rows if r["sparse"][1] < r["dense"][1]]
    print(f"cases slower than dense at decoding: {len(slower)} of {len(rows)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
