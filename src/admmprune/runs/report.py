"""Readable reports of a run: the summary table, and plots of its metrics."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..jsonfile import loads
from ..masks import LayerSparsity, collapsed_layers, open_rows_floor
from ..tables import format_table
from ..tasks import format_metric
from .direction import direction_note, format_value, higher_is_better, percent_keys
from .rundir import RunError

__all__ = ["format_table", "format_summary", "format_layer_shares", "format_metrics",
           "summary_metric", "read_metrics", "read_summary", "plot_run", "plot_residuals",
           "save_figure", "check_picture_path"]


def format_metrics(metrics: dict, labels: dict | None, percent: Sequence[str]) -> str:
    """``top-1 accuracy 99.12%  top-5 accuracy 99.98%  loss 0.0312``: each metric with its
    label, in its unit (:func:`admmprune.tasks.format_metric`; the ``percent`` keys, the
    task's fractions, as percentages)."""
    labels = labels or {}
    return "  ".join(f"{labels.get(key, key)} {format_metric(value, key in percent)}"
                     for key, value in metrics.items() if value is not None)


def summary_metric(summary: dict, phase: str) -> float | None:
    """The headline metric of ``phase`` (dense, admm, pruned) in a run summary."""
    return summary.get(f"{phase}_{summary.get('metric', 'accuracy')}")


def format_summary(summary: dict) -> str:
    """The end-of-run report: the task's metrics per phase, sparsity, compression, per-layer
    kept fraction."""
    metric = summary.get("metric", "accuracy")
    labels = summary.get("metric_labels") or {metric: metric}
    metric_rows = []
    for phase, title in (("dense", "dense"), ("admm", "after hard prune"),
                         ("pruned", "pruned")):
        for key, label in labels.items():
            name = f"{title} {label}" if key == metric else f"  {label}"
            metric_rows.append((name, format_value(summary, key,
                                                   summary.get(f"{phase}_{key}"))))
    overview = [
        ("model / dataset", f"{summary['model']} / {summary['dataset']}"),
        ("headline metric", f"{labels.get(metric, metric)} "
                            f"({direction_note(higher_is_better(summary))})"),
        *metric_rows,
        ("prunable weights", f"{summary.get('total', '-')}"),
        ("kept weights", f"{summary.get('kept', '-')}"),
        ("global sparsity", f"{summary['sparsity_percent']:.3f}%" if "sparsity_percent"
         in summary else "-"),
        ("compression N/K", f"{summary['compression']:.1f}x" if "compression" in summary
         else "-"),
        ("wall time", _duration(summary.get("wall_seconds", 0.0)) + "  (" + ", ".join(
            f"{k} {_duration(v)}" for k, v in summary.get("seconds", {}).items()) + ")"),
        ("run directory", summary.get("run_dir", "")),
    ]
    width = max(len(k) for k, _ in overview)
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in overview)
    layers = summary.get("layers") or []
    if layers:
        structure = summary.get("structure") or "unstructured"
        text += "\n\n" + format_layer_shares(layers, structure)
    skipped = summary.get("not_pruned") or []
    if skipped:
        text += (f"\nnot pruned: {len(skipped)} weight tensors ("
                 + ", ".join(f"{t['name']}: {t['reason']}" for t in skipped[:4])
                 + (", ..." if len(skipped) > 4 else "") + "; `admmprune inspect` lists them)")
    return text


def format_layer_shares(layers: list[dict], structure: str = "unstructured") -> str:
    """The per-layer table: kept share beside the uniform share (what every layer would keep
    at the same ratio) and the output rows that keep any weight; layers that collapse
    (:func:`~admmprune.masks.collapsed_layers`, by ``structure``'s rule) are marked and
    listed under the table."""
    total = sum(r["total"] for r in layers)
    uniform = 100 * sum(r["kept"] for r in layers) / total if total else 0.0
    report = [LayerSparsity.from_dict(r) for r in layers]
    collapsed = dict(collapsed_layers(report, open_rows_floor(structure)))
    rows = [(("! " if r["name"] in collapsed else "") + r["name"],
             "x".join(map(str, r["shape"])), r["total"], r["kept"],
             f"{100 * r['kept_fraction']:.2f}%", f"{uniform:.2f}%",
             f"{r['open_rows']}/{r['rows']}" if r.get("rows") else "-") for r in layers]
    text = format_table(["layer", "shape", "weights", "kept", "kept %", "uniform %",
                         "open rows"], rows)
    if collapsed:
        text += "\n! collapsing: " + "; ".join(f"{name} {why}"
                                               for name, why in collapsed.items())
    return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory?")
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1)
             if line.strip()]
    records = []
    for n, line in lines:
        try:
            records.append(loads(line))
        except json.JSONDecodeError:
            if n != lines[-1][0]:
                raise RunError(f"{path}, line {n}, is not a JSON record: the file is "
                               "damaged") from None
            # the last record was being written when the process died; resuming the run
            # truncates it, reading stops before it
            print(f"admmprune: {path}: the last line is torn (the run was interrupted "
                  "while writing it); read up to it", file=sys.stderr)
    return records


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished "
                                "(resume it with `admmprune prune --resume RUN_DIR`)")
    try:
        summary = loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({err}): the file is damaged; `admmprune "
                       "prune --resume RUN_DIR` on the finished run writes it again") from None
    if not isinstance(summary, dict):
        raise RunError(f"{path} does not hold a run summary (a JSON object): the file is "
                       "damaged")
    return summary


