"""The dataset registry: ``create_dataset(name, options, device)`` and ``list_datasets()``.

A dataset module registers a factory with :func:`register_dataset`; the factory reads what
it needs from ``options`` (the run's config: ``data_dir``, ``batch_size``, ``seed``,
``train_subset``, ``workers``, ``image_size``...) and returns :class:`DataSplits`: batch
iterables that the pipeline only iterates, counts (``len``) and re-seeds (``set_epoch``).

A dataset name may also be an import spec, ``"package.module:factory"``: the factory returns
a mapping of map-style datasets (:mod:`admmprune.data.objects`), streamed like the built-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..imports import (
    ImportSpecError,
    duplicate_name,
    is_builtin,
    is_object_label,
    is_spec,
    resolve_spec,
)
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
    # sha256 of what was read, by part (the text dataset: {"train": ..., "test": ...}), of
    # the content, not the path: a run records them and a resume on other data is refused
    # while moved data fits. Empty where a dataset does not checksum what it reads.
    checksums: dict[str, str] = field(default_factory=dict)


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
        if not is_builtin(factory):
            _load_builtin()  # a clash with a built-in name fails now (see duplicate_name)
        if name in _REGISTRY:
            raise duplicate_name("dataset", name, _REGISTRY[name].factory)
        _REGISTRY[name] = DatasetEntry(name, factory, description, task)
        return factory

    return decorator


def dataset_entry(name: str) -> DatasetEntry:
    """The registered dataset ``name``, or the entry of an import spec (its module imported
    now, so a wrong spec fails before a run starts).

    Raises:
        DatasetError: unknown name, or a spec that cannot be imported.
    """
    if is_spec(name):
        return _spec_entry(name)
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        if is_object_label(name):
            raise DatasetError(f"dataset {name} was handed to run_pipeline(data=...) from "
                               "Python; pass the same datasets again (the command line cannot "
                               "rebuild them)") from None
        raise DatasetError(f"unknown dataset {name!r}; available: "
                           f"{', '.join(sorted(_REGISTRY))} (see `admmprune datasets`; or an "
                           "import spec \"package.module:factory\", or --import FILE.py that "
                           "registers it)") from None


def _spec_entry(spec: str) -> DatasetEntry:
    try:
        user_factory = resolve_spec(spec, "dataset factory")
    except ImportSpecError as err:
        raise DatasetError(str(err)) from None

    def factory(options: Any, device: torch.device, splits: Sequence[str]) -> DataSplits:
        from .objects import call_factory, dataset_splits

        given = call_factory(user_factory, options, splits, spec)
        return dataset_splits(given, options, device, splits, source=spec)

    return DatasetEntry(spec, factory, f"imported from {spec}", "classification")


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
