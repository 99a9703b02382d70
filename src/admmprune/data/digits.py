"""A small real-image detection set made of real MNIST digits, written in COCO format.

Each canvas is a textured grey background (smooth low-frequency shading, a faint tint and
per-pixel noise) carrying 1-4 MNIST digits pasted at random scales and positions, either
light ink on a dark background or dark ink on a light one. The training images use MNIST's
training digits and the validation images its test digits, so no digit image is in both.
A digit's box is the tight bounding box of its ink after scaling: pixels of the scaled digit
below :data:`INK_THRESHOLD` are dropped before pasting, so every pixel a digit changes lies
inside its box and every edge of the box touches ink. A new digit is placed only where its
box overlaps every earlier box with IoU below ``max_iou`` (0.3) and its ink touches no earlier
digit's ink (so each stays legible); after 50 tries it is left out. Everything follows from
``seed``: the same arguments write the same files.

Layout (what the ``coco`` dataset reads)::

    OUT/train/000001.jpg ...          OUT/annotations/instances_train.json
    OUT/val/000001.jpg ...            OUT/annotations/instances_val.json
    OUT/README.txt                    how it was made

Classes are "0".."9" with category ids 1..10 (label = digit). Each annotation also records
``mnist_split`` and ``mnist_index``, the MNIST image it was drawn from.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..jsonfile import dumps
from .errors import DatasetError
from .mnist import MNIST, load_mnist

__all__ = ["INK_THRESHOLD", "render_canvas", "make_detection_set",
           "add_make_detection_set_arguments", "run_make_detection_set",
           "main_make_detection_set"]

INK_THRESHOLD = 0.15  # of a digit's scaled intensity (0-1): below it counts as no ink
MIN_DIGIT_PIXELS = 8
MAX_TRIES = 50


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    if len(others) == 0:
        return np.zeros(0)
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def _background(rng: np.random.Generator, canvas: int, light: bool) -> np.ndarray:
    """(canvas, canvas, 3) float32 0-255: a grey level, smooth shading, a tint, noise."""
    base = rng.uniform(145, 215) if light else rng.uniform(40, 110)
    coarse = rng.normal(0, 1, size=(6, 6)).astype(np.float32)
    shading = np.asarray(Image.fromarray(coarse, "F").resize((canvas, canvas),
                                                             Image.BICUBIC))
    tint = rng.uniform(-12, 12, size=3)
    noise = rng.normal(0, 8, size=(canvas, canvas, 3))
    pixels = base + 22 * shading[..., None] + tint + noise
    return pixels.astype(np.float32)


def render_canvas(rng: np.random.Generator, digits: np.ndarray, canvas: int = 128,
                  count: tuple[int, int] = (1, 4), digit_scale: tuple[float, float] = (0.15, 0.45),
                  max_iou: float = 0.3) -> tuple[np.ndarray, list[dict]]:
    """One image: (uint8 (canvas, canvas, 3) RGB, one dict per pasted digit with ``box``
    (x1, y1, x2, y2) pixel edges, ``index`` into ``digits`` and ``mask`` (canvas, canvas)
    bool of the pixels its ink changed; the masks of one canvas are disjoint).
    ``digits``: (N, 28, 28) uint8 MNIST images."""
    light = bool(rng.random() < 0.5)  # light background, dark ink
    pixels = _background(rng, canvas, light)
    wanted = int(rng.integers(count[0], count[1] + 1))
    placed: list[dict] = []
    boxes = np.zeros((0, 4))
    occupied = np.zeros((canvas, canvas), dtype=bool)  # ink already pasted
    for _ in range(wanted):
        index = int(rng.integers(len(digits)))
        side = max(MIN_DIGIT_PIXELS, int(round(rng.uniform(*digit_scale) * canvas)))
        side = min(side, canvas)
        alpha = np.asarray(Image.fromarray(digits[index]).resize((side, side), Image.BILINEAR),
                           dtype=np.float32) / 255.0
        alpha[alpha < INK_THRESHOLD] = 0
        rows, cols = np.nonzero(alpha)
        if len(rows) == 0:
            continue
        ink = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)
        ink_colour = (rng.uniform(0, 60) if light else rng.uniform(195, 255)) \
            + rng.uniform(-10, 10, size=3)
        for _try in range(MAX_TRIES):
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            box = ink + [x, y, x, y]
            if (not (_iou(box, boxes) >= max_iou).any()
                    and not (occupied[y:y + side, x:x + side] & (alpha > 0)).any()):
                break
        else:
            continue
        region = pixels[y:y + side, x:x + side]
        region[:] = region * (1 - alpha[..., None]) + ink_colour * alpha[..., None]
        mask = np.zeros((canvas, canvas), dtype=bool)
        mask[y:y + side, x:x + side] = alpha > 0
        occupied |= mask
        boxes = np.vstack([boxes, box])
        placed.append({"box": box, "index": index, "mask": mask})
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), placed


def _check_args(train_images: int, val_images: int, canvas: int, digits: Sequence[int],
                digit_scale: Sequence[float], seed: int) -> None:
    def positive_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not (positive_int(train_images) and positive_int(val_images)):
        raise DatasetError(f"train_images and val_images must be positive ints, got "
                           f"{train_images!r} and {val_images!r}")
    if not (isinstance(canvas, int) and not isinstance(canvas, bool) and canvas >= 32):
        raise DatasetError(f"canvas must be an int >= 32 (pixels), got {canvas!r}")
    if (len(digits) != 2 or not all(positive_int(d) for d in digits)
            or digits[0] > digits[1]):
        raise DatasetError(f"digits must be (min, max) counts with 1 <= min <= max, got "
                           f"{tuple(digits)!r}")
    if len(digit_scale) != 2 or not 0 < digit_scale[0] <= digit_scale[1] <= 1:
        raise DatasetError(f"digit_scale must be (min, max) fractions of the canvas with "
                           f"0 < min <= max <= 1, got {tuple(digit_scale)!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be a non-negative int, got {seed!r}")


def _pool(mnist_dir: str | os.PathLike[str] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST train and test digits as uint8 (N, 28, 28) with their labels."""
    data = load_mnist(mnist_dir, download=False)
    pool = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x,
                                                                data.test_y)):
        images = (x[:, 0] * MNIST.std + MNIST.mean) * 255  # undo load_mnist's normalisation
        pool[split] = (images.round().clamp(0, 255).to(torch.uint8)
                       .numpy(), y.numpy())
    return pool


