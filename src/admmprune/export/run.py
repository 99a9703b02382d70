"""``admmprune export RUN_DIR``: a run directory's model in one of the export formats, with
its size report and, for quantized values, the test metrics before and after."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .formats import ExportError, load, save_compressed, save_dense, save_onnx
from .size import format_size_report, size_report

__all__ = ["FORMATS", "default_path", "export_run", "format_export_summary"]

FORMATS = ("compressed", "dense", "onnx")


def default_path(run_dir: Path, fmt: str, bits: int = 32) -> Path:
    """RUN_DIR/model.apz (model-4bit.apz when quantized), model.safetensors, model.onnx."""
    if fmt == "compressed":
        return run_dir / ("model.apz" if bits == 32 else f"model-{bits}bit.apz")
    return run_dir / {"dense": "model.safetensors", "onnx": "model.onnx"}[fmt]


def _model_args(config, num_classes: int | None) -> dict:
    """The arguments pipeline.build_model passes to the factory (recorded in the file)."""
    from ..models.registry import accepts_argument

    kwargs = dict(config.model_args)
    for key, value in (("num_classes", num_classes), ("image_size", config.image_size)):
        if value is not None and key not in kwargs and accepts_argument(config.model, key):
            kwargs[key] = value
    return kwargs


def _evaluate(model: nn.Module, config, data, device) -> dict:
    from ..tasks import create_task
    from ..train import evaluate

    task = create_task(config.task)
    task.bind(model)
    return evaluate(model, data.test, device=device, task=task, amp="off")


def export_run(run_dir: str | Path, fmt: str = "compressed", *, bits: int = 32,
               out: str | Path | None = None, weights: str | Path | None = None,
               data_dir: str | None = None, evaluate: bool = True) -> dict:
    """Export RUN_DIR/model.pt (or ``weights``); returns a summary dict: path, bytes, the
    model.pt bytes, the size report (compressed), metrics before/after (quantized)."""
    from ..data import DatasetError
    from ..pipeline import build_model, load_data, load_run_config, load_weights

    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, {"data_dir": data_dir} if data_dir else {})
    device = torch.device("cpu")
    weights = Path(weights) if weights else run_dir / "model.pt"
    summary: dict = {"format": fmt, "bits": bits, "weights": str(weights)}
    data, num_classes = None, None
    needs_data = fmt == "onnx" or (fmt == "compressed" and bits < 32 and evaluate)
    if needs_data or config.model_args.get("num_classes") is None:
        try:
            data = load_data(config, device, splits=("test",))
            num_classes = data.num_classes
        except DatasetError as err:
            if fmt == "onnx":
                raise ExportError(f"the ONNX export traces the model on a test example, and "
                                  f"the test data cannot be read: {err}") from None
            summary["data_error"] = str(err)
    model = build_model(config, num_classes)
    load_weights(model, weights, device, config.model)
    model.eval()
    args = _model_args(config, num_classes)
    path = Path(out) if out else default_path(run_dir, fmt, bits)
    if fmt == "compressed":
        save_compressed(model, path, bits=bits, include=config.include,
                        exclude=config.exclude, model_name=config.model, model_args=args,
                        metadata={"run": run_dir.name, "weights": weights.name})
        summary["size"] = size_report(path, reference=weights)
        if bits < 32 and data is not None:
            summary["before"] = _evaluate(model, config, data, device)
            summary["after"] = _evaluate(load(path), config, data, device)
    elif fmt == "dense":
        save_dense(model, path, model_name=config.model, model_args=args)
    else:
        x, _ = next(iter(data.test))
        check = save_onnx(model, path, x[:2].to(device).float())
        summary["onnx_max_abs_diff"] = check["max_abs_diff"]
    summary["path"] = str(path)
    summary["bytes"] = path.stat().st_size
    summary["reference_bytes"] = weights.stat().st_size
    if data is not None:
        summary["labels"] = _labels(config)
    return summary


def _labels(config) -> dict:
    from ..tasks import create_task

    return create_task(config.task).labels


def format_export_summary(summary: dict) -> str:
    from ..report import format_metrics

    lines = []
    if "size" in summary:
        lines.append(format_size_report(summary["size"]))
    else:
        ratio = summary["reference_bytes"] / summary["bytes"]
        lines.append(f"{summary['bytes']:,} bytes against {summary['reference_bytes']:,} for "
                     f"{Path(summary['weights']).name} ({ratio:.2f}x)")
    if summary.get("onnx_max_abs_diff") is not None:
        lines.append(f"onnxruntime matches PyTorch: max |difference| "
                     f"{summary['onnx_max_abs_diff']:.3g}")
    if "before" in summary:
        labels = summary.get("labels")
        lines.append(f"before quantization: {format_metrics(summary['before'], labels)}")
        lines.append(f"after {summary['bits']}-bit quantization: "
                     f"{format_metrics(summary['after'], labels)}")
    elif summary["format"] == "compressed" and summary["bits"] < 32:
        lines.append("accuracy not measured (test data unavailable: "
                     f"{summary.get('data_error', 'evaluation off')})")
    lines.append(f"wrote {summary['path']}")
    return "\n".join(lines)
