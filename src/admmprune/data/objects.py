"""A user's own datasets as a run's splits.

A dataset factory named by an import spec (``dataset: "my_data:splits"``) and the ``data=``
argument of :func:`admmprune.runs.pipeline.run_pipeline` both give a mapping of map-style
``torch.utils.data.Dataset``s::

    {"train": Dataset, "test": Dataset}           # required for a run
    {"val": Dataset}                              # optional: the test split when "test" is absent
    {"num_classes": 10} or {"classes": [...]}     # optional: what a model's num_classes gets

Each split streams through :class:`~admmprune.data.loader.StreamBatches`: the order of every
epoch follows from (seed, epoch), ``train_subset``/``test_subset`` cut the splits, and a
process group shards every global batch, exactly as for the built-in datasets.

``num_classes`` comes from the mapping's ``num_classes``, else the length of its
``classes``, else the ``classes`` attribute of the training (or test) dataset (torchvision's
datasets have one); otherwise it is unknown, and a model that needs it takes it from
``model_args``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from .errors import DatasetError
from .loader import StreamBatches
from .registry import DataSplits

__all__ = ["SPLIT_KEYS", "FACTORY_ARGUMENTS", "call_factory", "dataset_splits"]

SPLIT_KEYS = ("train", "test", "val")
_INFO_KEYS = ("num_classes", "classes")
# recipe keys a dataset factory receives when it declares a parameter of that name
FACTORY_ARGUMENTS = ("data_dir", "seed", "image_size", "download", "splits")


def call_factory(factory: Callable[..., Any], options: Any, splits: Sequence[str],
                 source: str) -> Any:
    """Call a dataset factory with the recipe values of the parameters it declares among
    :data:`FACTORY_ARGUMENTS` (``splits``: the splits the caller needs)."""
    try:
        parameters: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        parameters = {}
    values = {"splits": tuple(splits)}
    kwargs = {name: values[name] if name in values else getattr(options, name, None)
              for name in FACTORY_ARGUMENTS if name in parameters}
    try:
        return factory(**kwargs)
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's factory failed: say which
        raise DatasetError(f"dataset {source!r} failed: {type(err).__name__}: {err}") from err


def _check_split(key: str, dataset: Any, source: str) -> Dataset:
    if isinstance(dataset, IterableDataset):
        raise DatasetError(f"dataset {source!r}: {key!r} is an IterableDataset; a run needs "
                           "a map-style Dataset (__getitem__ and __len__), whose order it "
                           "draws from (seed, epoch) so a resumed run sees the same batches")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DatasetError(f"dataset {source!r}: {key!r} is a {type(dataset).__name__}, not a "
                           "map-style torch.utils.data.Dataset (__getitem__ and __len__)")
    if len(dataset) == 0:
        raise DatasetError(f"dataset {source!r}: the {key!r} split is empty")
    return dataset


def _num_classes(given: Mapping, datasets: list[Any], source: str) -> tuple[int | None,
                                                                             list | None]:
    classes = given.get("classes")
    if classes is None:
        classes = next((list(d.classes) for d in datasets
                        if isinstance(getattr(d, "classes", None), Sequence)), None)
    count = given.get("num_classes")
    if count is None and classes is not None:
        count = len(classes)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 1):
        raise DatasetError(f"dataset {source!r}: num_classes must be an integer >= 1, got "
                           f"{count!r}")
    return count, None if classes is None else list(classes)


def dataset_splits(given: Any, options: Any, device: torch.device,
                   splits: Sequence[str] = ("train", "test"), source: str = "data"
                   ) -> DataSplits:
    """The :class:`DataSplits` of a mapping of datasets (see the module's docstring).

    Args:
        given: the mapping.
        options: the run's config (batch_size, seed, workers, train_subset, test_subset).
        device: where the model runs (pinned memory on CUDA).
        splits: the splits the caller needs; the others are left None.
        source: the spec or ``"data"``, named in messages.

    Raises:
        DatasetError: not a mapping, an unknown key, a needed split missing, or a split
            that is no map-style dataset.
    """
    if not isinstance(given, Mapping):
        raise DatasetError(f"dataset {source!r} must give a mapping such as {{'train': "
                           f"Dataset, 'test': Dataset}}, got a {type(given).__name__}")
    unknown = sorted(set(given) - set(SPLIT_KEYS) - set(_INFO_KEYS))
    if unknown:
        raise DatasetError(f"dataset {source!r}: unknown key(s) {unknown}; the keys are "
                           f"{', '.join(SPLIT_KEYS + _INFO_KEYS)}")
    chosen = {"train": given.get("train"),
              "test": given.get("test") if given.get("test") is not None else given.get("val")}
    for split in splits:
        if chosen[split] is None:
            also = " (or 'val')" if split == "test" else ""
            raise DatasetError(f"dataset {source!r} has no {split!r} split{also}; give "
                               f"{{'train': Dataset, 'test': Dataset}}")
    datasets = {k: _check_split(k, v, source) for k, v in chosen.items()
                if k in splits and v is not None}
    count, classes = _num_classes(given, list(datasets.values()), source)

    def batches(split: str, shuffle: bool, limit: int | None) -> StreamBatches:
        return StreamBatches(datasets[split], options.batch_size, shuffle=shuffle,
                             seed=options.seed, workers=options.workers,
                             pin_memory=device.type == "cuda", limit=limit,
                             name=f"dataset {source!r}, {split!r} split")

    info: dict = {} if classes is None else {"classes": classes}
    return DataSplits(
        train=batches("train", True, options.train_subset) if "train" in datasets else None,
        test=batches("test", False, options.test_subset) if "test" in datasets else None,
        num_classes=count, info=info)
