"""The ``admmprune`` argument parser: one sub-command per job, one flag per recipe key."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from ..runs.config import KEY_HELP, Config, parse_value

__all__ = ["build_parser", "recipe_overrides", "IMPORT_COMMANDS"]

# Commands that read a recipe or a run directory: --import FILE.py loads a user's file first.
IMPORT_COMMANDS = ("prune", "train", "eval", "export", "shrink", "compare", "report", "inspect")
# Recipe keys set by a flag of their own instead of --key (imports: --import, repeatable).
_OWN_FLAG_KEYS = {"imports"}

EXAMPLES = """examples:
  admmprune prune recipes/lenet5.yaml --data-dir ../shared/data/mnist
  admmprune prune recipes/lenet5.yaml --all-percent 99 --k-step 8 --rho-growth 1.5
  admmprune prune recipes/lenet5.yaml --stage admm --run-dir runs/a   # then:
  admmprune prune --stage retrain --run-dir runs/a --retraining-epochs 8
  admmprune prune --resume runs/a                                    # after Ctrl-C
  torchrun --nproc_per_node=4 -m admmprune prune recipes/lenet5.yaml # data-parallel
  admmprune report runs/a
"""


def add_recipe_keys(parser: argparse.ArgumentParser) -> None:
    """One ``--key value`` flag per recipe key; values parse as YAML ([90, 99], 1e-3)."""
    group = parser.add_argument_group(
        "recipe keys", "override any key of the recipe; values are YAML, so lists are "
        "written [90, 98, 99.6] and booleans true/false")
    for f in fields(Config):
        if f.name in _OWN_FLAG_KEYS:
            continue
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


def recipe_overrides(args: argparse.Namespace) -> dict:
    overrides = {k.removeprefix("key_"): v for k, v in vars(args).items()
                 if k.startswith("key_")}
    if getattr(args, "imports", None):
        overrides["imports"] = [str(p) for p in args.imports]
    return overrides


def add_import_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], type=Path,
                        metavar="FILE.py",
                        help="run this Python file first, so its @register_model / "
                             "@register_dataset / @register_task lines count (repeatable; "
                             "it runs that code); the run records its sha256")


def add_trust_pickle(parser: argparse.ArgumentParser) -> None:
    """--trust-pickle: the one switch that lets --weights run a file's code."""
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow --weights in a format read by unpickling (Caffe's "
                             "bvlc_alexnet.npy), which runs any code the file holds: only for "
                             "files from a source you trust. State dicts (torch.save of a "
                             "state_dict, .safetensors) never need it")


def add_allow_changed_sources(parser: argparse.ArgumentParser) -> None:
    """--allow-changed-sources: the one switch of the commands that rebuild a run's model
    from its config (eval, export, shrink, draw) to use a run whose imported files changed."""
    from ..runs.sources import ALLOW_CHANGED_SOURCES

    parser.add_argument(ALLOW_CHANGED_SOURCES, action="store_true",
                        help="use the run even when a file it imported (sources.json: "
                             "--import files, the files of its specs) changed since: the "
                             "model is rebuilt from the code as it is now, with a warning "
                             "naming the file [default: refuse]")


