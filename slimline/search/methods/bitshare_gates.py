"""The bit-sharing quantizer and its gates (SBS, Liu, Zhuang et al., TPAMI 2023, arXiv 2101.04935).

One weight tensor carries every candidate width on a single path: the clipped, normalised weight
z is quantized at 2 bits, the 2-bit residual at 4 bits, the 4-bit residual at 8 bits, and two
learned gates decide how many residuals a layer keeps. A third kind of gate, one per group of B
output channels, prunes the group ("0 bits"). Every gate is a hard 0/1 in the forward pass and
a sigmoid in the backward pass, so a byte penalty can pull thresholds up until gates close.

This module is the differentiable part, one search at a fixed penalty weight (`search_gates`)
and how a gated configuration reads on slimline's option ladders (`OptionGrid`); `bitshare.py`
chooses the penalty weight and projects the gates onto the budget.
Differences from the paper that live here:
  - every gate compares a magnitude normalised to [0, 1] with its threshold: a residual's mean
    |e| over the largest |e| it can have (half the coarser step: 1/6 for e4, 1/30 for e8), a
    group's mean |clip(w / v, -1, 1)| for pruning. The paper compares raw mean |e| (about 0.1
    for e4, 0.01 for e8) and the raw L1 norm (which grows with the group and saturates the
    sigmoid); on one scale, one threshold learning rate fits every gate and the 8-bit gate does
    not flip on gradient noise;
  - the cost is bytes in slimline's accounting (values at 2/4/8 bits and fp16 scales of the
    kept rows, the bias), not BOPs. The unstructured position code a partly pruned layer will
    need is left out on purpose: with it the cost is concave near "dense" (a little pruning
    costs more position bits than it saves), so the gradient would never start pruning; the
    linear cost is its convex envelope between "removed" and "dense". The bisection and the
    projection in `bitshare.py` count positions exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimline.search.layers import LayerGeometry
from slimline.search.options import LayerOption
from slimline.search.quantize import round_ste
from slimline.search.training import TrainData, batches, set_training_mode, task_loss

WIDTHS = (2, 4, 8)  # the bit-widths on the shared path


def discretize(z: torch.Tensor, step: float) -> torch.Tensor:
    """D(z, s) = s * round(z / s), rounding straight through."""
    return step * round_ste(z / step)


def residuals(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z2, e4, e8): z at 2 bits, its residual at 4 bits, that residual's residual at 8 bits."""
    z2 = discretize(z, 1 / 3)
    e4 = discretize(z - z2, 1 / 15)
    e8 = discretize(z - z2 - e4, 1 / 255)
    return z2, e4, e8


def share_bits(z: torch.Tensor, g4: torch.Tensor, g8: torch.Tensor) -> torch.Tensor:
    """z_hat = z2 + g4 * (e4 + g8 * e8) for z in [0, 1].

    With both gates open z_hat equals D(z, 1/255) up to rounding ties (the 2-bit grid is part of
    the 4-bit grid, which is part of the 8-bit one), with g4 = 0 it is exactly D(z, 1/3).
    """
    z2, e4, e8 = residuals(z)
    return z2 + g4 * (e4 + g8 * e8)


