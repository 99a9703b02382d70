"""What every object-detection dataset shares: letterboxing with boxes that follow the
pixels, training augmentation, the batch collate function, and the base dataset class.

The batch contract (the detection task relies on exactly this): an item is ``(image,
target)``; ``image`` is float32 (3, S, S), RGB in [0, 1], letterboxed to S x S; ``target``
is a dict with ``"boxes"`` float32 (n, 4) as x1, y1, x2, y2 in pixels of the S x S input,
``"labels"`` int64 (n,) in 0..C-1, ``"image_id"`` int (unique within the split, stable) and
``"difficult"`` bool (n,) (VOC's difficult flag, COCO's iscrowd). ``n`` may be 0.
:func:`detection_collate` stacks the images and keeps the targets as a list.

Coordinates are continuous pixel-edge coordinates: a box (x1, y1, x2, y2) covers the pixels
with x1 <= column < x2 and y1 <= row < y2, so a 1-pixel box is (c, r, c + 1, r + 1). Under
that convention a resize by (sx, sy) maps x -> x * sx exactly (Pillow's resampling uses
half-pixel centres), and a horizontal flip maps x -> W - x.

Letterbox: the image is scaled so that its longer side is S (aspect kept; the shorter side is
rounded to whole pixels, and the boxes are scaled by the per-axis factor actually applied),
then placed centred on an S x S canvas of grey 0.5 (the mid-point of [0, 1]; darknet uses 0.5
too, ultralytics 114/255). Padding offsets are whole pixels, so nothing is resampled twice.

Augmentation (training splits only; each is off at 0): a horizontal flip with probability
``flip``; saturation and value multiplied by factors in [1 - hsv, 1 + hsv] and hue shifted by
up to ``hsv`` x 36 degrees (a tenth of the circle per unit: with ``hsv: 1`` the hue moves up
to 0.1 of the circle as in darknet's default, where a shift of a full ``hsv`` turn would
recolour objects beyond recognition); a rescale by a factor in [1 - scale_jitter,
1 + scale_jitter] of the letterbox scale, placed at a random whole-pixel offset (padded with
grey when smaller than S, cropped when larger). Boxes are clipped to the canvas; in training a
box is dropped when less than ``min_visible`` (20%) of its area stays visible or when it is
narrower or lower than ``min_size`` (2) pixels. Evaluation splits only clip and never drop.
Random numbers come from a numpy Generator seeded with (seed, epoch, index) by
:class:`~admmprune.data.images.ImageFiles`, and all of them are drawn whatever the settings,
so turning one augmentation on does not change the draws of the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from .errors import DatasetError
from .images import ImageFiles, load_image

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "LETTERBOX_FILL",
    "HUE_RANGE",
    "ImageAnnotation",
    "Placement",
    "DetectionTransform",
    "DetectionDataset",
    "letterbox",
    "unletterbox_boxes",
    "flip_boxes",
    "hsv_jitter",
    "detection_collate",
    "detection_options",
]

DEFAULT_IMAGE_SIZE = 416
LETTERBOX_FILL = 0.5
HUE_RANGE = 0.1  # hue shift, in turns of the colour circle, per unit of ``hsv``


class Placement(NamedTuple):
    """Where a source image went on the S x S canvas: ``x_canvas = x * scale_x + pad_x``
    (likewise y). Pads are whole pixels, negative when the image was cropped."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


@dataclass(frozen=True)
class ImageAnnotation:
    """One image of a detection split as read from its annotation file: ``boxes`` (n, 4)
    float32 x1, y1, x2, y2 in pixels of the original image, ``labels`` (n,) int64 in
    0..C-1, ``difficult`` (n,) bool; ``width`` / ``height`` as recorded (0: unknown), checked
    against the decoded image."""

    file: str
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int = 0
    height: int = 0


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive int, got {size!r}")


