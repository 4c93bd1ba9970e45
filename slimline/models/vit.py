"""A tiny Vision Transformer (Dosovitskiy et al. 2021) for 32x32 images.

Attention is written out by hand with separate ``q``/``k``/``v``/``out`` ``nn.Linear`` layers
instead of ``nn.MultiheadAttention``, whose packed ``in_proj_weight`` is not an ``nn.Linear``:
the search compresses per ``nn.Linear``/``nn.Conv2d`` module, and a per-projection split lets it
treat q, k, v and the output projection differently. Patch embedding is a strided Conv2d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimline.errors import InvalidModel
from slimline.models._config import ModelConfig, check_fraction, check_positive_int

NAME = "vit"


@dataclass(frozen=True)
class ViTConfig(ModelConfig):
    image_size: int = 32  # square input side
    patch_size: int = 4  # square patch side; image_size must be a multiple of it
    in_channels: int = 3  # input image channels
    num_classes: int = 10  # output logits
    width: int = 96  # token embedding width
    depth: int = 4  # transformer blocks
    heads: int = 3  # attention heads; width must be a multiple of it
    mlp_hidden: int = 192  # MLP hidden width
    dropout: float = 0.0  # dropout on attention output and MLP output

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "patch_size",
            "in_channels",
            "num_classes",
            "width",
            "depth",
            "heads",
            "mlp_hidden",
        ):
            check_positive_int(NAME, name, getattr(self, name))
        check_fraction(NAME, "dropout", self.dropout)
        if self.image_size % self.patch_size:
            raise InvalidModel(
                f"vit.patch_size must divide image_size {self.image_size}, got {self.patch_size}",
                field="patch_size",
                value=self.patch_size,
            )
        if self.width % self.heads:
            raise InvalidModel(
                f"vit.heads must divide width {self.width}, got {self.heads}",
                field="heads",
                value=self.heads,
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, H, N, C/H]
            return t.reshape(b, n, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax((q @ k.transpose(-2, -1)) * hd**-0.5, dim=-1)  # [B, H, N, N]
        y = (att @ v).transpose(1, 2).reshape(b, n, c)
        return self.dropout(self.out(y))


class Block(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = Attention(config.width, config.heads, config.dropout)
        self.ln2 = nn.LayerNorm(config.width)
        self.fc1 = nn.Linear(config.width, config.mlp_hidden)
        self.fc2 = nn.Linear(config.mlp_hidden, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.dropout(self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x)))))


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.patch_embed = nn.Conv2d(config.in_channels, w, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.randn(1, config.num_patches + 1, w) * 0.02)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.depth)))
        self.ln = nn.LayerNorm(w)
        self.head = nn.Linear(w, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, C]
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # [B, 1, C]
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # [B, N+1, C]
        x = self.ln(self.blocks(x))
        return self.head(x[:, 0])  # classify from the class token
