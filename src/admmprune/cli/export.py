"""``admmprune export RUN_DIR``: a run directory's model in one of the export formats, with
its size report and, for quantized values, the test metrics before and after (and after
fine-tuning the centroids on the run's training data, with ``finetune_epochs``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from ..export.container import ContainerError
from ..export.formats import ExportError, load, save_compressed, save_dense, save_onnx
from ..export.huggingface import HuggingFaceExportError, save_huggingface
from ..export.size import format_size_report, size_report

__all__ = ["DEAD_UNITS", "FORMATS", "default_path", "export_run", "format_export_summary"]

FORMATS = ("compressed", "dense", "onnx", "huggingface")
DEAD_UNITS = ("auto", "drop", "keep")


def default_path(run_dir: Path, fmt: str, bits: int = 32, weights: str | Path | None = None
                 ) -> Path:
    """RUN_DIR/model.apz (model-4bit.apz when quantized), model.safetensors, model.onnx,
    model-hf/ (a Hugging Face directory);
    named after the weights file instead of model when ``weights`` is given (``--weights
    RUN/dense.pt`` writes RUN/dense.apz: a derived file's name says what it holds)."""
    stem = Path(weights).stem if weights else "model"
    if fmt == "compressed":
        return run_dir / (f"{stem}.apz" if bits == 32 else f"{stem}-{bits}bit.apz")
    return run_dir / (stem + {"dense": ".safetensors", "onnx": ".onnx", "huggingface": "-hf"}[fmt])


def _evaluate(model: nn.Module, config, data, device, split: str = "test") -> dict:
    from ..tasks import create_task
    from ..train import evaluate

    task = create_task(config.task)
    task.bind(model)
    return evaluate(model.to(device), getattr(data, split), device=device, task=task,
                    amp="off")


def _train_loss(model: nn.Module, config, data, device) -> float:
    """The task loss over the training split in eval mode; epoch 0's order and augmentation
    each time, so two measurements see the same batches."""
    if hasattr(data.train, "set_epoch"):
        data.train.set_epoch(0)
    return float(_evaluate(model, config, data, device, "train")["loss"])


def _finetune(model: nn.Module, config, data, device, *, bits: int, epochs: int, lr: float,
              measure_test: bool) -> dict:
    """Quantize ``model`` in place, then fine-tune its centroids; returns the test metrics
    right after quantization (``after``, when ``measure_test``), the training loss right
    after quantization and after fine-tuning (measured in eval mode over the whole training
    split, the same way both times) and the per-epoch training statistics."""
    from ..export.finetune import finetune_centroids, quantize_weights
    from ..export.formats import sparse_names
    from ..tasks import create_task
    from ..train import NonFiniteLossError

    # what save_compressed stores sparse, fixed before training: the file keeps these
    # positions even where a centroid is trained to exactly 0
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    result: dict = {"supports": sparse_names(model, state, None, config.include,
                                              config.exclude)}
    model.to(device)
    quantized = quantize_weights(model, bits, config.include, config.exclude)
    if measure_test:
        result["after"] = _evaluate(model, config, data, device)
    result["train_before"] = _train_loss(model, config, data, device)
    task = create_task(config.task)
    task.bind(model)
    try:
        history = finetune_centroids(model, quantized, data.train, epochs=epochs, lr=lr,
                                     task=task, device=device,
                                     max_steps=config.steps_per_epoch, amp=config.amp,
                                     accumulate=config.accumulate, progress=config.progress)
    except NonFiniteLossError as err:
        raise ExportError(f"fine-tuning the centroids diverged ({err}); lower "
                          f"--finetune-lr (it was {lr:g})") from None
    result["train_after"] = _train_loss(model, config, data, device)
    result["history"] = [{k: h[k] for k in ("loss", "steps", "seconds") if k in h}
                         for h in history]
    result["quantized"] = sorted(quantized)
    model.cpu()
    return result


def export_run(run_dir: str | Path, fmt: str = "compressed", *, bits: int = 32,
               out: str | Path | None = None, weights: str | Path | None = None,
               **options) -> dict:
    """Export RUN_DIR/model.pt (or ``weights``) to ``out`` (default: :func:`default_path`);
    ``options`` are :func:`_export_run`'s. A path that is one of a run directory's own
    files is refused (:func:`admmprune.runs.rundir.check_output_path`), and a write that
    fails (a full disk) leaves no temporary file behind."""
    from ..runs.rundir import check_output_path

    path = check_output_path(
        Path(out) if out else default_path(Path(run_dir), fmt, bits, weights),
        "--out" if out else "the default output file")
    return _export_run(run_dir, fmt, bits=bits, path=path, weights=weights, **options)


def _export_run(run_dir: str | Path, fmt: str = "compressed", *, bits: int = 32,
                path: Path, weights: str | Path | None = None,
                data_dir: str | None = None, evaluate: bool = True,
                finetune_epochs: int = 0, finetune_lr: float = 1e-4,
                dead_units: str = "auto", trust_pickle: bool = False,
                allow_changed_sources: bool = False) -> dict:
    """Export RUN_DIR/model.pt (or ``weights``); returns a summary dict: path, bytes, the
    model.pt bytes, the size report (compressed), metrics before/after (quantized).

    ``finetune_epochs`` > 0 (compressed, bits < 32): after k-means, train only the centroids
    for that many epochs on the run's training data (Adam at ``finetune_lr``; see
    :mod:`.finetune`) and write the fine-tuned codebooks; the summary then also holds the
    test metrics after fine-tuning (``finetuned``, measured on the written file) and the
    training loss after quantization and after fine-tuning (``finetune``). Fine-tuning runs
    on the recipe's device; everything else on the CPU.

    ``dead_units``: ``drop`` zeroes the bias and incoming weights of units that no surviving
    weight reads (:mod:`admmprune.channels.liveness`; the outputs stay the same, checked on test
    examples) before writing, ``keep`` stores the state dict as it is, ``auto`` drops them
    for quantized compressed files, whose values change anyway, and keeps them otherwise
    (a float32 file is then the state dict bit for bit).

    ``allow_changed_sources``: export a run whose imported files changed since, with a
    warning (see :func:`~admmprune.runs.build.load_run`); refused otherwise."""
    from ..runs.build import (
        build_model,
        load_run,
        model_args,
        recorded_num_classes,
        resolve_device,
    )
    from ..runs.rundir import load_run_config

    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) \
            or finetune_epochs < 0:
        raise ExportError(f"finetune_epochs must be a whole number >= 0, got "
                          f"{finetune_epochs!r}")
    if not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
        raise ExportError(f"finetune_lr must be a number > 0, got {finetune_lr!r}")
    if finetune_epochs and (fmt != "compressed" or bits == 32):
        raise ExportError("fine-tuning trains the centroids of quantized values: it needs "
                          "--format compressed with --bits 8, 6, 5 or 4")
    if dead_units not in DEAD_UNITS:
        raise ExportError(f"dead_units must be one of {', '.join(DEAD_UNITS)}, got "
                          f"{dead_units!r}")
    drop_dead = dead_units == "drop" or (dead_units == "auto" and fmt == "compressed"
                                          and bits < 32)
    run_dir = Path(run_dir)
    overrides = {"data_dir": data_dir} if data_dir else {}
    config = load_run_config(run_dir, overrides)
    device = resolve_device(config.device) if finetune_epochs else torch.device("cpu")
    needs_data = fmt == "onnx" or (fmt == "compressed" and bits < 32 and evaluate) \
        or drop_dead
    # without the data's class count recorded or given, the data gives it
    reads_data = needs_data or finetune_epochs or (
        config.model_args.get("num_classes") is None and recorded_num_classes(run_dir) is None)
    run = load_run(run_dir, config=config, device=device, weights=weights,
                   trust_pickle=trust_pickle, allow_changed_sources=allow_changed_sources,
                   splits=("train", "test") if finetune_epochs else ("test",),
                   data="optional" if reads_data else "none")
    model, data, weights, num_classes = run.model, run.data, run.weights, run.num_classes
    summary: dict = {"format": fmt, "bits": bits, "weights": str(weights)}
    if run.data_error is not None:
        err = run.data_error
        if fmt == "onnx":
            raise ExportError(f"the ONNX export traces the model on a test example, and "
                              f"the test data cannot be read: {err}")
        if dead_units == "drop":
            raise ExportError(f"dropping dead units checks the outputs on test "
                              f"examples, and the test data cannot be read: {err} (or "
                              "export with --dead-units keep)")
        if finetune_epochs:
            raise ExportError(f"fine-tuning the centroids trains on the run's training "
                              f"data, which cannot be read: {err} (or export without "
                              "--finetune-epochs)")
        summary["data_error"] = err
    if drop_dead and data is not None and data.test is not None:
        summary["dead_units"] = _drop_dead_units(model, data, strict=dead_units == "drop")
    args = model_args(config, num_classes)
    if fmt == "compressed" and finetune_epochs:
        measure = evaluate and data.test is not None
        if measure:
            summary["before"] = _evaluate(model, config, data, device)
        tuned = _finetune(model, config, data, device, bits=bits, epochs=finetune_epochs,
                          lr=finetune_lr, measure_test=measure)
        if "after" in tuned:
            summary["after"] = tuned.pop("after")
        supports, names = tuned.pop("supports"), tuned.pop("quantized")
        # The fine-tuned weights hold at most 2**bits distinct values per tensor, which
        # quantize() stores losslessly: the file's codebooks are the trained centroids. The
        # masks keep the positions even where a centroid reached exactly 0.
        save_compressed(model, path, bits=bits, masks=supports, model_name=config.model,
                        model_args=args, metadata={
                            "run": run_dir.name, "weights": weights.name,
                            "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr})
        written = load(path, build_model(config, num_classes))
        _check_written(model, written, names)
        summary["finetune"] = {"epochs": finetune_epochs, "lr": finetune_lr, **tuned}
        summary["size"] = size_report(path, reference=weights)
        if measure:
            summary["finetuned"] = _evaluate(written, config, data, device)
    elif fmt == "compressed":
        save_compressed(model, path, bits=bits, include=config.include,
                        exclude=config.exclude, model_name=config.model, model_args=args,
                        metadata={"run": run_dir.name, "weights": weights.name})
        summary["size"] = size_report(path, reference=weights)
        if bits < 32 and data is not None:
            summary["before"] = _evaluate(model, config, data, device)
            # the written file, read into the run's model (registered or the user's own)
            written = load(path, build_model(config, num_classes))
            summary["after"] = _evaluate(written, config, data, device)
    elif fmt == "dense":
        save_dense(model, path, model_name=config.model, model_args=args)
    elif fmt == "huggingface":
        try:
            save_huggingface(model, path)
        except HuggingFaceExportError as err:
            raise ExportError(str(err)) from None
    else:
        x, _ = next(iter(data.test))
        check = save_onnx(model, path, x[:2].to(device).float())
        summary["onnx_max_abs_diff"] = check["max_abs_diff"]
    summary["path"] = str(path)
    summary["bytes"] = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() \
        else path.stat().st_size
    summary["reference_bytes"] = weights.stat().st_size
    if data is not None:
        summary.update(_metric_display(config))
    return summary


def _drop_dead_units(model: nn.Module, data, strict: bool) -> dict:
    """The dead-unit report; without ``strict`` a failed analysis only keeps every unit."""
    from ..channels.liveness import DeadUnitReport, LivenessError, drop_dead_units

    x, _ = next(iter(data.test))
    try:
        return drop_dead_units(model, x[:16].float()).as_dict()
    except LivenessError as err:
        if strict:
            raise ExportError(f"{err} (or export with --dead-units keep)") from None
        return DeadUnitReport(reason=f"kept every unit: {err}").as_dict()


def _check_written(model: nn.Module, written: nn.Module, names) -> None:
    """The file holds exactly the fine-tuned weights (a guard on the lossless re-encoding)."""
    want, got = model.state_dict(), written.state_dict()
    for name in names:
        if not torch.equal(want[name].cpu(), got[name]):
            raise ExportError(f"internal error: {name} in the written file differs from the "
                              "fine-tuned weights; please report it")


def _metric_display(config) -> dict:
    """What the summary's printer needs of the task's metrics: their labels and which are
    fractions (shown in percent; bits per byte and perplexity are not)."""
    from ..tasks import create_task

    task = create_task(config.task)
    return {"labels": task.labels, "percent_metrics": list(task.percent_keys())}


def format_export_summary(summary: dict) -> str:
    from ..runs.report import format_metrics

    lines = []
    if "size" in summary:
        lines.append(format_size_report(summary["size"]))
    else:
        ratio = summary["reference_bytes"] / summary["bytes"]
        lines.append(f"{summary['bytes']:,} bytes against {summary['reference_bytes']:,} for "
                     f"{Path(summary['weights']).name} ({ratio:.2f}x)")
    dead = summary.get("dead_units")
    if dead is not None:
        if dead["applied"]:
            per_layer = ", ".join(f"{k} {v}" for k, v in dead["units"].items())
            lines.append(f"dead units dropped (nothing reads them): {dead['total_units']} "
                         f"({per_layer}); {dead['biases_zeroed']} biases and "
                         f"{dead['weights_zeroed']} weights zeroed; outputs unchanged "
                         f"(max |difference| {dead['max_abs_diff']:.3g})")
        elif dead["reason"]:
            lines.append(dead["reason"])
    if summary.get("onnx_max_abs_diff") is not None:
        lines.append(f"onnxruntime matches PyTorch: max |difference| "
                     f"{summary['onnx_max_abs_diff']:.3g}")
    if "before" in summary:
        labels, percent = summary.get("labels"), summary["percent_metrics"]
        lines.append(f"before quantization: "
                     f"{format_metrics(summary['before'], labels, percent)}")
        lines.append(f"after {summary['bits']}-bit quantization: "
                     f"{format_metrics(summary['after'], labels, percent)}")
        if "finetuned" in summary:
            tune = summary["finetune"]
            lines.append(f"after fine-tuning the centroids ({_epochs(tune['epochs'])}, Adam lr "
                         f"{tune['lr']:g}): "
                         f"{format_metrics(summary['finetuned'], labels, percent)}")
    if "finetune" in summary:
        tune = summary["finetune"]
        lines.append(f"training loss: {tune['train_before']:.4f} after quantization, "
                     f"{tune['train_after']:.4f} after fine-tuning the centroids")
    if "before" not in summary and summary["format"] == "compressed" \
            and summary["bits"] < 32:
        lines.append("accuracy not measured (test data unavailable: "
                     f"{summary.get('data_error', 'evaluation off')})")
    lines.append(f"wrote {summary['path']}")
    return "\n".join(lines)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def cmd_export(args: argparse.Namespace) -> int:
    try:
        summary = export_run(args.run_dir, args.export_format, bits=args.bits, out=args.out,
                             weights=args.weights, data_dir=args.data_dir,
                             evaluate=not args.no_eval,
                             finetune_epochs=args.finetune_epochs,
                             finetune_lr=args.finetune_lr, dead_units=args.dead_units,
                             trust_pickle=args.trust_pickle,
                             allow_changed_sources=args.allow_changed_sources)
    except (ExportError, ContainerError) as err:
        print(f"admmprune export: error: {err}", file=sys.stderr)
        return 2
    print(format_export_summary(summary))
    return 0
