"""A small CNN for scikit-learn's 8x8 digits.

The digits set ships with scikit-learn, so it is the one real dataset every test and CI run can
use without a download. The model is deliberately plain (no BatchNorm, no dropout) so a job on
it exercises conv and linear compression in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimline.models._config import ModelConfig, check_positive_int


@dataclass(frozen=True)
class DigitsCNNConfig(ModelConfig):
    num_classes: int = 10  # output logits
    channels1: int = 16  # first 3x3 conv width (padding 1, keeps 8x8)
    channels2: int = 32  # second 3x3 conv width, followed by 2x2 max-pool -> 4x4
    hidden: int = 64  # width of the hidden linear layer

    def __post_init__(self) -> None:
        for name in ("num_classes", "channels1", "channels2", "hidden"):
            check_positive_int("digits-cnn", name, getattr(self, name))


class DigitsCNN(nn.Module):
    def __init__(self, config: DigitsCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(1, config.channels1, 3, padding=1)
        self.conv2 = nn.Conv2d(config.channels1, config.channels2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(config.channels2 * 4 * 4, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))  # [B, 16, 8, 8]
        x = self.pool(torch.relu(self.conv2(x)))  # [B, 32, 4, 4]
        x = torch.relu(self.fc1(x.flatten(1)))  # [B, 64]
        return self.fc2(x)  # [B, classes]
