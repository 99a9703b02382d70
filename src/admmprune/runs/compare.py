"""Method comparisons: several pruning methods, same data, seed, dense start and epoch budget.

For every (seed, model variant) one dense model is trained and shared by all methods, so
differences come from pruning alone. Each method then runs through the ordinary pipeline
in its own run directory; finished runs are reused, so an interrupted sweep resumes.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from ..imports import file_sha256
from ..jsonfile import dumps, loads
from ..selection import prunable_parameters
from ..tables import format_table
from ..tasks import format_metric
from .build import (
    build_model,
    check_pruning,
    check_selection,
    example_inputs,
    examples_read,
    load_data,
)
from .config import (
    ONE_SHOT_PRUNING,
    STAGE_KEYS,
    Config,
    ConfigError,
    counts_live_weights,
)
from .direction import (
    best_index,
    direction_note,
    format_value,
    higher_is_better,
    percent_keys,
    task_fields,
)
from .pipeline import Run, run_pipeline
from .report import plot_residuals, read_metrics, save_figure
from .rundir import RESUME_SAFE_KEYS, RunDirectory, RunError
from .sources import recorded_sources, run_sources, source_changes

__all__ = ["METHODS", "ONE_MODEL_METHODS", "run_compare", "method_config", "method_notes",
           "single_stage", "check_methods", "check_reusable", "method_of", "REUSE_IGNORED",
           "DENSE_UNUSED", "summarize", "plot_compare", "best_methods", "markdown_table",
           "format_rows"]


def _blockwise(method: str, allocation: str, retrain: bool) -> dict:
    """The recipe keys of a ``pruning: blockwise`` method (the projection is never read:
    layerwise, as for Wanda and SparseGPT)."""
    return {"pruning": "blockwise", "blockwise_method": method, "allocation": allocation,
            "projection": "layerwise", **({} if retrain else {"retraining_epochs": 0})}


# name -> (description, recipe keys it sets)
METHODS: dict[str, tuple[str, dict]] = {
    "dense": ("the dense model, no pruning", {}),
    # the reference a pruned model's gap is read against: dense training and the same
    # epochs after it as every pruning method, with nothing removed
    "dense-retrain": ("the dense model trained on for the pruning methods' epoch budget, "
                      "nothing removed", {"pruning": "oneshot", "projection": "global",
                                          "score": "magnitude", "all_percent": 0.0}),
    "admm": ("global ADMM, magnitude Z-step (ours)", {"projection": "global",
                                                       "score": "magnitude"}),
    "layerwise": ("layer-wise ADMM, every layer at the same ratio",
                  {"projection": "layerwise", "score": "magnitude"}),
    "magnitude": ("one-shot global magnitude pruning + retraining for the same epoch budget",
                  {"pruning": "oneshot", "projection": "global", "score": "magnitude"}),
    "lamp": ("global ADMM, LAMP scores in the Z-step", {"projection": "global",
                                                        "score": "lamp"}),
    "rms": ("global ADMM, magnitude / layer RMS in the Z-step", {"projection": "global",
                                                               "score": "rms"}),
    "folded": ("global ADMM, |w| with the neighbouring BatchNorm/norm scales folded in, in the "
               "Z-step and the hard prune", {"projection": "global", "score": "folded"}),
    "share": ("global ADMM, each weight's share of its output (|w|·rms(input)/rms(output) "
              "from a batch) in the Z-step and the hard prune", {"projection": "global",
                                                                "score": "share"}),
    "obd": ("global ADMM, Optimal Brain Damage saliency (w² times the output Gauss-Newton "
            "diagonal from a batch) in the Z-step and the hard prune",
            {"projection": "global", "score": "obd"}),
    # one-shot global pruning by each score: the same ranking as the ADMM variants' hard prune
    "lamp-oneshot": ("one-shot global LAMP pruning + retraining for the same epoch budget",
                     {"pruning": "oneshot", "projection": "global", "score": "lamp"}),
    "rms-oneshot": ("one-shot global pruning by |w| / layer RMS + retraining for the same "
                    "epoch budget", {"pruning": "oneshot", "projection": "global",
                                     "score": "rms"}),
    "folded-oneshot": ("one-shot global pruning by folded |w| + retraining for the same epoch "
                       "budget", {"pruning": "oneshot", "projection": "global",
                                  "score": "folded"}),
    "share-oneshot": ("one-shot global pruning by each weight's share of its output + "
                      "retraining for the same epoch budget", {"pruning": "oneshot",
                                                               "projection": "global",
                                                               "score": "share"}),
    "obd-oneshot": ("one-shot global pruning by Optimal Brain Damage saliency + retraining "
                    "for the same epoch budget", {"pruning": "oneshot", "projection": "global",
                                                  "score": "obd"}),
    # Zhang et al. 2018, table 1: kept conv1 20%, conv2 8%, fc1 0.9%, fc2 7% (71.2x).
    "paper": ("layer-wise ADMM with the ADMM paper's hand-tuned LeNet-5 ratios (kept conv1 "
              "20%, conv2 8%, fc1 0.9%, fc2 7%: 71.2x); runs once per seed at that ratio",
              {"projection": "layerwise", "score": "magnitude",
               "layer_percents": [80.0, 92.0, 99.1, 93.0]}),
    # structured: whole output filters (and their biases), ranked by the recipe's group_score
    "filter": ("global filter ADMM: whole filters ranked across all layers",
               {"structure": "filter", "projection": "global", "score": "magnitude"}),
    "filter-layerwise": ("filter ADMM, every layer removes the same ratio as whole filters",
                         {"structure": "filter", "projection": "layerwise",
                          "score": "magnitude"}),
    "filter-oneshot": ("one-shot global filter pruning + retraining for the same epoch budget",
                       {"structure": "filter", "pruning": "oneshot", "projection": "global",
                        "score": "magnitude"}),
    "channel": ("global channel ADMM: whole input channels ranked across all layers",
                {"structure": "channel", "projection": "global", "score": "magnitude"}),
    # transformers: whole MLP neurons and attention groups (every pruned tensor in a block)
    "units": ("global units ADMM: a transformer's MLP neurons and attention groups ranked "
              "across all blocks", {"structure": "units", "projection": "global",
                                    "score": "magnitude"}),
    "units-output": ("global units ADMM ranked by each unit's mean squared contribution to "
                     "the residual stream (group_score output)",
                     {"structure": "units", "projection": "global", "score": "magnitude",
                      "group_score": "output"}),
    "units-layerwise": ("units ADMM, every block removes the same ratio of its neurons and "
                        "of its attention groups", {"structure": "units",
                                                    "projection": "layerwise",
                                                    "score": "magnitude"}),
    "units-oneshot": ("one-shot global units pruning + retraining for the same epoch budget",
                      {"structure": "units", "pruning": "oneshot", "projection": "global",
                       "score": "magnitude"}),
    "uniform-magnitude": ("one-shot magnitude pruning, every layer at the same ratio, + "
                          "retraining for the same epoch budget",
                          {"pruning": "oneshot", "projection": "layerwise",
                           "score": "magnitude"}),
    # Sun et al. 2023: |W_ij|·‖X_j‖ per output row, from calibration batches (training split)
    "wanda": ("Wanda (|W|·‖X‖ per output row, uniform ratio), no retraining",
              {"pruning": "wanda", "projection": "layerwise", "retraining_epochs": 0}),
    "wanda-retrain": ("Wanda + masked retraining for the same epoch budget",
                      {"pruning": "wanda", "projection": "layerwise"}),
    # N:M methods run once per seed at the ratio N:M implies (nm_n, nm_m of the recipe)
    "admm-nm": ("ADMM with an N:M Z-step (nm_n of every nm_m inputs; default 2:4)",
                {"structure": "nm", "projection": "global", "score": "magnitude"}),
    "wanda-nm": ("Wanda N:M (nm_n of every nm_m inputs), no retraining",
                 {"structure": "nm", "pruning": "wanda", "projection": "layerwise",
                  "retraining_epochs": 0}),
    "wanda-nm-retrain": ("Wanda N:M + masked retraining for the same epoch budget",
                         {"structure": "nm", "pruning": "wanda", "projection": "layerwise"}),
    # Frantar and Alistarh 2023: per-layer reconstruction from the calibration inputs' XᵀX
    "sparsegpt": ("SparseGPT (OBS reconstruction per layer, uniform ratio), no retraining",
                  {"pruning": "sparsegpt", "projection": "layerwise", "retraining_epochs": 0}),
    "sparsegpt-retrain": ("SparseGPT + masked retraining for the same epoch budget",
                          {"pruning": "sparsegpt", "projection": "layerwise"}),
    "sparsegpt-nm": ("SparseGPT N:M (nm_n of every nm_m inputs), no retraining",
                     {"structure": "nm", "pruning": "sparsegpt", "projection": "layerwise",
                      "retraining_epochs": 0}),
    # the block-by-block engine of `admmprune oneshot` (pruning blockwise) on calibration
    # batches of the training split; the -retrain forms get the same epoch budget as ADMM
    "oneshot-admm": ("block-by-block ADMM reconstruction from calibration batches, global "
                     "allocation (one budget split "
                     "by the layers' error curves), no retraining",
                     _blockwise("admm", "global", retrain=False)),
    "oneshot-admm-retrain": ("oneshot-admm + masked retraining for the same epoch budget",
                             _blockwise("admm", "global", retrain=True)),
    "oneshot-admm-uniform": ("block-by-block ADMM reconstruction, every layer at the same "
                             "ratio, no retraining", _blockwise("admm", "uniform", retrain=False)),
    "oneshot-admm-owl": ("block-by-block ADMM reconstruction, OWL's per-block ratios, no "
                         "retraining", _blockwise("admm", "owl", retrain=False)),
    "oneshot-admm-nm": ("block-by-block ADMM reconstruction, N:M (nm_n of every nm_m inputs), "
                        "no retraining",
                        {**_blockwise("admm", "uniform", retrain=False), "structure": "nm"}),
    "oneshot-sparsegpt": ("block-by-block SparseGPT, global allocation, no retraining",
                          _blockwise("sparsegpt", "global", retrain=False)),
    "oneshot-sparsegpt-retrain": ("oneshot-sparsegpt + masked retraining for the same epoch "
                                  "budget", _blockwise("sparsegpt", "global", retrain=True)),
    "oneshot-sparsegpt-uniform": ("block-by-block SparseGPT, every layer at the same ratio, no "
                                  "retraining", _blockwise("sparsegpt", "uniform", retrain=False)),
    "oneshot-wanda": ("block-by-block Wanda, global allocation, no retraining",
                      _blockwise("wanda", "global", retrain=False)),
    "oneshot-wanda-retrain": ("oneshot-wanda + masked retraining for the same epoch budget",
                              _blockwise("wanda", "global", retrain=True)),
    "oneshot-wanda-uniform": ("block-by-block Wanda, every layer at the same ratio, no "
                              "retraining", _blockwise("wanda", "uniform", retrain=False)),
}

# methods that compete nowhere: drawn as lines and listed across every ratio column
REFERENCES = ("dense", "dense-retrain")

# Methods made for one network: method -> (the registered model, what it is). Their settings
# describe that network's layers; on another model they would mean nothing, whatever its
# layer count.
ONE_MODEL_METHODS: dict[str, tuple[str, str]] = {"paper": ("lenet5", "LeNet-5")}


def _check_fits(config: Config, method: str) -> None:
    """Refuse a method made for one network (:data:`ONE_MODEL_METHODS`) on another."""
    if method in ONE_MODEL_METHODS and config.model != ONE_MODEL_METHODS[method][0]:
        name, network = ONE_MODEL_METHODS[method]
        raise ConfigError(f"method {method!r} applies hand-tuned per-layer ratios of "
                          f"{network} (model {name}); model {config.model!r} is another "
                          "network, whose layers they do not describe: drop it from --methods")


def _signature(keys: dict) -> tuple:
    """What tells methods apart, with the defaults a method that does not set a key gets."""
    layer_percents = keys.get("layer_percents")
    pruning = keys.get("pruning", "admm")
    # only pruning blockwise reads its layer method and allocation
    blockwise = (keys.get("blockwise_method", "admm"), keys.get("allocation", "global")) \
        if pruning == "blockwise" else None
    return (pruning, keys.get("projection", "global"),
            keys.get("structure", "unstructured"), keys.get("score", "magnitude"),
            tuple(map(float, layer_percents)) if layer_percents else None, blockwise)


def method_of(config: Config) -> str:
    """The name of the compare method a run's config is (``admm``, ``layerwise``, ...), also
    for runs not made by compare; a config that is none of them gets its pruning,
    projection, structure and score joined by "-" (e.g. ``admm-global-nm-magnitude``; with
    pruning blockwise, its layer method and allocation after them)."""
    signature = _signature(config.to_dict())
    if config.final_percent() == 0 and signature == _signature(METHODS["dense-retrain"][1]):
        return "dense-retrain"
    for name, (_, keys) in METHODS.items():
        if name not in REFERENCES and _signature(keys) == signature:
            return name
    return "-".join(signature[:4] + (signature[5] or ())) + \
        ("-layer_percents" if signature[4] else "")


# Keys that say how or where a run executes, not what it computes: a finished run made with
# other values of these is reused as it is.
REUSE_IGNORED = frozenset(RESUME_SAFE_KEYS - {"retraining_epochs"})
# Keys the dense phase never reads: the dense model of a seed is shared by every method and
# ratio of the compare, so these may differ between the invocations that share it.
DENSE_UNUSED = frozenset({
    "pruning", "all_percent", "k_step", "epochs", "rho", "rho_growth", "rho_max",
    "adaptive_rho", "p_lambda", "projection", "layer_percents", "score", "min_layer_percent",
    "structure",
    "group_score", "nm_n", "nm_m", "calibration_batches", "calibration_order",
    "blockwise_method", "allocation", "include",
    "exclude", "z_init", "admm_lr_schedule",
    "hard_prune_support", "stage_retraining_epochs", "allow_regrowth", "live_weights",
    "distill_weight", "distill_temperature", "retraining_epochs", "retraining_learning_rate",
    "retraining_augment_shift", "retraining_average_epochs", "retraining_lr_schedule",
    "retraining_regrow", "retraining_regrow_every", "retraining_regrow_until"})


def check_reusable(run_dir: str | Path, wanted: Config, ignored: frozenset = REUSE_IGNORED
                   ) -> None:
    """Refuse to reuse the finished run in ``run_dir`` unless its saved config equals
    ``wanted`` on every key but ``ignored``, and the user's files it recorded
    (sources.json) are those ``wanted`` imports now: a run of other code is another run.

    Args:
        run_dir: a run directory holding config.yaml.
        wanted: the config this compare would run there.
        ignored: keys that may differ.

    Raises:
        ConfigError: naming the keys or files that differ, and what to do.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise ConfigError(f"{run_dir} holds a finished run but no readable config.yaml, so it "
                          "cannot be checked against this compare: give another --out, or "
                          f"delete {run_dir} to run it again")
    defaults = Config().to_dict()  # a key newer than the run ran at its default there
    differ = []
    for key, value in wanted.to_dict().items():
        old = saved.get(key, defaults.get(key))
        if key == "pretrained" and old and value and _same_file(old, value):
            old = value
        if key not in ignored and old != value:
            differ.append(f"{key}: saved {old!r}, now {value!r}")
    if differ:
        raise ConfigError(
            f"{run_dir} holds a finished run of another configuration ({'; '.join(differ)}); "
            "compare does not mix it into this table: give another --out, or delete "
            f"{run_dir} to run it again with this configuration")
    try:
        changed = source_changes(recorded_sources(run_dir), run_sources(wanted))
    except RunError as err:
        changed = [str(err)]
    if changed:
        raise ConfigError(
            f"{run_dir} holds a finished run made with other code ({'; '.join(changed)}); "
            "compare does not mix it into this table: give another --out, or delete "
            f"{run_dir} to run it again with this code")


