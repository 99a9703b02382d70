"""From a recipe or a run directory to objects: the device, data, model, weights, task and
pruner a job needs. The one place that turns a run directory into objects, so that every
command (eval, export, shrink, draw) reads it the same way and words its errors alike.
"""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from .. import distributed
from ..data import DatasetError, DataSplits, create_dataset
from ..export.container import ContainerError, is_container
from ..export.formats import ExportError, load_state_dict
from ..imports import ImportSpecError, user_code_error
from ..models import create_model, weights_loader, weights_loader_runs_code
from ..models.hf import config_differences
from ..models.registry import ModelArgumentsError, accepts_argument
from ..posttraining.activations import CalibrationError
from ..projection import FOLDED_SCORE, OBD_SCORE, SHARE_SCORE, ProjectionError, survivor_count
from ..pruner import ADMMPruner, PrunerError
from ..selection import prunable_parameters
from ..tasks import Task, create_task
from ..tasks.registry import UnknownTaskError
from ..train import to_device
from ..unit_contribution import OUTPUT_UNIT_SCORE
from .calibrated import check_calibrated
from .config import CALIBRATED_PRUNING, Config, ConfigError
from .rundir import MODEL_FILE, RunError, load_run_config
from .sources import check_run_sources

__all__ = ["LoadedRun", "build_model", "build_pruner", "build_task", "check_selection",
           "check_pruning", "example_inputs", "examples_read",
           "check_data", "check_finite", "load_data",
           "load_run", "load_weights", "load_state", "state_differences", "model_args",
           "model_record", "recorded_num_classes", "resolve_device", "traces_model",
           "HF_WEIGHT_FILES"]


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


def model_record(config: Config, num_classes: int | None) -> dict:
    """What RUN_DIR/model.json records next to a run's weights files: the model and the
    class count its data gave it. Commands that read the test split only (eval, export,
    shrink) can lack that count (a training split's ``classes`` attribute gave it)."""
    return {"model": config.model, "num_classes": num_classes}


def recorded_num_classes(run_dir: str | Path) -> int | None:
    """The class count RUN_DIR/model.json records; None when it records none (or the run
    was made before the file existed).

    Raises:
        RunError: the file is damaged.
    """
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} cannot be read ({err}); the run directory is damaged "
                       "(`admmprune prune --resume` writes it again)") from None
    count = record.get("num_classes") if isinstance(record, dict) else "missing"
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 1):
        raise RunError(f"{path}: num_classes is {count!r}, not a count >= 1; the run "
                       "directory is damaged (`admmprune prune --resume` writes it again)")
    return count


def build_model(config: Config, num_classes: int | None = None) -> nn.Module:
    """The configured model; a factory that takes ``num_classes`` / ``image_size`` gets the
    dataset's class count / the recipe's image_size unless model_args sets them."""
    kwargs = model_args(config, num_classes)
    try:
        return create_model(config.model, **kwargs)
    except ImportSpecError as err:
        raise ConfigError(f"model: {err}") from None
    except ModelArgumentsError as err:  # the call's signature alone: the args do not fit
        raise ConfigError(f"model_args {config.model_args} do not fit model "
                          f"{config.model!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - the factory itself failed: say where
        # a bug, out of memory, or a value it refuses: its own words, file and line
        args = f" with model_args {config.model_args}" if config.model_args else ""
        raise ConfigError(str(user_code_error(err, f"building model {config.model!r}{args}"))
                          ) from None


def build_task(config: Config, task: Task | None = None) -> Task:
    """The configured task (or ``task``, an object given from Python); label smoothing and
    distillation need class logits."""
    if task is not None and not isinstance(task, Task):
        raise ConfigError(f"task must be an admmprune.tasks.Task, got a {type(task).__name__}")
    try:
        chosen = task if task is not None else create_task(config.task)
    except UnknownTaskError as err:
        raise ConfigError(f"task: {err}") from None
    if (config.label_smoothing or config.distill_weight) and \
            not getattr(chosen, "distillable", False):
        raise ConfigError(f"label_smoothing and distill_weight apply to classification only; "
                          f"task {config.task!r} does not output class logits: set both to 0")
    if task is not None:
        return task  # the caller's object, configured by the caller
    if not config.label_smoothing:
        return chosen
    try:
        return create_task(config.task, label_smoothing=config.label_smoothing)
    except UnknownTaskError as err:
        raise ConfigError(f"task: {err}") from None


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
        min_layer_percent=config.min_layer_percent,
    )