def gate_ste(a: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """1[a > alpha] forward; the gradient of sigmoid(a - alpha) backward."""
    soft = torch.sigmoid(a - alpha)
    return (a > alpha).to(a.dtype) - soft.detach() + soft


@dataclass(frozen=True)
class GatedConfig:
    """What one layer's gates say: a width in {2, 4, 8} and the kept fraction of its rows."""

    bits: int
    kept: float  # kept output channels / all output channels, in [0, 1]


class BitShareWeight(nn.Module):
    """Parametrization w -> v * (2 z_hat - 1), times each output-channel group's gate.

    Learned per layer: the clip v, the residual thresholds alpha4, alpha8 and the pruning
    threshold alpha_p (all thresholds start at 0: every gate open; `clamp_` keeps them >= 0).
    The gates of the last forward pass are kept for the byte cost of the same step.
    """

    def __init__(self, weight: torch.Tensor, group_rows: int) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.rows = weight.shape[0]
        self.row_len = weight[0].numel()
        w = weight.detach().float()
        # 3 std clips a few outliers, which the 2-bit grid (levels +-v/3, +-v) can afford.
        init = min(float(w.abs().max()), 3.0 * float(w.std())) if w.numel() > 1 else 1.0
        self.v = nn.Parameter(torch.tensor(max(init, 1e-4)))
        self.alpha4 = nn.Parameter(torch.zeros(()))
        self.alpha8 = nn.Parameter(torch.zeros(()))
        self.alpha_p = nn.Parameter(torch.zeros(()))
        self.groups = -(-self.rows // group_rows)
        group_of_row = torch.arange(self.rows) // group_rows  # [O]
        self.register_buffer("group_of_row", group_of_row, persistent=False)
        self.register_buffer(
            "group_size", torch.bincount(group_of_row).float(), persistent=False
        )  # [G]
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def clamp_(self) -> None:
        """Project the thresholds onto >= 0 and the clip onto > 0 (after an optimizer step)."""
        with torch.no_grad():
            for alpha in (self.alpha4, self.alpha8, self.alpha_p):
                alpha.clamp_(min=0.0)
            self.v.clamp_(min=1e-4)

    def quantize(
        self, weight: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(Q(w) [O, K] with pruned groups zeroed, gates (g4, g8, group gates [G]))."""
        w2d = weight.reshape(self.rows, self.row_len)
        u = torch.clamp(w2d / self.v, -1.0, 1.0)  # [O, K]
        z = (u + 1) / 2
        z2, e4, e8 = residuals(z)
        g4 = gate_ste(e4.abs().mean() * 6, self.alpha4)  # |e4| <= 1/6
        g8 = gate_ste(e8.abs().mean() * 30, self.alpha8)  # |e8| <= 1/30
        z_hat = z2 + g4 * (e4 + g8 * e8)
        row_mag = u.abs().mean(dim=1)  # [O]
        group_mag = (
            torch.zeros(self.groups, device=w2d.device).index_add(0, self.group_of_row, row_mag)
            / self.group_size
        )  # [G]
        gp = gate_ste(group_mag, self.alpha_p)  # [G]
        q = self.v * (2 * z_hat - 1) * gp[self.group_of_row].unsqueeze(1)
        return q, (g4, g8, gp)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        q, self.last = self.quantize(weight)
        return q.reshape(self.shape)

    def expected_bytes(self, geom: LayerGeometry) -> torch.Tensor:
        """Bytes of the last forward's gated configuration, differentiable through the gates.

        values at 2/4/8 bits and fp16 scales of the kept rows, and the fp16 bias every layer
        keeps (accounting's conventions; no position code, see the module doc).
        """
        assert self.last is not None, "run a forward pass first"
        g4, g8, gp = self.last
        kept_rows = (gp * self.group_size).sum()
        bits = 2 + g4 * (2 + 4 * g8)
        values = kept_rows * geom.row_len * bits / 8
        scales = 2 * kept_rows
        bias = 2 * geom.rows if (geom.has_bias or geom.norm is not None) else 0
        return values + scales + bias

    @torch.no_grad()
    def config(self, weight: torch.Tensor) -> GatedConfig:
        """Read the gates as hard choices for ``weight`` (the latent weight under this)."""
        _, (g4, g8, gp) = self.quantize(weight)
        bits = 2 + 2 * int(g4 > 0.5) * (1 + 2 * int(g8 > 0.5))
        kept = float((gp * self.group_size).sum()) / self.rows
        return GatedConfig(bits=bits, kept=kept)


@dataclass
class GateSearch:
    """One search at a fixed lambda: what the gates say and the weights they were read on."""

    lam: float
    configs: dict[str, GatedConfig]
    model: nn.Module  # the searched copy, parametrizations removed (latent weights)
    loss: float  # task loss + penalty of the last step
    steps: int  # training steps it ran (fewer than asked for when stopped)


def search_gates(
    model: nn.Module,
    geoms: list[LayerGeometry],
    data: TrainData,
    lam: float,
    *,
    steps: int,
    lr: float,
    gate_lr: float,
    group_rows: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    report: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GateSearch:
    """Train a copy of ``model`` with bit-sharing quantizers under task + lam * log(bytes).

    ``report(step, loss, bytes)`` is called after every step; ``model`` is not changed.
    """
    work = copy.deepcopy(model).to(device)
    quantizers: dict[str, BitShareWeight] = {}
    for g in geoms:
        mod = work.get_submodule(g.name)
        q = BitShareWeight(mod.weight.detach(), group_rows).to(device)
        parametrize.register_parametrization(mod, "weight", q)
        quantizers[g.name] = q
    gates = [a for q in quantizers.values() for a in (q.alpha4, q.alpha8, q.alpha_p)]
    gate_ids = {id(a) for a in gates}
    rest = [p for p in work.parameters() if p.requires_grad and id(p) not in gate_ids]
    opt = torch.optim.Adam([{"params": rest, "lr": lr}, {"params": gates, "lr": gate_lr}])
    set_training_mode(work, True)
    loss_value, done = float("nan"), 0
    for step, (x, y) in enumerate(batches(data, batch_size, seed)):
        if step >= steps or (should_stop is not None and should_stop()):
            break
        logits = work(x.to(device))
        cost = torch.stack([quantizers[g.name].expected_bytes(g) for g in geoms]).sum()
        loss = task_loss(data.task, logits, y.to(device)) + lam * torch.log(cost)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for q in quantizers.values():
            q.clamp_()
        loss_value, done = float(loss.detach()), step + 1
        if report is not None:
            report(step + 1, loss_value, float(cost.detach()))
    set_training_mode(work, False)
    configs = {}
    for g in geoms:
        mod = work.get_submodule(g.name)
        configs[g.name] = quantizers[g.name].config(mod.parametrizations["weight"].original)
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
    return GateSearch(lam=lam, configs=configs, model=work, loss=loss_value, steps=done)


# ------------------------------------------------------------------ gated config -> options
def sparsity_level(option: LayerOption) -> float:
    """Fraction of weights an option keeps: 0 removed, 1 dense, n/m, or the density."""
    if option.sparsity == "removed":
        return 0.0
    if option.sparsity == "nm":
        return option.n / option.m
    return option.density


class OptionGrid:
    """A layer's candidates on two ladders, sparsity level and width, to measure how far an
    option is from a gated configuration (in ladder steps)."""

    def __init__(self, options: list[LayerOption]) -> None:
        self.options = options
        self.levels = sorted({sparsity_level(o) for o in options})  # ascending, maybe 0.0
        self.widths = sorted({o.bits for o in options if o.sparsity != "removed"})

    def position(self, cfg: GatedConfig) -> tuple[int, int]:
        """(level index, width index) of the gated configuration."""
        if cfg.kept <= 0 and self.levels[0] == 0.0:
            level = 0
        else:
            positive = [i for i, v in enumerate(self.levels) if v > 0]
            target = math.log(max(cfg.kept, 1e-9))
            level = min(positive, key=lambda i: abs(math.log(self.levels[i]) - target))
        width = min(range(len(self.widths)), key=lambda i: abs(self.widths[i] - cfg.bits))
        return level, width

    def steps(self, cfg: GatedConfig) -> np.ndarray:
        """int [len(options), 2]: |level steps|, |width steps| of every option from ``cfg``
        (widths do not count when either side is removed)."""
        level, width = self.position(cfg)
        out = np.zeros((len(self.options), 2), dtype=np.int64)
        for i, o in enumerate(self.options):
            out[i, 0] = abs(self.levels.index(sparsity_level(o)) - level)
            if o.sparsity != "removed" and self.levels[level] > 0:
                out[i, 1] = abs(self.widths.index(o.bits) - width)
        return out

    def near(self, cfg: GatedConfig, radius: int) -> list[LayerOption]:
        """The options at most ``radius`` steps from ``cfg`` on each ladder (`within`)."""
        keep = within(self.steps(cfg), radius)
        return [o for o, k in zip(self.options, keep, strict=True) if k]

    def nearest(self, cfg: GatedConfig) -> LayerOption:
        """The option that says what the gates say: at the gated level and width, preferring
        unstructured (a fraction of weights kept) and per-channel scales."""
        kind = {"unstructured": 0, "dense": 0, "removed": 0, "nm": 1}
        gran = {"channel": 0, "none": 0, "tensor": 1, "group": 2}
        steps = self.steps(cfg).sum(axis=1)
        best = min(
            range(len(self.options)),
            key=lambda i: (
                steps[i],
                kind[self.options[i].sparsity],
                gran[self.options[i].granularity],
                self.options[i].group_size,
            ),
        )
        return self.options[best]


def within(steps: np.ndarray, radius: int) -> np.ndarray:
    """bool [N]: which options ([N, 2] ladder steps, `OptionGrid.steps`) lie at most
    ``radius`` steps away on each ladder — or, where no option is that close, as close as the
    closest one: the grid may hold nothing near the gated point (low densities come at 2-4
    bits only, so 8 bits with 1/16 of the weights kept is 3 width steps from them)."""
    far = steps.max(axis=1)
    return far <= max(radius, int(far.min()))
