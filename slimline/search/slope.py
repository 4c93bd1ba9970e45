"""SLOPE fine-tuning: train W_hat = Q_b(M ⊙ W) with distillation and a cosine regularizer.

After Mozaffari et al., "SLOPE: Double-Pruned Sparse Plus Lazy Low-Rank Adapter Pretraining"
(N:M sparsity at low precision) as DESIGN.md "SLOPE fine-tuning" reads it. Every planned layer
carries a `CompressedWeight` (mask, then a quantizer with learned per-channel steps and a
straight-through estimator). The loss is

    (1 - a) * task + a * T^2 * KL(teacher_T || student_T) + lambda * mean_i (1 - cos(w_i, w_hat_i))

over the output-channel rows i of every compressed layer (w the trainable dense row, w_hat
what the file will hold). Masks are re-picked by magnitude every ``refresh_every`` steps while
warming up (the first ``mask_warmup`` share of the steps), then frozen; normalization
statistics are re-estimated when they freeze and at the end. An unstructured mask is only
replaced by one whose position code is no longer than the planned one, so the plan's byte
count stays an upper bound. Checkpoints (`training.Checkpointing`) carry the frozen flag and
those byte limits, so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimline.search.accounting import layer_bytes
from slimline.search.compressed import CompressedWeight, apply_plan, original_weight
from slimline.search.estimators import calibration_mode
from slimline.search.layers import LayerGeometry, is_graph_module
from slimline.search.masks import option_mask
from slimline.search.options import Plan
from slimline.search.settings import FinetuneSettings
from slimline.search.training import (
    Checkpointing,
    Progress,
    TrainConfig,
    TrainData,
    batches,
    evaluate,
    set_training_mode,
    task_loss,
    train,
)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over predictions."""
    t = temperature
    s = F.log_softmax(student.reshape(-1, student.shape[-1]).float() / t, dim=-1)
    p = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]).float() / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