def plot_run(run_dir: str | Path) -> list[Path]:
    """PNG plots next to the run's metrics: ADMM residuals and rho, test accuracy per
    phase, kept fraction per layer. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    written = []
    admm = [m for m in metrics if m.get("phase") == "admm"]
    if admm:
        written.append(plot_residuals(admm, run_dir / "admm_residuals.png"))
    summary_path = run_dir / "summary.json"
    summary = loads(summary_path.read_text()) if summary_path.is_file() else {}
    metric = summary.get("metric", "accuracy")
    label = (summary.get("metric_labels") or {}).get(metric, metric)
    curve = [m for m in metrics if f"test_{metric}" in m]
    if curve:
        scale, unit = (100, " (%)") if metric in percent_keys(summary or {}) else (1, "")
        fig, ax = plt.subplots(figsize=(7, 4))
        for phase in dict.fromkeys(m["phase"] for m in curve):
            xs = [i for i, m in enumerate(curve) if m["phase"] == phase]
            ax.plot(xs, [scale * curve[i][f"test_{metric}"] for i in xs], "o-", label=phase)
        ax.set_xlabel("epoch / iteration (run order)")
        ax.set_ylabel(f"test {label}{unit}, "
                      f"{direction_note(higher_is_better(summary or {}))}")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(save_figure(fig, run_dir / "accuracy.png"))
    if summary:
        layers = summary.get("layers") or []
        if layers:
            fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(layers) + 2), 4))
            ax.bar([r["name"].removesuffix(".weight") for r in layers],
                   [100 * r["kept_fraction"] for r in layers])
            ax.set_ylabel("kept weights (%)")
            ax.set_title("kept fraction per layer")
            ax.tick_params(axis="x", rotation=45)
            written.append(save_figure(fig, run_dir / "kept_per_layer.png"))
    return written


def plot_residuals(records: Sequence[dict], path: Path, title: str = "") -> Path:
    """Primal and dual residuals (left) and rho (right) per ADMM iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_res, ax_rho) = plt.subplots(1, 2, figsize=(10, 4))
    steps = range(1, len(records) + 1)
    ax_res.semilogy(steps, [m["primal_residual"] for m in records], "o-", label="primal ‖W−Z‖")
    # the first dual residual can be exactly 0 (Z did not move): keep it on the log axis
    ax_res.semilogy(steps, [max(m["dual_residual"], 1e-12) for m in records], "s-",
                    label="dual ρ‖Z−Z_prev‖")
    ax_res.set_xlabel("ADMM iteration")
    ax_res.set_title(f"residuals {title}".strip())
    ax_res.legend()
    ax_rho.semilogy(steps, [m["rho"] for m in records], "o-")
    ax_rho.set_xlabel("ADMM iteration")
    ax_rho.set_title("ρ")
    return save_figure(fig, path)


def check_picture_path(path: str | Path, what: str = "--out") -> Path:
    """Refuse a picture file name whose suffix matplotlib cannot write (before any work).

    Raises:
        RunError: the suffix is missing or not a format matplotlib writes.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix.lower().lstrip(".") not in formats:
        kind = path.suffix or "a file without suffix"
        raise RunError(f"{what} {path}: cannot draw a picture as {kind}; end the file name "
                       f"with one of {', '.join('.' + f for f in formats)} (e.g. .png, .pdf, "
                       ".svg)")
    return path


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and close (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