def make_detection_set(out_dir: str | os.PathLike[str], *,
                       mnist_dir: str | os.PathLike[str] | None = None,
                       train_images: int = 800, val_images: int = 200, canvas: int = 128,
                       digits: tuple[int, int] = (1, 4),
                       digit_scale: tuple[float, float] = (0.15, 0.45), seed: int = 0,
                       overwrite: bool = False) -> Path:
    """Write the digit detection set (see the module docstring) to ``out_dir`` and return it.

    ``mnist_dir``: where MNIST's IDX files are (default: $ADMMPRUNE_DATA_DIR, then the cache;
    nothing is downloaded). ``train_images`` / ``val_images``: canvases per split;
    ``canvas``: their side in pixels; ``digits``: (min, max) digits per canvas;
    ``digit_scale``: (min, max) side of a pasted 28x28 digit as a fraction of the canvas;
    ``seed``: everything random; ``overwrite``: replace a set already in ``out_dir``."""
    digits, digit_scale = tuple(digits), tuple(digit_scale)
    _check_args(train_images, val_images, canvas, digits, digit_scale, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a directory; choose another --out.")
    if (out / "annotations").exists() and not overwrite:
        raise DatasetError(f"{out} already holds a detection set (annotations/); choose "
                           "another --out or pass overwrite=True (--overwrite).")
    pool = _pool(mnist_dir)
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    counts = {}
    for split_index, (split, n_images, source) in enumerate(
            (("train", train_images, "train"), ("val", val_images, "test"))):
        images_dir = out / split
        images_dir.mkdir(parents=True, exist_ok=True)
        pool_x, pool_y = pool[source]
        rng = np.random.default_rng([seed, split_index])
        images, annotations = [], []
        for image_id in range(1, n_images + 1):
            pixels, placed = render_canvas(rng, pool_x, canvas, digits, digit_scale)
            name = f"{image_id:06d}.jpg"
            Image.fromarray(pixels, "RGB").save(images_dir / name, format="JPEG", quality=95,
                                                 subsampling=0)
            images.append({"id": image_id, "file_name": name, "width": canvas,
                           "height": canvas})
            for digit in placed:
                x1, y1, x2, y2 = (int(v) for v in digit["box"])
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": int(pool_y[digit["index"]]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0, "mnist_split": source, "mnist_index": digit["index"]})
        counts[split] = (n_images, len(annotations))
        (out / "annotations").mkdir(exist_ok=True)
        document = {"info": {"description": "MNIST digits on textured canvases "
                                            "(admmprune make-detection-set)",
                             "version": "1", "year": 2024},
                    "licenses": [], "images": images, "annotations": annotations,
                    "categories": categories}
        with open(out / "annotations" / f"instances_{split}.json", "w",
                  encoding="utf-8") as file:
            file.write(dumps(document))
    (out / "README.txt").write_text(
        "Digit detection set written by admmprune.data.digits.make_detection_set\n"
        "(admmprune make-detection-set).\n\n"
        f"seed: {seed}\ncanvas: {canvas}x{canvas} pixels, RGB JPEG (quality 95, no chroma "
        "subsampling)\n"
        f"digits per canvas: {digits[0]}-{digits[1]}\n"
        f"digit side: {digit_scale[0]}-{digit_scale[1]} of the canvas\n"
        f"train: {counts['train'][0]} images, {counts['train'][1]} boxes, digits from "
        "MNIST's 60k training images\n"
        f"val: {counts['val'][0]} images, {counts['val'][1]} boxes, digits from MNIST's "
        "10k test images\n\n"
        "Each canvas is a grey background with smooth shading, a tint and noise, carrying\n"
        "MNIST digits pasted at random scales and positions (light on dark or dark on light).\n"
        "A box is the tight bounding box of the digit's ink (scaled intensity >= "
        f"{INK_THRESHOLD}); boxes of one canvas overlap with IoU < 0.3\n"
        "and no two digits' ink touches.\n"
        "COCO format: annotations/instances_{train,val}.json, images in train/ and val/;\n"
        "categories '0'..'9' have ids 1..10; each annotation names its MNIST source image\n"
        "(mnist_split, mnist_index). Train with the dataset `coco` and --data-dir this folder.\n",
        encoding="utf-8")
    return out


def add_make_detection_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``admmprune make-detection-set``."""
    parser.add_argument("--out", type=Path, required=True, help="folder to write the set to")
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="folder with MNIST's IDX files [default: $ADMMPRUNE_DATA_DIR, "
                             "then the cache; nothing is downloaded]")
    parser.add_argument("--train-images", type=int, default=800, help="training canvases "
                        "[800]")
    parser.add_argument("--val-images", type=int, default=200, help="validation canvases "
                        "[200]")
    parser.add_argument("--canvas", type=int, default=128, help="canvas side in pixels [128]")
    parser.add_argument("--digits", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"),
                        help="digits per canvas [1 4]")
    parser.add_argument("--digit-scale", type=float, nargs=2, default=(0.15, 0.45),
                        metavar=("MIN", "MAX"), help="digit side as a fraction of the canvas "
                        "[0.15 0.45]")
    parser.add_argument("--seed", type=int, default=0, help="random seed [0]")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a set already in --out")


def run_make_detection_set(args: argparse.Namespace) -> int:
    """Write the set the parsed ``args`` describe and print a one-line summary."""
    out = make_detection_set(args.out, mnist_dir=args.mnist_dir,
                             train_images=args.train_images, val_images=args.val_images,
                             canvas=args.canvas, digits=tuple(args.digits),
                             digit_scale=tuple(args.digit_scale), seed=args.seed,
                             overwrite=args.overwrite)
    print(f"wrote {out}: {args.train_images} training and {args.val_images} validation "
          f"images (COCO format; train with --dataset coco --data-dir {out})")
    return 0


def main_make_detection_set(argv: Sequence[str] | None = None) -> int:
    """``make-detection-set`` as a stand-alone command line (``argv`` without the program
    name); errors in the input end with exit code 2 and a message."""
    parser = argparse.ArgumentParser(prog="admmprune make-detection-set",
                                     description=__doc__.split("\n\n")[0])
    add_make_detection_set_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_make_detection_set(args)
    except DatasetError as err:
        print(f"admmprune make-detection-set: error: {err}", file=sys.stderr)
        return 2
