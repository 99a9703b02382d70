"""A small MobileNet-style network for 28x28 images: inverted residual blocks (1x1
expansion, 3x3 depthwise convolution, squeeze-excitation, 1x1 projection; BatchNorm after
every convolution; a residual where the shape allows), as in MobileNetV2/V3, at a width a
CPU trains in minutes. Depthwise kernels have 9 weights per channel: a global ranking by
raw magnitude easily empties them."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
             ) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups,
                                   bias=False), nn.BatchNorm2d(c_out))


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features (two 1x1 convolutions)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * gate


class InvertedResidual(nn.Module):
    """expand (1x1) → depthwise 3x3 → squeeze-excitation → project (1x1), + x if it fits."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.body = nn.Sequential(_conv_bn(c_in, hidden, 1), nn.ReLU(),
                                  _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  nn.ReLU(), SqueezeExcite(hidden), _conv_bn(hidden, c_out, 1))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetBN(nn.Module):
    """stem conv-BN-ReLU, inverted residual blocks (widths w, w, 2w, 2w, 4w), a 1x1 head
    convolution, global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, width, 3), nn.ReLU())
        plan = [(width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2)]
        blocks, c_in = [], width
        for c_out, stride in plan:
            blocks.append(InvertedResidual(c_in, c_out, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_conv_bn(c_in, 8 * width, 1), nn.ReLU())
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


@register_model("mobilenet_bn")
def mobilenet_bn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> MobileNetBN:
    return MobileNetBN(num_classes=num_classes, in_channels=in_channels, width=width)
