"""LeNet-300-100 (LeCun et al. 1998): the fully connected MNIST network of the pruning
literature, 784-300-100-10 with ReLU: 266,610 parameters, 266,200 of them weights."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class LeNet300(nn.Module):
    """fc 784→300 → ReLU → fc 300→100 → ReLU → fc 100→10; images are flattened first.

    The layers are named ``fc1``-``fc3`` as in the papers that report per-layer ratios for
    this network (Han et al. 2015, Zhang et al. 2018), so their tables read against ours.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 784) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@register_model("lenet300")
def lenet300(num_classes: int = 10, input_size: int = 784) -> LeNet300:
    return LeNet300(num_classes=num_classes, input_size=input_size)
