"""Run configuration: one flat set of keys, read from a YAML recipe, overridable on the CLI.

The key names are the users' vocabulary (k_step, epochs, retraining_epochs,
steps_per_epoch, rho, p_lambda, all_percent, learning_rate, batch_size). Keys that
describe an ADMM stage (all_percent, k_step, epochs, rho, rho_growth, rho_max) may be
lists, one value per progressive stage; a scalar applies to every stage.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..checks import NM_PERCENT_TOLERANCE, is_int, is_number, rho_schedule_problem
from ..projection import GROUP_SCORES, SCORES, ProjectionError, validate_nm
from ..unit_contribution import OUTPUT_UNIT_SCORE

__all__ = ["CALIBRATED_PRUNING", "ONE_SHOT_PRUNING", "BLOCKWISE_METHODS",
           "BLOCKWISE_ALLOCATIONS", "Config", "ConfigError", "counts_live_weights",
           "load_config", "apply_overrides", "STAGE_KEYS", "KEY_HELP"]

# pruning modes scored on calibration batches of the training split
CALIBRATED_PRUNING = ("wanda", "sparsegpt", "blockwise")
# pruning modes with no W-steps: they prune the dense weights at once
ONE_SHOT_PRUNING = ("oneshot",) + CALIBRATED_PRUNING
# pruning blockwise: the layer methods and allocations of admmprune.posttraining (named here
# because this module does not import torch; a test keeps the two in step)
BLOCKWISE_METHODS = ("admm", "sparsegpt", "wanda", "magnitude")
BLOCKWISE_ALLOCATIONS = ("global", "uniform", "owl")
STAGE_KEYS = ("all_percent", "k_step", "epochs", "rho", "rho_growth", "rho_max")


class ConfigError(ValueError):
    """A recipe or command-line value that cannot be used; the message says which."""


def _key(default: Any, help: str, choices: tuple[str, ...] | None = None):
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # what to run
    name: str = _key("run", "run name; the run directory is OUTPUT_DIR/NAME-TIMESTAMP")
    imports: list = _key([], "Python files run before anything else, so their "
                             "@register_model/@register_dataset/@register_task lines count "
                             "(--import FILE.py, repeatable; in a recipe, relative to it); "
                             "the run records their sha256")
    model: str = _key("lenet5", "registered model name (see `admmprune models`), or an import "
                                "spec \"package.module:factory\" (runs that code)")
    model_args: dict = _key({}, "keyword arguments of the model factory, e.g. {depth: 3}")
    dataset: str = _key("mnist", "registered dataset (see `admmprune datasets`), or an import "
                                 "spec \"package.module:factory\" returning {train: Dataset, "
                                 "test: Dataset} (runs that code)")
    task: str = _key("classification", "what the labels mean: its loss and metrics "
                                       "(see `admmprune datasets`), or an import spec "
                                       "\"package.module:factory\" giving a Task")
    data_dir: str | None = _key(None, "directory with the dataset files "
                                      "(default: $ADMMPRUNE_DATA_DIR, then the cache)")
    val_labels: str | None = _key(None, "imagenet: validation label file written by "
                                        "`admmprune imagenet-labels` (default: "
                                        "DATA_DIR/val_labels.txt)")
    image_size: int | None = _key(None, "image datasets: crop size fed to the model "
                                        "(default 227)")
    resize: int | None = _key(None, "image datasets: images are resized to this before "
                                    "cropping (default 256)")
    context: int | None = _key(None, "text datasets: tokens per window (default: model_args "
                                     "context, else n_positions, else 256)")
    preprocess: str = _key("caffe", "image datasets: caffe (BGR 0-255 minus the mean, what "
                                    "bvlc_alexnet.npy expects) or standard (RGB 0-1, "
                                    "ImageNet mean/std)", ("caffe", "standard"))
    workers: int = _key(2, "data-loading worker processes of streaming datasets (0: load in "
                           "the main process)")
    download: bool = _key(True, "download the dataset when it is not found locally")
    train_subset: int | None = _key(None, "use only the first N training examples")
    test_subset: int | None = _key(None, "use only the first N test examples")
    seed: int = _key(0, "random seed (weights, data order)")
    device: str = _key("auto", "auto, cpu, cuda, cuda:1, ...")
    threads: int | None = _key(None, "CPU threads for torch (default: torch's choice); use 1 "
                                     "per job when several jobs share the cores")
    output_dir: str = _key("runs", "parent directory of run directories")
    progress: bool = _key(True, "show progress bars")
    # dense model
    pretrained: str | None = _key(None, "dense checkpoint to start from (skips dense training)")
    dense_epochs: int = _key(4, "epochs of dense training when no pretrained model is given")
    dense_lr_schedule: str = _key("constant", "dense training learning rate: constant, step "
                                  "(x0.1 for the last third) or cosine",
                                  ("constant", "step", "cosine"))
    flip: float = _key(0.0, "detection: probability of a horizontal flip of a training "
                            "image (boxes follow)")
    hsv: float = _key(0.0, "detection: random hue/saturation/value jitter of training images, "
                           "as a fraction (e.g. 0.3)")
    scale_jitter: float = _key(0.0, "detection: random rescale of training images by up to "
                                    "this fraction before letterboxing (e.g. 0.25)")
    batch_size: int = _key(64, "mini-batch size for every phase")
    accumulate: int = _key(1, "mini-batches per optimizer step (gradient accumulation: the "
                              "effective batch is batch_size x accumulate)")
    amp: str = _key("off", "mixed precision of the forward pass: off, bf16, fp16 (CUDA only)",
                    ("off", "bf16", "fp16"))
    augment_shift: int = _key(0, "random translation of training images by up to this many "
                                 "pixels (every phase; 0: none)")
    learning_rate: float = _key(1e-3, "learning rate of dense training and of the W-steps")
    optimizer: str = _key("adam", "optimizer of every phase", ("adam", "sgd"))
    momentum: float = _key(0.9, "SGD momentum")
    label_smoothing: float = _key(0.0, "classification: label smoothing of the training "
                                       "cross-entropy (every phase), in [0, 1)")
    distill_weight: float = _key(0.0, "classification: weight w in [0, 1) of distillation "
                                      "from the dense model in W-steps and retraining: "
                                      "(1-w)·task loss + w·T²·KL; 0: off")
    distill_temperature: float = _key(4.0, "distillation temperature T (> 0)")
    # ADMM
    pruning: str = _key("admm", "admm; oneshot: prune at once by the Z-step's projection "
                        "(baseline; unstructured: global magnitude); wanda: Wanda's masks "
                        "(|W|·‖X‖ per output row, uniform ratio; structure unstructured or "
                        "nm) from calibration_batches training batches; sparsegpt: "
                        "SparseGPT (each layer reconstructed from its inputs' XᵀX, uniform "
                        "ratio; unstructured or nm); blockwise: block by block from "
                        "calibration_batches training batches, like `admmprune oneshot` "
                        "(blockwise_method, allocation; unstructured or nm)",
                        ("admm",) + ONE_SHOT_PRUNING)
    calibration_batches: int = _key(8, "pruning wanda, sparsegpt or blockwise: training "
                                       "batches whose inputs score the weights")
    calibration_order: str = _key("one-pass", "pruning wanda or sparsegpt: one-pass: every "
                                  "layer's inputs from the dense model; sequential: each "
                                  "layer's from the model with the layers before it pruned "
                                  "(one calibration pass per layer)",
                                  ("one-pass", "sequential"))
    blockwise_method: str = _key("admm", "pruning blockwise: how each layer is pruned from its "
                                 "inputs: admm (ADMM reconstruction), sparsegpt, wanda or "
                                 "magnitude", BLOCKWISE_METHODS)
    allocation: str = _key("global", "pruning blockwise: how the budget is split between "
                           "layers: global (by the method's error curves, weighted by the "
                           "loss's sensitivity to each layer), uniform (every layer the same "
                           "share; the only one with structure nm), owl (per-block shares from "
                           "outlier ratios)", BLOCKWISE_ALLOCATIONS)
    all_percent: float | list = _key(98.6, "share of prunable weights removed, in [0, 100); "
                                           "a list runs progressive stages")
    k_step: int | list = _key(6, "ADMM iterations (per stage)")
    epochs: int | list = _key(1, "W-step epochs per ADMM iteration (per stage)")
    steps_per_epoch: int | None = _key(None, "cap on mini-batches per W-step/retraining epoch")
    rho: float | list = _key(1e-3, "initial ADMM penalty (per stage)")
    rho_growth: float | list = _key(2.0, "rho multiplier after each ADMM iteration (per stage)")
    rho_max: float | list = _key(1.0, "upper bound of rho (per stage)")
    adaptive_rho: bool = _key(False, "residual balancing (Boyd 3.4.1) instead of rho_growth")
    p_lambda: float = _key(0.0, "L2 weight (p_lambda/2)·Σ‖W‖² on prunable weights")
    projection: str = _key("global", "one budget for all layers, or the same ratio per layer",
                           ("global", "layerwise"))
    layer_percents: list | None = _key(None, "layerwise only: one removal percent per layer")
    score: str = _key("magnitude", "Z-step and hard-prune ranking of single weights: |w|, "
                      "|w|/layer RMS, LAMP, |w| with the neighbouring BatchNorm/norm "
                      "scales folded in, each weight's share of its output "
                      "(|w|·rms(input)/rms(output), from a batch), or Optimal Brain Damage "
                      "(w² times the output Gauss-Newton diagonal, from a batch)", SCORES)
    min_layer_percent: float | None = _key(None, "global unstructured: every layer keeps at "
                                           "least this percent of its weights (default: no "
                                           "floor; a collapsing layer is reported)")
    structure: str = _key("unstructured", "what the Z-step keeps: weights, output filters (+ "
                          "biases), input channels, N of every M weights, a transformer's "
                          "whole MLP neurons and attention groups (units)",
                          ("unstructured", "filter", "channel", "nm", "units"))
    group_score: str = _key("l2", "filter/channel/units ranking across layers: l2 "
                            "(norm/sqrt(size)), l1 (mean abs), lamp; units also output "
                            "(each unit's mean squared contribution to the residual stream "
                            "per weight, read on example inputs)",
                            (*GROUP_SCORES, OUTPUT_UNIT_SCORE))
    nm_n: int = _key(2, "structure nm: weights kept in every group of nm_m")
    nm_m: int = _key(4, "structure nm: group size along the input dimension")
    include: list = _key([], "module-name patterns to prune (default: every Conv/Linear)")
    exclude: list = _key([], "module-name patterns never pruned")
    z_init: str = _key("projection", "initial Z", ("projection", "weights"))
    admm_lr_schedule: str = _key("constant", "learning rate inside each ADMM iteration: "
                                 "constant, or cosine decay restarted every iteration",
                                 ("constant", "cosine"))
    hard_prune_support: str = _key("weights", "support kept by the hard prune: Π(W) or supp(Z)",
                                   ("weights", "z"))
    stage_retraining_epochs: int = _key(0, "masked retraining epochs between stages")
    allow_regrowth: bool = _key(False, "let a later stage revive weights removed earlier")
    live_weights: bool = _key(False, "unstructured, global: the budget counts live weights "
                              "only; a kept weight whose unit nothing kept reads is dropped "
                              "and the next-ranked weight takes its place (global filter "
                              "pruning always does)")
    # retraining
    retraining_epochs: int = _key(6, "masked retraining epochs after the last stage")
    retraining_learning_rate: float | None = _key(None, "default: learning_rate")
    retraining_augment_shift: int | None = _key(
        None, "random translation of the final retraining's images (default: augment_shift); "
              "0 fits a small pruned network to the centred images it will be tested on")
    retraining_average_epochs: int = _key(
        0, "keep the mean of the weights after each of the last N retraining epochs "
           "(stochastic weight averaging; masks hold); 0 keeps the last epoch's weights")
    retraining_lr_schedule: str = _key("step", "step: x0.1 for the last third; cosine; constant",
                                       ("step", "cosine", "constant"))
    retraining_regrow: float = _key(
        0.0, "share of each layer's kept weights swapped in the final retraining: smallest "
             "out, largest gradient in (RigL), decaying to 0; 0 fixes the mask")
    retraining_regrow_every: int = _key(100, "optimizer steps between mask updates of "
                                             "retraining_regrow")
    retraining_regrow_until: float = _key(0.75, "share of the final retraining after which "
                                                "the mask stays fixed, in (0, 1]")

    # -- helpers ---------------------------------------------------------------------------
    @property
    def stages(self) -> int:
        return len(self.all_percent) if isinstance(self.all_percent, list) else 1

    def stage_value(self, key: str, stage: int) -> Any:
        """The value of a per-stage key for stage ``stage`` (0-based)."""
        value = getattr(self, key)
        return value[stage] if isinstance(value, list) else value

    def final_percent(self) -> float:
        return float(self.stage_value("all_percent", self.stages - 1))

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> Config:
        """Raise ``ConfigError`` naming the first bad key; return self otherwise."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; "
                                  f"got {getattr(self, f.name)!r}")
        for key in STAGE_KEYS:
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != self.stages:
                raise ConfigError(f"{key} lists {len(value)} values but all_percent lists "
                                  f"{self.stages} stages; give one value or one per stage")
        previous = -math.inf
        for s in range(self.stages):
            percent = self.stage_value("all_percent", s)
            _check(is_number(percent) and 0 <= percent < 100, "all_percent",
                   f"must be in [0, 100) (the share of weights removed), got {percent!r}")
            _check(self.allow_regrowth or percent >= previous, "all_percent",
                   "stages must not decrease unless allow_regrowth is true")
            previous = percent
            k_step = self.stage_value("k_step", s)
            _check(isinstance(k_step, int) and k_step >= 1, "k_step",
                   f"must be an integer >= 1, got {k_step!r}")
            epochs = self.stage_value("epochs", s)
            _check(isinstance(epochs, int) and epochs >= 1, "epochs",
                   f"must be an integer >= 1, got {epochs!r}")
            problem = rho_schedule_problem(self.stage_value("rho", s),
                                           self.stage_value("rho_growth", s),
                                           self.stage_value("rho_max", s),
                                           max_may_be_infinite=False)
            _check(problem is None, *(problem or ("", "")))
        _check(self.retraining_augment_shift is None or is_int(self.retraining_augment_shift)
               and self.retraining_augment_shift >= 0, "retraining_augment_shift",
               f"must be an integer >= 0 or null, got {self.retraining_augment_shift!r}")
        for key in ("dense_epochs", "retraining_epochs", "stage_retraining_epochs",
                    "augment_shift", "retraining_average_epochs"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 0, key, f"must be an integer >= 0, "
                   f"got {value!r}")
        _check(self.retraining_average_epochs <= self.retraining_epochs,
               "retraining_average_epochs", f"averages the last epochs of the retraining: at "
               f"most retraining_epochs ({self.retraining_epochs}), got "
               f"{self.retraining_average_epochs}")
        _check(is_number(self.retraining_regrow) and 0 <= self.retraining_regrow <= 1,
               "retraining_regrow", f"must be in [0, 1], got {self.retraining_regrow!r}")
        _check(is_number(self.retraining_regrow_until)
               and 0 < self.retraining_regrow_until <= 1, "retraining_regrow_until",
               f"must be in (0, 1], got {self.retraining_regrow_until!r}")
        fixed_from = 1 - self.retraining_average_epochs / max(1, self.retraining_epochs)
        _check(not self.retraining_regrow or self.retraining_regrow_until <= fixed_from,
               "retraining_regrow_until", f"the mask must be fixed before the "
               f"{self.retraining_average_epochs} averaged epochs begin: at most "
               f"{fixed_from:.4g}, got {self.retraining_regrow_until!r}")
        _check(not self.retraining_regrow or self.structure == "unstructured",
               "retraining_regrow", f"swaps single weights; structure {self.structure!r} "
               "keeps groups (set retraining_regrow: 0)")
        for key in ("batch_size", "accumulate", "steps_per_epoch", "train_subset",
                    "test_subset", "threads", "image_size", "resize", "context",
                    "retraining_regrow_every"):
            value = getattr(self, key)
            required = key in ("batch_size", "accumulate", "retraining_regrow_every")
            _check(value is None and not required or is_int(value) and value >= 1,
                   key, f"must be an integer >= 1, got {value!r}")
        _check(is_int(self.workers) and self.workers >= 0, "workers",
               f"must be an integer >= 0, got {self.workers!r}")
        _check(self.image_size is None or self.resize is None or self.resize >= self.image_size,
               "resize", f"({self.resize}) must be >= image_size ({self.image_size}): images "
               "are resized, then cropped")
        self._check_registered()
        for key in ("include", "exclude"):
            value = getattr(self, key)
            _check(value is None or isinstance(value, list)
                   and all(isinstance(p, str) for p in value), key,
                   f"must be a list of name patterns (strings), e.g. [fc1, 'conv*'], got "
                   f"{value!r}")
        _check(_device_problem(self.device) is None, "device", _device_problem(self.device) or "")
        for key in ("learning_rate", "retraining_learning_rate"):
            value = getattr(self, key)
            _check(value is None and key != "learning_rate" or is_number(value) and value > 0,
                   key, f"must be > 0, got {value!r}")
        _check(is_number(self.flip) and 0 <= self.flip <= 1, "flip",
               f"must be a probability in [0, 1], got {self.flip!r}")
        for key in ("hsv", "scale_jitter"):
            value = getattr(self, key)
            _check(is_number(value) and 0 <= value < 1, key, f"must be in [0, 1), got "
                   f"{value!r}")
        self._check_structure()
        _check(is_number(self.p_lambda) and self.p_lambda >= 0, "p_lambda",
               f"must be >= 0, got {self.p_lambda!r}")
        for key in ("label_smoothing", "distill_weight"):
            value = getattr(self, key)
            _check(is_number(value) and 0 <= value < 1, key,
                   f"must be in [0, 1), got {value!r}")
        _check(is_number(self.distill_temperature) and self.distill_temperature > 0,
               "distill_temperature", f"must be > 0, got {self.distill_temperature!r}")
        _check(isinstance(self.model_args, dict), "model_args", "must be a mapping")
        return self


    def _check_structure(self) -> None:
        _check(not self.live_weights or counts_live_weights(self.projection, self.structure),
               "live_weights",
               f"counts live weights of the global unstructured and filter projections, not "
               f"of projection {self.projection!r} with structure {self.structure!r}: set "
               "live_weights false (--live-weights false)")
        _check(self.group_score != OUTPUT_UNIT_SCORE or self.structure == "units", "group_score",
               "'output' ranks a transformer's MLP neurons and attention groups by what they "
               "add to the residual stream: it needs structure units (--structure units)")
        _check(self.structure == "unstructured" or self.score == "magnitude", "score",
               f"{self.score!r} ranks single weights; structure {self.structure!r} ranks "
               "groups by group_score: leave score at magnitude")
        try:
            validate_nm(self.nm_n, self.nm_m)
        except ProjectionError:
            raise ConfigError(f"nm_n and nm_m must be integers with 1 <= nm_n < nm_m, got "
                              f"{self.nm_n!r} and {self.nm_m!r}") from None
        if self.pruning in CALIBRATED_PRUNING:
            _check(self.structure in ("unstructured", "nm") and self.stages == 1,
                   "pruning", f"{self.pruning} prunes once, unstructured or N:M; got structure "
                   f"{self.structure!r} with {self.stages} stage(s)")
            _check(is_int(self.calibration_batches) and self.calibration_batches >= 1,
                   "calibration_batches", f"must be an integer >= 1, got "
                   f"{self.calibration_batches!r}")
        if self.pruning == "blockwise":
            _check(self.structure != "nm" or self.allocation == "uniform", "allocation",
                   f"{self.allocation!r} splits a budget between layers, but structure nm keeps "
                   f"{self.nm_n} of every {self.nm_m} weights in every layer: set allocation: "
                   "uniform")
        if self.structure != "nm":
            return
        _check(self.layer_percents is None, "layer_percents",
               "cannot be used with structure nm: N:M fixes every layer's ratio")
        # the pruner checks the exact figure of the model's shapes
        implied = 100.0 * (self.nm_m - self.nm_n) / self.nm_m
        for s in range(self.stages):
            percent = self.stage_value("all_percent", s)
            _check(abs(percent - implied) <= NM_PERCENT_TOLERANCE, "all_percent",
                   f"must be {implied:g} with structure nm {self.nm_n}:{self.nm_m} (N:M "
                   f"removes that share), got {percent!r}; set all_percent: {implied:g}")

    def _check_registered(self) -> None:
        """Run the imports, then check that the dataset and task exist (a spec is imported
        now: a wrong one fails before a run starts) and that a model spec resolves."""
        # Imported here: the registries import torch, the rest of this module does not.
        from ..data.registry import dataset_entry
        from ..imports import ImportSpecError, import_files, is_object_label, is_spec
        from ..models.registry import model_factory
        from ..tasks import list_tasks
        from ..tasks.registry import task_factory

        _check(isinstance(self.imports, list) and all(isinstance(p, str) for p in self.imports),
               "imports", f"must be a list of Python file paths, got {self.imports!r}")
        try:
            import_files(self.imports)
        except ImportSpecError as err:
            raise ConfigError(f"imports: {err}") from None
        if is_spec(self.model):
            try:
                model_factory(self.model)
            except ImportSpecError as err:
                raise ConfigError(f"model: {err}") from None
        if not is_object_label(self.dataset):
            try:
                dataset_entry(self.dataset)
            except ValueError as err:
                raise ConfigError(f"dataset: {err}") from None
        if is_spec(self.task):
            try:
                task_factory(self.task)
            except ValueError as err:
                raise ConfigError(f"task: {err}") from None
        elif not is_object_label(self.task):
            _check(self.task in list_tasks(), "task",
                   f"must be one of {', '.join(list_tasks())} or an import spec "
                   f"\"package.module:factory\"; got {self.task!r}")


