"""A small BatchNorm ResNet for 28x28 images (MNIST, Fashion-MNIST): the structure of
He et al.'s CIFAR ResNets (3x3 convolutions, each followed by BatchNorm; identity shortcuts,
a 1x1 convolution + BatchNorm where the shape changes) at a width a CPU trains in minutes."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, 3, stride), nn.ReLU(),
                                  _conv_bn(c_out, c_out, 3))
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) \
            if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetBN(nn.Module):
    """stem conv-BN-ReLU, three stages of basic blocks (widths w, 2w, 4w; the last two
    halve the resolution), global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, width, 3), nn.ReLU())
        stages, c_in = [], width
        for stage in range(3):
            c_out = width * 2 ** stage
            for index in range(blocks):
                stages.append(BasicBlock(c_in, c_out, 2 if stage and not index else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean((2, 3)))


@register_model("resnet_bn")
def resnet_bn(num_classes: int = 10, in_channels: int = 1, width: int = 16,
              blocks: int = 1) -> ResNetBN:
    return ResNetBN(num_classes=num_classes, in_channels=in_channels, width=width,
                    blocks=blocks)
