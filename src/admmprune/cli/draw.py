"""Pictures of what a detector finds: validation images with predicted and ground-truth boxes,
one column per model (dense next to pruned, or several runs side by side).

:func:`draw_detections` is the drawing alone (images and boxes in, a PNG out);
:func:`draw_runs` is what ``admmprune draw`` does: read run directories, rebuild their models,
run :func:`~admmprune.tasks.detection.detect` on the first validation images and draw them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..runs.config import Config, ConfigError
from ..runs.rundir import RunError, load_run_config

__all__ = ["WEIGHTS", "PREDICTION_COLOUR", "TRUTH_COLOUR", "draw_detections", "draw_runs"]

# --weights choice -> (file in the run directory, summary.json prefix, column label)
WEIGHTS = {
    "dense": ("dense.pt", "dense", "dense"),
    "admm": ("admm.pt", "admm", "ADMM, hard-pruned"),
    "model": ("model.pt", "pruned", "pruned + retrained"),
}
_MISSING_HINT = {
    "dense": "the run has not finished its dense phase; resume it with `admmprune prune "
             "--resume {run}`",
    "admm": "the run has not finished its ADMM stage; resume it with `admmprune prune "
            "--resume {run}`",
    "model": "the run has not finished retraining (`admmprune prune --stage retrain --run-dir "
             "{run}`, or --resume {run}); --weights admm draws the hard-pruned ADMM weights, "
             "--weights dense the dense model",
}
PREDICTION_COLOUR = "#e6194b"
TRUTH_COLOUR = "#3cb44b"
# drawn boxes per image and column at most: beyond that a picture shows nothing more
MAX_BOXES = 100
_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _as_boxes(value: Any, what: str) -> torch.Tensor:
    boxes = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    boxes = boxes.reshape(-1, 4) if boxes.numel() == 0 else boxes
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be (n, 4) x1, y1, x2, y2, got "
                         f"{tuple(boxes.shape)}")
    return boxes


def _entries(item: dict, what: str, scored: bool) -> list[tuple[list[float], int, float | None]]:
    """[(xyxy, label, score or None)] of one image's boxes, checked."""
    keys = ("boxes", "labels", "scores") if scored else ("boxes", "labels")
    if not isinstance(item, dict) or any(k not in item for k in keys):
        raise ValueError(f"{what} must be a dict with 'boxes' and 'labels'"
                         + (" and 'scores'" if scored else ""))
    boxes = _as_boxes(item["boxes"], what)
    labels = torch.as_tensor(item["labels"]).reshape(-1).tolist()
    scores = (torch.as_tensor(item["scores"], dtype=torch.float32).reshape(-1).tolist()
              if scored else [None] * len(labels))
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"{what}: {len(boxes)} boxes, {len(labels)} labels and "
                         f"{len(scores)} scores; one of each per box")
    return list(zip(boxes.tolist(), (int(v) for v in labels), scores, strict=True))


def _name(label: int, classes: Sequence[str] | None) -> str:
    return str(classes[label]) if classes is not None and 0 <= label < len(classes) \
        else str(label)