def traces_model(config: Config) -> bool:
    """Whether the pruner reads the model on example inputs (to count live weights, to find
    the norms the folded score reads, to read the activations or output gradients the share
    and obd scores rank by, or the unit inputs of group_score output)."""
    return config.structure == "filter" or config.live_weights or \
        config.score in (FOLDED_SCORE, SHARE_SCORE, OBD_SCORE) or \
        config.group_score == OUTPUT_UNIT_SCORE


# The output unit score estimates each unit's mean squared contribution from the example
# inputs: a trace needs two inputs, an estimate over ~1,000 neurons a block wants more tokens.
OUTPUT_SCORE_EXAMPLES = 16


def examples_read(config: Config) -> int:
    """How many example inputs the pruner of ``config`` reads (:func:`example_inputs`)."""
    return OUTPUT_SCORE_EXAMPLES if config.group_score == OUTPUT_UNIT_SCORE else 2


def check_selection(model: nn.Module, config: Config) -> None:
    """The prunable tensors exist, layer_percents fits them and every stage's all_percent
    keeps at least one weight (raises before training, not after the dense phase)."""
    named = prunable_parameters(model, config.include, config.exclude)  # raises if empty
    if config.layer_percents is not None and len(config.layer_percents) != len(named):
        raise ConfigError(f"layer_percents has {len(config.layer_percents)} entries but "
                          f"{config.model} has {len(named)} prunable tensors: "
                          f"{', '.join(n for n, _ in named)}")
    if config.structure == "unstructured" and config.layer_percents is None:
        total = sum(p.numel() for _, p in named)
        for stage in range(config.stages):
            try:
                survivor_count(total, config.stage_value("all_percent", stage))
            except ProjectionError as err:
                raise ConfigError(str(err)) from None


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights holding NaN or infinite values (RunError naming the tensors): they are
    nothing to prune or evaluate, and would otherwise surface later as a "diverged" run.
    Only parameters: buffers may hold -inf on purpose (attention masks)."""
    bad = []
    for name, tensor in model.named_parameters():
        if is_lazy(tensor) or tensor.device.type == "meta" or not tensor.is_floating_point():
            continue  # nothing to read yet
        count = int((~torch.isfinite(tensor.detach())).sum())
        if count:
            bad.append(f"{name} ({count} of {tensor.numel()})")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise RunError(f"{source} hold NaN or infinite values: {shown}; there is nothing to "
                       "prune in them. Use weights saved while they were still finite")


@contextmanager
def _unchanged(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the model in eval mode without gradients, then leave it as it was: each module's
    mode, and every random stream (Python, numpy, torch) the run draws from afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _shape(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape)
    if isinstance(inputs, (list, tuple)):
        return [_shape(item) for item in inputs]
    return type(inputs).__name__


def _first_pair(batches: Any, where: str) -> tuple[Any, Any]:
    """The first batch of ``batches`` as (inputs, targets); the next ``iter()`` still gives
    the epoch it would have given."""
    epoch = getattr(batches, "epoch", None)
    iterator = iter(batches)
    try:
        batch = next(iterator, None)
    finally:
        del iterator  # a DataLoader's worker processes end with it
        if isinstance(epoch, int):
            batches.set_epoch(epoch)
    if batch is None:
        raise DatasetError(f"{where} gives no batch")
    if isinstance(batch, Mapping):
        keys = ", ".join(repr(k) for k in batch)
        raise DatasetError(f"{where}: an item is a dict (keys {keys}); a run needs (input, "
                           "target) pairs: return them as a tuple from __getitem__")
    if not isinstance(batch, (list, tuple)):
        raise DatasetError(f"{where}: an item is a {type(batch).__name__}; a run needs "
                           "(input, target) pairs")
    if len(batch) != 2:
        raise DatasetError(f"{where}: an item has {len(batch)} parts; a run needs (input, "
                           "target) pairs: return those two alone from __getitem__ (a "
                           "per-example weight has no place in a run)")
    return batch[0], batch[1]


def check_data(model: nn.Module, data: DataSplits, task: Task, device: torch.device,
               source: str) -> None:
    """One batch of each split through the model before anything trains: items that are no
    (input, target) pairs, inputs the model cannot take (test items of another shape than
    training items), targets the task cannot use (labels out of range, float or string
    labels, fewer outputs than the data has classes). The model and every random stream are
    left as they were, so a run is the same with or without this check.

    Raises:
        DatasetError: naming the split and what does not fit.
    """
    shapes: dict[str, Any] = {}
    with _unchanged(model, device):
        for split, batches in (("train", data.train), ("test", data.test)):
            if batches is None:
                continue
            where = f"dataset {source!r}, {split!r} split"
            inputs, targets = _first_pair(batches, where)
            shape = _shape(inputs)
            try:
                output = model(to_device(inputs, device))
            except Exception as err:  # noqa: BLE001 - whatever the forward pass raises
                others = "".join(f"; the {s!r} split's are {v}" for s, v in shapes.items())
                failed = user_code_error(err, f"the model on its inputs of shape {shape}",
                                         users_only=True)
                raise DatasetError(f"{where} does not fit the model: {failed}{others}"
                                   ) from None
            shapes[split] = shape
            problem = task.batch_problem(output, to_device(targets, device), data.num_classes)
            if problem is not None:
                raise DatasetError(f"{where}: {problem}")


def example_inputs(data: DataSplits, device: torch.device, count: int = 2
                   ) -> torch.Tensor | None:
    """The first ``count`` inputs (at most one batch) of the test split, else the training
    split, for the projections and scores that read the model (:func:`examples_read`); None
    when neither split was read. Every rank takes the same ones, so that their traces, and
    masks, agree."""
    batches = data.test if data.test is not None else data.train
    if batches is None:
        return None
    x, _ = next(iter(batches))
    return x[:count].to(device)


def check_pruning(model: nn.Module, config: Config,
                  example: torch.Tensor | None = None) -> None:
    """Whether ``config``'s pruning can run on ``model`` at all, asked before anything trains
    of the checks that would refuse it later: the selection and ratios
    (:func:`check_selection`), the pruner of the first stage (filter and channel structures
    refuse weights stored [in, out], N:M needs group-sized inputs, per-layer ratios one per
    tensor, live weights a model it can trace) and the layers a calibrated method scores
    (:func:`~.calibrated.check_calibrated`). The model is left as it is.

    Args:
        example: a batch the model accepts (:func:`example_inputs`), traced as the pruner
            will trace it; None: the traces wait for the pruner itself.

    Raises:
        ConfigError: what does not fit, in the words of the check that refuses it.
    """
    check_selection(model, config)
    if example is None:  # nothing to trace: the pruner refuses live weights without inputs
        config = replace(config, live_weights=False)
    try:
        build_pruner(model, config, 0, example)
    except PrunerError as err:
        raise ConfigError(str(err)) from None
    if config.pruning in CALIBRATED_PRUNING:
        try:
            check_calibrated(model, config)
        except CalibrationError as err:
            raise ConfigError(str(err)) from None


# a Hugging Face model directory: config.json and one of these weight files
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_state(path: Path, device: torch.device, max_params: int) -> dict:
    """A state dict from ``.safetensors``, a Hugging Face model directory, the project's
    compressed file (``.apz``, up to ``max_params`` elements), or a file of torch.save read
    with weights_only=True (``{"model": state}`` unwrapped)."""
    if path.is_file() and is_container(path):
        try:
            return {k: v.to(device) for k, v in
                    load_state_dict(path, max_params=max_params).items()}
        except (ExportError, ContainerError) as err:
            raise RunError(str(err)) from None
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not (path / "config.json").is_file() or not found:
            raise RunError(f"pretrained {path} is a directory but no Hugging Face model "
                           f"directory: it needs config.json and {' or '.join(HF_WEIGHT_FILES)}"
                           " (sharded checkpoints: save them as one file)")
        path = found[0]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(device))
        state = _read_state_dict(path, device)
    except RunError:
        raise
    except Exception as err:  # noqa: BLE001
        raise RunError(f"cannot read pretrained checkpoint {path}: {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise RunError(f"{path} holds a {type(state).__name__}, not a state dict (a mapping "
                       "of parameter names to tensors)")
    return state


def state_differences(model: nn.Module, state: dict, limit: int = 5) -> list[str]:
    """How ``state``'s tensor names and shapes differ from ``model``'s state dict (empty
    when they fit). A name missing from ``state`` is fine when its tensor is the very tensor
    of a name it holds (tied weights: a Hugging Face file stores a tied LM head once)."""
    own = model.state_dict(keep_vars=True)
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in own.items():
        by_tensor.setdefault(id(tensor), []).append(name)
    problems = []
    for name, tensor in own.items():
        if name in state:
            theirs = state[name]
            if getattr(theirs, "shape", None) != tensor.shape:
                problems.append(f"{name}: shape {tuple(tensor.shape)} here, "
                                f"{tuple(getattr(theirs, 'shape', ()))} saved")
        elif not any(other in state for other in by_tensor[id(tensor)]):
            problems.append(f"{name}: missing from the saved weights")
    problems += [f"{name}: saved but not in the model" for name in state if name not in own]
    if len(problems) > limit:
        problems = problems[:limit] + [f"... {len(problems) - limit} more"]
    return problems


def load_state(model: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model`` after checking names and shapes (tied weights may be
    stored once); RunError naming the differences otherwise."""
    problems = state_differences(model, state)
    if problems:
        raise RunError(f"{source} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def load_weights(model: nn.Module, path: Path, device: torch.device,
                 model_name: str | None = None, *, trust_pickle: bool = False) -> None:
    """Fill ``model`` from ``path``: a format registered for ``model_name`` by its suffix
    (Caffe .npy, darknet .weights), else a state dict: ``.safetensors``, a Hugging Face
    model directory (config.json + model.safetensors or pytorch_model.bin), a compressed
    file of ``admmprune export`` (``.apz``, told by its magic bytes), or a file of
    torch.save, read with weights_only=True. A Hugging Face directory's config.json must
    match ``model``'s own config where it changes the computation (:mod:`admmprune.models.hf`).

    Args:
        trust_pickle: allow a registered format read by unpickling (Caffe's .npy), which
            runs whatever code a crafted file holds: only for files the user chose to trust
            (a recipe's ``pretrained:``, ``--trust-pickle``).

    Raises:
        RunError: the file is missing, unreadable, needs unpickling without
            ``trust_pickle``, does not fit the model (a Hugging Face directory: also when
            its config.json describes another computation than the model's config), or holds
            NaN or infinite weights.
    """
    if not path.exists():
        raise RunError(f"pretrained checkpoint {path} does not exist")
    loader = weights_loader(model_name, path) if model_name and path.is_file() else None
    if loader is not None and model_name:
        if weights_loader_runs_code(model_name, path) and not trust_pickle:
            raise RunError(f"{path}: {model_name}'s {path.suffix} files are read by unpickling, "
                           "which runs any code a crafted file holds; refused. Pass "
                           "--trust-pickle if you trust where the file comes from (or name "
                           "it as pretrained: in your recipe), or give a state dict saved "
                           "with torch.save(model.state_dict()) or a .safetensors file")
        try:
            loader(model, path)
        except ValueError as err:
            raise RunError(f"cannot load {path} into {model_name}: {err}") from None
        model.to(device)
    else:
        # a compressed file holds at most the model's own elements (a tied weight counts
        # twice)
        limit = sum(t.numel() for t in model.state_dict().values())
        state = _read_state(path, device, limit)
        if path.is_dir():
            _check_hf_config(model, path, model_name)
        load_state(model, state, str(path))
    check_finite(model, f"the weights of {path}")


