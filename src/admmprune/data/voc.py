"""Pascal VOC detection data: a VOCdevkit-style tree with ``JPEGImages/``,
``Annotations/<id>.xml`` and ``ImageSets/Main/{train,val,trainval,test}.txt``.

Labels are positions in :data:`VOC_CLASSES` (the standard order). VOC boxes are 1-based,
inclusive pixel coordinates; they become the batch contract's 0-based pixel edges as
(xmin - 1, ymin - 1, xmax, ymax), so a box covers exactly the pixels it named. Objects keep
their ``difficult`` flag (missing: False). Objects whose box is empty after that conversion
are skipped with a logged warning; an unknown class name, a missing or malformed XML file is
an error. ``image_id`` is the file id's digits as an integer (``000005`` -> 5,
``2008_000008`` -> 2008000008), or the position in the split's list when ids are not all
numeric or would collide.

The registered dataset ``voc`` looks in DATA_DIR for ``VOC2007/``, ``VOCdevkit/VOC2007/``,
then the same with 2012, or takes DATA_DIR itself when it holds ``Annotations/``; it trains
on ``trainval`` (``train`` when there is no trainval list) and evaluates on ``test``
(``val`` when there is no test list, as in VOC2012).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
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

__all__ = ["VOC_CLASSES", "VOCDetection", "read_voc_xml", "find_voc_root", "voc_split_file",
           "voc_splits"]

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
YEARS: tuple[str, ...] = ("2007", "2012")


def _text(element: ET.Element, tag: str, path: Path, where: str) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise DatasetError(f"{path}: {where} has no <{tag}>. Fix or replace the annotation "
                           "file (Pascal VOC XML).")
    return found.text.strip()


def _number(element: ET.Element, tag: str, path: Path, where: str) -> float:
    text = _text(element, tag, path, where)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{path}: {where} <{tag}> is {text!r}, not a number. Fix or "
                           "replace the annotation file.") from None


def read_voc_xml(path: str | os.PathLike[str], classes: Sequence[str] = VOC_CLASSES
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """(boxes (n, 4) float32 as 0-based pixel edges, labels (n,) int64, difficult (n,) bool,
    width, height, number of skipped empty boxes) of one VOC annotation file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist. Each image listed in "
                           "ImageSets/Main/<split>.txt needs Annotations/<id>.xml.")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: not valid XML ({exc}). Fix or replace the annotation "
                           "file.") from exc
    index = {name: k for k, name in enumerate(classes)}
    size = root.find("size")
    width = int(_number(size, "width", path, "<size>")) if size is not None else 0
    height = int(_number(size, "height", path, "<size>")) if size is not None else 0
    boxes, labels, difficult = [], [], []
    skipped = 0
    for n, obj in enumerate(root.iter("object")):
        where = f"object {n + 1}"
        name = _text(obj, "name", path, where)
        if name not in index:
            raise DatasetError(f"{path}: {where} has class {name!r}, which is not one of the "
                               f"{len(classes)} classes ({', '.join(classes)}).")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{path}: {where} has no <bndbox>. Fix or replace the "
                               "annotation file.")
        xmin, ymin, xmax, ymax = (_number(box, tag, path, f"{where} <bndbox>")
                                  for tag in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax
        if x2 <= x1 or y2 <= y1:
            skipped += 1
            continue
        flag = obj.find("difficult")
        boxes.append([x1, y1, x2, y2])
        labels.append(index[name])
        difficult.append(flag is not None and (flag.text or "0").strip() not in ("0", ""))
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool),
            width, height, skipped)