def cosine_regularizer(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """mean over every row i of every (w, w_hat) pair of 1 - cos(w_i, w_hat_i)."""
    terms = [
        1.0 - F.cosine_similarity(w.reshape(w.shape[0], -1), wh.reshape(wh.shape[0], -1), dim=1)
        for w, wh in pairs
    ]
    if not terms:
        return torch.zeros(())
    return torch.cat(terms).mean()


def compressed_pairs(
    model: nn.Module, cws: dict[str, CompressedWeight]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(dense trainable weight, its compressed image) of every layer that is not removed."""
    out = []
    for name, cw in cws.items():
        if cw.option.sparsity == "removed":
            continue
        w = original_weight(model, name)
        out.append((w, cw(w)))
    return out


@torch.no_grad()
def recalibrate_norms(
    model: nn.Module, data: TrainData, batches_n: int, batch_size: int, seed: int, device: Any
) -> int:
    """Re-estimate BatchNorm running statistics of ``model`` as it is now (cumulative average
    over ``batches_n`` training batches); returns how many layers were re-estimated. Graph
    modules (``.pt2``) keep theirs: their norm layers are not modules one can reset."""
    if batches_n <= 0 or is_graph_module(model):
        return 0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = [m for m in norms if m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    stream = batches(data, batch_size, seed)
    for _ in range(batches_n):
        x, _y = next(stream)
        model(x.to(device))
    for m, mom in zip(norms, momenta, strict=True):
        m.momentum = mom
    model.train(was_training)
    return len(norms)


class SlopeRun:
    """One SLOPE fine-tuning run over a model the plan has been applied to (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        geoms: list[LayerGeometry],
        plan: Plan,
        data: TrainData,
        cfg: TrainConfig,
        settings: FinetuneSettings,
        *,
        teacher: nn.Module | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model, self.geoms, self.plan, self.data = model, geoms, plan, data
        self.cfg, self.s, self.device = cfg, settings, torch.device(device)
        self.teacher = teacher if settings.distill_share > 0 else None
        self.cws = apply_plan(model, plan, geoms)
        self.geom = {g.name: g for g in geoms}
        self.total = cfg.steps(len(data.x_train))
        self.warmup_steps = int(self.total * settings.mask_warmup)
        self.frozen = self.warmup_steps == 0
        # the planned position-code bytes of each unstructured layer: refreshes never exceed it
        self.index_limit = {
            n: layer_bytes(cw.option, self.geom[n], mask=cw.mask).index
            for n, cw in self.cws.items()
            if cw.option.sparsity == "unstructured"
        }
        self.refreshes = 0

    # ------------------------------------------------------------------ the loss
    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.s
        task = task_loss(self.data.task, logits, y)
        total = task
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(x)
            a = s.distill_share
            total = (1 - a) * task + a * distillation_loss(logits, target, s.temperature)
        if s.cosine > 0:
            total = total + s.cosine * cosine_regularizer(compressed_pairs(self.model, self.cws))
        return total

    # ------------------------------------------------------------- mask warm-up
    def refresh_masks(self) -> int:
        """Re-pick every mask by magnitude; returns how many layers changed."""
        changed = 0
        for name, cw in self.cws.items():
            if cw.mask is None:
                continue
            w = original_weight(self.model, name).detach()
            new = option_mask(cw.option, w.reshape(cw.rows, cw.row_len))
            assert new is not None
            if name in self.index_limit:
                cost = layer_bytes(cw.option, self.geom[name], mask=new).index
                if cost > self.index_limit[name]:
                    continue  # would outgrow the planned bytes: keep the mask it has
            if not torch.equal(new, cw.mask):
                cw.mask = new.to(cw.mask.device)
                changed += 1
        self.refreshes += 1
        return changed

    def on_step(self, step: int) -> None:
        if self.frozen:
            return
        if step >= self.warmup_steps:
            self.refresh_masks()
            self.frozen = True
            self.recalibrate()
        elif step % self.s.refresh_every == 0:
            self.refresh_masks()

    def recalibrate(self) -> int:
        n = recalibrate_norms(
            self.model,
            self.data,
            self.s.recalibrate_batches,
            self.cfg.batch_size,
            self.cfg.seed + 7919,
            self.device,
        )
        set_training_mode(self.model, True)
        return n

    # -------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        return {
            "frozen": self.frozen,
            "refreshes": self.refreshes,
            "index_limit": dict(self.index_limit),
        }

    def load_extra(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state["frozen"])
        self.refreshes = int(state["refreshes"])
        self.index_limit = {k: int(v) for k, v in state["index_limit"].items()}

    def checkpoint_figures(self, step: int) -> dict[str, Any]:
        n = self.s.eval_samples
        if n <= 0:
            return {}
        if self.data.task == "language":  # a sample is a whole sequence: 1/16 as many
            n = max(32, n // 16)
        sub = _Subset(self.data, n)
        return {"metric": evaluate(self.model, sub, device=self.device)["metric"]}

    # ---------------------------------------------------------------------- run
    def run(
        self,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_dir: Path | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> list[float]:
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Checkpointing(
                checkpoint_dir,
                every=self.s.checkpoint_steps,
                extra_state=self.extra_state,
                load_extra=self.load_extra,
                on_checkpoint=self.checkpoint_figures,
            )

        def step_hook(step: int) -> None:
            self.on_step(step)
            if on_step is not None:
                on_step(step)

        # the teacher runs in eval mode on the run's device, under no_grad (`loss`); its
        # modes and device are given back after, and its parameters are never touched: a
        # caller's model passed as teacher comes out as it went in
        teacher_mode: AbstractContextManager[object] = nullcontext()
        if self.teacher is not None:
            teacher_mode = calibration_mode(self.teacher, self.device)
        with teacher_mode:
            losses = train(
                self.model,
                self.data,
                self.cfg,
                device=self.device,
                progress=progress,
                loss_fn=self.loss,
                should_stop=should_stop,
                on_step=step_hook,
                checkpoint=ckpt,
            )
        self.recalibrate()
        set_training_mode(self.model, False)
        return losses


class _Subset:
    """The first ``n`` validation samples of a dataset (the progress metric)."""

    def __init__(self, data: TrainData, n: int) -> None:
        self.task = data.task
        self.x_train, self.y_train = data.x_train, data.y_train
        self.x_val, self.y_val = data.x_val[:n], data.y_val[:n]
