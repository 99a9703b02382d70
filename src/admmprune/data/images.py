"""Image files as map-style datasets: decoding, Caffe / standard preprocessing, and a
base dataset whose random augmentation depends only on (seed, epoch, index).

The augmentation of example ``i`` in epoch ``e`` is drawn from a numpy Generator seeded with
``[seed, e, i]``, built inside ``__getitem__``. So an epoch produces the same crops whatever
the number of DataLoader workers and whatever order they fetch in, and a resumed run repeats
the epoch it stopped in. The epoch lives in a shared-memory tensor, so :meth:`set_epoch`
also reaches DataLoader workers that outlive one epoch (``persistent_workers=True``) as
long as it is called before ``iter(loader)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError

__all__ = [
    "CAFFE_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "PREPROCESS",
    "CaffeTransform",
    "StandardTransform",
    "ImageFiles",
    "load_image",
    "check_seed",
    "make_transform",
]

# Per-channel mean of ILSVRC2012 in Caffe's BGR order, 0-255 (what bvlc_alexnet expects).
CAFFE_MEAN_BGR: tuple[float, float, float] = (104.0, 117.0, 123.0)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, 0-1
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif",
                                     ".tiff", ".gif")
PREPROCESS: tuple[str, ...] = ("caffe", "standard")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file with Pillow as RGB (greyscale, CMYK, palette and alpha images
    are converted; alpha is dropped). The format is detected from the content, so a PNG
    named .JPEG still loads. Raises :class:`DatasetError` naming the file when it cannot
    be read or decoded (missing, truncated, not an image)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc}). Replace or delete "
            "the file (it is corrupt, truncated or not an image)."
        ) from exc


def _check_sizes(resize: int, crop: int) -> None:
    for name, value in (("resize", resize), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")


def _resized_hwc(image: Image.Image, size: int) -> torch.Tensor:
    """(size, size, 3) float32 RGB 0-255, the whole image warped to a square (aspect not
    kept, as Caffe's convert_imageset does). Bilinear with half-pixel centres and no
    antialiasing, i.e. OpenCV's INTER_LINEAR that built Caffe's ImageNet LMDBs, then
    rounded to uint8 values as stored there."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels.to(torch.float32)
    chw = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    out = F.interpolate(chw, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=False)
    return out[0].round_().clamp_(0, 255).permute(1, 2, 0)


class _SquareCrop:
    """Warp to ``resize`` x ``resize``, then crop ``crop`` x ``crop``: random position and
    random horizontal mirror when ``train``, the centre otherwise (offset
    ``(resize - crop) // 2``, Caffe's rounding)."""

    def __init__(self, resize: int = 256, crop: int = 227, *, train: bool) -> None:
        _check_sizes(resize, crop)
        self.resize = resize
        self.crop = crop
        self.train = train

    def crop_params(self, rng: np.random.Generator | None) -> tuple[int, int, bool]:
        """(top, left, mirror) of the crop; ``rng`` is only used when training."""
        if not self.train:
            offset = (self.resize - self.crop) // 2
            return offset, offset, False
        if rng is None:
            raise ValueError("a training transform needs a random generator")
        span = self.resize - self.crop + 1
        top, left = (int(v) for v in rng.integers(0, span, size=2))
        return top, left, bool(rng.integers(0, 2))

    def _hwc(self, image: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
        pixels = _resized_hwc(image, self.resize)
        top, left, mirror = self.crop_params(rng)
        pixels = pixels[top:top + self.crop, left:left + self.crop]
        return pixels.flip(1) if mirror else pixels

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resize={self.resize}, crop={self.crop}, "
                f"train={self.train})")


class CaffeTransform(_SquareCrop):
    """What Caffe-trained ImageNet models (bvlc_alexnet.npy) expect: BGR channel order,
    values 0-255 minus the per-channel mean (B, G, R) = (104, 117, 123), float32
    (3, crop, crop)."""

    def __init__(self, resize: int = 256, crop: int = 227, *, train: bool,
                 mean_bgr: Sequence[float] = CAFFE_MEAN_BGR) -> None:
        super().__init__(resize, crop, train=train)
        self.mean_bgr = torch.tensor(mean_bgr, dtype=torch.float32)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None
                 ) -> torch.Tensor:
        bgr = self._hwc(image, rng).flip(2) - self.mean_bgr
        return bgr.permute(2, 0, 1).contiguous()


class StandardTransform(_SquareCrop):
    """RGB in 0-1 normalised by ``mean`` / ``std`` (ImageNet's by default), float32
    (3, crop, crop); same warp and crops as :class:`CaffeTransform`."""

    def __init__(self, resize: int = 256, crop: int = 224, *, train: bool,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(resize, crop, train=train)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None
                 ) -> torch.Tensor:
        rgb = (self._hwc(image, rng) / 255.0 - self.mean) / self.std
        return rgb.permute(2, 0, 1).contiguous()


def make_transform(preprocess: str, *, train: bool, resize: int = 256, crop: int = 227
                   ) -> CaffeTransform | StandardTransform:
    """``"caffe"`` -> :class:`CaffeTransform`, ``"standard"`` -> :class:`StandardTransform`."""
    if preprocess == "caffe":
        return CaffeTransform(resize, crop, train=train)
    if preprocess == "standard":
        return StandardTransform(resize, crop, train=train)
    raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


class ImageFiles(Dataset):
    """Map-style dataset over image files with integer labels.

    ``files`` are paths relative to ``root``; they are kept in one numpy bytes array rather
    than a list of Python strings, so DataLoader workers do not copy ~100 MB of refcounted
    objects for ImageNet's 1.28M files. ``__getitem__(i)`` returns (float32 (3, crop, crop),
    label).
    """

    def __init__(self, root: str | os.PathLike[str], files: Sequence[str], targets: Sequence[int],
                 classes: Sequence[str],
                 transform: Callable[[Image.Image, np.random.Generator | None], torch.Tensor],
                 *, seed: int = 0) -> None:
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        check_seed(seed)
        self.root = Path(root)
        self._files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.transform = transform
        self.seed = seed
        # Shared memory: workers forked (or pickled) from this dataset see later set_epoch().
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s augmentation from now on (call before ``iter(loader)``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch[0] = epoch

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self._files[index])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.transform(load_image(self.path(index)), rng), self.targets[index]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
                f"classes={len(self.classes)}, transform={self.transform!r})")