def draw_detections(images: torch.Tensor | Sequence[torch.Tensor],
                    columns: Sequence[tuple[str, Sequence[dict]]],
                    ground_truth: Sequence[dict] | None,
                    classes: Sequence[str] | None,
                    path: str | Path, *, row_labels: Sequence[str] | None = None,
                    title: str | None = None) -> Path:
    """Draw a grid (rows = images, columns = models) and save it to ``path``.

    ``images``: (B, 3, H, W) or B tensors (3, H, W), RGB in [0, 1]. ``columns``: (title,
    detections) pairs, detections one dict per image with ``boxes`` (n, 4) xyxy in pixels of
    that image, ``labels`` and ``scores`` (what :func:`~admmprune.tasks.detection.detect`
    returns); drawn solid with "class score". ``ground_truth``: one dict per image with
    ``boxes`` and ``labels``, drawn dashed in every column (None: none). ``classes`` names the
    labels (None: numbers). The format follows ``path``'s suffix (.png, .pdf, .svg, .jpg).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"cannot tell the picture format of {path}: end the name with one of "
                         f"{', '.join(_FORMATS)}")
    pictures = [torch.as_tensor(im).detach().float().cpu() for im in images]
    if not pictures:
        raise ValueError("no images to draw")
    for i, im in enumerate(pictures):
        if im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} must be (3, H, W) RGB in [0, 1], got {tuple(im.shape)}")
    if not columns:
        raise ValueError("no columns to draw: give at least one (title, detections) pair")
    rows = len(pictures)
    found = []
    for title_, detections in columns:
        if len(detections) != rows:
            raise ValueError(f"column {title_!r} has detections for {len(detections)} images "
                             f"but {rows} images are drawn")
        found.append([_entries(d, f"detections of image {i} in {title_!r}", scored=True)
                      for i, d in enumerate(detections)])
    truth = None
    if ground_truth is not None:
        if len(ground_truth) != rows:
            raise ValueError(f"{len(ground_truth)} ground-truth entries for {rows} images")
        truth = [_entries(t, f"ground truth of image {i}", scored=False)
                 for i, t in enumerate(ground_truth)]
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} images")

    cols = len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows + 0.6), squeeze=False)
    for r, picture in enumerate(pictures):
        height, width = picture.shape[1:]
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(picture.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            for (x1, y1, x2, y2), label, score in found[c][r][:MAX_BOXES]:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.3,
                                       edgecolor=PREDICTION_COLOUR))
                ax.text(x1, y1, f"{_name(label, classes)} {score:.2f}", fontsize=6,
                        color="white", va="bottom", ha="left", clip_on=True,
                        bbox={"facecolor": PREDICTION_COLOUR, "edgecolor": "none",
                              "pad": 0.8, "alpha": 0.85})
            # ground truth last, so that a crowd of detections cannot hide it
            for (x1, y1, x2, y2), _, _ in truth[r] if truth else ():
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.3,
                                       ls="--", edgecolor=TRUTH_COLOUR))
            if r == 0:
                ax.set_title(columns[c][0], fontsize=8)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=7)
    handles = [Line2D([], [], color=PREDICTION_COLOUR, lw=1.5, label="detection (class score)"),
               Line2D([], [], color=TRUTH_COLOUR, lw=1.5, ls="--", label="ground truth")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.5 / (3.4 * rows + 0.6), 1, 1), h_pad=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- run directories


@dataclass
class _Source:
    run_dir: Path
    config: Config
    weights: str  # a key of WEIGHTS

    @property
    def file(self) -> Path:
        return self.run_dir / WEIGHTS[self.weights][0]


def _read_map50(run_dir: Path, prefix: str) -> float | None:
    import json

    from ..jsonfile import loads

    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        value = loads(path.read_text()).get(f"{prefix}_map50")
    except (json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _check_same_images(first: _Source, other: _Source) -> None:
    def where(config: Config) -> tuple:
        data_dir = Path(config.data_dir).resolve() if config.data_dir else None
        return config.dataset, data_dir, config.image_size

    if where(first.config) != where(other.config):
        raise RunError(
            f"{other.run_dir} was evaluated on other images than {first.run_dir} (dataset, "
            f"data_dir, image_size: {where(other.config)} vs {where(first.config)}); draw puts "
            "runs side by side on the same validation images: draw them separately, or give "
            "--data-dir when only the data's location differs")


def draw_runs(run_dirs: Sequence[str | Path], out: str | Path, *, images: int = 4,
              weights: str = "model", compare_dense: bool = False, conf: float = 0.3,
              iou: float = 0.45, data_dir: str | None = None,
              allow_changed_sources: bool = False) -> Path:
    """``admmprune draw``: the first ``images`` validation images of the runs' dataset with
    each run's detections (score > ``conf``, NMS at ``iou``) and the ground truth; one column
    per run (``weights``: dense.pt, admm.pt or model.pt), and with ``compare_dense`` a dense
    column before each. Titles give the run's mAP@0.5 from summary.json (measured on the whole
    evaluation split) and the compression N/K counted on the drawn weights. A run whose
    imported files changed since is refused unless ``allow_changed_sources`` (then drawn
    with a warning; :func:`~admmprune.runs.sources.check_run_sources`)."""
    from ..data import create_dataset
    from ..masks import global_sparsity, sparsity_report
    from ..runs.build import build_model, load_weights, resolve_device
    from ..runs.sources import check_run_sources
    from ..selection import prunable_parameters
    from ..tasks.detection import detect

    if weights not in WEIGHTS:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"--images must be an integer >= 1, got {images!r}")
    if not 0 <= conf < 1:
        raise ConfigError(f"--conf must be in [0, 1), got {conf!r}")
    if not run_dirs:
        raise ConfigError("draw needs at least one run directory")
    if Path(out).suffix.lower() not in _FORMATS:
        raise ConfigError(f"--out {out}: end the file name with one of {', '.join(_FORMATS)} "
                          "(the picture format follows it)")
    if compare_dense and weights == "dense":
        raise ConfigError("--compare-dense puts the dense model next to the pruned one: use it "
                          "with --weights model or admm")
    # only the first images are needed: read them in one batch, in the main process
    overrides: dict[str, Any] = {"workers": 0, "batch_size": images, "test_subset": images,
                                 "progress": False}
    if data_dir:
        overrides["data_dir"] = data_dir
    sources: list[_Source] = []
    for run_dir in map(Path, run_dirs):
        config = load_run_config(run_dir, overrides)
        if config.task != "detection":
            raise RunError(
                f"{run_dir} is a {config.task} run (model {config.model}, dataset "
                f"{config.dataset}); draw shows detection boxes and needs a run with task: "
                "detection (e.g. from recipes/yolov4_tiny_digits.yaml)")
        check_run_sources(run_dir, config, allow_changed=allow_changed_sources)
        for kind in (("dense", weights) if compare_dense else (weights,)):
            sources.append(_Source(run_dir, config, kind))
    for source in sources:  # every file before any work
        if not source.file.is_file():
            raise RunError(f"{source.file} does not exist: "
                           + _MISSING_HINT[source.weights].format(run=source.run_dir))
        _check_same_images(sources[0], source)

    config = sources[0].config
    device = resolve_device(config.device)
    data = create_dataset(config.dataset, config, device, splits=("test",))
    pictures: list[torch.Tensor] = []
    truth: list[dict] = []
    for batch, targets in data.test:
        pictures.extend(batch.cpu())
        truth.extend(targets)
        if len(pictures) >= images:
            break
    if not pictures:
        raise RunError(f"the evaluation split of {sources[0].run_dir}'s dataset holds no images")
    pictures, truth = pictures[:images], truth[:images]
    batch = torch.stack(pictures).to(device)

    columns = []
    for source in sources:
        model = build_model(source.config, data.num_classes).to(device)
        load_weights(model, source.file, device, source.config.model)
        found = [{k: v.cpu() for k, v in d.items()}
                 for d in detect(model, batch, conf=conf, iou=iou, max_det=MAX_BOXES)]
        named = prunable_parameters(model, source.config.include, source.config.exclude)
        ratio = global_sparsity(sparsity_report([n for n, _ in named],
                                                [p.detach() for _, p in named]))["compression"]
        _, prefix, label = WEIGHTS[source.weights]
        map50 = _read_map50(source.run_dir, prefix)
        score = "n/a" if map50 is None else f"{100 * map50:.1f}%"
        columns.append((f"{source.run_dir.name}: {label}\nmAP@0.5 {score} · {ratio:.1f}x",
                        found))
        del model
    ids = [f"image {t.get('image_id', i)}" for i, t in enumerate(truth)]
    return draw_detections(pictures, columns, truth, data.info.get("classes"), out,
                           row_labels=ids, title=f"score > {conf:g}; mAP@0.5 on the whole "
                                                 "evaluation split")


def cmd_draw(args: argparse.Namespace) -> int:
    from ..runs.rundir import check_output_path

    check_output_path(args.out)  # the picture format is checked by draw_runs
    path = draw_runs(args.run_dirs, args.out, images=args.images, weights=args.weights,
                     compare_dense=args.compare_dense, conf=args.conf, data_dir=args.data_dir,
                     allow_changed_sources=args.allow_changed_sources)
    print(f"wrote {path}")
    return 0
