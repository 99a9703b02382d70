"""The ``admmprune`` command line: train, prune, eval, report, models, keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from .config import KEY_HELP, Config, ConfigError, load_config, parse_value

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  admmprune prune recipes/lenet5.yaml --data-dir ../shared/data/mnist
  admmprune prune recipes/lenet5.yaml --all-percent 99 --k-step 8 --rho-growth 1.5
  admmprune prune recipes/lenet5.yaml --stage admm --run-dir runs/a   # then:
  admmprune prune --stage retrain --run-dir runs/a --retraining-epochs 8
  admmprune prune --resume runs/a                                    # after Ctrl-C
  torchrun --nproc_per_node=4 -m admmprune prune recipes/lenet5.yaml # data-parallel
  admmprune report runs/a
"""


def _add_recipe_keys(parser: argparse.ArgumentParser) -> None:
    """One ``--key value`` flag per recipe key; values parse as YAML ([90, 99], 1e-3)."""
    group = parser.add_argument_group(
        "recipe keys", "override any key of the recipe; values are YAML, so lists are "
        "written [90, 98, 99.6] and booleans true/false")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        aliases = [flag] if "_" not in f.name else [flag, "--" + f.name]
        choices = f.metadata.get("choices")
        help_text = KEY_HELP[f.name] + (f" ({'|'.join(choices)})" if choices else "")
        default = Config().__dict__[f.name]
        group.add_argument(*aliases, dest=f"key_{f.name}", metavar="V", type=parse_value,
                           default=argparse.SUPPRESS,
                           help=f"{help_text} [default: {default!r}]")
    group.add_argument("--no-progress", dest="key_progress", action="store_const", const=False,
                       default=argparse.SUPPRESS, help="same as --progress false")


