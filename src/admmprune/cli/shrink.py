"""`admmprune shrink RUN_DIR`: a structurally pruned run's model made smaller and written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..channels.graph import output_tensors
from ..channels.shrink import (
    STRUCTURE_HINT,
    ShrinkError,
    format_shrink_report,
    max_abs_difference,
    save_shrunk,
    shrink,
)

__all__ = ["default_path", "shrink_run", "format_shrink_summary", "SHRINKABLE"]

# the structures whose zeros are whole filters / input channels / transformer units, what
# shrinking removes
SHRINKABLE = ("filter", "channel", "units")


def default_path(run_dir: Path, weights: str | Path | None = None,
                 structure: str = "filter") -> Path:
    """RUN_DIR/model-shrunk.safetensors, named after the weights file when given; for
    structure ``units`` a Hugging Face directory RUN_DIR/model-shrunk."""
    stem = Path(weights).stem if weights else "model"
    suffix = "" if structure == "units" else ".safetensors"
    return Path(run_dir) / f"{stem}-shrunk{suffix}"


def shrink_run(run_dir: str | Path, *, out: str | Path | None = None,
               weights: str | Path | None = None, data_dir: str | None = None,
               tolerance: float = 1e-5, trust_pickle: bool = False,
               allow_changed_sources: bool = False, onnx: bool = False) -> dict:
    """Shrink RUN_DIR/model.pt (or ``weights``; zeros read from the weights), write it with
    :func:`save_shrunk` and check it against the masked model on the first test batch
    (``allow_changed_sources``: see :func:`~admmprune.runs.build.load_run`).

    Returns {"report", "path", "batch", "batch_max_abs_diff"}. MACs are counted for one test
    example. Raises :class:`ShrinkError` when the outputs differ by more than ``tolerance``
    x max(1, max |output|) although no constant was dropped."""
    from ..data import DatasetError
    from ..runs.build import load_run, model_args
    from ..runs.rundir import check_output_path

    if out:
        check_output_path(Path(out), "--out")
    try:
        run = load_run(run_dir, overrides={"data_dir": data_dir} if data_dir else {},
                       device=torch.device("cpu"), weights=weights,
                       trust_pickle=trust_pickle,
                       allow_changed_sources=allow_changed_sources)
    except DatasetError as err:
        raise ShrinkError(f"shrinking traces the model on a test example and checks it on a "
                          f"test batch, and the test data cannot be read: {err}") from None
    run_dir, config, data, model, device = run.run_dir, run.config, run.data, run.model, \
        run.device
    if config.structure not in SHRINKABLE:
        raise ShrinkError(f"{run_dir} was pruned with structure {config.structure!r}: its "
                          "zeros are single weights (or N:M groups), not whole filters or "
                          f"channels, so shrinking it is refused; {STRUCTURE_HINT}, or "
                          "`structure: units` for a transformer")
    path = check_output_path(Path(out) if out else
                             default_path(run_dir, weights, config.structure),
                             "--out" if out else "the default output file")
    if config.structure == "units":
        return _shrink_units(model, next(iter(data.test))[0].to(device), path, tolerance,
                             onnx)
    if onnx:
        raise ShrinkError("--onnx writes a shrunk transformer (structure units) next to its "
                          "Hugging Face directory; a filter or channel run's shrunk file is "
                          "read with admmprune.load_shrunk")
    batch, _ = next(iter(data.test))
    batch = batch.to(device).float()
    report = shrink(model, None, batch[:1])
    with torch.no_grad():
        want, got = model(batch), report.model(batch)
    diff = _checked_difference(want, got, tolerance, strict=not report.dropped)
    path = save_shrunk(report.model, path, model_name=config.model,
                       model_args=model_args(config, run.num_classes))
    return {"report": report, "path": path, "batch": int(batch.shape[0]),
            "batch_max_abs_diff": diff}


def _checked_difference(want, got, tolerance: float, strict: bool = True) -> float:
    """The largest |difference| between the masked model's outputs and the shrunk one's;
    with ``strict``, more than ``tolerance`` x max(1, max |output|) is an error."""
    diff = max_abs_difference(output_tensors(got), output_tensors(want))
    scale = max([1.0] + [float(t.abs().max()) for t in output_tensors(want)])
    if strict and diff > tolerance * scale:
        raise ShrinkError(f"the shrunk model differs from the masked one by {diff:.3g} on a "
                          f"test batch (allowed {tolerance * scale:.3g}); please report it")
    return diff


def _shrink_units(model: torch.nn.Module, batch: torch.Tensor, path: Path,
                  tolerance: float, onnx: bool) -> dict:
    """Cut a units-pruned transformer to its live neurons and attention groups, check it
    against the masked model on ``batch`` and write it as a Hugging Face directory (with
    ``onnx``, also PATH/model.onnx, checked with onnxruntime)."""
    from ..export import ExportError
    from ..export.huggingface import (
        HuggingFaceExportError,
        load_huggingface,
        save_causal_lm_onnx,
        save_huggingface,
    )
    from ..posttraining.errors import OneShotError
    from ..posttraining.units import shrink_units

    before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        want = model(batch)
    try:
        widths = shrink_units(model)
    except OneShotError as err:
        raise ShrinkError(str(err)) from None
    with torch.no_grad():
        got = model(batch)
    diff = _checked_difference(want, got, tolerance)
    try:
        save_huggingface(model, path)
        if onnx:
            onnx_record = save_causal_lm_onnx(load_huggingface(path), path / "model.onnx",
                                              batch[:1])
    except (HuggingFaceExportError, ExportError) as err:
        raise ShrinkError(f"cannot write {path}: {err}") from None
    return {"widths": widths, "params_before": before,
            "onnx": onnx_record if onnx else None,
            "params_after": sum(p.numel() for p in model.parameters()), "path": path,
            "batch": int(batch.shape[0]), "batch_max_abs_diff": diff}


def _format_units_summary(summary: dict) -> str:
    from ..tables import format_table

    rows = [[name, str(w["neurons"]), str(w["groups"])]
            for name, w in summary["widths"].items()]
    before, after = summary["params_before"], summary["params_after"]
    return "\n".join([
        format_table(["block", "MLP neurons kept", "attention groups kept"], rows),
        f"parameters {before:,} -> {after:,} ({before / max(after, 1):.2f}x fewer)",
        f"on a test batch of {summary['batch']} the shrunk model matches the masked one: max "
        f"|difference| {summary['batch_max_abs_diff']:.3g}",
        f"wrote {summary['path']} (a Hugging Face directory: admmprune.load_huggingface reads "
        "it; its blocks differ in width, recorded in config.json)"]
        + ([_onnx_line(summary)] if summary["onnx"] else []))


def _onnx_line(summary: dict) -> str:
    diff = summary["onnx"]["max_abs_diff"]
    check = "onnxruntime is not installed: not checked" if diff is None else \
        f"onnxruntime's logits match: max |difference| {diff:.3g}"
    return f"wrote {summary['path']}/model.onnx ({check})"


def format_shrink_summary(summary: dict) -> str:
    if "widths" in summary:
        return _format_units_summary(summary)
    report = summary["report"]
    lines = [format_shrink_report(report),
             f"MACs per example; on a test batch of {summary['batch']} the shrunk model "
             f"matches the masked one: max |difference| {summary['batch_max_abs_diff']:.3g}"
             + (" (dropped constants change it)" if report.dropped else ""),
             f"wrote {summary['path']} (read it with admmprune.load_shrunk)"]
    return "\n".join(lines)


def cmd_shrink(args: argparse.Namespace) -> int:
    try:
        summary = shrink_run(args.run_dir, out=args.out, weights=args.weights,
                             data_dir=args.data_dir, trust_pickle=args.trust_pickle,
                             allow_changed_sources=args.allow_changed_sources,
                             onnx=args.onnx)
    except ShrinkError as err:
        print(f"admmprune shrink: error: {err}", file=sys.stderr)
        return 2
    print(format_shrink_summary(summary))
    return 0
