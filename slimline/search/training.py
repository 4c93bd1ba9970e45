"""Training and evaluation loops shared by dense pre-training and quantization-aware fine-tuning.

Two tasks: "classify" (logits [B, C], top-1 accuracy) and "language" (logits [B, T, V],
next-token accuracy and bits per token). Data are in-memory tensors (our datasets are small);
batches are drawn with a seeded generator so a run is reproducible on the CPU. Progress goes to
a callback, never to print: the CLI draws a bar, the worker writes job events.

Graph modules from ``torch.export`` refuse ``.train()``; their mode is switched by editing the
graph (`slimline.models.program.set_graph_training`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from slimline.search.layers import is_graph_module
from slimline.search.train_checkpoint import load_checkpoint, save_checkpoint

Progress = Callable[[dict[str, Any]], None]


class TrainData(Protocol):
    """What training needs of a dataset (slimline.models.datasets.Dataset satisfies it): read
    only, so frozen dataclasses qualify."""

    @property
    def task(self) -> str: ...
    @property
    def x_train(self) -> torch.Tensor: ...
    @property
    def y_train(self) -> torch.Tensor: ...
    @property
    def x_val(self) -> torch.Tensor: ...
    @property
    def y_val(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0  # passes over the training set (fractions allowed for big sets)
    lr: float = 1e-3  # peak learning rate (Adam), cosine-decayed to lr_min_ratio * lr
    lr_min_ratio: float = 0.02
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 0  # batch order
    max_steps: int | None = None  # caps the step count (quick runs, tests)
    eval_batch_size: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for method settings

    def steps(self, n_train: int) -> int:
        per_epoch = math.ceil(n_train / self.batch_size)
        total = max(1, math.ceil(self.epochs * per_epoch))
        return min(total, self.max_steps) if self.max_steps else total


def set_training_mode(model: nn.Module, mode: bool) -> None:
    if is_graph_module(model):
        from slimline.models.program import set_graph_training

        set_graph_training(model, mode)
    else:
        model.train(mode)


def task_loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "language":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(logits, y)


def batches(
    data: TrainData, batch_size: int, seed: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches of the training split, reproducible from ``seed``.

    ``start`` skips that many batches: the stream from ``start`` is exactly the tail of the
    stream from 0 (a resumed run sees the batches an uninterrupted one would have seen).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    offsets = range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size)
    skip = start
    while True:
        order = torch.randperm(n, generator=gen)
        if skip >= len(offsets):  # a whole epoch to skip: its permutation is drawn, unused
            skip -= len(offsets)
            continue
        for i in offsets[skip:]:
            idx = order[i : i + batch_size]
            yield data.x_train[idx], data.y_train[idx]
        skip = 0


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, n_train // batch_size) if n_train >= batch_size else 1


def checkpoint_interval(every: int, per_epoch: int, total: int) -> int:
    """Steps between checkpoints: ``every``, or once an epoch (four times a run when an epoch
    is longer than the run)."""
    if every > 0:
        return every
    return max(1, min(per_epoch, -(-total // 4)))


@dataclass
class Checkpointing:
    """Where a run keeps its checkpoint and how often; what else it must hold.

    ``extra_state()`` returns a method's own state (tensors, numbers, strings, nested) to be
    saved with the run; ``load_extra(state)`` puts it back on resume. ``on_checkpoint(step)``
    may return figures (a validation metric) that go into that step's progress event.
    """

    directory: Path
    every: int = 0  # steps; 0: see `checkpoint_interval`
    extra_state: Callable[[], dict[str, Any]] | None = None
    load_extra: Callable[[dict[str, Any]], None] | None = None
    on_checkpoint: Callable[[int], dict[str, Any]] | None = None


def _rng_state(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(
    model: nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoint: Checkpointing | None = None,
) -> list[float]:
    """Adam + cosine schedule for ``cfg.steps`` steps; returns the loss of every step.

    ``loss_fn(logits, y, x)`` replaces the task loss when given (distillation, regularizers).
    ``should_stop`` is polled between steps (cancellation, time limits); ``on_step(step)`` runs
    after every optimizer step (re-projection, mask refresh). With ``checkpoint``, the run
    saves its whole state every ``checkpoint.every`` steps and at its end, and a run started
    where a checkpoint exists continues from it: the same seed gives the same weights as a
    run that was never interrupted (on the CPU, where kernels are deterministic).
    """
    device = torch.device(device)
    model.to(device)
    set_training_mode(model, True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.steps(len(data.x_train))
    per_epoch = steps_per_epoch(len(data.x_train), cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=total, eta_min=cfg.lr * cfg.lr_min_ratio
    )
    losses: list[float] = []
    start = 0
    saved = load_checkpoint(checkpoint.directory) if checkpoint else None
    if checkpoint is not None and saved is not None:
        if saved.get("total") != total:
            raise ValueError(
                f"checkpoint in {checkpoint.directory} is for a {saved.get('total')}-step run, "
                f"not {total}"
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"], device)
        start, losses = int(saved["step"]), [float(v) for v in saved["losses"]]
        if checkpoint.load_extra is not None:
            checkpoint.load_extra(saved.get("extra") or {})
        if progress:
            progress({"event": "resumed", "step": start, "total": total})
    every = checkpoint_interval(checkpoint.every, per_epoch, total) if checkpoint else 0

    def save(step: int) -> dict[str, Any]:
        assert checkpoint is not None
        state = {
            "step": step,
            "total": total,
            "losses": losses,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": _rng_state(device),
            "extra": checkpoint.extra_state() if checkpoint.extra_state else {},
        }
        save_checkpoint(checkpoint.directory, state)
        figures = checkpoint.on_checkpoint(step) if checkpoint.on_checkpoint else {}
        set_training_mode(model, True)
        return figures

    report_every = max(1, total // 50)
    stream = batches(data, cfg.batch_size, cfg.seed, start=start)
    for step in range(start, total):
        if should_stop is not None and should_stop():
            break
        x, y = next(stream)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = loss_fn(logits, y, x) if loss_fn else task_loss(data.task, logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1)
        event: dict[str, Any] = {}
        if checkpoint is not None and ((step + 1) % every == 0 or step + 1 == total):
            event = {"checkpoint": True, **save(step + 1)}
        if progress and (event or step % report_every == 0 or step == total - 1):
            progress(
                {
                    "step": step + 1,
                    "total": total,
                    "epoch": round((step + 1) / per_epoch, 3),
                    "loss": losses[-1],
                    **event,
                }
            )
    set_training_mode(model, False)
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TrainData,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    split: str = "val",
) -> dict[str, float]:
    """Metric of ``model`` on a split: {"metric": accuracy, "loss": mean CE, ...}.

    Language models also get "bits_per_token" (= loss / ln 2; bits per byte for byte models).
    """
    device = torch.device(device)
    model.to(device)
    set_training_mode(model, False)
    x_all = data.x_val if split == "val" else data.x_train
    y_all = data.y_val if split == "val" else data.y_train
    correct, loss_sum, count = 0, 0.0, 0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i : i + batch_size].to(device), y_all[i : i + batch_size].to(device)
        logits = model(x)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_y = y.reshape(-1)
        loss_sum += float(F.cross_entropy(flat_logits, flat_y, reduction="sum"))
        correct += int((flat_logits.argmax(-1) == flat_y).sum())
        count += flat_y.numel()
    out = {"metric": correct / max(1, count), "loss": loss_sum / max(1, count)}
    if data.task == "language":
        out["bits_per_token"] = out["loss"] / math.log(2)
    return out


def pick_device(preferred: str = "auto") -> torch.device:
    """The device to run on, chosen at run time (CUDA only when asked for or available)."""
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preferred)