def _overrides(args: argparse.Namespace) -> dict:
    return {k.removeprefix("key_"): v for k, v in vars(args).items() if k.startswith("key_")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="admmprune",
        description="ADMM weight pruning under one global removal ratio "
                    "(all_percent): the method finds each layer's share by itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    prune = sub.add_parser(
        "prune", help="dense training (or --pretrained), ADMM, hard prune, masked retraining",
        description="Run the pruning job of a recipe and write a run directory: config.yaml, "
                    "metrics.jsonl, checkpoint.pt, dense.pt, admm.pt, model.pt, summary.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    prune.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/)")
    prune.add_argument("--stage", choices=("all", "admm", "retrain"), default="all",
                       help="admm: stop after the hard prune; retrain: continue the run in "
                            "--run-dir; all (default): both")
    prune.add_argument("--run-dir", type=Path, help="run directory (default: "
                       "OUTPUT_DIR/NAME-TIMESTAMP)")
    prune.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue an interrupted run from its last checkpoint")
    _add_recipe_keys(prune)

    train = sub.add_parser("train", help="train a dense model only (no pruning)",
                           description="Train the recipe's model densely for dense_epochs and "
                                       "save it as RUN_DIR/dense.pt (usable as --pretrained).")
    train.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/)")
    train.add_argument("--run-dir", type=Path, help="run directory")
    _add_recipe_keys(train)

    evaluate = sub.add_parser("eval", help="test metrics and sparsity of a saved model",
                              description="Evaluate a run directory's model.pt (or any state "
                                          "dict given with --weights) on the test split only "
                                          "(classification: loss, top-1, top-5).")
    evaluate.add_argument("run_dir", type=Path, help="run directory")
    evaluate.add_argument("--weights", type=Path, help="state dict to evaluate instead of "
                          "RUN_DIR/model.pt")
    evaluate.add_argument("--data-dir", help="dataset directory")

    report = sub.add_parser("report", help="print a run's summary table and draw its plots",
                            description="Print the summary of a run directory and write "
                                        "admm_residuals.png, accuracy.png, kept_per_layer.png.")
    report.add_argument("run_dir", type=Path, help="run directory")
    report.add_argument("--no-plots", action="store_true", help="print the table only")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")

    compare = sub.add_parser(
        "compare", help="several methods, same data/seed/dense start/epoch budget",
        description="Run pruning methods side by side and write results.json, results.csv, "
                    "results.md and plots into --out. Methods: " + "; ".join(
                        f"{k}: {v[0]}" for k, v in _methods().items()) + ". Finished runs "
                    "in --out are reused, so an interrupted sweep resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmprune compare recipes/lenet5.yaml --methods "
               "dense,admm,layerwise,magnitude,lamp --all-percent 90,95,99 --seeds 0,1 "
               "--out runs/cmp\n  admmprune compare recipes/mlp.yaml --depths 1,2,3,4,5,6 "
               "--all-percent 98 --out runs/mlp")
    compare.add_argument("recipe", help="YAML recipe (see recipes/)")
    compare.add_argument("--methods", default="dense,admm,layerwise,magnitude",
                         help="comma-separated methods [default: %(default)s]")
    compare.add_argument("--seeds", default="0", help="comma-separated seeds [default: 0]")
    compare.add_argument("--depths", help="mlp only: comma-separated depths to sweep "
                         "(model_args.depth)")
    compare.add_argument("--out", type=Path, required=True, help="output directory")
    compare.add_argument("--layers-at", type=float, help="all_percent of the per-layer plot "
                         "[default: the highest]")
    _add_recipe_keys(compare)

    inspect = sub.add_parser(
        "inspect", help="what a recipe or model prunes, and what it leaves alone (and why)",
        description="Build the model of a recipe (or a registered model by name) and list "
                    "its prunable tensors and every other weight tensor with the reason it is "
                    "not pruned (frozen, shared, excluded, not a Conv/Linear weight, "
                    "parametrized). include/exclude patterns match module names and full "
                    "parameter names, e.g. --include \"['lstm.weight_ih_l0', "
                    "'*.in_proj_weight']\".",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("target", help="YAML recipe, or a registered model name")
    _add_recipe_keys(inspect)
    draw = sub.add_parser(
        "draw", help="draw a detection run's boxes on validation images (dense vs pruned)",
        description="Rebuild the model of each detection run directory, run it on the first "
                    "validation images of its dataset and draw a grid: rows are images, "
                    "columns are models (one per run, or dense and pruned with "
                    "--compare-dense); detections solid with class and score, ground truth "
                    "dashed. Column titles give the run's mAP@0.5 (summary.json) and the "
                    "compression of the drawn weights.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  admmprune draw runs/yolov4 --compare-dense --out dets.png\n"
               "  admmprune draw runs/a runs/b --images 6 --conf 0.25 --out ab.png")
    draw.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                      help="run directories of detection runs (same dataset)")
    draw.add_argument("--out", type=Path, required=True, help="picture to write (.png, .pdf, "
                      ".svg)")
    draw.add_argument("--images", type=int, default=4, help="validation images, from the "
                      "first [default: 4]")
    draw.add_argument("--weights", choices=("dense", "admm", "model"), default="model",
                      help="dense.pt, admm.pt (hard-pruned, before retraining) or model.pt "
                           "[default: model]")
    draw.add_argument("--compare-dense", action="store_true",
                      help="a dense column before each run's pruned one")
    draw.add_argument("--conf", type=float, default=0.3, help="score threshold of drawn "
                      "detections [default: 0.3]")
    draw.add_argument("--data-dir", help="dataset directory (default: the run's)")
    sub.add_parser("models", help="list the registered models")
    sub.add_parser("datasets", help="list the registered datasets and tasks")
    from .data.digits import add_make_detection_set_arguments

    detection_set = sub.add_parser(
        "make-detection-set", help="write a small COCO-format detection set of real MNIST "
        "digits (dataset coco reads it)",
        description="Paste real MNIST digits (training digits for train/, test digits for "
                    "val/) at random scales and positions on textured canvases and write "
                    "OUT/train, OUT/val and OUT/annotations/instances_{train,val}.json: a "
                    "small real-image detection set with 10 classes for `dataset: coco`.")
    add_make_detection_set_arguments(detection_set)
    labels = sub.add_parser(
        "imagenet-labels", help="write ImageNet's validation label file (once)",
        description="Write the validation labels of ROOT/val as sorted-WNID class indices "
                    "(Caffe's and bvlc_alexnet.npy's order) from exactly one source: the "
                    "ILSVRC2012 devkit (its ground truth is in devkit ID order, mapped here "
                    "through meta.mat), Caffe's val.txt, or Kaggle's LOC_val_solution.csv. "
                    "The dataset `imagenet` reads ROOT/val_labels.txt by default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmprune imagenet-labels --root /data/ilsvrc2012 --devkit "
               "/data/ILSVRC2012_devkit_t12 --out /data/ilsvrc2012/val_labels.txt")
    labels.add_argument("--root", type=Path, required=True,
                        help="ImageNet ROOT holding train/<WNID>/ and val/*.JPEG")
    source = labels.add_mutually_exclusive_group(required=True)
    source.add_argument("--devkit", type=Path, help="ILSVRC2012 devkit folder or its .tar.gz "
                        "(data/ILSVRC2012_validation_ground_truth.txt + data/meta.mat; reading "
                        "meta.mat needs scipy: pip install 'admmprune[imagenet]')")
    source.add_argument("--val-txt", type=Path, help="Caffe's val.txt (file name, index)")
    source.add_argument("--loc-csv", type=Path, help="Kaggle's LOC_val_solution.csv")
    labels.add_argument("--out", type=Path, help="label file to write [default: "
                        "ROOT/val_labels.txt]")
    _add_export_parser(sub)
    _add_shrink_parser(sub)
    _add_tradeoff_parser(sub)
    keys = sub.add_parser("keys", help="list every recipe key with its default and meaning")
    keys.add_argument("--markdown", action="store_true", help="as a Markdown table (README)")
    return parser


