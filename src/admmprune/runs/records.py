"""Accuracy against compression: finished runs next to published pruning results.

``admmprune tradeoff RUN_DIR... --published lenet5 --out plot.png`` groups the runs by recipe
name, method and compression (seeds of one recipe and method become one point: mean, with the
worst and best seed as the bar; the method is read from the run's config, so the runs of
``admmprune compare`` stay apart) and marks the published figures of the literature on the
same axes. The runs' results can be kept in a CSV file (``--save-results``, with a method
column) and plotted again from it (``--results``) once the run directories are gone.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from ..tables import format_table
from .compare import method_of
from .direction import direction_note, higher_is_better, percent_keys
from .report import read_summary, save_figure
from .rundir import load_run_config

__all__ = ["PublishedPoint", "PUBLISHED", "RunResult", "run_results", "read_results",
           "write_results", "TradeoffPoint", "pool_results", "tradeoff_points",
           "format_tradeoff", "plot_tradeoff", "check_published"]


@dataclass(frozen=True)
class PublishedPoint:
    method: str
    reference: str
    compression: float  # weights before / weights after
    accuracy: float  # test top-1, percent
    note: str = ""


# Unstructured pruning of the classic MNIST networks, as the papers report them (test error
# converted to accuracy). Compression counts the pruned layers' weights, as ours does.
PUBLISHED: dict[str, tuple[PublishedPoint, ...]] = {
    "lenet5": (
        PublishedPoint("Han 2015", "Han et al., NIPS 2015", 12.0, 99.23),
        PublishedPoint("DNS", "Guo et al., NIPS 2016", 108.0, 99.09),
        PublishedPoint("ADMM", "Zhang et al., ECCV 2018", 71.2, 99.2),
        PublishedPoint("progressive ADMM", "Ye et al., arXiv:1903.09769", 246.0, 99.0,
                       "the abstract claims (almost) no loss from a 99.2% baseline"),
        PublishedPoint("Sparse VD", "Molchanov et al., ICML 2017", 280.0, 99.25),
    ),
    "lenet300": (
        PublishedPoint("Han 2015", "Han et al., NIPS 2015", 12.0, 98.41),
        PublishedPoint("DNS", "Guo et al., NIPS 2016", 55.6, 98.01),
        PublishedPoint("Sparse VD", "Molchanov et al., ICML 2017", 68.0, 98.08),
    ),
}


@dataclass(frozen=True)
class TradeoffPoint:
    label: str
    method: str  # "" where unknown (results files written before the method column)
    compression: float
    accuracies: tuple[float, ...]  # the headline metric of each run (accuracy: percent)
    dense: tuple[float, ...]
    seeds: tuple[int, ...]
    metric: str = "accuracy"
    higher_is_better: bool = True

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def best(self) -> float:
        """The best seed's value in the metric's direction."""
        return max(self.accuracies) if self.higher_is_better else min(self.accuracies)

    @property
    def worst(self) -> float:
        return min(self.accuracies) if self.higher_is_better else max(self.accuracies)


@dataclass(frozen=True)
class RunResult:
    """One finished run, as the plot needs it: ``accuracy`` and ``dense`` hold the run's
    headline metric (in percent where it is a fraction: accuracy; as it is otherwise: bits
    per byte)."""
    name: str  # recipe name without the seed suffix
    seed: int
    model: str
    compression: float
    accuracy: float
    dense: float
    metric: str = "accuracy"
    higher_is_better: bool = True
    method: str = ""  # compare's method name (see method_of); "" where unknown


def _run_info(run_dir: Path) -> tuple[str, int, str, str]:
    config = load_run_config(run_dir)
    name = config.name
    for tag in (f"-s{config.seed}", f"-seed{config.seed}"):  # runs named per seed pool together
        name = name.removesuffix(tag)
    return name, config.seed, config.model, method_of(config)


def run_results(run_dirs: Iterable[str | Path]) -> list[RunResult]:
    """The results of finished runs, read from their directories."""
    results = []
    for run_dir in map(Path, run_dirs):
        summary = read_summary(run_dir)
        metric = summary.get("metric", "accuracy")
        scale = 100 if metric in percent_keys(summary) else 1
        missing = [k for k in ("compression", f"pruned_{metric}", f"dense_{metric}")
                   if not isinstance(summary.get(k), (int, float))]
        if missing:
            raise ValueError(f"{run_dir / 'summary.json'} has no {', '.join(missing)}: not a "
                             "finished pruning run (finish it with admmprune prune --resume "
                             f"{run_dir}, or leave it out)")
        name, seed, model, method = _run_info(run_dir)
        results.append(RunResult(name, seed, model, float(summary["compression"]),
                                 scale * summary[f"pruned_{metric}"],
                                 scale * summary[f"dense_{metric}"], metric,
                                 higher_is_better(summary), method))
    return results


_COLUMNS = tuple(f.name for f in fields(RunResult))
_LEGACY_COLUMNS = _COLUMNS[:6]  # files written before the metric and method columns


def write_results(results: Sequence[RunResult], path: str | Path) -> Path:
    """Keep results as CSV, one run per row, so the plot outlives the run directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_COLUMNS)
        writer.writerows(astuple(r) for r in results)
    return path


