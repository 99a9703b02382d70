"""The task interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["Task", "register_task", "create_task", "list_tasks", "UnknownTaskError"]


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


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorator(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def create_task(name: str, **kwargs: Any) -> Task:
    _load_builtin()
    try:
        return _REGISTRY[name](**kwargs)
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; available: "
                               f"{', '.join(list_tasks())}") from None


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Registration is an import side effect of the task modules.
    from . import builtin  # noqa: F401