def _add_tradeoff_parser(sub) -> None:
    from .records import PUBLISHED

    tradeoff = sub.add_parser(
        "tradeoff", help="plot finished runs' accuracy against compression, with published "
        "results",
        description="Read the summaries of finished classification runs, pool the seeds of "
                    "each recipe name at each compression (mean; the bar spans the worst and "
                    "best seed), print the points and draw them on a log compression axis, "
                    "next to the published pruning results of the same network. The runs' "
                    "results can be kept in a CSV file and plotted again from it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  admmprune tradeoff runs/lenet5-* runs/lenet5-250x-* --published "
               "lenet5 --out lenet5_tradeoff.png --save-results lenet5_results.csv\n"
               "  admmprune tradeoff --results lenet5_results.csv runs/new-* --published "
               "lenet5 --out lenet5_tradeoff.png")
    tradeoff.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR",
                          help="finished run directories")
    tradeoff.add_argument("--results", action="append", default=[], type=Path,
                          metavar="CSV", help="results kept by --save-results (columns "
                          "name,seed,model,compression,accuracy,dense; accuracies in "
                          "percent); repeatable")
    tradeoff.add_argument("--save-results", type=Path, metavar="CSV", help="write every "
                          "run read (directories and --results) to this CSV file")
    tradeoff.add_argument("--out", type=Path, required=True, help="picture to write (.png, "
                          ".pdf, .svg)")
    tradeoff.add_argument("--published", choices=sorted(PUBLISHED), help="mark the published "
                          "results for this network (and refuse runs of another model)")
    tradeoff.add_argument("--title", default="", help="plot title")
    tradeoff.add_argument("--rename", action="append", default=[], metavar="NAME=LABEL",
                          help="show the runs named NAME (after the seed suffix is removed) "
                          "as LABEL; repeatable")


def _name_label(item: str) -> tuple[str, str]:
    name, sep, label = item.partition("=")
    if not sep or not name or not label:
        raise ValueError(f"--rename {item!r}: expected NAME=LABEL")
    return name, label


def _cmd_tradeoff(args: argparse.Namespace) -> int:
    from .records import (
        PUBLISHED,
        format_tradeoff,
        plot_tradeoff,
        pool_results,
        read_results,
        run_results,
        write_results,
    )

    try:
        if not args.run_dirs and not args.results:
            raise ValueError("nothing to plot: give finished run directories or --results CSV")
        renames = dict(_name_label(item) for item in args.rename)
        results = [r for path in args.results for r in read_results(path)]
        results += run_results(args.run_dirs)
        points = pool_results(results, model=args.published, renames=renames)
    except ValueError as err:
        print(f"admmprune tradeoff: error: {err}", file=sys.stderr)
        return 2
    published = PUBLISHED.get(args.published, ())
    print(format_tradeoff(points, published))
    if args.save_results is not None:
        print(f"wrote {write_results(results, args.save_results)}")
    print(f"wrote {plot_tradeoff(points, args.out, published, args.title)}")
    return 0


