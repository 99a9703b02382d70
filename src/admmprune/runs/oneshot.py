"""The ``admmprune oneshot`` job: a trained Hugging Face causal LM, calibration windows of a
text corpus, one call of :func:`admmprune.posttraining.prune_oneshot`, and the records a user
reads afterwards: the pruned model as a Hugging Face directory, the test bits per byte before
and after, per-layer kept weights, wall time per phase and peak memory (``oneshot.json``).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import jsonfile
from ..data.text import byte_tokens, find_text, load_text, token_windows
from ..export.huggingface import load_huggingface, save_causal_lm_onnx, save_huggingface
from ..posttraining import prune_oneshot
from ..posttraining.recovery import recover
from ..posttraining.structured import prune_units
from ..tasks.language_modeling import bits_per_byte, token_logits
from .rundir import RunError, check_output_path

__all__ = ["RECORD_FILE", "load_causal_lm", "text_calibration", "test_bpb", "peak_rss_mb",
           "run_oneshot"]

RECORD_FILE = "oneshot.json"
RECOVERY_SEED_OFFSET = 1_000_003  # the recovery's windows are not the calibration's


def load_causal_lm(model_dir: str | Path) -> nn.Module:
    """A Hugging Face causal LM from its directory (config.json + weights), in float32 and
    eval mode; nothing is downloaded.

    Raises:
        RunError: no such directory, or one transformers cannot load.
    """
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is no Hugging Face model directory (it needs config.json and "
                       "model.safetensors); `admmprune export RUN --format huggingface` "
                       "writes one from a run of gpt or llama")
    try:
        return load_huggingface(path)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds
        raise RunError(f"cannot load {path} as a causal language model: {err}") from None


def _context(model: nn.Module, context: int | None) -> int:
    config = getattr(model, "config", None)
    longest = getattr(config, "n_positions", None) or \
        getattr(config, "max_position_embeddings", None)
    if context is None:
        if longest is None:
            raise RunError("the model's config gives no context length: pass --context")
        return int(longest)
    if longest is not None and context > longest:
        raise RunError(f"--context {context} is longer than the model's {longest} positions")
    return context


def text_calibration(data_dir: str | None, context: int, count: int, batch_size: int,
                     seed: int, test_windows: int | None
                     ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """``count`` windows of ``context`` tokens drawn at random (``seed``) from the training
    split, in batches, and the first ``test_windows`` windows of the test split (None: no
    test; 0: all of it)."""
    splits = ("train", "test") if test_windows is not None else ("train",)
    corpus = load_text(find_text(data_dir), splits)
    assert corpus.train is not None
    x, _ = token_windows(byte_tokens(corpus.train), context)
    if count > x.shape[0]:
        raise RunError(f"--calibration {count}: the training split holds only {x.shape[0]} "
                       f"windows of {context} tokens")
    chosen = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    windows = x[chosen.sort().values]
    batches = [windows[i:i + batch_size] for i in range(0, count, batch_size)]
    test = None
    if test_windows is not None and corpus.test is not None:
        test = token_windows(byte_tokens(corpus.test), context, test_windows or None)
    return batches, test


@torch.no_grad()
def test_bpb(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], batch_size: int = 16
             ) -> float:
    """Bits per byte of ``model`` on the test windows (next-token cross-entropy, byte tokens).
    """
    x, y = test
    total, tokens = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        logits = token_logits(model(x[i:i + batch_size]))
        total += float(nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y[i:i + batch_size].reshape(-1),
            reduction="sum"))
        tokens += y[i:i + batch_size].numel()
    return bits_per_byte(total / tokens)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM on Linux, else ``ru_maxrss``)."""
    # Linux's VmHWM is this process's own peak; ru_maxrss carries the forking parent's peak
    # over across exec, so a small job started by a large benchmark would report the latter
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes there, KiB here