def read_results(path: str | Path) -> list[RunResult]:
    """Results written by :func:`write_results` (or by hand, with the same columns; files
    without the last column, ``method``, read with the method unknown)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such results file")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header = tuple(c.strip() for c in rows[0]) if rows else ()
    if header not in (_COLUMNS, _LEGACY_COLUMNS):
        raise ValueError(f"{path}: the first line must be the header {','.join(_COLUMNS)}")
    results = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            cells = [cell.strip() for cell in row]
            if len(cells) != len(header):
                raise ValueError(f"{len(cells)} columns")
            name, seed, model, compression, accuracy, dense = cells[:6]
            metric, higher, method = cells[6:] or ("accuracy", "True", "")
            if higher not in ("True", "False"):
                raise ValueError(f"higher_is_better must be True or False, got {higher!r}")
            result = RunResult(name, int(seed), model, float(compression), float(accuracy),
                               float(dense), metric, higher == "True", method)
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: expected {len(header)} columns "
                             f"{','.join(header)} with numbers where numbers go ({err})"
                             ) from None
        numbers = (result.compression, result.accuracy, result.dense)
        percent = result.metric == "accuracy"
        if not name or not metric or not all(math.isfinite(x) for x in numbers) \
                or result.compression < 1 \
                or percent and not all(0 <= x <= 100 for x in numbers[1:]):
            raise ValueError(f"{path}, line {line}: needs a name, a metric, compression >= 1 "
                             "and finite values (accuracy in percent, 0-100)")
        results.append(result)
    return results


def pool_results(results: Iterable[RunResult], model: str | None = None,
                 renames: dict[str, str] | None = None) -> list[TradeoffPoint]:
    """One point per (name, method, compression); several seeds of one recipe and method
    are pooled. ``renames`` maps names to the labels shown (several names may share a
    label).

    ``model``: refuse runs of another model (published points of one network only)."""
    renames = renames or {}
    results = list(results)
    metrics = {(r.metric, r.higher_is_better) for r in results}
    if len(metrics) > 1:
        raise ValueError("the runs have different headline metrics ("
                         + ", ".join(sorted(m for m, _ in metrics))
                         + "): plot each task on its own")
    groups: dict[tuple[str, str, float], list[RunResult]] = {}
    for result in results:
        if model is not None and result.model != model:
            advice = (f"plot it with --published {result.model}" if result.model in PUBLISHED
                      else f"there are no published points for {result.model!r}: plot it "
                           "without --published")
            raise ValueError(f"run {result.name!r} (seed {result.seed}) prunes "
                             f"{result.model!r}, but the published points are for {model!r}: "
                             f"{advice}")
        key = (renames.get(result.name, result.name), result.method,
               round(result.compression, 1))
        groups.setdefault(key, []).append(result)
    return [TradeoffPoint(name, method, compression, tuple(r.accuracy for r in runs),
                          tuple(r.dense for r in runs), tuple(r.seed for r in runs),
                          runs[0].metric, runs[0].higher_is_better)
            for (name, method, compression), runs in sorted(groups.items(),
                                                            key=lambda kv: kv[0][::-1])]


def tradeoff_points(run_dirs: Sequence[str | Path], model: str | None = None,
                    renames: dict[str, str] | None = None) -> list[TradeoffPoint]:
    """:func:`pool_results` of run directories. A name ending in the run's seed (``-s3``,
    ``-seed3``) is pooled under the name without it."""
    return pool_results(run_results(run_dirs), model, renames)


def format_tradeoff(points: Sequence[TradeoffPoint],
                    published: Sequence[PublishedPoint] = ()) -> str:
    digits = 2 if not points or points[0].metric == "accuracy" else 4
    rows = [(p.label, p.method or "?", f"{p.compression:.1f}x", ",".join(map(str, p.seeds)),
             f"{p.mean:.{digits}f}", f"{p.worst:.{digits}f}", f"{p.best:.{digits}f}")
            for p in points]
    rows += [(f"{q.method} ({q.reference})", "", f"{q.compression:g}x", "",
              f"{q.accuracy:.2f}", "", "") for q in published]
    return format_table(["run / published", "method", "compression", "seeds",
                         _axis_label(points), "worst", "best"], rows)


def _axis_label(points: Sequence[TradeoffPoint]) -> str:
    if not points or points[0].metric == "accuracy":
        return "top-1 %"
    return f"{points[0].metric} ({direction_note(points[0].higher_is_better)})"


def check_published(points: Sequence[TradeoffPoint],
                     published: Sequence[PublishedPoint]) -> None:
    if published and points and points[0].metric != "accuracy":
        raise ValueError(f"the published points are top-1 accuracies; these runs report "
                         f"{points[0].metric}: drop --published")


def plot_tradeoff(points: Sequence[TradeoffPoint], out: str | Path,
                  published: Sequence[PublishedPoint] = (), title: str = "") -> Path:
    """The headline metric (mean over seeds, bar from worst to best seed) against
    compression, log x, with the published points as labelled stars and the dense models'
    mean as a line.

    Raises:
        ValueError: published (accuracy) points with runs of another metric.
    """
    check_published(points, published)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, method in dict.fromkeys((p.label, p.method) for p in points):
        mine = sorted((p for p in points if (p.label, p.method) == (label, method)),
                      key=lambda p: p.compression)
        ys = [p.mean for p in mine]
        low = [p.mean - min(p.accuracies) for p in mine]  # the bar spans every seed
        high = [max(p.accuracies) - p.mean for p in mine]
        ax.errorbar([p.compression for p in mine], ys, yerr=[low, high], marker="o",
                    capsize=3, label=f"admmprune: {label}" + (f" ({method})" if method else ""))
    for q in published:
        ax.plot(q.compression, q.accuracy, marker="*", markersize=12, linestyle="none",
                color="black")
        ax.annotate(q.method, (q.compression, q.accuracy), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    dense = [d for p in points for d in p.dense]
    if dense:
        ax.axhline(sum(dense) / len(dense), color="gray", linestyle="--",
                   label="dense (mean of the runs' own)")
    ax.set_xscale("log")
    ratio = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}x")
    ax.xaxis.set_major_formatter(ratio)
    ax.xaxis.set_minor_formatter(ratio)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("compression: prunable weights / kept weights (log)")
    accuracy = not points or points[0].metric == "accuracy"
    ax.set_ylabel("test top-1 accuracy (%)" if accuracy else f"test {_axis_label(points)}")
    ax.set_title(title or ("accuracy against compression (stars: published)" if accuracy else
                           f"{points[0].metric} against compression"))
    ax.grid(alpha=0.3, which="both")
    # the legend sits where the curves are not: below them when higher is better
    ax.legend(fontsize=8, loc="lower left" if accuracy or points[0].higher_is_better
              else "upper left")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)
