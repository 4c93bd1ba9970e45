"""Which weights a layer keeps: N:M and unstructured magnitude masks.

N:M groups run along a row of the flattened weight [O, I/groups * kh * kw] (input-channel
major, kernel positions inner), i.e. along the input dimension as DESIGN.md asks. A row whose
length is not a multiple of M is padded with never-preferred columns; a padded group still keeps
exactly N entries (the accounting counts them), and padding is dropped when weights are rebuilt.
Unstructured masks keep the k largest magnitudes of the whole layer.
"""

from __future__ import annotations

import torch

from slimline.search.accounting import padded_row_len, unstructured_kept
from slimline.search.options import LayerOption


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """bool [O, Kp]: the n largest ``scores`` [O, K] in every group of m along each row."""
    rows, k = scores.shape
    kp = -(-k // m) * m
    if kp != k:
        pad = torch.full((rows, kp - k), float("-inf"), dtype=scores.dtype, device=scores.device)
        scores = torch.cat([scores, pad], dim=1)
    groups = scores.reshape(rows, kp // m, m)
    top = groups.topk(n, dim=-1).indices  # [O, G, n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(rows, kp)


def unstructured_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool [O, K]: the k largest ``scores`` of the whole tensor."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(k).indices] = True
    return mask.reshape(scores.shape)


def option_mask(option: LayerOption, w2d: torch.Tensor) -> torch.Tensor | None:
    """The magnitude mask ``option`` puts on a [O, K] weight; None for dense/removed."""
    scores = w2d.detach().abs().float()
    if option.sparsity == "nm":
        return nm_mask(scores, option.n, option.m)
    if option.sparsity == "unstructured":
        return unstructured_mask(scores, unstructured_kept(option, *w2d.shape))
    return None


def pad_columns(w2d: torch.Tensor, option: LayerOption) -> torch.Tensor:
    """[O, K] -> [O, Kp] with zero columns, so a padded mask can be applied."""
    kp = padded_row_len(option, w2d.shape[1])
    if kp == w2d.shape[1]:
        return w2d
    return torch.nn.functional.pad(w2d, (0, kp - w2d.shape[1]))
