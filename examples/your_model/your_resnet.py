"""A ResNet-style network of your own: convolutions, BatchNorm and residual connections.

Nothing here knows about admmprune. The recipe next to this file names the factory with an
import spec, ``model: "your_resnet:tiny_resnet"``, and ``model_args`` set its keywords
(``num_classes`` comes from the dataset unless model_args sets it).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (through a 1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int, width: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, count in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(count):
                layers.append(BasicBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def tiny_resnet(num_classes: int = 4, width: int = 8, blocks: list[int] | None = None
                ) -> TinyResNet:
    """A small ResNet: a stem, ``blocks[i]`` residual blocks of width ``width * 2**i``."""
    return TinyResNet(num_classes, width, tuple(blocks or (1, 1)))
