"""The dataset registry: ``create_dataset(name, options, device)`` and ``list_datasets()``.

A dataset module registers a factory with :func:`register_dataset`; the factory reads what
it needs from ``options`` (the run's config: ``data_dir``, ``batch_size``, ``seed``,
``train_subset``, ``workers``, ``image_size``...) and returns :class:`DataSplits`: batch
iterables that the pipeline only iterates, counts (``len``) and re-seeds (``set_epoch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .errors import DatasetError

__all__ = ["Batches", "DataSplits", "DatasetEntry", "register_dataset", "create_dataset",
           "list_datasets", "dataset_entry", "SPLITS"]

SPLITS = ("train", "test")


class Batches(Protocol):
    """What the pipeline needs of a split: mini-batches, their count, and a way to make the
    next ``iter()`` produce a given epoch's order (so a resumed run sees the same batches)."""

    def __iter__(self) -> Iterator[tuple[Any, Any]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class DataSplits:
    """The splits that were asked for (``None`` for the others) and facts about the data."""

    train: Batches | None
    test: Batches | None
    num_classes: int | None = None
    info: dict = field(default_factory=dict)  # e.g. {"classes": [...], "image_size": 227}


Factory = Callable[[Any, torch.device, Sequence[str]], DataSplits]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    factory: Factory
    description: str
    task: str  # the task its labels serve by default


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, description: str, task: str = "classification"
                     ) -> Callable[[Factory], Factory]:
    """Decorator: ``factory(options, device, splits) -> DataSplits`` becomes dataset ``name``.

    ``splits`` names what the caller needs (``("test",)`` for an evaluation), so a factory
    can skip reading the training files."""

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = DatasetEntry(name, factory, description, task)
        return factory

    return decorator


def dataset_entry(name: str) -> DatasetEntry:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; available: "
                           f"{', '.join(sorted(_REGISTRY))} (see `admmprune datasets`)") from None


def create_dataset(name: str, options: Any, device: torch.device,
                   splits: Sequence[str] = SPLITS) -> DataSplits:
    """Build the splits of dataset ``name`` for a run configured by ``options``."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    return dataset_entry(name).factory(options, device, tuple(splits))


def list_datasets() -> list[DatasetEntry]:
    _load_builtin()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def _load_builtin() -> None:
    # Registration is an import side effect of the dataset modules.
    from . import builtin  # noqa: F401
