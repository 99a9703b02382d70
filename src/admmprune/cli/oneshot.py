"""``admmprune oneshot``: prune a trained Hugging Face causal LM from calibration data alone."""

from __future__ import annotations

import argparse
import sys

from .. import jsonfile
from ..runs.config import ConfigError

__all__ = ["cmd_oneshot", "format_oneshot"]


def _nm(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"--nm takes N:M (e.g. 2:4), got {text!r}") from None
    return n, m


def format_oneshot(record: dict) -> str:
    """The summary a person reads: bpb before/after, kept weights per block, times, memory."""
    result = record["result"]
    target = f"{record['all_percent']:g}% removed" if record.get("all_percent") is not None \
        else f"{record['nm'][0]}:{record['nm'][1]}"
    lines = [f"{result['method']} ({record['allocation']} allocation), {target}: kept "
             f"{result['kept']:,} of {result['total']:,} weights "
             f"({result['sparsity_percent']:.2f}% removed)"]
    if "dense_bpb" in record:
        recovered = (f" -> {record['pruned_bpb']:.4f} after {record['recovery']['steps']} "
                     "recovery steps" if "pruned_bpb_before_recovery" in record else "")
        pruned = record.get("pruned_bpb_before_recovery", record["pruned_bpb"])
        lines.append(f"test bits per byte: dense {record['dense_bpb']:.4f} -> pruned "
                     f"{pruned:.4f}{recovered} ({record['test_windows']} windows of "
                     f"{record['context']} tokens)")
    if record.get("structured"):
        lines.append("kept neurons / attention groups per block: " + ", ".join(
            f"{b['name']} {b['neurons_after']}/{b['neurons_before']}, "
            f"{b['groups_after']}/{b['groups_before']}" for b in result["blocks"]))
    lines.append("kept per block: " + ", ".join(
        f"{b['name']} {100 * b['kept'] / b['total']:.1f}%" for b in result["blocks"]))
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    lines.append(f"time: {phases}; whole command {record['seconds']:.1f}s; peak RSS "
                 f"{record['peak_rss_mb']:.0f} MB")
    if "out" in record:
        lines.append(f"-> {record['out']} (Hugging Face directory; oneshot.json holds the "
                     "per-layer record)")
        if record.get("structured"):
            lines.append("   its blocks differ in width: load it with admmprune."
                         "load_huggingface (transformers' from_pretrained cannot build it)"
                         + ("; model.onnx runs anywhere (onnxruntime matched PyTorch within "
                            f"{record['onnx_max_abs_diff']:.1e})" if "onnx_max_abs_diff"
                            in record else ""))
    return "\n".join(lines)


def cmd_oneshot(args: argparse.Namespace) -> int:
    from ..posttraining.activations import CalibrationError
    from ..runs.oneshot import run_oneshot

    if (args.all_percent is None) == (args.nm is None):
        raise ConfigError("give exactly one of --all-percent P and --nm N:M")
    if args.structured:
        if args.method is not None or args.iterations is not None or args.nm is not None:
            raise ConfigError("--structured removes whole neurons and attention groups by "
                              "their calibration scores: --method, --iterations and --nm "
                              "apply to weight pruning; drop them")
        if args.allocation == "owl":
            raise ConfigError("--structured allocates by --allocation global or uniform")
    elif args.no_reconstruct:
        raise ConfigError("--no-reconstruct applies to --structured")
    args.method = args.method or "admm"
    if args.iterations is not None and args.method != "admm":
        raise ConfigError(f"--iterations sets the admm method's iterations per layer; "
                          f"{args.method} has none: drop it")
    if args.dense_bpb is not None and args.no_eval:
        raise ConfigError("--dense-bpb is the dense side of the test bpb that --no-eval "
                          "skips: give one of them")
    options = {"iterations": args.iterations} if args.iterations is not None else {}
    try:
        record = run_oneshot(args.model, args.out, method=args.method,
                             all_percent=args.all_percent, nm=_nm(args.nm),
                             allocation=args.allocation, calibration=args.calibration,
                             batch_size=args.batch_size, seed=args.seed,
                             data_dir=args.data_dir, context=args.context,
                             test_windows=None if args.no_eval else args.test_windows,
                             order=args.order, progress=not args.no_progress,
                             curve_rows=args.curve_rows or None,
                             curve_method=args.curve_method,
                             max_layer_percent=args.max_layer_percent,
                             dense_bpb=args.dense_bpb, structured=args.structured,
                             reconstruct=not args.no_reconstruct, onnx=args.onnx,
                             recover_steps=args.recover_steps,
                             recover_learning_rate=args.recover_lr,
                             **options)
    except CalibrationError as err:  # OneShotError and the methods' own errors
        raise ConfigError(str(err)) from None
    print(jsonfile.dumps(record) if args.json else format_oneshot(record))
    sys.stdout.flush()
    return 0
