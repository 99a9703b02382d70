"""The listing commands (``models``, ``datasets``, ``keys``, ``inspect``) and the data
preparation ones (``imagenet-labels``, ``make-detection-set``)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..runs.config import KEY_HELP, Config, ConfigError, load_config
from .parser import recipe_overrides

__all__ = ["cmd_models", "cmd_datasets", "cmd_keys", "cmd_inspect", "cmd_imagenet_labels",
           "cmd_make_detection_set"]


def cmd_models(_: argparse.Namespace) -> int:
    from ..models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..imports import is_spec
    from ..models import list_models
    from ..runs.build import build_model
    from ..selection import describe_selection, format_selection, prunable_parameters

    overrides = recipe_overrides(args)
    # a model: a registered name, or an import spec ("module:factory") that is no file
    if args.target in list_models() or (is_spec(args.target)
                                        and not Path(args.target).is_file()):
        overrides.setdefault("model", args.target)
        config = load_config(None, overrides)
    else:
        config = load_config(args.target, overrides)
    model = build_model(config)
    pruned, skipped = describe_selection(model, config.include, config.exclude)
    print(f"{config.model} {config.model_args or ''}".rstrip())
    print(format_selection(pruned, skipped))
    prunable_parameters(model, config.include, config.exclude)  # a run would refuse: say so
    _print_shares(model, config)
    return 0


def _print_shares(model, config: Config) -> None:
    """What a hard prune at the recipe's first ratio, by its score, would keep per layer of
    the recipe's weights (pretrained, else the initial ones), beside the uniform share."""
    from pathlib import Path

    import torch

    from ..data import DatasetError
    from ..masks import LayerSparsity
    from ..pruner import PrunerError
    from ..runs.build import (
        build_pruner,
        example_inputs,
        examples_read,
        load_data,
        load_weights,
        traces_model,
    )
    from ..runs.report import format_layer_shares
    from ..runs.rundir import RunError

    percent = config.stage_value("all_percent", 0)
    if not percent or config.pruning not in ("admm", "oneshot"):
        return
    cpu = torch.device("cpu")
    try:
        if config.pretrained:
            load_weights(model, Path(config.pretrained), cpu, config.model)
        example = example_inputs(load_data(config, cpu, ("test",)), cpu,
                                 examples_read(config)) \
            if traces_model(config) else None
        report: list[LayerSparsity] = build_pruner(model, config, 0, example).preview()
    except (ConfigError, DatasetError, PrunerError, RunError, OSError) as err:
        # the listing above stands; the preview needs the weights (and, for the folded
        # score, a batch of the data)
        print(f"\n(no preview of the per-layer shares: {err})")
        return
    origin = "pretrained" if config.pretrained else "initial"
    print(f"\na hard prune of the {origin} weights at all_percent {percent:g} "
          f"(projection {config.projection}, score {config.score}) would keep:")
    print(format_layer_shares([r.as_dict() for r in report], config.structure))


def cmd_make_detection_set(args: argparse.Namespace) -> int:
    from ..data.digits import run_make_detection_set

    return run_make_detection_set(args)


def cmd_datasets(_: argparse.Namespace) -> int:
    from ..data import list_datasets
    from ..runs.report import format_table
    from ..tasks import list_tasks

    print(format_table(["dataset", "task", "what it is"],
                       [(d.name, d.task, d.description) for d in list_datasets()]))
    print(f"\ntasks: {', '.join(list_tasks())}")
    return 0


def cmd_imagenet_labels(args: argparse.Namespace) -> int:
    from ..data import DatasetError
    from ..data.imagenet import (
        DEFAULT_LABELS_NAME,
        IMAGENET_DIR_ENV,
        imagenet_root,
        make_label_file,
        read_label_file,
    )

    try:
        root = imagenet_root(args.root)  # the dataset's rule: --root, else the environment
    except DatasetError:
        raise ConfigError(f"give ImageNet's ROOT with --root ROOT (or set {IMAGENET_DIR_ENV}, "
                          "or ADMMPRUNE_DATA_DIR with an imagenet/ folder in it)") from None
    out = args.out or root / DEFAULT_LABELS_NAME
    path = make_label_file(root, devkit=args.devkit, val_txt=args.val_txt,
                           loc_csv=args.loc_csv, out=out)
    labels, classes = read_label_file(path)
    print(f"wrote {path}: {len(labels)} validation images, {len(classes or [])} classes")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from ..runs.report import format_table

    defaults = Config().__dict__
    rows = []
    for f in fields(Config):
        choices = f.metadata.get("choices")
        meaning = KEY_HELP[f.name] + (f" ({', '.join(choices)})" if choices else "")
        if args.markdown:
            rows.append((f"`{f.name}`", f"`{defaults[f.name]!r}`", meaning.replace("|", "/")))
        else:
            rows.append((f.name, repr(defaults[f.name]), meaning))
    print(format_table(["key", "default", "meaning"], rows, markdown=args.markdown))
    return 0
