"""Turn a fine-tuned compressed model into what the file holds, and make the model match it.

`finalize` is the one step between training and export. For every compressed layer it reads the
learned mask and scales, computes the integer codes, folds a directly following BatchNorm into
the layer's fp16 scales and bias (deployment toolchains do the same: one bias per channel
instead of four numbers), and writes the dequantized weights back into the model. Every other
float tensor is rounded to fp16, its stored precision. Afterwards the in-memory model computes
exactly what `slimline.load` will rebuild from the file, so "the reloaded model equals the
trained model" is a property of construction, checked by the verify stage.

A folded BatchNorm is kept in the model as an identity plus shift (weight 1, mean 0, variance
1 - eps, bias = the folded shift): graph modules cannot drop a node or gain a bias argument, and
one mechanism for eager and graph models is simpler than two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimline.search.compressed import CompressedWeight, compressed_weights
from slimline.search.layers import LayerGeometry
from slimline.search.masks import pad_columns
from slimline.search.payload import LayerPayload, dequantize
from slimline.search.quantize import fp16_codes, quantize_codes

NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass
class Finalized:
    payloads: list[LayerPayload]  # one per compressed layer, in geometry order
    others: dict[str, torch.Tensor]  # every other tensor at its stored dtype, state_dict order


def unit_variance(eps: float) -> float:
    """An fp32 variance v with fp32(v + eps) == 1, so the neutralized norm divides by exactly 1."""
    v = torch.tensor(1.0 - eps, dtype=torch.float32)
    one = torch.tensor(1.0, dtype=torch.float32)
    for _ in range(8):
        total = v + torch.tensor(eps, dtype=torch.float32)
        if total == one:
            break
        v = torch.nextafter(v, -one if total > one else one * 2)
    return float(v)


def other_tensor_names(model: nn.Module, geoms: list[LayerGeometry]) -> list[str]:
    """state_dict keys stored as ordinary tensors: all but the compressed layers' weights and
    biases, folded norms, and BatchNorm batch counters (not needed to run)."""
    skip = set()
    for g in geoms:
        skip.update({f"{g.name}.weight", f"{g.name}.bias"})
        if g.norm is not None:
            skip.update(f"{g.norm}.{t}" for t in NORM_TENSORS)
    return [
        k
        for k in _plain_state_dict(model)
        if k not in skip and not k.endswith("num_batches_tracked")
    ]


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with parametrized weights under their plain names (values: the originals)."""
    out = {}
    for k, v in model.state_dict().items():
        if ".parametrizations." in k:
            owner, _, rest = k.partition(".parametrizations.")
            attr, _, tail = rest.partition(".")
            if tail != "original":
                continue  # masks and scales of the parametrization
            k = f"{owner}.{attr}" if owner else attr
        out[k] = v
    return out


def stored_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensor as stored in the file: floats as fp16, everything else unchanged."""
    return t.detach().half() if t.is_floating_point() else t.detach()


def layer_payload(model: nn.Module, geom: LayerGeometry, cw: CompressedWeight) -> LayerPayload:
    """Codes, mask, fp16 scales and bias of one compressed layer (norm folded in)."""
    mod = model.get_submodule(geom.name)
    opt = cw.option
    w = mod.parametrizations["weight"].original.detach().float().cpu()
    w2d = pad_columns(w.reshape(cw.rows, cw.row_len), opt)
    mask = None if cw.mask is None else cw.mask.cpu()
    bias = mod.bias.detach().float().cpu() if getattr(mod, "bias", None) is not None else None
    mult = None
    if geom.norm is not None:
        bn = model.get_submodule(geom.norm)
        mult = (bn.weight / torch.sqrt(bn.running_var + geom.norm_eps)).detach().float().cpu()
        base = bias if bias is not None else torch.zeros(cw.rows)
        bias = (
            mult * (base - bn.running_mean.detach().float().cpu()) + bn.bias.detach().float().cpu()
        )
    scales = None
    if opt.sparsity == "removed":
        codes = torch.empty(0, dtype=torch.int64)
    elif opt.bits == 16:
        codes = fp16_codes(w2d if mult is None else w2d * mult[:, None], mask)
    else:
        s = cw.scales().detach().float().cpu()
        codes = quantize_codes(w2d, mask, s, opt)
        if mult is not None:
            s = s.expand(cw.rows, s.shape[1]) * mult[:, None]
        scales = s.half()
    return LayerPayload(
        name=geom.name,
        option=opt,
        shape=tuple(w.shape),
        mask=mask,
        codes=codes,
        scales=scales,
        bias=None if bias is None else bias.half(),
    )


def restore_layer(model: nn.Module, geom: LayerGeometry, p: LayerPayload) -> None:
    """Write a payload's weight and bias into a plain (unparametrized) model, in place."""
    mod = model.get_submodule(geom.name)
    weight = dequantize(p).to(mod.weight.device)
    with torch.no_grad():
        mod.weight.copy_(weight)
        if geom.norm is not None:
            assert p.bias is not None
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
            bn = model.get_submodule(geom.norm)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(unit_variance(geom.norm_eps))
            bn.bias.copy_(p.bias.float())
        elif p.bias is not None:
            mod.bias.copy_(p.bias.float())


def restore_others(model: nn.Module, others: dict[str, torch.Tensor]) -> None:
    state = _plain_state_dict(model)
    with torch.no_grad():
        for name, t in others.items():
            state[name].copy_(t.to(state[name].dtype))


def finalize(model: nn.Module, geoms: list[LayerGeometry]) -> Finalized:
    """Compute every payload, then rewrite ``model`` in place to compute exactly the file."""
    cws = compressed_weights(model)
    payloads = [layer_payload(model, g, cws[g.name]) for g in geoms]
    for g in geoms:
        parametrize.remove_parametrizations(
            model.get_submodule(g.name), "weight", leave_parametrized=False
        )
    for g, p in zip(geoms, payloads, strict=True):
        restore_layer(model, g, p)
    state = _plain_state_dict(model)
    others = {k: stored_tensor(state[k]).cpu() for k in other_tensor_names(model, geoms)}
    restore_others(model, others)
    return Finalized(payloads=payloads, others=others)
