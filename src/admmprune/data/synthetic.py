"""A generated, MNIST-shaped classification set: fast tests and demos without any download."""

from __future__ import annotations

import torch

from .mnist import MNISTData
from .registry import register_dataset
from .tensors import tensor_splits

__all__ = ["make_synthetic"]


def make_synthetic(
    train_size: int = 2000,
    test_size: int = 500,
    seed: int = 0,
    num_classes: int = 10,
    shape: tuple[int, ...] = (1, 28, 28),
    noise: float = 1.0,
) -> MNISTData:
    """Gaussian clusters, one random prototype image per class plus noise.

    Learnable to high accuracy in one epoch by LeNet-5 or an MLP, yet not trivially:
    the noise has the same scale as the prototypes.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=generator)
        images = prototypes[labels] + noise * torch.randn((n, *shape), generator=generator)
        return images, labels

    train_x, train_y = sample(train_size)
    test_x, test_y = sample(test_size)
    return MNISTData(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


@register_dataset("synthetic", "generated Gaussian clusters shaped like MNIST (tests, demos; "
                               "train_subset/test_subset set the sizes)")
def _synthetic_splits(options, device: torch.device, splits):
    data = make_synthetic(train_size=options.train_subset or 2000,
                          test_size=options.test_subset or 500, seed=options.seed)
    if "train" not in splits:
        data = MNISTData(train_x=None, train_y=None, test_x=data.test_x, test_y=data.test_y)
    return tensor_splits(data, options, device, num_classes=10)