def _same_file(first: str, second: str) -> bool:
    """The same weights however the path is spelt, or a byte-equal copy (a dense run copied
    into another --out so that two sweeps can share it)."""
    a, b = Path(first), Path(second)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)
    except OSError:
        return False


def admm_epochs(config: Config) -> int:
    """Training epochs spent in W-steps over all stages."""
    return sum(config.stage_value("k_step", s) * config.stage_value("epochs", s)
               for s in range(config.stages))


def fixed_percent(config: Config, method: str, model: torch.nn.Module | None = None
                  ) -> float | None:
    """The global removal percent implied by a method with fixed per-layer ratios (``paper``)
    or by N:M (``admm-nm``...), or None for methods swept over ``--all-percent``.

    Args:
        model: ``config``'s model when the caller has built it (else it is built here, if
            the method's ratios need its layer sizes).

    Raises:
        ConfigError: the method was made for another model, or its per-layer ratios do not
            fit the model's prunable tensors.
    """
    keys = METHODS[method][1]
    if "all_percent" in keys:
        return float(keys["all_percent"])
    if keys.get("structure") == "nm":
        return 100.0 * (config.nm_m - config.nm_n) / config.nm_m
    layer_percents = keys.get("layer_percents")
    if layer_percents is None:
        return None
    _check_fits(config, method)
    model = model if model is not None else build_model(config)
    try:
        check_selection(model, replace(config, layer_percents=layer_percents))
    except ConfigError as err:
        raise ConfigError(f"method {method!r}: {err} (or drop it from --methods)") from None
    sizes = [p.numel() for _, p in prunable_parameters(model, config.include, config.exclude)]
    kept = sum(n - round(p / 100 * n) for n, p in zip(sizes, layer_percents, strict=True))
    return 100.0 * (1 - kept / sum(sizes))