def run_oneshot(model_dir: str | Path, out: str | Path | None, *, method: str = "admm",
                all_percent: float | None = None, nm: tuple[int, int] | None = None,
                allocation: str | None = None, calibration: int = 128, batch_size: int = 16,
                seed: int = 0, data_dir: str | None = None, context: int | None = None,
                test_windows: int | None = 2048, order: str = "sequential",
                progress: bool = True, curve_rows: int | None = 32,
                curve_method: str | None = None, max_layer_percent: float | None = None,
                dense_bpb: float | None = None, structured: bool = False,
                reconstruct: bool = True, onnx: bool = False, recover_steps: int = 0,
                recover_learning_rate: float = 1e-4,
                **method_options: Any) -> dict[str, Any]:
    """Prune the model of ``model_dir`` post-training and write ``out`` (None: measure only).

    ``structured`` removes whole MLP neurons and attention groups instead of weights
    (:func:`~admmprune.posttraining.structured.prune_units`, ``allocation`` global or uniform,
    ``reconstruct``) and writes the shrunk model; ``onnx`` also writes ``out/model.onnx``,
    checked against PyTorch with onnxruntime. ``recover_steps`` > 0 then fine-tunes the
    pruned model for that many steps of ``batch_size`` training windows (drawn apart from
    the calibration windows; pruned weights stay zero), and ``pruned_bpb`` is measured after
    it (``pruned_bpb_before_recovery`` before).

    ``dense_bpb``, when given, is the dense model's test bpb on the same ``test_windows``
    measured before (the record marks it ``dense_bpb_given``); otherwise it is measured.

    Returns:
        The record written to ``out/oneshot.json``: options, dense and pruned test bpb,
        the result's summary (kept per layer and block, seconds per phase), peak RSS.

    Raises:
        RunError: an unusable model directory, data, or output directory;
        OneShotError: options the method refuses (before any work).
    """
    started = time.perf_counter()
    if structured and (all_percent is None or nm is not None):
        raise RunError("structured pruning removes a share of the blocks' weights as whole "
                       "neurons and attention groups: give --all-percent (N:M is for weights)")
    if onnx and out is None:
        raise RunError("--onnx writes OUT/model.onnx: give --out")
    if recover_steps < 0 or not recover_learning_rate > 0:
        raise RunError(f"the recovery takes steps >= 0 and a learning rate > 0, got "
                       f"{recover_steps} and {recover_learning_rate}")
    if out is not None:
        out = check_output_path(Path(out), "--out")
        if out.exists():
            raise RunError(f"{out} already exists: choose another --out or remove it")
    model = load_causal_lm(model_dir)
    context = _context(model, context)
    batches, test = text_calibration(data_dir, context, calibration, batch_size, seed,
                                     test_windows)
    record: dict[str, Any] = {
        "model": str(Path(model_dir).resolve()), "method": method, "all_percent": all_percent,
        "nm": list(nm) if nm else None, "calibration": calibration, "context": context,
        "seed": seed, "order": order, "curve_rows": curve_rows, "curve_method": curve_method,
        "max_layer_percent": max_layer_percent,
        "method_options": method_options}
    if test is not None:
        record["dense_bpb"] = test_bpb(model, test, batch_size) if dense_bpb is None \
            else dense_bpb
        record["dense_bpb_given"] = dense_bpb is not None
    if structured:
        assert all_percent is not None  # checked on entry
        done = prune_units(model, batches, percent=all_percent,
                           allocation=allocation or "global", reconstruct=reconstruct)
        record["result"], record["allocation"] = done.summary(), done.allocation
        record["structured"], record["reconstruct"] = True, reconstruct
        masked: list[str] = []  # the cut model is dense
    else:
        result = prune_oneshot(model, batches, method=method, all_percent=all_percent, nm=nm,
                               allocation=allocation, order=order, progress=progress,
                               curve_rows=curve_rows, curve_method=curve_method,
                               max_layer_percent=max_layer_percent, **method_options)
        record["result"] = result.summary()
        record["allocation"] = result.allocation
        masked = [r.name for r in result.records]
    if recover_steps:
        if test is not None:
            before = test_bpb(model, test, batch_size)
            record["pruned_bpb_before_recovery"] = before if math.isfinite(before) \
                else float("nan")
        # windows drawn with another seed than the calibration's
        training, _ = text_calibration(data_dir, context, recover_steps * batch_size,
                                       batch_size, seed + RECOVERY_SEED_OFFSET, None)
        start = time.perf_counter()
        losses = recover(model, training, learning_rate=recover_learning_rate, masked=masked,
                         progress=progress)
        model.eval()
        record["recovery"] = {"steps": recover_steps, "learning_rate": recover_learning_rate,
                              "batch_size": batch_size, "first_loss": losses[0],
                              "last_loss": losses[-1],
                              "seconds": time.perf_counter() - start}
    if test is not None:
        pruned = test_bpb(model, test, batch_size)
        record["pruned_bpb"] = pruned if math.isfinite(pruned) else float("nan")
        record["test_windows"] = int(test[0].shape[0])
    record["peak_rss_mb"] = peak_rss_mb()
    record["seconds"] = time.perf_counter() - started
    if out is not None:
        save_huggingface(model, out)
        if onnx:
            checked = save_causal_lm_onnx(model, out / "model.onnx", batches[0][:2])
            record["onnx_max_abs_diff"] = checked["max_abs_diff"]
        (out / RECORD_FILE).write_text(jsonfile.dumps(record, indent=2) + "\n")
        record["out"] = str(out)
    return record
