"""The task interface and its registry. A task name may also be an import spec,
``"package.module:factory"``, naming a ``Task`` subclass or a function returning a Task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..imports import (
    ImportSpecError,
    duplicate_name,
    is_builtin,
    is_object_label,
    is_spec,
    resolve_spec,
    user_code_error,
)

__all__ = ["Task", "register_task", "create_task", "task_factory", "list_tasks",
           "UnknownTaskError", "format_metric"]


def format_metric(value: float | None, percent: bool, *, digits: int = 2,
                  unit: bool = True) -> str:
    """How every printer shows a metric's value: a fraction (``percent``: accuracy, mAP) as
    ``99.12%`` with ``digits`` decimals, anything else (loss, bits per byte, perplexity) as
    it is with ``digits`` + 2 decimals (``7.9172``); ``-`` for None. ``unit=False`` leaves
    out the % sign, for a table whose caption gives the unit.

    ``percent`` comes from the task (:meth:`Task.percent_keys`) or from what a run recorded
    of it (``admmprune.runs.direction.percent_keys``), never from the metric's name.
    """
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.{digits}f}" + ("%" if unit else "")
    return f"{value:.{digits + 2}f}"


class UnknownTaskError(ValueError):
    """No task of that name is registered."""


class Task(ABC):
    """Loss and metrics of one kind of problem. Subclasses set the class attributes and
    implement :meth:`loss` and :meth:`evaluate`.

    ``metric`` is the headline metric that summaries, ``compare`` and ``report`` show;
    ``higher_is_better`` is its direction (accuracy, mAP: True; bits per byte: False), so
    nothing that ranks runs has to assume one. ``metrics`` are all the keys :meth:`evaluate`
    returns besides ``loss``, with their display names in ``labels``. ``percent_metrics``
    are the metrics that are fractions in [0, 1], shown as percentages (default: all of
    ``metrics``; bits per byte and perplexity are not).
    """

    name: str = ""
    metric: str = ""
    higher_is_better: bool = True
    metrics: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    percent_metrics: tuple[str, ...] | None = None
    # the model's output is class logits: distillation from a teacher applies
    distillable: bool = False

    def bind(self, model: nn.Module) -> None:  # noqa: B027 - optional hook, not abstract
        """Learn what the loss needs from the model (detection: anchors and strides of its
        heads); called once the model is built. Nothing by default."""

    @abstractmethod
    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The training loss of a batch (a scalar tensor)."""

    def train_sums(self, output: Any, target: Any) -> dict[str, float]:
        """Per-batch sums of training-time metrics (e.g. correct predictions), averaged over
        examples by the training loop; none by default."""
        return {}

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterable, *, device: torch.device | str,
                 autocast: Callable[[], Any] | None = None) -> dict[str, float]:
        """The metrics of ``model`` over ``batches`` (``loss`` and every key of
        ``metrics``)."""

    def label(self, key: str) -> str:
        return self.labels.get(key, key)

    def percent_keys(self) -> tuple[str, ...]:
        """The metrics shown as percentages (fractions in [0, 1])."""
        return self.metrics if self.percent_metrics is None else self.percent_metrics

    def batch_problem(self, output: Any, target: Any, num_classes: int | None = None
                      ) -> str | None:
        """What makes a batch's targets unusable with the model's ``output`` for it (the
        model in eval mode), in words; None when they fit. Checked on one batch of every
        split before a run trains. ``num_classes``: the data's class count, when known.
        Nothing is checked by default."""
        return None

    def format(self, key: str, value: float | None) -> str:
        """``value`` of metric ``key`` in its unit (:func:`format_metric`)."""
        return format_metric(value, key in self.percent_keys())


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorator(cls: type[Task]) -> type[Task]:
        if not is_builtin(cls):
            _load_builtin()  # a clash with a built-in name fails now (see duplicate_name)
        if name in _REGISTRY:
            raise duplicate_name("task", name, _REGISTRY[name])
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def task_factory(name: str) -> Callable[..., Task]:
    """The class of a registered task, or what an import spec names.

    Raises:
        UnknownTaskError: no task of that name, or a spec that cannot be imported.
    """
    if is_spec(name):
        try:
            return resolve_spec(name, "task")
        except ImportSpecError as err:
            raise UnknownTaskError(str(err)) from None
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        if is_object_label(name):
            raise UnknownTaskError(f"task {name} was handed to run_pipeline(task=...) from "
                                   "Python; pass the same task again") from None
        raise UnknownTaskError(f"unknown task {name!r}; available: "
                               f"{', '.join(list_tasks())} (or an import spec "
                               "\"package.module:factory\" returning a Task)") from None


def create_task(name: str, **kwargs: Any) -> Task:
    """A new task of the registered name or import spec ``name``.

    Raises:
        UnknownTaskError: unknown name, a spec that cannot be imported, or one that does not
            give a :class:`Task`.
    """
    factory = task_factory(name)
    if is_spec(name):
        try:
            task = factory(**kwargs)
        except Exception as err:  # noqa: BLE001 - the user's code failed: say where
            raise UnknownTaskError(str(user_code_error(err, f"task {name!r}"))) from None
    else:
        task = factory(**kwargs)
    if not isinstance(task, Task):
        raise UnknownTaskError(f"task {name!r} gave a {type(task).__name__}, not an "
                               "admmprune.tasks.Task")
    if not task.name:
        task.name = name
    return task


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Registration is an import side effect of the task modules.
    from . import builtin  # noqa: F401