def check_methods(base: Config, methods: Sequence[str], percents: Sequence[float],
                  variants: Sequence[dict] | None = None) -> None:
    """Check every method at every ratio against the model of every variant, before anything
    trains: the model is built (with its data's class count) and each method's config is
    put to the checks its run would fail later (:func:`~.build.check_pruning`).

    Raises:
        ConfigError: an unknown method, or one the model cannot take (naming it, and why).
        DatasetError: the data cannot be read.
    """
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    pruning = [m for m in methods if m != "dense"]
    if not pruning:
        return
    cpu = torch.device("cpu")
    data = load_data(base, cpu)  # what the model's factory is given, and a batch to trace
    example = example_inputs(data, cpu, examples_read(base))
    for variant in variants or [{}]:
        config = replace(base, model_args={**base.model_args, **variant}).validate()
        model = build_model(config, data.num_classes)
        for method in pruning:
            fixed = fixed_percent(config, method, model)
            for percent in percents if fixed is None else [fixed]:
                try:
                    check_pruning(model, method_config(config, method, percent), example)
                except ConfigError as err:
                    variant_text = f" ({_variant_name(variant)})" if variant else ""
                    raise ConfigError(f"method {method!r} cannot run on model "
                                      f"{config.model!r}{variant_text}: {err} (or drop it from "
                                      "--methods)") from None


