"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56 for 32x32 images.

Unlike the ImageNet ResNets in torchvision, the CIFAR family has three stages of 16/32/64
channels, 6n+2 layers, and by default the parameter-free "option A" shortcut (stride-2
subsampling plus zero-padded channels), which is what the paper's 0.27M-parameter ResNet-20
uses. ``shortcut="conv"`` gives the 1x1-conv + BatchNorm projection ("option B") instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimline.errors import InvalidModel
from slimline.models._config import ModelConfig, check_positive_int

SHORTCUTS = ("A", "conv")


@dataclass(frozen=True)
class ResNetConfig(ModelConfig):
    depth: int = 20  # 6n+2 layers: 20, 32, 44, 56 (n = 3, 5, 7, 9 blocks per stage)
    width: int = 16  # channels of the first stage; later stages use 2x and 4x
    num_classes: int = 10  # output logits
    shortcut: str = "A"  # "A": zero-pad identity (no weights); "conv": 1x1 conv + BN

    def __post_init__(self) -> None:
        check_positive_int("resnet", "depth", self.depth)
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise InvalidModel(
                f"resnet.depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56), got {self.depth}",
                field="depth",
                value=self.depth,
            )
        check_positive_int("resnet", "width", self.width)
        check_positive_int("resnet", "num_classes", self.num_classes)
        if self.shortcut not in SHORTCUTS:
            raise InvalidModel(
                f"resnet.shortcut must be one of {list(SHORTCUTS)}, got {self.shortcut!r}",
                field="shortcut",
                value=self.shortcut,
            )
        if self.shortcut == "A" and self.width % 2 != 0:
            raise InvalidModel(
                f"resnet.width must be even with shortcut 'A' (channels are zero-padded "
                f"symmetrically), got {self.width}",
                field="width",
                value=self.width,
            )

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.pad = 0  # option A: channels added on each side of the subsampled identity
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            if shortcut == "conv":
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_ch),
                )
            else:
                self.pad = (out_ch - in_ch) // 2
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        elif self.stride != 1 or self.pad:
            identity = x[:, :, :: self.stride, :: self.stride]
            identity = F.pad(identity, (0, 0, 0, 0, self.pad, self.pad))
        else:
            identity = x
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        stages = []
        in_ch = w
        for i, out_ch in enumerate((w, 2 * w, 4 * w)):
            blocks = []
            for j in range(config.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, config.shortcut))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(4 * w, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # [B, 16, 32, 32]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B, 64, 8, 8]
        x = x.mean(dim=(2, 3))  # global average pool: [B, 64]
        return self.fc(x)