@contextmanager
def _process_group(config: Config) -> Iterator[bool]:
    """Under torchrun (WORLD_SIZE > 1): join its process group for the command (gloo on the
    CPU, nccl on CUDA) and leave it after; yields whether this process prints (rank 0)."""
    from . import distributed

    owned = distributed.init_from_env(config.device)
    try:
        yield distributed.is_main()
    finally:
        distributed.shutdown(owned)


def _cmd_prune(args: argparse.Namespace) -> int:
    from .pipeline import load_run_config, run_pipeline
    from .report import format_summary

    overrides = _overrides(args)
    run_dir = args.resume or args.run_dir
    if args.resume or args.stage == "retrain":
        if run_dir is None:
            raise ConfigError("--stage retrain needs --run-dir RUN_DIR of an ADMM stage")
        config = load_run_config(run_dir, overrides)
    else:
        config = load_config(args.recipe, overrides)
    with _process_group(config) as main_rank:
        try:
            summary = run_pipeline(config, stage=args.stage, run_dir=run_dir,
                                   resume=args.resume is not None)
        except KeyboardInterrupt:
            if main_rank:
                where = run_dir or "the run directory printed above"
                print(f"\ninterrupted: the last finished epoch/iteration is saved; continue "
                      f"with\n  admmprune prune --resume {where}", file=sys.stderr)
            return 130
    if main_rank:
        print(format_summary(summary))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import Run, new_run_dir

    config = load_config(args.recipe, _overrides(args))
    with _process_group(config) as main_rank:
        from . import distributed

        run = Run(config, args.run_dir or distributed.broadcast_object(new_run_dir(config)),
                  resume=False)
        try:
            run.dense()
        except KeyboardInterrupt:
            if main_rank:
                print(f"\ninterrupted: the last finished epoch is saved; continue with\n"
                      f"  admmprune prune --resume {run.run_dir} --stage admm   (or start "
                      "again)", file=sys.stderr)
            return 130
        finally:
            run.close()
    if not main_rank:
        return 0
    from .report import format_metrics

    dense = {k.removeprefix("dense_"): v for k, v in run.progress.results.items()
             if k.startswith("dense_")}
    print(f"dense: {format_metrics(dense, run.task.labels)}  ->  {run.run_dir / 'dense.pt'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .masks import global_sparsity, sparsity_report
    from .pipeline import build_model, load_data, load_run_config, load_weights, resolve_device
    from .report import format_metrics, format_table
    from .selection import prunable_parameters
    from .tasks import create_task
    from .train import evaluate as evaluate_model

    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    config = load_run_config(args.run_dir, overrides)
    device = resolve_device(config.device)
    data = load_data(config, device, splits=("test",))  # no training files needed
    model = build_model(config, data.num_classes).to(device)
    weights = args.weights or args.run_dir / "model.pt"
    load_weights(model, Path(weights), device, config.model)
    task = create_task(config.task)
    task.bind(model)
    result = evaluate_model(model, data.test, device=device, task=task, amp=config.amp)
    named = prunable_parameters(model, config.include, config.exclude)
    report = sparsity_report([n for n, _ in named], [p.detach() for _, p in named])
    totals = global_sparsity(report)
    print(f"{weights}: {format_metrics(result, task.labels)}  sparsity "
          f"{totals['sparsity_percent']:.3f}%  compression {totals['compression']:.1f}x")
    print(format_table(["layer", "weights", "kept", "kept %"],
                       [(r.name, r.total, r.kept, f"{100 * r.kept_fraction:.2f}%")
                        for r in report]))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import format_summary, plot_run, read_summary

    summary = read_summary(args.run_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        for exported in sorted(args.run_dir.glob("model*.apz")):
            from .export import format_size_report, size_report

            print(f"\n{exported.name}:")
            print(format_size_report(size_report(exported,
                                                 reference=args.run_dir / "model.pt")))
    if not args.no_plots:
        for path in plot_run(args.run_dir):
            print(f"wrote {path}")
    return 0


def _methods() -> dict:
    from .compare import METHODS

    return METHODS


def _number_list(value, what: str) -> list[float]:
    """[90, 95], "90,95" or 90 -> [90.0, 95.0]."""
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        return [float(v) for v in items if str(v).strip()]
    except ValueError:
        raise ConfigError(f"{what} must be numbers separated by commas, got {value!r}") from None


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import format_rows, markdown_table, merged_rows, plot_compare, run_compare

    overrides = _overrides(args)
    percents = _number_list(overrides.pop("all_percent", None) or 98.6, "--all-percent")
    config = load_config(args.recipe, {**overrides, "all_percent": percents[-1]})
    seeds = [int(s) for s in _number_list(args.seeds, "--seeds")]
    variants = None
    if args.depths:
        variants = [{"depth": int(d)} for d in _number_list(args.depths, "--depths")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = run_compare(config, methods, percents, args.out, seeds=seeds, variants=variants)
    print(format_rows(rows))
    rows = merged_rows(rows, args.out)  # tables and plots cover earlier invocations too
    print()
    print(markdown_table(rows))
    for path in plot_compare(rows, args.out, layers_at=args.layers_at):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'results.json'}, results.csv, results.md")
    return 0


def _cmd_models(_: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .models import list_models
    from .pipeline import build_model
    from .selection import describe_selection, format_selection, prunable_parameters

    overrides = _overrides(args)
    if args.target in list_models():
        overrides.setdefault("model", args.target)
        config = load_config(None, overrides)
    else:
        config = load_config(args.target, overrides)
    model = build_model(config)
    pruned, skipped = describe_selection(model, config.include, config.exclude)
    print(f"{config.model} {config.model_args or ''}".rstrip())
    print(format_selection(pruned, skipped))
    prunable_parameters(model, config.include, config.exclude)  # a run would refuse: say so
    return 0


def _cmd_draw(args: argparse.Namespace) -> int:
    from .draw import draw_runs

    path = draw_runs(args.run_dirs, args.out, images=args.images, weights=args.weights,
                     compare_dense=args.compare_dense, conf=args.conf, data_dir=args.data_dir)
    print(f"wrote {path}")
    return 0


def _cmd_make_detection_set(args: argparse.Namespace) -> int:
    from .data.digits import run_make_detection_set

    return run_make_detection_set(args)


def _cmd_datasets(_: argparse.Namespace) -> int:
    from .data import list_datasets
    from .report import format_table
    from .tasks import list_tasks

    print(format_table(["dataset", "task", "what it is"],
                       [(d.name, d.task, d.description) for d in list_datasets()]))
    print(f"\ntasks: {', '.join(list_tasks())}")
    return 0


def _cmd_imagenet_labels(args: argparse.Namespace) -> int:
    from .data.imagenet import DEFAULT_LABELS_NAME, make_label_file, read_label_file

    out = args.out or args.root / DEFAULT_LABELS_NAME
    path = make_label_file(args.root, devkit=args.devkit, val_txt=args.val_txt,
                           loc_csv=args.loc_csv, out=out)
    labels, classes = read_label_file(path)
    print(f"wrote {path}: {len(labels)} validation images, {len(classes or [])} classes")
    return 0


def _add_export_parser(sub) -> None:
    export = sub.add_parser(
        "export", help="write a run's model as a compressed file, dense safetensors or ONNX",
        description="compressed (RUN_DIR/model.apz): only the surviving weights (positions + "
                    "values, float or --bits k-means codes), zstd, checksummed, no pickle; "
                    "read it back with admmprune.load(path). dense (model.safetensors): the "
                    "plain state dict. onnx (model.onnx): checked with onnxruntime. Prints "
                    "the size report, and for --bits < 32 the test metrics before and after "
                    "quantization (and after --finetune-epochs of centroid fine-tuning).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmprune export runs/a --bits 4\n"
               "  admmprune export runs/a --format onnx --out lenet5.onnx")
    export.add_argument("run_dir", type=Path, help="run directory")
    export.add_argument("--format", dest="export_format", default="compressed",
                        choices=("compressed", "dense", "onnx"),
                        help="[default: %(default)s]")
    export.add_argument("--bits", type=int, default=32, choices=(32, 8, 6, 5, 4),
                        help="compressed: bits per surviving value; below 32, a per-layer "
                             "codebook of 2^bits k-means centroids [default: 32, lossless]")
    export.add_argument("--out", type=Path, help="file to write [default: next to the run's "
                        "model.pt]")
    export.add_argument("--weights", type=Path, help="state dict to export instead of "
                        "RUN_DIR/model.pt")
    export.add_argument("--data-dir", help="dataset directory (test metrics, ONNX example)")
    export.add_argument("--no-eval", action="store_true", help="skip the test metrics of a "
                        "quantized export")
    export.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                        help="with --bits < 32: train only the k-means centroids for N epochs "
                             "on the run's training data (each centroid's gradient is the sum "
                             "of its weights' gradients; pruned entries and assignments stay "
                             "fixed) and write the fine-tuned codebooks [default: 0, off]")
    export.add_argument("--finetune-lr", type=float, default=1e-4, metavar="LR",
                        help="Adam learning rate of the centroids [default: %(default)g]")
    export.add_argument("--dead-units", choices=("auto", "drop", "keep"), default="auto",
                        help="units no surviving weight reads (e.g. fc1 neurons whose fc2 "
                             "column is pruned): drop zeroes their bias and incoming weights "
                             "(outputs unchanged, checked on test examples; needs "
                             "torch-pruning), keep stores the state dict as it is; auto drops "
                             "them when --bits < 32 [default: auto]")


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportError
    from .export.run import export_run, format_export_summary

    try:
        summary = export_run(args.run_dir, args.export_format, bits=args.bits, out=args.out,
                             weights=args.weights, data_dir=args.data_dir,
                             evaluate=not args.no_eval,
                             finetune_epochs=args.finetune_epochs,
                             finetune_lr=args.finetune_lr, dead_units=args.dead_units)
    except ExportError as err:
        print(f"admmprune export: error: {err}", file=sys.stderr)
        return 2
    print(format_export_summary(summary))
    return 0


def _add_shrink_parser(sub) -> None:
    shrink = sub.add_parser(
        "shrink", help="remove a structurally pruned run's zero filters/channels physically",
        description="Remove the whole zero filters and input channels of RUN_DIR/model.pt "
                    "(a run pruned with `structure: filter` or `channel`) and everything "
                    "coupled to them (BatchNorm, consumers, residual partners), print "
                    "shapes, parameters and MACs before/after, check the outputs on a test "
                    "batch and write a smaller dense model (safetensors; "
                    "admmprune.load_shrunk reads it).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmprune shrink runs/a --out lenet5-small.safetensors")
    shrink.add_argument("run_dir", type=Path, help="run directory")
    shrink.add_argument("--out", type=Path, help="file to write [default: "
                        "RUN_DIR/model-shrunk.safetensors]")
    shrink.add_argument("--weights", type=Path, help="state dict to shrink instead of "
                        "RUN_DIR/model.pt")
    shrink.add_argument("--data-dir", help="dataset directory (the example and check batch)")


def _cmd_shrink(args: argparse.Namespace) -> int:
    from .shrink import ShrinkError, format_shrink_summary, shrink_run

    try:
        summary = shrink_run(args.run_dir, out=args.out, weights=args.weights,
                             data_dir=args.data_dir)
    except ShrinkError as err:
        print(f"admmprune shrink: error: {err}", file=sys.stderr)
        return 2
    print(format_shrink_summary(summary))
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from .report import format_table

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


COMMANDS = {"prune": _cmd_prune, "train": _cmd_train, "eval": _cmd_eval, "compare": _cmd_compare,
            "report": _cmd_report, "models": _cmd_models, "datasets": _cmd_datasets,
            "imagenet-labels": _cmd_imagenet_labels, "inspect": _cmd_inspect,
            "make-detection-set": _cmd_make_detection_set,
            "draw": _cmd_draw,
            "export": _cmd_export,
            "shrink": _cmd_shrink,
            "tradeoff": _cmd_tradeoff,
            "keys": _cmd_keys}


# Commands that run data-parallel under torchrun; the others are one-process jobs.
DISTRIBUTED_COMMANDS = ("prune", "train")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DatasetError
    from .distributed import DistributedError, env_world_size
    from .models import UnknownModelError
    from .pipeline import RunError
    from .pruner import PrunerError
    from .selection import SelectionError
    from .train import NonFiniteLossError

    try:
        if args.command not in DISTRIBUTED_COMMANDS and env_world_size() > 1:
            raise ConfigError(f"`admmprune {args.command}` runs in one process; only "
                              f"{' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun")
        return COMMANDS[args.command](args)
    except (ConfigError, DatasetError, RunError, PrunerError, SelectionError,
            NonFiniteLossError, FileNotFoundError, UnknownModelError, DistributedError) as err:
        # every rank reports (an error may be one rank's own); rank > 0 says which it is
        rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" \
            else "0"
        where = "" if rank == "0" else f" (rank {rank})"
        print(f"admmprune {args.command}{where}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
