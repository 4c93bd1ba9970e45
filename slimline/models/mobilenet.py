"""A small MobileNetV2-style CNN for 32x32 images (Sandler et al. 2018).

It exists to give the search a model dominated by depthwise 3x3 convs (groups == channels) and
1x1 pointwise convs, whose sensitivity to pruning and quantization is very different from dense
3x3 convs. Compared with the ImageNet MobileNetV2 it has fewer, narrower stages, a stride-1 stem
(32x32 inputs are already small) and a configurable dropout before the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimline.models._config import (
    ModelConfig,
    check_fraction,
    check_int_tuple,
    check_positive_int,
)

NAME = "mobilenet"


@dataclass(frozen=True)
class MobileNetConfig(ModelConfig):
    num_classes: int = 10  # output logits
    stem_channels: int = 16  # 3x3 stem conv, stride 1
    stage_channels: tuple[int, ...] = (16, 24, 32, 64)  # output channels per stage
    stage_blocks: tuple[int, ...] = (1, 2, 2, 2)  # inverted residual blocks per stage
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)  # stride of each stage's first block
    expansion: int = 4  # hidden = expansion * in_channels (the first stage uses 1, as in V2)
    head_channels: int = 256  # 1x1 conv before global pooling
    dropout: float = 0.2  # before the classifier

    def __post_init__(self) -> None:
        for name in ("num_classes", "stem_channels", "expansion", "head_channels"):
            check_positive_int(NAME, name, getattr(self, name))
        channels = check_int_tuple(NAME, "stage_channels", self.stage_channels)
        n = len(channels)
        object.__setattr__(self, "stage_channels", channels)
        for name in ("stage_blocks", "stage_strides"):
            object.__setattr__(self, name, check_int_tuple(NAME, name, getattr(self, name), n))
        check_fraction(NAME, "dropout", self.dropout)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:  # 1x1 expand
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [  # 3x3 depthwise, then linear 1x1 projection (no activation)
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetSmall(nn.Module):
    def __init__(self, config: MobileNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()
        )
        blocks: list[nn.Module] = []
        stages = zip(config.stage_channels, config.stage_blocks, config.stage_strides, strict=True)
        for i, (out_ch, n, stride) in enumerate(stages):
            t = 1 if i == 0 else config.expansion
            for j in range(n):
                blocks.append(InvertedResidual(c, out_ch, stride if j == 0 else 1, t))
                c = out_ch
        self.blocks = nn.Sequential(*blocks)
        h = config.head_channels
        self.head = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(h, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # [B, 64, 4, 4] with the default strides
        x = self.head(x).mean(dim=(2, 3))  # [B, 256]
        return self.classifier(self.dropout(x))
