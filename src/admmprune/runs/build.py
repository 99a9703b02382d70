"""From a recipe or a run directory to objects: the device, data, model, weights, task and
pruner a job needs. The one place that turns a run directory into objects, so that every
command (eval, export, shrink, draw) reads it the same way and words its errors alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..data import DatasetError, DataSplits, create_dataset
from ..models import create_model, weights_loader
from ..models.registry import accepts_argument
from ..pruner import ADMMPruner
from ..selection import prunable_parameters
from ..tasks import Task, create_task
from .config import Config, ConfigError
from .rundir import RunError, load_run_config

__all__ = ["LoadedRun", "build_model", "build_pruner", "build_task", "check_selection",
           "load_data", "load_run", "load_weights", "model_args", "resolve_device",
           "traces_model"]


def resolve_device(name: str) -> torch.device:
    """The device a recipe's ``device`` names; inside a process group, CUDA means
    ``cuda:LOCAL_RANK``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available; "
                              "use device=cpu or auto")
    try:
        return distributed.device_for(device)
    except distributed.DistributedError as err:
        raise ConfigError(str(err)) from None


def load_data(config: Config, device: torch.device, splits: tuple[str, ...] = ("train", "test")
              ) -> DataSplits:
    """The configured dataset's splits (in-memory sets are moved to ``device`` once)."""
    return create_dataset(config.dataset, config, device, splits)


def model_args(config: Config, num_classes: int | None = None) -> dict:
    """The keyword arguments :func:`build_model` passes to the model's factory (what an
    exported file records to rebuild it)."""
    kwargs = dict(config.model_args)
    for key, value in (("num_classes", num_classes), ("image_size", config.image_size)):
        if value is not None and key not in kwargs and accepts_argument(config.model, key):
            kwargs[key] = value
    return kwargs


def build_model(config: Config, num_classes: int | None = None) -> nn.Module:
    """The configured model; a factory that takes ``num_classes`` / ``image_size`` gets the
    dataset's class count / the recipe's image_size unless model_args sets them."""
    kwargs = model_args(config, num_classes)
    try:
        return create_model(config.model, **kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        # a wrong keyword (TypeError) or a value the model cannot be built with
        raise ConfigError(f"model_args {config.model_args} do not fit model "
                          f"{config.model!r}: {err}") from None


def build_task(config: Config) -> Task:
    """The configured task; label smoothing and distillation need class logits."""
    task = create_task(config.task)
    if (config.label_smoothing or config.distill_weight) and \
            not getattr(task, "distillable", False):
        raise ConfigError(f"label_smoothing and distill_weight apply to classification only; "
                          f"task {config.task!r} does not output class logits: set both to 0")
    return create_task(config.task, label_smoothing=config.label_smoothing) \
        if config.label_smoothing else task


def build_pruner(model: nn.Module, config: Config, stage: int = 0,
                 example_inputs: torch.Tensor | None = None) -> ADMMPruner:
    """The pruner of ``config``'s stage ``stage`` over ``model``."""
    return ADMMPruner(
        model,
        all_percent=config.stage_value("all_percent", stage),
        rho=config.stage_value("rho", stage),
        rho_growth=config.stage_value("rho_growth", stage),
        rho_max=config.stage_value("rho_max", stage),
        adaptive_rho=config.adaptive_rho,
        p_lambda=config.p_lambda,
        projection=config.projection,
        layer_percents=config.layer_percents,
        score=config.score,
        include=config.include,
        exclude=config.exclude,
        z_init=config.z_init,
        allow_regrowth=config.allow_regrowth,
        structure=config.structure,
        group_score=config.group_score,
        nm_n=config.nm_n,
        nm_m=config.nm_m,
        example_inputs=example_inputs if traces_model(config) else None,
        # global filter pruning counts live weights whenever it can trace the model
        live_weights=config.live_weights and config.structure == "unstructured",
    )


def traces_model(config: Config) -> bool:
    """Whether the pruner traces the model on example inputs (to count live weights)."""
    return config.structure == "filter" or config.live_weights


def check_selection(model: nn.Module, config: Config) -> None:
    """The prunable tensors exist and layer_percents fits them (raises before training)."""
    named = prunable_parameters(model, config.include, config.exclude)  # raises if empty
    if config.layer_percents is not None and len(config.layer_percents) != len(named):
        raise ConfigError(f"layer_percents has {len(config.layer_percents)} entries but "
                          f"{config.model} has {len(named)} prunable tensors: "
                          f"{', '.join(n for n, _ in named)}")


def load_weights(model: nn.Module, path: Path, device: torch.device,
                 model_name: str | None = None) -> None:
    """Fill ``model`` from ``path``: a format registered for ``model_name`` by its suffix
    (Caffe .npy, darknet .weights), else a PyTorch state dict read with weights_only=True."""
    if not path.is_file():
        raise RunError(f"pretrained checkpoint {path} does not exist")
    loader = weights_loader(model_name, path) if model_name else None
    if loader is not None:
        try:
            loader(model, path)
        except ValueError as err:
            raise RunError(f"cannot load {path} into {model_name}: {err}") from None
        model.to(device)
        return
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise RunError(f"cannot read pretrained checkpoint {path}: {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RunError(f"{path} does not fit model: {err}") from None


@dataclass
class LoadedRun:
    """A run directory's recipe, device, data (None when not asked for or unreadable, with
    the reason in ``data_error``), model (weights loaded, eval mode) and weights file."""

    run_dir: Path
    config: Config
    device: torch.device
    data: DataSplits | None
    model: nn.Module
    weights: Path
    data_error: str | None = None

    @property
    def num_classes(self) -> int | None:
        return self.data.num_classes if self.data is not None else None


def load_run(run_dir: str | Path, *, overrides: dict | None = None,
             splits: tuple[str, ...] = ("test",), data: str = "required",
             device: torch.device | None = None, weights: str | Path | None = None
             ) -> LoadedRun:
    """Read RUN_DIR's recipe (with ``overrides``), its data splits, and build its model with
    ``weights`` (default RUN_DIR/model.pt) loaded.

    Args:
        run_dir: a run directory written by ``admmprune prune``.
        overrides: recipe keys to change (e.g. ``{"data_dir": ...}``).
        splits: the data splits to read.
        data: ``"required"`` (a DatasetError propagates), ``"optional"`` (an unreadable
            dataset leaves ``data`` None and the reason in ``data_error``) or ``"none"``.
        device: where data and model go; default the recipe's device.
        weights: the state dict to load; default RUN_DIR/model.pt.

    Raises:
        RunError: the run directory, its recipe or the weights cannot be read.
        DatasetError: ``data="required"`` and the data cannot be read.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides or {})
    device = device if device is not None else resolve_device(config.device)
    splits_read, data_error = None, None
    if data != "none":
        try:
            splits_read = load_data(config, device, splits=splits)
        except DatasetError as err:
            if data == "required":
                raise
            data_error = str(err)
    num_classes = splits_read.num_classes if splits_read is not None else None
    model = build_model(config, num_classes).to(device)
    path = Path(weights) if weights else run_dir / "model.pt"
    load_weights(model, path, device, config.model)
    model.eval()
    return LoadedRun(run_dir, config, device, splits_read, model, path, data_error)