def single_stage(config: Config, all_percent: float) -> Config:
    """``config`` as one stage at ``all_percent`` (not validated): a sweep point has one ratio,
    so per-stage lists (a progressive recipe) keep their final stage's value."""
    config = replace(config, all_percent=float(all_percent))
    for key in STAGE_KEYS:
        value = getattr(config, key)
        if key != "all_percent" and isinstance(value, list):
            setattr(config, key, value[-1])
    return config


def _adjusted_keys(base: Config, method: str) -> dict[str, tuple[object, str]]:
    """Recipe keys a method must change beyond its own to run from ``base``:
    key -> (value, why)."""
    keys = {"structure": "unstructured", **METHODS[method][1]}  # no structure: unstructured
    if base.live_weights and not counts_live_weights(keys["projection"], keys["structure"]):
        return {"live_weights": (False, "its projection cannot count live weights only")}
    return {}


def method_notes(base: Config, method: str) -> str:
    """What :func:`method_config` changes in ``base`` beyond the method's own keys, for the
    table's notes ("" when nothing)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return "; ".join(f"{key} {str(value).lower()} ({why})"
                     for key, (value, why) in _adjusted_keys(base, method).items())


def method_config(base: Config, method: str, all_percent: float) -> Config:
    """The config of one method at one ratio; one-shot pruning (magnitude, Wanda) gets the
    W-step epochs as extra retraining, so every method trains for the same number of epochs,
    unless the method fixes its retraining itself (Wanda without retraining). Keys of the
    recipe a method cannot run with are changed (:func:`method_notes` says which)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    _check_fits(base, method)
    adjusted = {key: value for key, (value, _) in _adjusted_keys(base, method).items()}
    all_percent = METHODS[method][1].get("all_percent", all_percent)  # a reference's own
    # methods that name no structure are unstructured, whatever the base recipe says
    config = single_stage(replace(base, **{"structure": "unstructured", **METHODS[method][1]},
                                  **adjusted), all_percent)
    # no W-steps: retrain for the W-step epochs instead (equal budgets), unless the method
    # fixes retraining_epochs itself (Wanda without retraining)
    if config.pruning in ONE_SHOT_PRUNING and "retraining_epochs" not in METHODS[method][1]:
        config.retraining_epochs += admm_epochs(config)
    return config.validate()


