"""A headline metric's direction and display, read from a run summary or a compare row.

Summaries and compare rows record ``higher_is_better`` and ``percent_metrics`` from their
task (:class:`admmprune.tasks.Task`); records written before those keys existed fall back to
the registered task of their ``task`` key, then to a classification-like metric (higher is
better, fractions shown in percent). Everything that ranks or prints runs asks here rather
than assuming accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..tasks import create_task, format_metric
from ..tasks.registry import UnknownTaskError

__all__ = ["higher_is_better", "percent_keys", "task_fields", "format_value", "best_index",
           "is_better", "direction_note"]


def task_fields(task) -> dict:
    """The keys a summary or compare row records about its task's metrics."""
    return {"higher_is_better": bool(task.higher_is_better),
            "percent_metrics": list(task.percent_keys())}


def _task(record: dict):
    name = record.get("task")
    if not name:
        return None
    try:
        return create_task(name)
    except (UnknownTaskError, TypeError, ValueError):
        return None


def higher_is_better(record: dict) -> bool:
    """The direction of ``record``'s headline metric (True: accuracy, mAP; False: bpb)."""
    if "higher_is_better" in record:
        return bool(record["higher_is_better"])
    task = _task(record)
    return True if task is None else bool(task.higher_is_better)


def percent_keys(record: dict) -> tuple[str, ...]:
    """The metrics of ``record`` that are fractions, shown as percentages."""
    if "percent_metrics" in record:
        return tuple(record["percent_metrics"])
    task = _task(record)
    if task is not None:
        return tuple(task.percent_keys())
    metric = record.get("metric", "accuracy")
    return tuple(dict.fromkeys([metric, *(record.get("metric_labels") or {})]))


def format_value(record: dict, key: str, value: float | None, digits: int = 2) -> str:
    """``99.12%`` for a fraction metric, ``1.8734`` for anything else (loss, bpb): the
    metric ``key`` of ``record`` (a summary or compare row) through :func:`format_metric`."""
    return format_metric(value, key in percent_keys(record), digits=digits)


def is_better(a: float, b: float, higher: bool) -> bool:
    """Whether ``a`` beats ``b`` (strictly) in the metric's direction."""
    return a > b if higher else a < b


def best_index(values: Sequence[float], higher: bool) -> int:
    """The index of the best value (the first of equal ones).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no values to rank")
    best = 0
    for i, value in enumerate(values):
        if is_better(value, values[best], higher):
            best = i
    return best


def direction_note(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"
