"""Fully connected networks of growing depth (the seed's "gradual increase layer" family)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with ReLU, then a linear classifier."""

    def __init__(self, depth: int = 2, width: int = 300, input_size: int = 784,
                 num_classes: int = 10) -> None:
        super().__init__()
        if depth < 0 or width < 1:
            raise ValueError(f"mlp needs depth >= 0 and width >= 1, got {depth=} {width=}")
        layers: list[nn.Module] = []
        size = input_size
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(x.flatten(1)))


@register_model("mlp")
def mlp(depth: int = 2, width: int = 300, input_size: int = 784, num_classes: int = 10) -> MLP:
    return MLP(depth=depth, width=width, input_size=input_size, num_classes=num_classes)