def _as_boxes(boxes: Any) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {boxes.shape}")
    return boxes


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes of an image of ``width`` pixels after a horizontal mirror."""
    boxes = _as_boxes(boxes)
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def hsv_jitter(image: Image.Image, hue: float, saturation: float, value: float
               ) -> Image.Image:
    """``image`` with its hue shifted by ``hue`` turns and saturation / value multiplied by
    the given factors (Pillow's 8-bit HSV)."""
    if hue == 0 and saturation == 1 and value == 1:
        return image
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue * 256.0, 256.0)
    hsv[..., 1] *= saturation
    hsv[..., 2] *= value
    pixels = np.clip(np.rint(hsv), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "HSV").convert("RGB")


def _place(image: Image.Image, boxes: np.ndarray, size: int, scale: float,
           offset: tuple[int, int] | None, rng: np.random.Generator | None = None,
           ) -> tuple[torch.Tensor, np.ndarray, Placement]:
    """Resize ``image`` by ``scale`` (rounded to whole pixels per axis) and put it on a grey
    ``size`` x ``size`` canvas at ``offset`` (centred when None; random when ``rng``)."""
    width, height = image.size
    new_w = max(1, int(round(width * scale)))
    new_h = max(1, int(round(height * scale)))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    if offset is None:
        offset = ((size - new_w) // 2, (size - new_h) // 2)
    pad_x, pad_y = offset
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    canvas = torch.full((3, size, size), LETTERBOX_FILL, dtype=torch.float32)
    # the part of the resized image that lands on the canvas
    x0, y0 = max(0, pad_x), max(0, pad_y)
    x1, y1 = min(size, pad_x + new_w), min(size, pad_y + new_h)
    if x1 > x0 and y1 > y0:
        patch = pixels[y0 - pad_y:y1 - pad_y, x0 - pad_x:x1 - pad_x]
        canvas[:, y0:y1, x0:x1] = patch.permute(2, 0, 1).to(torch.float32) / 255.0
    placement = Placement(new_w / width, new_h / height, pad_x, pad_y)
    boxes = _as_boxes(boxes).copy()
    boxes[:, 0::2] = boxes[:, 0::2] * placement.scale_x + pad_x
    boxes[:, 1::2] = boxes[:, 1::2] * placement.scale_y + pad_y
    return canvas, boxes, placement


def letterbox(image: Image.Image, boxes: Any = None, size: int = DEFAULT_IMAGE_SIZE
              ) -> tuple[torch.Tensor, np.ndarray, Placement]:
    """(float32 (3, size, size) RGB in [0, 1], boxes on that canvas, placement) of a Pillow
    RGB image: longer side scaled to ``size``, centred on grey :data:`LETTERBOX_FILL`.
    ``boxes`` (n, 4) x1, y1, x2, y2 in pixels of ``image``; they are clipped to the image."""
    _check_size(size)
    width, height = image.size
    boxes = _clip(_as_boxes(np.zeros((0, 4)) if boxes is None else boxes), width, height)
    return _place(image, boxes, size, size / max(width, height), None)


def unletterbox_boxes(boxes: Any, placement: Placement) -> np.ndarray:
    """Boxes on the canvas back in pixels of the original image (e.g. predictions)."""
    out = _as_boxes(boxes).astype(np.float64)
    out[:, 0::2] = (out[:, 0::2] - placement.pad_x) / placement.scale_x
    out[:, 1::2] = (out[:, 1::2] - placement.pad_y) / placement.scale_y
    return out.astype(np.float32)


def _clip(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0,
                                                                   None)


class DetectionTransform:
    """Decoded image + boxes -> letterboxed tensor + boxes (+ which boxes survived).

    ``train=False``: the plain :func:`letterbox`. ``train=True``: flip, HSV and scale
    jitter as set (see the module docstring), drawn from the ``rng`` passed in."""

    def __init__(self, size: int = DEFAULT_IMAGE_SIZE, *, train: bool, flip: float = 0.0,
                 hsv: float = 0.0, scale_jitter: float = 0.0, min_size: float = 2.0,
                 min_visible: float = 0.2) -> None:
        _check_size(size)
        for name, value, high in (("flip", flip, 1.0), ("hsv", hsv, 1.0),
                                  ("scale_jitter", scale_jitter, 0.99)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= high:
                raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")
        self.size = size
        self.train = train
        self.flip = float(flip)
        self.hsv = float(hsv)
        self.scale_jitter = float(scale_jitter)
        self.min_size = float(min_size)
        self.min_visible = float(min_visible)

    def __call__(self, image: Image.Image, boxes: Any, rng: np.random.Generator | None = None
                 ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(image tensor, kept boxes, indices of the kept input boxes)."""
        width, height = image.size
        boxes = _clip(_as_boxes(boxes), width, height)
        if not self.train:
            tensor, placed, _ = _place(image, boxes, self.size,
                                       self.size / max(width, height), None)
            return tensor, _clip(placed, self.size, self.size), np.arange(len(boxes))
        if rng is None:
            raise ValueError("a training transform needs a random generator")
        # Every draw happens whatever the settings (see the module docstring).
        u_flip, u_hue, u_sat, u_val, u_scale, u_x, u_y = rng.random(7)
        if u_flip < self.flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = flip_boxes(boxes, width)
        scale = self.size / max(width, height) * (1 + self.scale_jitter * (2 * u_scale - 1))
        new_w = max(1, int(round(width * scale)))
        new_h = max(1, int(round(height * scale)))
        if self.scale_jitter > 0:
            offset = (_offset(self.size - new_w, u_x), _offset(self.size - new_h, u_y))
        else:
            offset = None
        if self.hsv > 0:
            image = hsv_jitter(image, HUE_RANGE * self.hsv * (2 * u_hue - 1),
                               1 + self.hsv * (2 * u_sat - 1), 1 + self.hsv * (2 * u_val - 1))
        tensor, placed, _ = _place(image, boxes, self.size, scale, offset)
        clipped = _clip(placed, self.size, self.size)
        keep = ((clipped[:, 2] - clipped[:, 0] >= self.min_size)
                & (clipped[:, 3] - clipped[:, 1] >= self.min_size)
                & (_area(clipped) >= self.min_visible * _area(placed)))
        return tensor, clipped[keep], np.flatnonzero(keep)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, train={self.train}, flip={self.flip}, "
                f"hsv={self.hsv}, scale_jitter={self.scale_jitter})")


def _offset(slack: int, u: float) -> int:
    """A whole-pixel offset in [min(0, slack), max(0, slack)] from a uniform ``u``."""
    low, high = min(0, slack), max(0, slack)
    return low + min(int(u * (high - low + 1)), high - low)


class DetectionDataset(ImageFiles):
    """Images with boxes, as a map-style dataset following the batch contract.

    Built on :class:`ImageFiles` (file storage, ``set_epoch`` shared with workers, the
    (seed, epoch, index) generator); its ``targets`` are the image ids. The annotations of
    all images are kept in a few concatenated numpy arrays rather than one small array per
    image, so DataLoader workers do not copy-on-access hundreds of thousands of objects.
    """

    def __init__(self, root: str | os.PathLike[str], images: Sequence[ImageAnnotation],
                 classes: Sequence[str], *, train: bool, image_size: int = DEFAULT_IMAGE_SIZE,
                 flip: float = 0.0, hsv: float = 0.0, scale_jitter: float = 0.0,
                 seed: int = 0) -> None:
        transform = DetectionTransform(image_size, train=train, flip=flip, hsv=hsv,
                                       scale_jitter=scale_jitter)
        ids = [int(a.image_id) for a in images]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{root}: image ids are not unique within the split")
        super().__init__(root, [a.file for a in images], ids, classes, transform, seed=seed)
        self.train = train
        self.image_size = image_size
        counts = [len(a.boxes) for a in images]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        parts = [_as_boxes(a.boxes) for a in images]
        self._boxes = np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)
        self._labels = np.concatenate([np.asarray(a.labels, np.int64).reshape(-1)
                                       for a in images] or [np.zeros(0, np.int64)])
        self._difficult = np.concatenate([np.asarray(a.difficult, bool).reshape(-1)
                                          for a in images] or [np.zeros(0, bool)])
        if not len(self._boxes) == len(self._labels) == len(self._difficult):
            raise ValueError("every image needs as many labels and difficult flags as boxes")
        if len(self._labels) and not 0 <= self._labels.min() <= self._labels.max() < len(classes):
            raise ValueError(f"labels must lie in 0..{len(classes) - 1}")
        self._sizes = np.array([(a.width, a.height) for a in images], dtype=np.int64
                               ).reshape(-1, 2)

    @property
    def image_ids(self) -> list[int]:
        return self.targets

    def annotation(self, index: int) -> ImageAnnotation:
        """Image ``index``'s boxes etc. in pixels of the original image (no transform)."""
        lo, hi = self._offsets[index], self._offsets[index + 1]
        return ImageAnnotation(os.fsdecode(self._files[index]), self.targets[index],
                               self._boxes[lo:hi].copy(), self._labels[lo:hi].copy(),
                               self._difficult[lo:hi].copy(), int(self._sizes[index, 0]),
                               int(self._sizes[index, 1]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        path = self.path(index)
        image = load_image(path)
        width, height = self._sizes[index]
        if width and height and image.size != (width, height):
            raise DatasetError(
                f"{path}: the image is {image.size[0]}x{image.size[1]} pixels but its "
                f"annotation says {width}x{height}, so its boxes would be misplaced. Replace "
                "the image or correct the annotation file.")
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        lo, hi = self._offsets[index], self._offsets[index + 1]
        tensor, boxes, kept = self.transform(image, self._boxes[lo:hi], rng)
        kept = kept + lo
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
                  "labels": torch.from_numpy(self._labels[kept].copy()),
                  "image_id": self.targets[index],
                  "difficult": torch.from_numpy(self._difficult[kept].copy())}
        return tensor, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
                f"boxes={len(self._boxes)}, classes={len(self.classes)}, "
                f"transform={self.transform!r})")


def detection_collate(items: Sequence[tuple[torch.Tensor, dict]]
                      ) -> tuple[torch.Tensor, list[dict]]:
    """(images stacked to (B, 3, S, S), list of the B target dicts)."""
    if not items:
        raise ValueError("detection_collate needs at least one item")
    shapes = {tuple(image.shape) for image, _ in items}
    if len(shapes) != 1:
        raise ValueError(f"images of one batch must share a shape, got {sorted(shapes)}")
    return torch.stack([image for image, _ in items]), [target for _, target in items]


def detection_options(options: Any) -> dict:
    """Keyword arguments of a detection dataset from a run's config."""
    return {"image_size": options.image_size or DEFAULT_IMAGE_SIZE, "flip": options.flip,
            "hsv": options.hsv, "scale_jitter": options.scale_jitter, "seed": options.seed}


def detection_splits(train: DetectionDataset | None, test: DetectionDataset | None, options,
                     device: torch.device):
    """:func:`~admmprune.data.loader.stream_splits` with :func:`detection_collate`, after
    checking that both splits name the same classes."""
    from .loader import stream_splits

    if train is not None and test is not None and list(train.classes) != list(test.classes):
        raise DatasetError(
            f"the training split ({train.root}) and the evaluation split ({test.root}) name "
            f"different classes ({len(train.classes)} vs {len(test.classes)}); a label "
            "index must mean the same class in both.")
    splits = stream_splits(train, test, options, device, collate_fn=detection_collate)
    size = options.image_size or DEFAULT_IMAGE_SIZE
    splits.info["input_shape"] = (3, size, size)  # stream_splits' default is 227
    return splits