def _check_hf_config(model: nn.Module, path: Path, model_name: str | None) -> None:
    """A Hugging Face directory's config.json must describe the model its weights go into:
    the settings saved there (activation, norm epsilon...) are not the ones that compute."""
    try:
        differ = config_differences(model, path / "config.json")
    except ValueError as err:
        raise RunError(f"pretrained {path}: {err}") from None
    if differ:
        built = f"model {model_name!r}" if model_name else "the model"
        raise RunError(f"pretrained {path}: its config.json describes another model than "
                       f"{built} builds here ({'; '.join(differ)}), so its weights would "
                       "compute something else than the model they were saved from. Build "
                       "the model with the saved settings (model_args, or your own factory "
                       "as an import spec), or give weights saved from a model of this config")


def _read_state_dict(path: Path, device: torch.device):
    """torch.load(weights_only=True), which also reads .safetensors: no code runs."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            # torch's message advises weights_only=False, i.e. running the file's code
            raise RunError(f"{path} is not a state dict readable without running code (a "
                           "pickled object: a whole model, or other Python objects). Save "
                           "the weights with torch.save(model.state_dict(), PATH) or as "
                           ".safetensors and pass that file") from None
        raise RunError(f"cannot read {path} as a PyTorch state dict: {err}") from None
    except Exception as err:  # noqa: BLE001 - a zip, a truncated file, random bytes...
        raise RunError(f"cannot read {path} as a PyTorch state dict: {err}") from None


@dataclass
class LoadedRun:
    """A run directory's recipe, device, data (None when not asked for or unreadable, with
    the reason in ``data_error``), model (weights loaded, eval mode), weights file and the
    class count the model was built with (None: unknown, the factory's default)."""

    run_dir: Path
    config: Config
    device: torch.device
    data: DataSplits | None
    model: nn.Module
    weights: Path
    data_error: str | None = None
    num_classes: int | None = None


def load_run(run_dir: str | Path, *, overrides: dict | None = None,
             splits: tuple[str, ...] = ("test",), data: str = "required",
             device: torch.device | None = None, weights: str | Path | None = None,
             trust_pickle: bool = False, config: Config | None = None,
             allow_changed_sources: bool = False) -> LoadedRun:
    """Read RUN_DIR's recipe (with ``overrides``), its data splits, and build its model with
    ``weights`` (default RUN_DIR/model.pt) loaded, after checking that the user's files the
    run imported are unchanged (:func:`~admmprune.runs.sources.check_run_sources`).

    Args:
        run_dir: a run directory written by ``admmprune prune``.
        overrides: recipe keys to change (e.g. ``{"data_dir": ...}``).
        splits: the data splits to read.
        data: ``"required"`` (a DatasetError propagates), ``"optional"`` (an unreadable
            dataset leaves ``data`` None and the reason in ``data_error``) or ``"none"``.
        device: where data and model go; default the recipe's device.
        weights: the state dict to load; default RUN_DIR/model.pt.
        trust_pickle: allow a weights format read by unpickling (see :func:`load_weights`).
        config: the run's recipe when the caller has read it already (with its overrides).
        allow_changed_sources: build the model from the files as they are now when one the
            run imported changed since (a warning names it) instead of refusing.

    Raises:
        RunError: the run directory, its recipe or the weights cannot be read, or a file
            the run imported changed (without ``allow_changed_sources``).
        DatasetError: ``data="required"`` and the data cannot be read.
    """
    run_dir = Path(run_dir)
    if config is None:
        config = load_run_config(run_dir, overrides or {})
    check_run_sources(run_dir, config, allow_changed=allow_changed_sources)
    device = device if device is not None else resolve_device(config.device)
    splits_read, data_error = None, None
    if data != "none":
        try:
            splits_read = load_data(config, device, splits=splits)
        except DatasetError as err:
            if data == "required":
                raise
            data_error = str(err)
    # what the run recorded first: the splits read here may not give the count
    num_classes = recorded_num_classes(run_dir)
    if num_classes is None and splits_read is not None:
        num_classes = splits_read.num_classes
    model = build_model(config, num_classes).to(device)
    path = Path(weights) if weights else run_dir / "model.pt"
    load_weights(model, path, device, config.model, trust_pickle=trust_pickle)
    model.eval()
    return LoadedRun(run_dir, config, device, splits_read, model, path, data_error,
                     num_classes)