def find_voc_root(data_dir: str | os.PathLike[str], year: str | None = None) -> Path:
    """The VOC<year> folder under ``data_dir`` (see the module docstring for the search)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory {data_dir} does not exist or is not a directory.")
    years = (str(year),) if year is not None else YEARS
    candidates = [p for y in years for p in (data_dir / f"VOC{y}",
                                             data_dir / "VOCdevkit" / f"VOC{y}")]
    candidates.append(data_dir)
    for candidate in candidates:
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets").is_dir():
            return candidate
    raise DatasetError(
        f"{data_dir} holds no Pascal VOC tree: looked for Annotations/ and ImageSets/ in "
        f"{', '.join(str(c) for c in candidates)}. Pass the VOCdevkit folder (or VOC2007/ "
        "itself) as data_dir.")


def voc_split_file(root: Path, *names: str) -> Path:
    """The first of ``ImageSets/Main/<name>.txt`` that exists."""
    for name in names:
        path = root / "ImageSets" / "Main" / f"{name}.txt"
        if path.is_file():
            return path
    raise DatasetError(f"{root}/ImageSets/Main/ has none of "
                       f"{', '.join(n + '.txt' for n in names)}.")


def _image_ids(names: list[str]) -> list[int]:
    try:
        ids = [int(name.replace("_", "")) for name in names]
    except ValueError:
        return list(range(len(names)))
    return ids if len(set(ids)) == len(ids) else list(range(len(names)))


class VOCDetection(DetectionDataset):
    """The images listed in ``root/ImageSets/Main/<split>.txt`` of a VOC<year> folder."""

    def __init__(self, root: str | os.PathLike[str], split: str, *, train: bool,
                 classes: Sequence[str] = VOC_CLASSES, image_size: int = DEFAULT_IMAGE_SIZE,
                 flip: float = 0.0, hsv: float = 0.0, scale_jitter: float = 0.0,
                 seed: int = 0) -> None:
        root = Path(root)
        list_file = voc_split_file(root, split)
        with open(list_file, encoding="utf-8") as file:
            # a line may carry a second column (per-class lists); the id comes first
            names = [line.split()[0] for line in file if line.strip()]
        if not names:
            raise DatasetError(f"{list_file} lists no images.")
        images, skipped = [], 0
        for name, image_id in zip(names, _image_ids(names), strict=True):
            boxes, labels, difficult, width, height, bad = read_voc_xml(
                root / "Annotations" / f"{name}.xml", classes)
            skipped += bad
            images.append(ImageAnnotation(f"{name}.jpg", image_id, boxes, labels, difficult,
                                          width, height))
        if skipped:
            log.warning("%s: skipped %d object(s) with an empty box", list_file, skipped)
        self.split = split
        super().__init__(root / "JPEGImages", images, classes, train=train,
                         image_size=image_size, flip=flip, hsv=hsv, scale_jitter=scale_jitter,
                         seed=seed)


def voc_splits(data_dir: str | os.PathLike[str], year: str | None = None, **kwargs: Any
               ) -> tuple[VOCDetection, VOCDetection]:
    """(trainval with augmentation, test without) of a VOC tree, with the fallbacks of the
    module docstring; ``kwargs`` go to :class:`VOCDetection`."""
    root = find_voc_root(data_dir, year)
    return (VOCDetection(root, voc_split_file(root, "trainval", "train").stem, train=True,
                         **kwargs),
            VOCDetection(root, voc_split_file(root, "test", "val").stem, train=False,
                         **kwargs))


@register_dataset("voc", "Pascal VOC detection (VOCdevkit/VOC2007 or 2012: JPEGImages, "
                         "Annotations XML, ImageSets/Main): trainval / test, 20 classes, "
                         "letterboxed", task="detection")
def _voc_splits(options, device, splits):
    if not options.data_dir:
        raise DatasetError("dataset voc needs data_dir (--data-dir DIR): the VOCdevkit folder "
                           "or a VOC2007/ folder with JPEGImages/, Annotations/, ImageSets/")
    root = find_voc_root(options.data_dir)
    kwargs = detection_options(options)
    train = (VOCDetection(root, voc_split_file(root, "trainval", "train").stem, train=True,
                          **kwargs) if "train" in splits else None)
    test = (VOCDetection(root, voc_split_file(root, "test", "val").stem, train=False,
                         **kwargs) if "test" in splits else None)
    return detection_splits(train, test, options, device)