def _device_problem(name: Any) -> str | None:
    """Why ``name`` is no device a recipe may name (auto, cpu, cuda, cuda:1, mps...), or
    None."""
    if name == "auto":
        return None
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return (f"must be auto or a device torch knows (cpu, cuda, cuda:1, mps, ...), got "
                f"{name!r}")
    return None


def counts_live_weights(projection: str, structure: str) -> bool:
    """Whether a projection can count live weights only (``live_weights: true``).

    Args:
        projection: ``global`` or ``layerwise``.
        structure: ``unstructured``, ``filter``, ``channel`` or ``nm``.

    Returns:
        True for the global unstructured and global filter projections.
    """
    return projection == "global" and structure in ("unstructured", "filter")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


KEY_HELP = {f.name: f.metadata["help"] for f in fields(Config)}
_FIELD_NAMES = [f.name for f in fields(Config)]


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _FIELD_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown recipe key {key!r}{hint}; see `admmprune keys` for the list")


_FLOAT_KEYS = {"flip", "hsv", "scale_jitter", "learning_rate", "retraining_learning_rate",
               "rho", "rho_growth", "rho_max", "p_lambda", "all_percent", "momentum",
               "layer_percents", "label_smoothing", "distill_weight", "distill_temperature"}


def _coerce(key: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string and ``99`` as an int: make float keys floats."""
    if key == "amp" and value is False:
        return "off"  # YAML 1.1 reads a bare `off` as false
    if key not in _FLOAT_KEYS or value is None:
        return value
    if isinstance(value, list):
        return [_coerce(key, v) for v in value]
    if isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None


def _add_imports(config: Config, value: Any) -> None:
    """``imports`` add up (recipe, then --import): each file once, as an absolute path (a
    run directory's config.yaml then works from any directory)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"imports must be a list of Python file paths, got {value!r}")
    for item in value:
        if not isinstance(item, (str, Path)):
            raise ConfigError(f"imports must be a list of Python file paths, got {item!r}")
        path = str(Path(item).expanduser().resolve())
        if path not in config.imports:
            config.imports = [*config.imports, path]


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Set keys in place (values already parsed); unknown keys raise ``ConfigError``.
    ``imports`` is added to, not replaced."""
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in _FIELD_NAMES:
            raise _unknown_key(key)
        if key == "imports":
            _add_imports(config, value)
            continue
        setattr(config, key, _coerce(key, value))
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> Config:
    """Defaults, then the YAML recipe at ``path``, then ``overrides``; validated."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist (recipes live in recipes/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping of keys to values")
        imports = data.get("imports")
        if isinstance(imports, (str, list)):
            # a recipe's files are found next to it, wherever it is run from
            data["imports"] = [str(path.parent / p) if isinstance(p, str) else p
                               for p in ([imports] if isinstance(imports, str) else imports)]
        apply_overrides(config, data)
    apply_overrides(config, overrides or {})
    return config.validate()


def parse_value(text: str) -> Any:
    """A command-line value as YAML: numbers, booleans, null and [lists] come out typed."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
