"""A tiny dataset of your own: 16x16 colour images of four kinds of stripes, with noise.

The recipe names the factory with an import spec, ``dataset: "your_shapes:shapes"``. A
dataset factory returns map-style ``torch.utils.data.Dataset``s; admmprune streams them in
mini-batches whose order follows from (seed, epoch), so an interrupted run resumes exactly.
It receives the recipe's ``seed`` (and ``data_dir``, ``image_size``, ``download``,
``splits``) when it declares a parameter of that name.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

CLASSES = ["horizontal", "vertical", "diagonal", "checks"]


def _pattern(kind: int, size: int) -> torch.Tensor:
    i = torch.arange(size).view(-1, 1)
    j = torch.arange(size).view(1, -1)
    stripes = [(i // 2) % 2, (j // 2) % 2, ((i + j) // 2) % 2, ((i // 4) + (j // 4)) % 2]
    return stripes[kind].float().expand(size, size)


class Stripes(Dataset):
    """``n`` images (3 x size x size) with labels, generated from ``seed``."""

    classes = CLASSES

    def __init__(self, n: int, seed: int, size: int = 16, noise: float = 1.5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(len(CLASSES), (n,), generator=g)
        patterns = torch.stack([_pattern(k, size) for k in range(len(CLASSES))])
        colours = torch.rand(n, 3, 1, 1, generator=g) + 0.5
        shift = torch.randint(4, (n,), generator=g)
        images = torch.stack([torch.roll(patterns[y], (int(s), int(s)), dims=(0, 1))
                              for y, s in zip(self.labels, shift, strict=True)])
        self.images = images.unsqueeze(1) * colours + noise * torch.randn(
            n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def shapes(seed: int = 0) -> dict:
    """The splits: 1024 training and 256 test images (``num_classes`` from ``classes``)."""
    return {"train": Stripes(1024, seed), "test": Stripes(256, seed + 1000)}
