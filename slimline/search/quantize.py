"""Uniform quantizers with fp16 scales: initial scales, integer codes, and the STE fake-quantizer.

The fake-quantizer computes exactly what `payload.dequantize` computes from the stored codes:
(q + offset) * s in fp32 with s already rounded to fp16, so a model evaluated while training
and the same model rebuilt from its file agree to the last bit. Scales are learned (LSQ, Esser
et al. 2020: straight-through rounding, gradient scaled by 1/sqrt(n_per_scale * qmax)); they are
initialised by a small search over clipping ratios that minimises the squared error of the kept
weights, which matters for post-training quantization where no training follows.
"""

from __future__ import annotations

import math

import torch

from slimline.search.options import LayerOption
from slimline.search.payload import code_range, expand_scales, level_offset

CLIP_RATIOS = torch.linspace(0.35, 1.0, 12)
MIN_SCALE = 1e-6  # fp16 keeps this as a subnormal; smaller steps would flush to zero


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward."""
    return x + (x.round() - x).detach()


def fp16_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest fp16 value forward (as fp32), identity backward."""
    return x + (x.half().float() - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward x, backward gradient times ``scale``."""
    return (x - x * scale).detach() + x * scale


def _grouped(v: torch.Tensor, option: LayerOption) -> torch.Tensor:
    """[O, Kp] -> [Sr, Sc, L]: the values sharing each scale (padded with zeros if ragged)."""
    rows, kp = v.shape
    if option.granularity == "channel":
        return v.reshape(rows, 1, kp)
    if option.granularity == "tensor":
        return v.reshape(1, 1, rows * kp)
    g = option.group_size
    cols = -(-kp // g) * g
    if cols != kp:
        v = torch.nn.functional.pad(v, (0, cols - kp))
    return v.reshape(rows, cols // g, g)


def init_scales(w2d: torch.Tensor, mask: torch.Tensor | None, option: LayerOption) -> torch.Tensor:
    """fp32 scales [Sr, Sc] that minimise the squared error of the kept weights of [O, Kp] w2d.

    For each scale group, try clipping the range at several fractions of the largest kept
    magnitude and keep the best. One ratio at a time: a [ratios x weights] tensor would be
    larger than the caches, and this runs for every option of every layer when scoring.
    """
    qmin, qmax = code_range(option.bits)
    off = level_offset(option)
    w = w2d.detach().float()
    keep = None if mask is None else _grouped(mask.to(w.dtype), option)
    wg = _grouped(w if mask is None else w * mask, option)  # [Sr, Sc, L]
    amax = wg.abs().amax(dim=-1, keepdim=True).clamp_min(MIN_SCALE)  # [Sr, Sc, 1]
    top_level = qmax + off  # largest positive level, in steps
    best_s = best_err = None
    for ratio in CLIP_RATIOS.tolist():
        s = (amax * (ratio / top_level)).half().float().clamp_min(MIN_SCALE)
        e = (torch.clamp(torch.round(wg / s - off), qmin, qmax) + off).mul_(s).sub_(wg)
        if keep is not None:
            e.mul_(keep)
        err = e.square_().sum(dim=-1, keepdim=True)  # [Sr, Sc, 1]
        if best_s is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s = torch.where(better, s, best_s)
            best_err = torch.where(better, err, best_err)
    assert best_s is not None
    return best_s.squeeze(-1)


def effective_scales(step: torch.Tensor) -> torch.Tensor:
    """The fp16-representable scales a learned step stands for (differentiable)."""
    return fp16_ste(step.abs().clamp_min(MIN_SCALE))


def fake_quantize(w2d: torch.Tensor, scales: torch.Tensor, option: LayerOption) -> torch.Tensor:
    """Differentiable Q_b(w) for [O, Kp] weights with effective scales [Sr, Sc]."""
    qmin, qmax = code_range(option.bits)
    off = level_offset(option)
    rows, kp = w2d.shape
    per_scale = w2d.numel() / scales.numel()
    s = grad_scale(scales, 1.0 / math.sqrt(per_scale * qmax))
    s_full = expand_scales(s, option, rows, kp)
    q = round_ste(torch.clamp(w2d / s_full - off, qmin, qmax))
    return (q + off) * s_full


def quantize_codes(
    w2d: torch.Tensor, mask: torch.Tensor | None, scales: torch.Tensor, option: LayerOption
) -> torch.Tensor:
    """Unsigned int64 codes of the kept weights (row-major order of the mask)."""
    qmin, qmax = code_range(option.bits)
    off = level_offset(option)
    rows, kp = w2d.shape
    s_full = expand_scales(scales.float(), option, rows, kp)
    q = torch.clamp(torch.round(w2d.float() / s_full - off), qmin, qmax).to(torch.int64)
    kept = q.reshape(-1) if mask is None else q[mask]
    return kept - qmin


def fp16_codes(w2d: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """fp16 bit patterns (as int64 in [0, 65535]) of the kept weights."""
    v = w2d.detach().half()
    kept = v.reshape(-1) if mask is None else v[mask]
    return kept.view(torch.int16).to(torch.int64) & 0xFFFF
