"""One side of benchmarks/llmcompressor_check.py: prune a Hugging Face causal LM with
llmcompressor's SparseGPT or Wanda modifier on calibration windows written by the project,
and save the pruned model directory.

It runs in llmcompressor's own virtual environment (llmcompressor pins transformers and
compressed-tensors; the project does not depend on it), so it imports nothing of admmprune
unless ``--backend admmprune`` asks it to: that stand-in prunes with the project's own
``prune_oneshot`` in this process, on the same files, so that the plumbing can be tested
offline without llmcompressor.

    python llmcompressor_worker.py PLAN.json --backend llmcompressor

PLAN.json (written by llmcompressor_check.py) holds: ``model`` (the dense model directory),
``calibration`` (a safetensors file with one int64 tensor ``windows`` [N, T]), ``batch_size``,
``method`` (sparsegpt or wanda), ``sparsity`` (a fraction) or ``nm`` ([N, M]), ``layers`` (the
module names the project prunes), ``threads`` and ``out``. The worker writes ``out`` as a
Hugging Face directory (config.json + model.safetensors) and ``out/worker.json``: the seconds
of the pruning call alone, the peak resident memory, the backend and its version.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

BACKENDS = ("llmcompressor", "admmprune")
RECORD = "worker.json"


def load_model(model_dir: str) -> nn.Module:
    """The dense model in float32, eval mode, from local files only."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 local_files_only=True)
    return model.eval()


def calibration_batches(path: str, batch_size: int) -> list[torch.Tensor]:
    """The calibration windows of ``path`` in batches, in file order."""
    from safetensors.torch import load_file

    windows = load_file(path)["windows"]
    return [windows[i:i + batch_size] for i in range(0, windows.shape[0], batch_size)]


class _NoProcessor:
    """What oneshot takes for a tokenizer when the data are token ids already."""


def prune_llmcompressor(model: nn.Module, batches: list[torch.Tensor], plan: dict[str, Any]
                        ) -> str:
    """Prune ``model`` in place with llmcompressor's modifier through ``llmcompressor.oneshot``.

    Args:
        model: the dense model.
        batches: the calibration token batches ``[B, T]``, fed in this order, one per step.
        plan: ``method`` (sparsegpt or wanda), ``sparsity`` (a fraction) or ``nm``,
            ``layers`` (the module names to prune: the modifier's targets), and for
            sparsegpt optionally ``block_size`` and ``damp`` (both sides' defaults: 128, 0.01).

    Returns:
        llmcompressor's version.
    """
    import llmcompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import sgpt_base
    from torch.utils.data import DataLoader

    # the modifiers prune the modules of these classes inside each target; HF's GPT-2 Conv1D
    # is none of them (its name differs from torch's Conv1d by case) although their solvers
    # handle it: without this, a GPT-2 would come back dense
    if "Conv1D" not in sgpt_base.PRUNABLE_LAYER_TYPES:
        sgpt_base.PRUNABLE_LAYER_TYPES.append("Conv1D")
    nm = plan.get("nm")
    options: dict[str, Any] = {
        "sparsity": 1 - nm[0] / nm[1] if nm else plan["sparsity"],
        "mask_structure": f"{nm[0]}:{nm[1]}" if nm else "0:0",
        # exactly the project's layers: the default target "Linear" would take lm_head too
        "targets": [f"re:^{name.replace('.', '[.]')}$" for name in plan["layers"]],
        "ignore": []}
    if plan["method"] == "sparsegpt":
        modifier = SparseGPTModifier(**options, block_size=plan.get("block_size", 128),
                                     dampening_frac=plan.get("damp", 0.01))
    elif plan["method"] == "wanda":
        modifier = WandaPruningModifier(**options)
    else:
        raise SystemExit(f"llmcompressor backend: no method {plan['method']!r} "
                         "(sparsegpt or wanda)")
    # one batch per step, as the project's engine sees them: no shuffle, no re-tokenizing
    loader = DataLoader([{"input_ids": b} for b in batches], batch_size=None, shuffle=False)
    # byte tokens have no tokenizer: a stand-in processor stops oneshot looking for one, and
    # it is never used, since the batches come as a ready DataLoader and nothing is saved
    oneshot(model=model, recipe=modifier, dataset=loader, processor=_NoProcessor(),
            pipeline="sequential",
            num_calibration_samples=sum(int(b.shape[0]) for b in batches), output_dir=None,
            log_dir=None)
    return str(llmcompressor.__version__)


def prune_admmprune(model: nn.Module, batches: list[torch.Tensor], plan: dict[str, Any]) -> str:
    """The stand-in: the project's ``prune_oneshot`` (uniform allocation) on the same batches."""
    import admmprune
    from admmprune.posttraining import prune_oneshot

    nm = plan.get("nm")
    prune_oneshot(model, batches, method=plan["method"], allocation="uniform",
                  all_percent=None if nm else 100.0 * plan["sparsity"],
                  nm=tuple(nm) if nm else None, progress=False)
    return str(admmprune.__version__)


def save(model: nn.Module, model_dir: str, out: Path) -> None:
    """``out`` as a Hugging Face directory: the dense model's config files and the pruned
    weights as plain tensors (no compressed format, so any transformers reads it)."""
    from safetensors.torch import save_model

    out.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        if (Path(model_dir) / name).is_file():
            shutil.copy(Path(model_dir) / name, out / name)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})


def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM, since ru_maxrss carries the
    forking parent's peak over across exec (the check's parent holds a model).

    The same rule as ``admmprune.runs.oneshot.peak_rss_mb``, restated: this file runs under
    llmcompressor's own environment, where admmprune is not importable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="the plan JSON file written by llmcompressor_check.py")
    parser.add_argument("--backend", choices=BACKENDS, default="llmcompressor")
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    torch.set_num_threads(int(plan.get("threads", 1)))
    torch.manual_seed(0)
    out = Path(plan["out"])
    if out.exists():
        raise SystemExit(f"{out} already exists: the check writes each side once")
    model = load_model(plan["model"])
    batches = calibration_batches(plan["calibration"], int(plan["batch_size"]))
    prune = prune_llmcompressor if args.backend == "llmcompressor" else prune_admmprune
    start = time.perf_counter()
    version = prune(model, batches, plan)
    seconds = time.perf_counter() - start
    save(model, plan["model"], out)
    peak_mb = peak_rss_mb()
    record = {"backend": args.backend, "version": version, "seconds": seconds,
              "peak_rss_mb": peak_mb, "torch": torch.__version__}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
