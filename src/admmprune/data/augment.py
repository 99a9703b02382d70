"""Batch augmentation on in-memory image tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_shift", "RandomShift", "takes_shift", "replace_shift"]


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator
                 ) -> torch.Tensor:
    """Translate every image of an (N, C, H, W) batch by its own random offset in
    [-max_shift, max_shift] pixels along each axis; the uncovered border takes the batch's
    minimum (the background of normalised MNIST)."""
    if max_shift <= 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=float(images.amin()))
    span = 2 * max_shift + 1
    dy = torch.randint(span, (n,), generator=generator).to(images.device)
    dx = torch.randint(span, (n,), generator=generator).to(images.device)
    rows = dy[:, None] + torch.arange(height, device=images.device)[None, :]
    cols = dx[:, None] + torch.arange(width, device=images.device)[None, :]
    # gather one window per image: index (n, c, rows, cols) with broadcasting
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class RandomShift:
    """A seeded ``random_shift`` for ``TensorBatches(transform=...)``.

    The offsets of an epoch depend on (seed, epoch) only (``set_epoch`` reseeds), so a run
    resumed at any epoch shifts its images exactly as the uninterrupted run did."""

    def __init__(self, max_shift: int, seed: int = 0) -> None:
        self.max_shift = max_shift
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return random_shift(images, self.max_shift, self.generator)


def takes_shift(batches) -> bool:
    """Whether ``replace_shift`` can change these training batches' augmentation."""
    transform = getattr(batches, "transform", "missing")
    return transform is None or isinstance(transform, RandomShift)


def replace_shift(batches, max_shift: int, seed: int) -> None:
    """Give in-memory training batches (``TensorBatches``) a new ``RandomShift`` (0: none)
    from the next epoch on; offsets still follow (seed, epoch), so resuming stays exact.

    Raises ValueError for batches that do not augment through a ``transform`` of this kind
    (streaming datasets, other augmentations)."""
    if not takes_shift(batches):
        raise ValueError(f"{type(batches).__name__} does not take a random shift (only the "
                         "in-memory datasets such as mnist and fashion-mnist do)")
    batches.transform = RandomShift(max_shift, seed) if max_shift > 0 else None
