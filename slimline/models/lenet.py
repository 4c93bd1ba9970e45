"""LeNet-5 (Caffe variant) and LeNet-300-100 for 28x28 MNIST.

These are the two models of the classic pruning/quantization papers (Han et al., "Deep
Compression"), so their shapes are fixed by what those papers report: the Caffe LeNet-5 has no
nonlinearity after its convolutions and ~431k weights; LeNet-300-100 is a plain MLP with ~266k.
Keeping the exact layer shapes makes our compression ratios comparable with the literature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimline.errors import InvalidModel
from slimline.models._config import ModelConfig, check_positive_int


@dataclass(frozen=True)
class LeNet5Config(ModelConfig):
    num_classes: int = 10  # output logits
    conv1_channels: int = 20  # Caffe: 20 filters of 5x5 on the 1-channel image
    conv2_channels: int = 50  # Caffe: 50 filters of 5x5
    hidden: int = 500  # width of fc1
    image_size: int = 28  # square input side; must leave a positive map after two conv+pool

    def __post_init__(self) -> None:
        for name in ("num_classes", "conv1_channels", "conv2_channels", "hidden", "image_size"):
            check_positive_int("lenet5", name, getattr(self, name))
        if self.feature_side < 1:
            raise InvalidModel(
                f"lenet5.image_size must be at least 16 (two 5x5 convs and 2x2 pools), "
                f"got {self.image_size}",
                field="image_size",
                value=self.image_size,
            )

    @property
    def feature_side(self) -> int:
        # conv 5x5 (valid) -> pool 2 -> conv 5x5 (valid) -> pool 2
        return ((self.image_size - 4) // 2 - 4) // 2


class LeNet5(nn.Module):
    def __init__(self, config: LeNet5Config) -> None:
        super().__init__()
        self.config = config
        side = config.feature_side
        self.conv1 = nn.Conv2d(1, config.conv1_channels, 5)
        self.conv2 = nn.Conv2d(config.conv1_channels, config.conv2_channels, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(config.conv2_channels * side * side, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))  # [B, 20, 12, 12]
        x = self.pool(self.conv2(x))  # [B, 50, 4, 4]
        x = torch.relu(self.fc1(x.flatten(1)))  # [B, 500]
        return self.fc2(x)  # [B, classes]


@dataclass(frozen=True)
class LeNet300Config(ModelConfig):
    num_classes: int = 10  # output logits
    hidden1: int = 300  # first hidden layer width
    hidden2: int = 100  # second hidden layer width
    image_size: int = 28  # square 1-channel input, flattened inside the model

    def __post_init__(self) -> None:
        for name in ("num_classes", "hidden1", "hidden2", "image_size"):
            check_positive_int("lenet300", name, getattr(self, name))


class LeNet300(nn.Module):
    def __init__(self, config: LeNet300Config) -> None:
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(config.image_size * config.image_size, config.hidden1)
        self.fc2 = nn.Linear(config.hidden1, config.hidden2)
        self.fc3 = nn.Linear(config.hidden2, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))  # [B, 300]
        x = torch.relu(self.fc2(x))  # [B, 100]
        return self.fc3(x)  # [B, classes]