def _tag(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def _variant_name(model_args: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(model_args.items())) or "default"


def run_compare(
    base: Config,
    methods: Sequence[str],
    percents: Sequence[float],
    out_dir: str | Path,
    seeds: Sequence[int] = (0,),
    variants: Sequence[dict] | None = None,
    stop_after_dense: bool = False,
) -> list[dict]:
    """Run every method at every ratio, seed and model variant; write results files.

    ``variants`` are model_args overrides (e.g. ``[{"depth": 1}, {"depth": 2}]``).
    Returns one row per run.
    """
    check_methods(base, methods, percents, variants)  # before anything trains or is written
    fixed = {m: fixed_percent(base, m) for m in methods if m != "dense"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for variant in variants or [{}]:
        model_args = {**base.model_args, **variant}
        for seed in seeds:
            config = replace(base, seed=seed, model_args=model_args).validate()
            label = f"{_variant_name(variant)}-seed{seed}" if variant else f"seed{seed}"
            dense_path, dense_results, dense_seconds = _dense(config, out_dir / f"dense-{label}")
            if "dense" in methods:
                rows.append(_row("dense", config, math.nan, variant, {
                    **dense_results, **{k.replace("dense_", "pruned_", 1): v
                                        for k, v in dense_results.items()},
                    "compression": 1.0, "sparsity_percent": 0.0, "layers": [],
                    "wall_seconds": dense_seconds, "run_dir": str(dense_path.parent)}))
            if stop_after_dense:
                continue
            for method in (m for m in methods if m != "dense"):
                for percent in percents if fixed[method] is None else [fixed[method]]:
                    run_config = method_config(replace(config, pretrained=str(dense_path)),
                                               method, percent)
                    run_dir = out_dir / f"{method}-{label}-p{_tag(percent)}"
                    row_percent = math.nan if method in REFERENCES else percent
                    rows.append({**_row(method, run_config, row_percent, variant,
                                        _run_once(run_config, run_dir)),
                                 "notes": method_notes(config, method)})
            _write_results(rows, out_dir)
    _write_results(rows, out_dir)
    return rows


def _dense(config: Config, run_dir: Path) -> tuple[Path, dict, float]:
    """Train (or reuse) the dense model shared by all methods of one seed/variant; returns
    its path, its test results (``dense_<metric>``, plus ``metric``) and the seconds spent."""
    summary_path = run_dir / "dense.json"
    if summary_path.is_file():
        check_reusable(run_dir, config, REUSE_IGNORED | DENSE_UNUSED)
        saved = loads(summary_path.read_text())
        results = saved.get("results") or {"dense_accuracy": saved["dense_accuracy"]}
        info = {k: saved[k] for k in ("task", "higher_is_better", "percent_metrics")
                if k in saved}
        return run_dir / "dense.pt", {"metric": saved.get("metric", "accuracy"), **info,
                                      **results}, saved["seconds"]
    start = time.perf_counter()
    # the dense model starts from the recipe's pretrained weights (a trained model, or
    # bvlc_alexnet.npy) and trains on for dense_epochs, as `prune` would
    run = Run(config, run_dir,
              resume=RunDirectory(run_dir).has_checkpoint())
    try:
        run.dense()
    finally:
        run.close()
    results = {k: v for k, v in run.progress.results.items() if k.startswith("dense_")}
    seconds = time.perf_counter() - start
    info = {"task": run.task.name, **task_fields(run.task)}
    summary_path.write_text(dumps({"metric": run.task.metric, **info, "results": results,
                                   "seconds": seconds}))
    return run_dir / "dense.pt", {"metric": run.task.metric, **info, **results}, seconds


def _run_once(config: Config, run_dir: Path) -> dict:
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = loads(summary_path.read_text())
        if summary.get("complete"):
            check_reusable(run_dir, config)
            return summary
    return run_pipeline(config, run_dir=run_dir, resume=RunDirectory(run_dir).has_checkpoint())


def _row(method: str, config: Config, percent: float, variant: dict, summary: dict) -> dict:
    metric = summary.get("metric", "accuracy")
    return {
        "method": method,
        "all_percent": percent,
        "seed": config.seed,
        **{f"model_{k}": v for k, v in variant.items()},
        "metric": metric,
        "higher_is_better": higher_is_better(summary),
        "percent_metrics": list(percent_keys(summary)),
        **{f"{phase}_{metric}": summary.get(f"{phase}_{metric}")
           for phase in ("dense", "admm", "pruned")},
        "compression": summary.get("compression"),
        "sparsity_percent": summary.get("sparsity_percent"),
        "train_epochs": (0 if method == "dense" else
                         (0 if config.pruning in ONE_SHOT_PRUNING else admm_epochs(config))
                         + config.retraining_epochs),
        "kept_per_layer": {r["name"]: r["kept_fraction"] for r in summary.get("layers", [])},
        "wall_seconds": summary.get("wall_seconds"),
        "run_dir": summary.get("run_dir"),
    }


def row_metric(row: dict) -> str:
    """The headline metric of a result row (rows written before tasks existed: accuracy)."""
    return row.get("metric", "accuracy")


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean and standard deviation of the pruned headline metric over seeds, per method /
    ratio / model variant."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        variant = tuple((k, row[k]) for k in sorted(row) if k.startswith("model_"))
        percent = row["all_percent"]
        key = (variant, row["method"], None if _isnan(percent) else percent)
        groups.setdefault(key, []).append(row)
    out = []
    for (variant, method, percent), group in groups.items():
        values = [r[f"pruned_{row_metric(r)}"] for r in group]
        out.append({
            **dict(variant),
            "method": method,
            "all_percent": percent,
            "compression": group[0]["compression"],
            "seeds": len(group),
            "metric": row_metric(group[0]),
            "higher_is_better": higher_is_better(group[0]),
            "percent_metrics": list(percent_keys(group[0])),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
        })
    return out


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def best_methods(summary: Sequence[dict]) -> dict[tuple, str]:
    """The best pruned method (by mean over seeds, in the metric's direction) of every
    (model variant, all_percent) of :func:`summarize`'s rows; the dense model and methods
    run at their own fixed ratio compete nowhere."""
    groups: dict[tuple, list[dict]] = {}
    for r in summary:
        if r["method"] in REFERENCES or r["all_percent"] is None:
            continue
        variant = tuple((k, r[k]) for k in sorted(r) if k.startswith("model_"))
        groups.setdefault((variant, r["all_percent"]), []).append(r)
    return {key: group[best_index([r["mean"] for r in group],
                                  higher_is_better(group[0]))]["method"]
            for key, group in groups.items()}


def markdown_table(rows: Sequence[dict]) -> str:
    """Methods as rows, all_percent as columns, cells "mean ± std (compression)" of the
    headline test metric (in % where it is a fraction): methods that round per layer or
    remove whole groups reach another compression at the same all_percent. The best method
    of each column is in bold; notes list the recipe keys a method changed
    (:func:`method_notes`). A cell averaged over fewer seeds than the table's most says how
    many it has: a sweep still running, or a method not run for every seed, must not pass
    for a full mean."""
    summary = summarize(rows)
    best = best_methods(summary)
    most_seeds = max((r["seeds"] for r in summary), default=0)
    variant_keys = sorted({k for r in summary for k in r if k.startswith("model_")})
    percents = sorted({r["all_percent"] for r in summary if r["all_percent"] is not None})
    blocks = []
    for variant in dict.fromkeys(tuple(r.get(k) for k in variant_keys) for r in summary):
        subset = [r for r in summary if tuple(r.get(k) for k in variant_keys) == variant]
        title = ", ".join(f"{k.removeprefix('model_')} = {v}" for k, v in
                          zip(variant_keys, variant, strict=True))
        headers = ["method"] + [f"{p:g}%" for p in percents]
        table_rows = []
        for method in dict.fromkeys(r["method"] for r in subset):
            cells = [method]
            for p in percents:
                match = [r for r in subset if r["method"] == method and
                         (r["all_percent"] == p or r["all_percent"] is None)]
                text = _fmt_value(match[0], most_seeds) if match else ""
                winner = best.get((tuple((k, v) for k, v in zip(variant_keys, variant,
                                                                 strict=True)), p))
                cells.append(f"**{text}**" if text and winner == method else text)
            table_rows.append(cells)
        table = format_table(headers, table_rows, markdown=True)
        blocks.append((f"**{title}**\n\n" if title else "") + table)
    notes = {r["method"]: r["notes"] for r in rows if r.get("notes")}
    if notes:
        blocks.append("Notes:\n\n" + "\n".join(f"- {method}: {text}"
                                                for method, text in notes.items()))
    return "\n\n".join(blocks) + "\n"


def _plot_scale(row: dict) -> float:
    """The factor a row's headline metric is plotted with: fractions in %, others as they
    are (the text goes through format_metric)."""
    return 100.0 if row_metric(row) in percent_keys(row) else 1.0


def _fmt_value(row: dict, most_seeds: int) -> str:
    # the caption gives the unit (table_caption): no % sign in the cells
    percent = row_metric(row) in percent_keys(row)
    text = format_metric(row["mean"], percent, unit=False)
    if row["std"] is not None:
        text += f" ± {format_metric(row['std'], percent, unit=False)}"
    compression = row["compression"]
    if compression is not None and compression != 1:
        text += f" ({compression:.1f}x)"
    if row["seeds"] < most_seeds:
        text += f" [{row['seeds']} of {most_seeds} seeds]"
    return text


def merged_rows(rows: Sequence[dict], out_dir: Path) -> list[dict]:
    """Rows already in ``out_dir/results.json`` (earlier invocations, e.g. another seed)
    updated with ``rows``; a run directory appears once."""
    path = out_dir / "results.json"
    previous = loads(path.read_text()) if path.is_file() else []
    by_run = {r["run_dir"]: r for r in previous}
    by_run.update({r["run_dir"]: r for r in rows})
    return list(by_run.values())


def _write_results(rows: Sequence[dict], out_dir: Path) -> None:
    rows = merged_rows(rows, out_dir)
    (out_dir / "results.json").write_text(dumps(list(rows), indent=2))
    flat_keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "kept_per_layer"]
    with (out_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=flat_keys + ["kept_per_layer"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "kept_per_layer": dumps(row["kept_per_layer"])})
    (out_dir / "results.md").write_text(table_caption(rows) + "\n\n" + markdown_table(rows))


def table_caption(rows: Sequence[dict]) -> str:
    """What :func:`markdown_table`'s cells are, with the metric's unit and direction."""
    first = rows[0] if rows else {}
    metric = row_metric(first)
    unit = " (%)" if metric in percent_keys(first) else ""
    return (f"Test {metric}{unit} after pruning and retraining, "
            f"{direction_note(higher_is_better(first))}; mean ± std over seeds, then the "
            "compression ratio N/K the run reached ([n of m seeds] where a cell has fewer "
            "seeds than the others); the best method of each column in bold; the column "
            "header gives all_percent.")


def plot_compare(rows: Sequence[dict], out_dir: str | Path, layers_at: float | None = None
                 ) -> list[Path]:
    """accuracy_vs_compression.png, kept_per_layer.png (at ``layers_at``, default the
    highest ratio) and admm_residuals.png (global ADMM at that ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    summary = summarize(rows)
    variant_keys = sorted({k for r in summary for k in r if k.startswith("model_")})
    variants = list(dict.fromkeys(tuple(r.get(k) for k in variant_keys) for r in summary))
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.5), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        subset = [r for r in summary if tuple(r.get(k) for k in variant_keys) == variant]
        for method in dict.fromkeys(r["method"] for r in subset):
            points = sorted((r["compression"], _plot_scale(r) * r["mean"],
                             _plot_scale(r) * (r["std"] or 0)) for r in subset
                            if r["method"] == method)
            if method in REFERENCES:
                ax.axhline(points[0][1], color="gray", label=method,
                           linestyle="--" if method == "dense" else ":")
                continue
            xs, ys, errs = zip(*points, strict=True)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("compression N/K (log)")
        first = subset[0] if subset else {}
        metric = row_metric(first)
        unit = " (%)" if metric in percent_keys(first) else ""
        ax.set_ylabel(f"test {metric}{unit}, {direction_note(higher_is_better(first))}")
        ax.set_title(", ".join(f"{k.removeprefix('model_')}={v}" for k, v in
                               zip(variant_keys, variant, strict=True)) or metric)
        ax.grid(alpha=0.3)
        ax.legend()
    written.append(save_figure(fig, out_dir / "accuracy_vs_compression.png"))

    percents = [r["all_percent"] for r in rows if not _isnan(r["all_percent"])]
    if percents:
        at = layers_at if layers_at is not None else max(percents)
        chosen = [r for r in rows if r["all_percent"] == at and r["kept_per_layer"]]
        if variant_keys:  # one variant only: the deepest, where layer shares matter most
            deepest = max(r.get(variant_keys[0]) for r in chosen)
            chosen = [r for r in chosen if r.get(variant_keys[0]) == deepest]
        first_seed = {}
        for r in chosen:
            first_seed.setdefault(r["method"], r)
        if first_seed:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            layer_names = list(next(iter(first_seed.values()))["kept_per_layer"])
            width = 0.8 / len(first_seed)
            for i, (method, r) in enumerate(first_seed.items()):
                ax.bar([j + i * width for j in range(len(layer_names))],
                       [100 * r["kept_per_layer"][n] for n in layer_names], width, label=method)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layer_names))])
            ax.set_xticklabels([n.removesuffix(".weight") for n in layer_names], rotation=30)
            ax.set_yscale("log")
            ax.set_ylabel("kept weights (%, log)")
            ax.set_title(f"kept fraction per layer at all_percent {at:g}")
            ax.legend()
            written.append(save_figure(fig, out_dir / "kept_per_layer.png"))
            admm_row = first_seed.get("admm")
            if admm_row and admm_row["run_dir"]:
                records = [m for m in read_metrics(admm_row["run_dir"]) if m["phase"] == "admm"]
                if records:
                    written.append(plot_residuals(records, out_dir / "admm_residuals.png",
                                                  f"(global ADMM, all_percent {at:g})"))
    return written


def format_rows(rows: Sequence[dict]) -> str:
    """A terminal table of every run."""
    first = rows[0] if rows else {}
    return format_table(
        ["method", "all_percent", "seed", "variant",
         f"pruned {row_metric(first)} ({direction_note(higher_is_better(first))})",
         "compression", "epochs", "time"],
        [(r["method"], "" if _isnan(r["all_percent"]) else r["all_percent"], r["seed"],
          _variant_name({k.removeprefix("model_"): v for k, v in r.items()
                         if k.startswith("model_")}),
          _fmt_one(r), f"{r['compression']:.1f}x",
          r["train_epochs"], f"{r['wall_seconds'] or 0:.0f}s") for r in rows])


def _fmt_one(row: dict) -> str:
    return format_value(row, row_metric(row), row[f"pruned_{row_metric(row)}"])
