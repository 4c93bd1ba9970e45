"""A byte-level GPT (Radford et al. 2019, nanoGPT-sized down) for small code/text corpora.

Vocabulary is the 256 byte values, so no tokenizer ships with the model. Attention uses
``scaled_dot_product_attention`` with separate ``q``/``k``/``v``/``out`` ``nn.Linear`` layers
(not a fused ``c_attn``) so each projection is its own compressible layer, and the output head
is untied from the token embedding so compressing one never silently changes the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimline.errors import InvalidModel
from slimline.models._config import ModelConfig, check_fraction, check_positive_int

NAME = "bytegpt"
VOCAB = 256  # one token per byte value


@dataclass(frozen=True)
class ByteGPTConfig(ModelConfig):
    layers: int = 4  # transformer blocks
    width: int = 128  # embedding width
    heads: int = 4  # attention heads; width must be a multiple of it
    context: int = 128  # longest input sequence (size of the position table)
    mlp_hidden: int = 512  # MLP hidden width
    dropout: float = 0.0  # on attention and MLP outputs

    def __post_init__(self) -> None:
        for name in ("layers", "width", "heads", "context", "mlp_hidden"):
            check_positive_int(NAME, name, getattr(self, name))
        check_fraction(NAME, "dropout", self.dropout)
        if self.width % self.heads:
            raise InvalidModel(
                f"bytegpt.heads must divide width {self.width}, got {self.heads}",
                field="heads",
                value=self.heads,
            )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ByteGPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.q = nn.Linear(config.width, config.width)
        self.k = nn.Linear(config.width, config.width)
        self.v = nn.Linear(config.width, config.width)
        self.out = nn.Linear(config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, H, T, C/H]
            return y.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True
        )
        return self.dropout(self.out(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, config: ByteGPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.width)
        self.fc1 = nn.Linear(config.width, config.mlp_hidden)
        self.fc2 = nn.Linear(config.mlp_hidden, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # pre-LayerNorm
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class ByteGPT(nn.Module):
    def __init__(self, config: ByteGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(VOCAB, config.width)
        self.pos_emb = nn.Embedding(config.context, config.width)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.layers)))
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]  # idx: int64 [B, T]
        torch._check(t <= self.config.context, lambda: f"sequence length {t} > context")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # [B, T, C]
        return self.head(self.ln_f(self.blocks(x)))  # [B, T, 256]