def build_parser() -> argparse.ArgumentParser:
    from ..runs.compare import METHODS

    parser = argparse.ArgumentParser(
        prog="admmprune",
        description="ADMM weight pruning under one global removal ratio "
                    "(all_percent): the method finds each layer's share by itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"admmprune {__version__}")
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
    add_recipe_keys(prune)

    train = sub.add_parser("train", help="train a dense model only (no pruning)",
                           description="Train the recipe's model densely for dense_epochs and "
                                       "save it as RUN_DIR/dense.pt (usable as --pretrained).")
    train.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/)")
    train.add_argument("--run-dir", type=Path, help="run directory")
    add_recipe_keys(train)

    evaluate = sub.add_parser("eval", help="test metrics and sparsity of a saved model",
                              description="Evaluate a run directory's model.pt (or any state "
                                          "dict given with --weights) on the test split only "
                                          "(classification: loss, top-1, top-5).")
    evaluate.add_argument("run_dir", type=Path, help="run directory")
    evaluate.add_argument("--weights", type=Path, help="state dict to evaluate instead of "
                          "RUN_DIR/model.pt")
    evaluate.add_argument("--data-dir", help="dataset directory")
    add_trust_pickle(evaluate)
    add_allow_changed_sources(evaluate)

    report = sub.add_parser("report", help="print a run's summary table and draw its plots",
                            description="Print the summary of a run directory and write "
                                        "admm_residuals.png, accuracy.png, kept_per_layer.png.")
    report.add_argument("run_dir", type=Path, help="run directory")
    report.add_argument("--no-plots", action="store_true", help="print the table only")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.add_argument("--by-block", action="store_true",
                        help="also the kept share per transformer block and kind (attention "
                             "q/k/v/out, MLP in/out; GPT-2's fused c_attn split in thirds), "
                             "read from model.pt")

    compare = sub.add_parser(
        "compare", help="several methods, same data/seed/dense start/epoch budget",
        description="Run pruning methods side by side and write results.json, results.csv, "
                    "results.md and plots into --out. Methods: " + "; ".join(
                        f"{k}: {v[0]}" for k, v in METHODS.items()) + ". Finished runs "
                    "in --out are reused when their config equals this compare's, so an "
                    "interrupted sweep resumes; without --all-percent the recipe's ratio is "
                    "used.",
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
    add_recipe_keys(compare)

    inspect = sub.add_parser(
        "inspect", help="what a recipe or model prunes, and what it leaves alone (and why)",
        description="Build the model of a recipe (or a model by its registered name or "
                    "import spec) and list "
                    "its prunable tensors and every other weight tensor with the reason it is "
                    "not pruned (frozen, shared, excluded, not a Conv/Linear weight, "
                    "parametrized). include/exclude patterns match module names and full "
                    "parameter names, e.g. --include \"['lstm.weight_ih_l0', "
                    "'*.in_proj_weight']\".",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("target", help="YAML recipe, a registered model name, or a model's "
                         "import spec (\"package.module:factory\")")
    add_recipe_keys(inspect)
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
    add_allow_changed_sources(draw)
    sub.add_parser("models", help="list the registered models")
    sub.add_parser("datasets", help="list the registered datasets and tasks")
    from ..data.digits import add_make_detection_set_arguments

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
    labels.add_argument("--root", type=Path,
                        help="ImageNet ROOT holding train/<WNID>/ and val/*.JPEG [default: "
                             "$ADMMPRUNE_IMAGENET_DIR, else $ADMMPRUNE_DATA_DIR/imagenet]")
    source = labels.add_mutually_exclusive_group(required=True)
    source.add_argument("--devkit", type=Path, help="ILSVRC2012 devkit folder or its .tar.gz "
                        "(data/ILSVRC2012_validation_ground_truth.txt + data/meta.mat; reading "
                        "meta.mat needs scipy: pip install 'admmprune[imagenet]')")
    source.add_argument("--val-txt", type=Path, help="Caffe's val.txt (file name, index)")
    source.add_argument("--loc-csv", type=Path, help="Kaggle's LOC_val_solution.csv")
    labels.add_argument("--out", type=Path, help="label file to write [default: "
                        "ROOT/val_labels.txt]")
    add_export_parser(sub)
    add_shrink_parser(sub)
    add_oneshot_parser(sub)
    add_tradeoff_parser(sub)
    keys = sub.add_parser("keys", help="list every recipe key with its default and meaning")
    keys.add_argument("--markdown", action="store_true", help="as a Markdown table (README)")
    for command in IMPORT_COMMANDS:
        add_import_flag(sub.choices[command])
    return parser


def add_tradeoff_parser(sub) -> None:
    from ..runs.records import PUBLISHED

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


def add_export_parser(sub) -> None:
    export = sub.add_parser(
        "export", help="write a run's model as a compressed file, dense safetensors, ONNX or "
                       "a Hugging Face directory",
        description="compressed (RUN_DIR/model.apz): only the surviving weights (positions + "
                    "values, float or --bits k-means codes), zstd, checksummed, no pickle; "
                    "read it back with admmprune.load(path). dense (model.safetensors): the "
                    "plain state dict. onnx (model.onnx): checked with onnxruntime. "
                    "huggingface (model-hf/: config.json + model.safetensors, for gpt, llama "
                    "and models built on a transformers config): what from_pretrained and "
                    "`admmprune oneshot` load. Prints "
                    "the size report, and for --bits < 32 the test metrics before and after "
                    "quantization (and after --finetune-epochs of centroid fine-tuning).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmprune export runs/a --bits 4\n"
               "  admmprune export runs/a --format onnx --out lenet5.onnx")
    export.add_argument("run_dir", type=Path, help="run directory")
    export.add_argument("--format", dest="export_format", default="compressed",
                        choices=("compressed", "dense", "onnx", "huggingface"),
                        help="[default: %(default)s]")
    export.add_argument("--bits", type=int, default=32, choices=(32, 8, 6, 5, 4),
                        help="compressed: bits per surviving value; below 32, a per-layer "
                             "codebook of 2^bits k-means centroids [default: 32, lossless]")
    export.add_argument("--out", type=Path, help="file to write [default: next to the run's "
                        "model.pt]")
    export.add_argument("--weights", type=Path, help="state dict to export instead of "
                        "RUN_DIR/model.pt")
    export.add_argument("--data-dir", help="dataset directory (test metrics, ONNX example)")
    add_trust_pickle(export)
    add_allow_changed_sources(export)
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


def add_shrink_parser(sub) -> None:
    shrink = sub.add_parser(
        "shrink", help="remove a structurally pruned run's zero filters/channels physically",
        description="Remove the whole zero filters and input channels of RUN_DIR/model.pt "
                    "(a run pruned with `structure: filter` or `channel`) and everything "
                    "coupled to them (BatchNorm, consumers, residual partners), print "
                    "shapes, parameters and MACs before/after, check the outputs on a test "
                    "batch and write a smaller dense model (safetensors; "
                    "admmprune.load_shrunk reads it). A transformer pruned with `structure: "
                    "units` loses its zero MLP neurons and attention groups block by block "
                    "and is written as a Hugging Face directory (admmprune.load_huggingface "
                    "reads it).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmprune shrink runs/a --out lenet5-small.safetensors")
    shrink.add_argument("run_dir", type=Path, help="run directory")
    shrink.add_argument("--out", type=Path, help="file to write [default: "
                        "RUN_DIR/model-shrunk.safetensors; structure units: the directory "
                        "RUN_DIR/model-shrunk]")
    shrink.add_argument("--weights", type=Path, help="state dict to shrink instead of "
                        "RUN_DIR/model.pt")
    shrink.add_argument("--data-dir", help="dataset directory (the example and check batch)")
    shrink.add_argument("--onnx", action="store_true", help="structure units: also write "
                        "OUT/model.onnx (logits; checked with onnxruntime)")
    add_trust_pickle(shrink)
    add_allow_changed_sources(shrink)


def add_oneshot_parser(sub) -> None:
    from ..posttraining import ALLOCATIONS, METHODS, ORDERS

    oneshot = sub.add_parser(
        "oneshot", help="prune a trained Hugging Face causal LM from calibration data alone",
        description="Post-training pruning, block by block: calibration windows of a text "
                    "corpus (--dataset text: $ADMMPRUNE_DATA_DIR/pystdlib or --data-dir), no "
                    "retraining. --allocation global (the default for admm) splits one "
                    "budget between the layers by the method's own error curves weighted by "
                    "the loss's sensitivity to each layer; uniform gives every layer the same "
                    "share; owl sets shares per block from outlier ratios. Writes OUT as a "
                    "Hugging Face directory (from_pretrained loads it) with oneshot.json: "
                    "test bits per byte before/after, kept weights per layer, times, peak "
                    "memory.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  admmprune oneshot runs/gpt/model-hf --method admm "
               "--all-percent 70 --out runs/gpt-admm70\n"
               "  admmprune oneshot runs/gpt/model-hf --method sparsegpt --nm 2:4 "
               "--out runs/gpt-sparsegpt24\n"
               "  admmprune oneshot models/llama-pystdlib --structured --all-percent 25 "
               "--onnx --out runs/llama-units25")
    oneshot.add_argument("model", help="Hugging Face model directory (config.json + "
                         "model.safetensors)")
    oneshot.add_argument("--method", choices=tuple(METHODS),
                         help="layer method [default: admm]")
    oneshot.add_argument("--structured", action="store_true",
                         help="remove whole MLP neurons and attention groups (a key-value head "
                              "with its query heads) instead of single weights, and write the "
                              "shrunk, smaller dense model; --allocation global (default) or "
                              "uniform")
    oneshot.add_argument("--no-reconstruct", action="store_true",
                         help="structured: do not refit the down and output projections to "
                              "the dense outputs by least squares")
    oneshot.add_argument("--recover-steps", type=int, default=0, metavar="N",
                         help="then fine-tune the pruned model for N steps of --batch-size "
                              "training windows (pruned weights stay zero); the test bpb is "
                              "measured before and after [default: %(default)s]")
    oneshot.add_argument("--recover-lr", type=float, default=1e-4, metavar="LR",
                         help="the recovery's AdamW learning rate [default: %(default)s]")
    oneshot.add_argument("--onnx", action="store_true",
                         help="also write OUT/model.onnx (logits), checked with onnxruntime")
    oneshot.add_argument("--all-percent", type=float, help="share of the blocks' weights "
                         "removed, one budget for the model")
    oneshot.add_argument("--nm", metavar="N:M", help="keep N of every M weights instead")
    oneshot.add_argument("--allocation", choices=ALLOCATIONS,
                         help="how the budget is split [default: global for admm, uniform "
                              "otherwise]")
    oneshot.add_argument("--dataset", choices=("text",), default="text",
                         help="calibration and test corpus [default: %(default)s]")
    oneshot.add_argument("--data-dir", help="the corpus (a file, a directory, or "
                         "train.txt/test.txt[.gz]) [default: $ADMMPRUNE_DATA_DIR/pystdlib]")
    oneshot.add_argument("--calibration", type=int, default=128, metavar="N",
                         help="calibration sequences of the context length [default: "
                              "%(default)s]")
    oneshot.add_argument("--context", type=int, help="tokens per sequence [default: the "
                         "model's positions]")
    oneshot.add_argument("--batch-size", type=int, default=16, help="[default: %(default)s]")
    oneshot.add_argument("--seed", type=int, default=0, help="which calibration windows "
                         "[default: %(default)s]")
    oneshot.add_argument("--order", choices=ORDERS, default="sequential",
                         help="calibrate each group of a block's layers on the block with the "
                              "groups before it pruned (sequential) or all from the block's "
                              "inputs (block) [default: %(default)s]")
    oneshot.add_argument("--iterations", type=int, help="admm: iterations per layer "
                         "[default: 20]")
    oneshot.add_argument("--curve-method", choices=tuple(METHODS),
                         help="global: the method that measures the error curves [default: "
                              "--method]")
    oneshot.add_argument("--curve-rows", type=int, default=32, metavar="N",
                         help="global: measure each layer's error curve on N of its output "
                              "rows, drawn at random and scaled (0: every row) "
                              "[default: %(default)s]")
    oneshot.add_argument("--max-layer-percent", type=float, metavar="P",
                         help="global: no layer loses more than P%% [default: halfway from "
                              "--all-percent to 100%%, at most 98]")
    oneshot.add_argument("--test-windows", type=int, default=2048, metavar="N",
                         help="test bpb on the first N test windows (0: all) "
                              "[default: %(default)s]")
    oneshot.add_argument("--no-eval", action="store_true", help="skip the test bpb")
    oneshot.add_argument("--dense-bpb", type=float, metavar="BPB",
                         help="the dense model's test bpb on the same windows, measured "
                              "before: taken as given instead of measured again (a grid "
                              "over one model measures it once)")
    oneshot.add_argument("--out", help="directory to write (must not exist); without it "
                         "nothing is written")
    oneshot.add_argument("--no-progress", action="store_true", help="no progress bars")
    oneshot.add_argument("--json", action="store_true", help="print the record (what "
                         "oneshot.json holds) as JSON instead of the summary")
