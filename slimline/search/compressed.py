"""Compressed layers while training: a parametrization W -> Q_b(M ⊙ W) on each planned weight.

One mechanism for every model: `torch.nn.utils.parametrize` on the module that owns the weight.
That works on eager zoo modules and on the graph module of a ``torch.export`` program alike
(the graph reads the weight through ``get_attr``, which goes through the parametrization), so
no model is rewritten. The dense weight stays the trainable tensor; the mask is a buffer
(magnitude N:M or unstructured, refreshable while warming up); the scales are learned steps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimline.search.layers import LayerGeometry
from slimline.search.masks import option_mask, pad_columns
from slimline.search.options import LayerOption, Plan
from slimline.search.quantize import effective_scales, fake_quantize, init_scales


class CompressedWeight(nn.Module):
    """Parametrization computing the weight a layer will have in the file."""

    def __init__(self, option: LayerOption, weight: torch.Tensor) -> None:
        super().__init__()
        self.option = option
        self.shape = tuple(weight.shape)
        self.rows = weight.shape[0]
        self.row_len = weight[0].numel()
        w2d = weight.detach().reshape(self.rows, self.row_len)
        mask = option_mask(option, w2d)
        self.mask: torch.Tensor | None
        self.register_buffer("mask", mask)  # bool [O, Kp] or None
        self.step: nn.Parameter | None = None  # fp32 [Sr, Sc] learned scales; stored as fp16
        if option.quantized:
            self.step = nn.Parameter(init_scales(pad_columns(w2d, option), mask, option))

    def refresh_mask(self, weight: torch.Tensor) -> None:
        """Re-pick the kept weights by magnitude (warm-up); scales are left as learned."""
        if self.mask is not None:
            self.mask = option_mask(self.option, weight.detach().reshape(self.rows, self.row_len))

    def scales(self) -> torch.Tensor | None:
        """fp16-representable scales [Sr, Sc] as fp32, or None."""
        return None if self.step is None else effective_scales(self.step)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        opt = self.option
        if opt.sparsity == "removed":
            return weight * 0.0
        w2d = pad_columns(weight.reshape(self.rows, self.row_len), opt)
        if opt.bits == 16:
            v = w2d + (w2d.half().float() - w2d).detach()
        else:
            v = fake_quantize(w2d, self.scales(), opt)
        if self.mask is not None:
            v = v * self.mask
        return v[:, : self.row_len].reshape(self.shape)


def apply_plan(
    model: nn.Module, plan: Plan, geoms: list[LayerGeometry]
) -> dict[str, CompressedWeight]:
    """Register a `CompressedWeight` on every planned layer; returns them by layer name."""
    out = {}
    for g in geoms:
        mod = model.get_submodule(g.name)
        cw = CompressedWeight(plan[g.name], mod.weight.detach())
        cw.to(mod.weight.device)
        parametrize.register_parametrization(mod, "weight", cw)
        out[g.name] = cw
    return out


def compressed_weights(model: nn.Module) -> dict[str, CompressedWeight]:
    """The parametrizations `apply_plan` registered, by layer name."""
    out = {}
    for name, mod in model.named_modules():
        plist = getattr(mod, "parametrizations", None)
        if plist is not None and "weight" in plist:
            for p in plist["weight"]:
                if isinstance(p, CompressedWeight):
                    out[name] = p
    return out


def original_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The trainable dense weight under a layer's parametrization."""
    mod = model.get_submodule(name)
    return mod.parametrizations["weight"].original
