"""COCO-format detection data: an annotation JSON (``images``, ``annotations`` with ``bbox``
[x, y, w, h] in pixels, ``category_id``, ``iscrowd``; ``categories``) and an image folder.

Category ids are mapped to contiguous labels 0..C-1 in sorted category-id order, and
``classes`` are the category names in that order (COCO's 80 ids 1..90 become 0..79). Images
are ordered by image id, and a target's ``image_id`` is the JSON's id, so predictions can be
matched to the same JSON by pycocotools. Crowd annotations (``iscrowd: 1``) are kept with
``difficult`` True; the task decides whether to train on them. Annotations whose box has a
non-positive width or height are skipped with a logged warning (real COCO has a handful);
annotations naming an image or a category that the file does not define are errors. Boxes
reaching past the image are clipped to it.

The registered dataset ``coco`` reads ``DATA_DIR/annotations/instances_{train,val}.json``
with images in ``DATA_DIR/{train,val}/``, or the 2017 release's names
``instances_{train,val}2017.json`` with ``{train,val}2017/``; the evaluation split is val.
:func:`~admmprune.data.digits.make_detection_set` writes the first layout.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .detection import (
    DEFAULT_IMAGE_SIZE,
    DetectionDataset,
    ImageAnnotation,
    detection_options,
    detection_splits,
)
from .errors import DatasetError
from .registry import register_dataset

__all__ = ["CocoDetection", "read_coco", "find_coco_split", "coco_splits"]

log = logging.getLogger(__name__)


def _fail(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{path}: {what}. Fix or replace the annotation file (COCO format: "
                        "images, annotations with bbox [x, y, w, h] and category_id, "
                        "categories).")


def _records(data: dict, key: str, path: Path, fields: tuple[str, ...]) -> list[dict]:
    records = data.get(key)
    if not isinstance(records, list):
        raise _fail(path, f"no {key!r} list")
    for n, record in enumerate(records):
        if not isinstance(record, dict) or any(f not in record for f in fields):
            raise _fail(path, f"{key}[{n}] must be an object with {', '.join(fields)}, got "
                              f"{str(record)[:120]}")
    return records


def _int_id(value: Any, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"{where} must be an integer, got {value!r}")
    return value


def read_coco(path: str | os.PathLike[str]) -> tuple[list[str], list[int], list[ImageAnnotation]]:
    """(class names, their category ids, one :class:`ImageAnnotation` per image sorted by
    image id) of a COCO annotation file; labels are positions in the sorted category ids."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be an object")

    categories = _records(data, "categories", path, ("id", "name"))
    names_by_id: dict[int, str] = {}
    for n, cat in enumerate(categories):
        cid = _int_id(cat["id"], path, f"categories[{n}].id")
        if cid in names_by_id:
            raise _fail(path, f"category id {cid} is defined twice")
        names_by_id[cid] = str(cat["name"])
    if not names_by_id:
        raise _fail(path, "the categories list is empty")
    category_ids = sorted(names_by_id)
    label_of = {cid: label for label, cid in enumerate(category_ids)}

    images = _records(data, "images", path, ("id", "file_name"))
    by_id: dict[int, dict] = {}
    for n, image in enumerate(images):
        iid = _int_id(image["id"], path, f"images[{n}].id")
        if iid in by_id:
            raise _fail(path, f"image id {iid} is defined twice")
        by_id[iid] = image

    boxes: dict[int, list[list[float]]] = {iid: [] for iid in by_id}
    labels: dict[int, list[int]] = {iid: [] for iid in by_id}
    crowd: dict[int, list[bool]] = {iid: [] for iid in by_id}
    skipped = 0
    annotations = _records(data, "annotations", path, ("image_id", "bbox", "category_id"))
    for n, ann in enumerate(annotations):
        iid = _int_id(ann["image_id"], path, f"annotations[{n}].image_id")
        cid = _int_id(ann["category_id"], path, f"annotations[{n}].category_id")
        if iid not in by_id:
            raise _fail(path, f"annotations[{n}] refers to image id {iid!r}, which is not in "
                              "the images list")
        if cid not in label_of:
            raise _fail(path, f"annotations[{n}] refers to category id {cid!r}, which is not "
                              "in the categories list")
        bbox = ann["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in bbox) or not np.isfinite(bbox).all()):
            raise _fail(path, f"annotations[{n}].bbox must be 4 finite numbers [x, y, w, h], "
                              f"got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            skipped += 1
            continue
        boxes[iid].append([x, y, x + w, y + h])
        labels[iid].append(label_of[cid])
        crowd[iid].append(bool(ann.get("iscrowd", 0)))
    if skipped:
        log.warning("%s: skipped %d annotation(s) whose box has a non-positive width or "
                    "height", path, skipped)

    result = []
    for iid in sorted(by_id):
        image = by_id[iid]
        result.append(ImageAnnotation(
            file=str(image["file_name"]), image_id=iid,
            boxes=np.asarray(boxes[iid], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels[iid], dtype=np.int64),
            difficult=np.asarray(crowd[iid], dtype=bool),
            width=int(image.get("width") or 0), height=int(image.get("height") or 0)))
    return [names_by_id[cid] for cid in category_ids], category_ids, result


class CocoDetection(DetectionDataset):
    """The images of one COCO annotation file, read from ``image_dir``."""

    def __init__(self, annotation_file: str | os.PathLike[str],
                 image_dir: str | os.PathLike[str], *, train: bool,
                 image_size: int = DEFAULT_IMAGE_SIZE, flip: float = 0.0, hsv: float = 0.0,
                 scale_jitter: float = 0.0, seed: int = 0) -> None:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise DatasetError(f"image folder {image_dir} (for {annotation_file}) does not "
                               "exist or is not a directory.")
        classes, self.category_ids, images = read_coco(annotation_file)
        if not images:
            raise DatasetError(f"{annotation_file} lists no images.")
        self.annotation_file = Path(annotation_file)
        super().__init__(image_dir, images, classes, train=train, image_size=image_size,
                         flip=flip, hsv=hsv, scale_jitter=scale_jitter, seed=seed)


def find_coco_split(data_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of ``split`` (train / val) under ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory {data_dir} does not exist or is not a directory.")
    tried = []
    for suffix in ("", "2017"):
        annotations = data_dir / "annotations" / f"instances_{split}{suffix}.json"
        images = data_dir / f"{split}{suffix}"
        if annotations.is_file():
            return annotations, images
        tried.append(f"annotations/{annotations.name} with {images.name}/")
    raise DatasetError(
        f"{data_dir} has no COCO {split} split: looked for {' or '.join(tried)}. "
        "`admmprune make-detection-set --out DIR` writes a small set in this layout.")


def coco_splits(data_dir: str | os.PathLike[str], **kwargs: Any
                ) -> tuple[CocoDetection, CocoDetection]:
    """(train with augmentation, val without) of a COCO-layout ``data_dir``; ``kwargs`` go
    to :class:`CocoDetection` (image_size, flip, hsv, scale_jitter, seed)."""
    train = CocoDetection(*find_coco_split(data_dir, "train"), train=True, **kwargs)
    val = CocoDetection(*find_coco_split(data_dir, "val"), train=False, **kwargs)
    return train, val


@register_dataset("coco", "COCO-format detection: DATA_DIR/annotations/instances_{train,val}"
                          "[2017].json + DATA_DIR/{train,val}[2017]/ images, letterboxed "
                          "(also what make-detection-set writes)", task="detection")
def _coco_splits(options, device, splits):
    if not options.data_dir:
        raise DatasetError("dataset coco needs data_dir (--data-dir DIR) holding "
                           "annotations/instances_train.json, instances_val.json and the "
                           "train/ and val/ image folders")
    kwargs = detection_options(options)
    train = (CocoDetection(*find_coco_split(options.data_dir, "train"), train=True, **kwargs)
             if "train" in splits else None)
    test = (CocoDetection(*find_coco_split(options.data_dir, "val"), train=False, **kwargs)
            if "test" in splits else None)
    return detection_splits(train, test, options, device)
