"""Damage estimators: how much the task loss suffers when one layer's weight w becomes w_hat.

Scoring (DESIGN.md "Scoring and allocation") needs a damage for every layer x option, i.e.
hundreds to thousands of (w, w_hat) pairs per model. Running the model for each is what a
black-box search does and what we avoid: an estimator makes ONE pass over calibration data in
`prepare`, after which `damage` is arithmetic on the stored statistics.

- ``fisher`` (default): the Fisher information diagonal F, and damage = sum F (w - w_hat)^2,
  the second-order term of the loss change (twice the loss increase) with the Fisher standing
  in for the Hessian (as in Optimal Brain Damage / Fisher pruning). Yang et al. (CVPR 2020)
  score an option by its plain distortion ||w - w_hat||^2; weighting each weight's error by its
  loss sensitivity is what makes damages of different layers comparable in one knapsack. F is
  the per-example Fisher with labels drawn from the model's own prediction (the "true" Fisher,
  which is the Gauss-Newton curvature of the cross-entropy), from one backward pass a batch:
  with sampled labels the per-example gradients are independent with mean zero, so the
  squared gradient of the batch's mean loss is F divided by the examples in the batch (tokens,
  for a language model), and multiplying back gives F. The empirical Fisher of the data's
  labels (``sampled=False``, what this estimator used before) is far smaller on a trained
  model (its gradients nearly vanish where the model fits the data) and came out 10^3-10^5
  times below the measured loss increase on lenet5 and bytegpt, so every near option looked
  free next to any measured far one; the sampled one agrees with measurement to a factor
  0.2-5 (`tests/search/test_scoring.py`).
  A second-order model is only good near w: where an option moves a layer far (relative
  squared error above ``measure_above``, 0.1: removed layers, sparse ones, some 2-bit ones) the
  damage is at least twice the loss increase measured on ``measure_examples`` calibration
  examples (measured on lenet5, Fisher alone rated removing fc1 cheaper than keeping 1.5% of
  it, and the allocator took it: 11% accuracy at 128x). The diagonal misses how the errors of
  one output row add up over correlated inputs, by more than the "factor 0.2-5" near w: on
  lenet5, keeping a quarter of conv1 at 2 bits (relative error under 0.5) was rated 0.067
  against a measured 1.0, and the 256x plan took it. With 0.1 instead of 0.5 such options are
  measured too, where the allocation picks them (`scoring._measure_for_budget`): lenet5 at
  128x / 256x 98.71 -> 99.05% / 90.50 -> 91.99% retention, lenet300 94.16 -> 94.83% /
  77.06 -> 80.01% (bench.suite's 300 steps).
- ``hessian``: HAWQ-V2 (Dong et al., NeurIPS 2020): a Hutchinson estimate of each layer's
  Hessian trace from Rademacher probes (Hessian-vector products by double backward, one per
  layer and probe, on that layer's diagonal block only); damage = trace / numel *
  ||w - w_hat||^2. One number per layer, so it cannot tell which weights of a layer matter;
  a negative trace estimate is clamped to 0.
- ``loss``: the measured loss increase on a calibration batch with only this layer replaced.
  The exception to the contract: its `damage` runs the model. The ground truth in tests, and
  usable on small models.

All work on eager modules and on graph modules from ``torch.export`` alike: weights are reached
as ``model.get_submodule(name).weight``, the model runs in eval mode (BatchNorm uses its running
statistics; graph modules are switched by editing the graph) and is left as found.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimline.errors import InvalidOption
from slimline.search.layers import LayerGeometry, is_graph_module
from slimline.search.measurements import MeasuredLosses, change_key, fingerprint
from slimline.search.method_settings import MEASURE_ABOVE
from slimline.search.store_folder import StoreFolder
from slimline.search.training import TrainData, batches, set_training_mode, task_loss


def calibration_examples(task: str, examples: int) -> int:
    """How many examples a calibration loss is measured on: ``examples``, or for a language
    model, whose example is a whole sequence of tokens, 1/8 as many (at least 4)."""
    return max(4, examples // 8) if task == "language" else examples


class DamageEstimator(ABC):
    """Estimates the loss damage of replacing a layer's weight ``w`` by ``w_hat``.

    Contract (every implementation):
    - `prepare(model, geoms, data, *, batches, batch_size, device, seed)` is called once,
      before any `damage`. It is the one pass over calibration data: at most ``batches``
      mini-batches of ``batch_size`` training examples, drawn reproducibly from ``seed``, with
      the model in eval mode on ``device``. It leaves the model as it found it: same weights,
      training mode, device and ``requires_grad`` flags; no hooks or parametrizations.
      The layers in ``geoms`` must be dense (not parametrized).
    - `damage(geom, w, w_hat)` is the damage of layer ``geom`` with weight ``w_hat`` instead
      of its dense weight ``w`` (both of the weight's shape). Damages of different layers are
      in the same units, since the allocator adds them; ``damage(geom, w, w) == 0``. It is
      arithmetic on what `prepare` stored and does not run the model (`LossDeltaEstimator`
      is the documented exception).
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def prepare(
        self,
        model: nn.Module,
        geoms: Sequence[LayerGeometry],
        data: TrainData,
        *,
        batches: int = 8,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        """The one calibration pass (see the class docstring)."""

    @abstractmethod
    def damage(self, geom: LayerGeometry, w: torch.Tensor, w_hat: torch.Tensor) -> float:
        """Damage of ``w_hat`` in place of ``w`` on layer ``geom``."""

    def joint_damage(self, changes: Sequence[tuple[LayerGeometry, torch.Tensor]]) -> float | None:
        """Measured damage of several layers' weights replaced at once (``(geom, w_hat)``
        each), in the units of `damage`; None where the estimator cannot measure (it does not
        run the model)."""
        return None


class FisherEstimator(DamageEstimator):
    """damage = sum F * (w - w_hat)^2, F the Fisher diagonal (see the module doc): with
    ``sampled`` (default) labels are drawn from the model and the squared batch gradient is
    scaled by the examples in the batch; without, the empirical Fisher of the data's labels."""

    name = "fisher"

    def __init__(
        self,
        measure_above: float = MEASURE_ABOVE,
        measure_examples: int = 128,
        sampled: bool = True,
    ) -> None:
        self.fisher: dict[str, torch.Tensor] = {}
        self.sampled = sampled
        self.measure_above, self.measure_examples = measure_above, measure_examples
        self.measured = LossDeltaEstimator(examples=measure_examples) if measure_above else None
        # (layer, option) -> measured damage / Fisher estimate, from the passes that measured;
        # with ``reuse_measurements`` later passes (ADMM re-projections, a few hundred steps
        # on) scale the Fisher estimate by it instead of running the model again
        self.ratios: dict[tuple[str, str], float] = {}
        self.reuse_measurements = False

    def prepare(
        self,
        model: nn.Module,
        geoms: Sequence[LayerGeometry],
        data: TrainData,
        *,
        batches: int = 8,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        with calibration_mode(model, device), _gradients_on(model, geoms) as weights:
            sums = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
            n = 0
            gen = torch.Generator().manual_seed(seed)
            for x, y in _calibration_batches(data, batches, batch_size, seed):
                logits = model(x.to(device))
                examples = 1
                if self.sampled:
                    y = _sample_labels(logits, gen)
                    examples = y.numel()
                loss = task_loss(data.task, logits, y.to(device))
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for s, g in zip(sums, grads, strict=True):
                    if g is not None:
                        s += examples * g.detach().float() ** 2
                n += 1
        self.fisher = {g.name: s / max(1, n) for g, s in zip(geoms, sums, strict=True)}
        if self.measured is not None:
            self.measured.examples = calibration_examples(data.task, self.measure_examples)
            self.measured.prepare(
                model, geoms, data, batches=batches, batch_size=batch_size, device=device,
                seed=seed,
            )  # fmt: skip

    def estimate(
        self, geom: LayerGeometry, w: torch.Tensor, w_hat: torch.Tensor
    ) -> tuple[float, bool]:
        """(the Fisher damage, whether the option moves the layer far enough to be measured)."""
        f = self.fisher[geom.name]
        w32, wh32 = w.detach().to(f.device).float(), w_hat.detach().to(f.device).float()
        err = (w32 - wh32) ** 2
        estimate = float((f * err).sum(dtype=torch.float64))
        if self.measured is None:
            return estimate, False
        relative = float(err.sum(dtype=torch.float64)) / max(
            float((w32**2).sum(dtype=torch.float64)), 1e-30
        )
        return estimate, relative > self.measure_above

    def measure(self, geom: LayerGeometry, w: torch.Tensor, w_hat: torch.Tensor) -> float:
        """Twice the measured loss increase (sum F (w - w_hat)^2 is about twice the loss
        increase, so the two are in the same units)."""
        assert self.measured is not None
        return 2.0 * self.measured.damage(geom, w, w_hat)

    def joint_damage(self, changes: Sequence[tuple[LayerGeometry, torch.Tensor]]) -> float | None:
        """Twice the measured loss increase of the changes together (as `measure`)."""
        return None if self.measured is None else 2.0 * self.measured.joint_damage(changes)

    def damage(self, geom: LayerGeometry, w: torch.Tensor, w_hat: torch.Tensor) -> float:
        estimate, far = self.estimate(geom, w, w_hat)
        # Far from w the quadratic model is not to be trusted (it can rate removing a whole
        # layer as cheap): the damage is at least what is measured.
        return max(estimate, self.measure(geom, w, w_hat)) if far else estimate


class HessianTraceEstimator(DamageEstimator):
    """damage = tr(H_l) / numel * ||w - w_hat||^2 with a Hutchinson trace estimate (HAWQ-V2).

    The model runs forward ``batches`` times; each batch costs one backward with graph plus
    ``probes`` Hessian-vector products per layer (double backward).
    """

    name = "hessian"

    def __init__(self, probes: int = 2) -> None:
        if probes < 1:
            raise InvalidOption(
                f"hessian probes must be at least 1, got {probes}", field="probes", value=probes
            )
        self.probes = probes
        self.scale: dict[str, float] = {}  # per layer: max(trace, 0) / numel

    def prepare(
        self,
        model: nn.Module,
        geoms: Sequence[LayerGeometry],
        data: TrainData,
        *,
        batches: int = 8,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        with calibration_mode(model, device), _gradients_on(model, geoms) as weights:
            traces = [0.0] * len(weights)
            n = 0
            for x, y in _calibration_batches(data, batches, batch_size, seed):
                loss = task_loss(data.task, model(x.to(device)), y.to(device))
                grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
                for i, g in enumerate(grads):
                    if g is None or not g.requires_grad:
                        continue  # the loss is linear in this weight: zero curvature
                    for _ in range(self.probes):
                        # H_ll v for this layer's block alone: a joint probe over all layers
                        # would add cross-layer terms v_l' H_l'l v_l, unbiased but far noisier
                        v = _rademacher(weights[i], gen)
                        (hv,) = torch.autograd.grad(
                            g, weights[i], grad_outputs=v, retain_graph=True, allow_unused=True
                        )
                        if hv is not None:
                            traces[i] += float((v * hv).sum())
                n += self.probes
        self.scale = {
            g.name: max(t / max(1, n), 0.0) / g.numel for g, t in zip(geoms, traces, strict=True)
        }

    def damage(self, geom: LayerGeometry, w: torch.Tensor, w_hat: torch.Tensor) -> float:
        err = (w.detach().float() - w_hat.detach().to(w.device).float()) ** 2
        return self.scale[geom.name] * float(err.sum(dtype=torch.float64))


class LossDeltaEstimator(DamageEstimator):
    """damage = loss(model with only this layer's weight set to w_hat) - loss(model).

    Runs the model once per `damage` call: the exception to the estimator contract, for small
    models and as ground truth. The calibration set is ``examples`` examples (default
    ``batches * batch_size``) of the ``split`` ("train": a seeded random subset; "val": the
    first ones), evaluated in chunks of ``chunk``. With ``store_dir`` a loss measured before
    on the same model, calibration set and change (by any job using that folder) is looked up
    instead of run again (`measurements`); `save` keeps the new ones.
    """

    name = "loss"

    def __init__(self, examples: int | None = None, split: str = "train", chunk: int = 1024):
        if split not in ("train", "val"):
            raise InvalidOption(
                f"split {split!r} is not one of train, val", field="split", value=split
            )
        self.examples, self.split, self.chunk = examples, split, chunk
        self.base_loss = 0.0
        # Where measured losses are kept between jobs (`measurements`; None: this run only).
        # Set before `prepare`, which opens the file of this model and calibration set.
        self.store_dir: StoreFolder | Path | None = None
        self.losses: MeasuredLosses | None = None
        self.runs = 0  # losses `joint_damage` measured (a pass over the calibration set each)
        self.reused = 0  # losses it looked up in the store instead
        self.run_seconds = 0.0  # time the measured ones took

    def prepare(
        self,
        model: nn.Module,
        geoms: Sequence[LayerGeometry],
        data: TrainData,
        *,
        batches: int = 8,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        n = self.examples if self.examples is not None else batches * batch_size
        if self.split == "train":
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(data.x_train), generator=gen)[:n]
            self.x, self.y = data.x_train[idx], data.y_train[idx]
        else:
            self.x, self.y = data.x_val[:n], data.y_val[:n]
        self.model, self.task, self.device = model, data.task, torch.device(device)
        self.base_loss = self._loss()
        key = fingerprint(
            model, (self.x, self.y), self.task, self.device.type, self.chunk, self.base_loss
        )
        kept = self.losses
        self.losses = MeasuredLosses.open(self.store_dir, key)
        if kept is not None and kept.fingerprint == key:  # prepared again on the same model
            self.losses.values.update(kept.values)
            self.losses.new.update(kept.new)

    def damage(self, geom: LayerGeometry, w: torch.Tensor, w_hat: torch.Tensor) -> float:
        return self.joint_damage([(geom, w_hat)])

    def joint_damage(self, changes: Sequence[tuple[LayerGeometry, torch.Tensor]]) -> float:
        key = change_key((geom.name, w_hat) for geom, w_hat in changes)
        known = self.losses.get(key) if self.losses is not None else None
        if known is not None:
            self.reused += 1
            return known - self.base_loss
        t0 = time.perf_counter()
        loss = self._replaced_loss(changes)
        self.run_seconds += time.perf_counter() - t0
        self.runs += 1
        if self.losses is not None:
            self.losses.put(key, loss)
        return loss - self.base_loss

    def save(self) -> None:
        """Keep what was measured (in ``store_dir``, when set)."""
        if self.losses is not None:
            self.losses.save()

    def _replaced_loss(self, changes: Sequence[tuple[LayerGeometry, torch.Tensor]]) -> float:
        with calibration_mode(self.model, self.device), torch.no_grad():
            params = [layer_weight(self.model, geom) for geom, _ in changes]
            saved = [p.detach().clone() for p in params]
            try:
                for p, (_, w_hat) in zip(params, changes, strict=True):
                    p.copy_(w_hat)
                loss = self._loss()
            finally:
                for p, old in zip(params, saved, strict=True):
                    p.copy_(old)
        return loss

    def _loss(self) -> float:
        """Mean task loss over the calibration set (in chunks, summed in float64)."""
        total, count = 0.0, 0
        with calibration_mode(self.model, self.device), torch.no_grad():
            for i in range(0, len(self.x), self.chunk):
                x = self.x[i : i + self.chunk].to(self.device)
                y = self.y[i : i + self.chunk].to(self.device)
                total += float(task_loss(self.task, self.model(x), y)) * y.numel()
                count += y.numel()
        return total / max(1, count)


ESTIMATORS: dict[str, type[DamageEstimator]] = {
    cls.name: cls for cls in (FisherEstimator, HessianTraceEstimator, LossDeltaEstimator)
}


def estimator_names() -> list[str]:
    return sorted(ESTIMATORS)


def get_estimator(name: str, **settings: Any) -> DamageEstimator:
    """A fresh estimator by name ("fisher", "hessian", "loss"), built with ``settings``."""
    if name not in ESTIMATORS:
        raise InvalidOption(
            f"damage estimator {name!r} is not one of {', '.join(estimator_names())}",
            field="estimator",
            value=name,
        )
    return ESTIMATORS[name](**settings)


# ------------------------------------------------------------------------------ helpers
@contextmanager
def calibration_mode(model: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """``model`` in eval mode on ``device`` inside the block; its modes and device after.

    Switching is skipped when nothing would change, so nesting (scoring around a loss
    estimator's per-option runs) costs nothing and graph modules are not recompiled.
    """
    tensors = [*model.parameters(), *model.buffers()]
    home = tensors[0].device if tensors else torch.device("cpu")
    device = torch.device(device)
    flags = {m: m.training for m in model.modules()}
    graph_was_training = is_graph_module(model) and model.training
    if any(flags.values()):
        set_training_mode(model, False)
    moved = home != device
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(home)
        if graph_was_training:
            set_training_mode(model, True)
        for m, was in flags.items():
            m.training = was


@contextmanager
def _gradients_on(model: nn.Module, geoms: Sequence[LayerGeometry]) -> Iterator[list[nn.Parameter]]:
    """The layers' weights, requiring grad inside the block (flags restored after)."""
    weights = [layer_weight(model, g) for g in geoms]
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            yield weights
    finally:
        for w, f in zip(weights, flags, strict=True):
            w.requires_grad_(f)


def layer_weight(model: nn.Module, geom: LayerGeometry) -> nn.Parameter:
    """The dense weight parameter of layer ``geom``; refuses parametrized (compressed) layers."""
    mod = model.get_submodule(geom.name)
    if parametrize.is_parametrized(mod, "weight"):
        raise InvalidOption(
            f"layer {geom.name!r} is parametrized (already compressed); score the dense model",
            field="model",
            value=geom.name,
        )
    w = mod.weight
    if not isinstance(w, nn.Parameter):
        raise InvalidOption(
            f"layer {geom.name!r} has no weight parameter", field="model", value=geom.name
        )
    return w


def _calibration_batches(
    data: TrainData, n: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    stream = batches(data, batch_size, seed)
    for _ in range(max(0, n)):
        yield next(stream)


def _sample_labels(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's own predictive distribution (on the CPU, reproducible)."""
    probs = torch.softmax(logits.detach().float().reshape(-1, logits.shape[-1]), -1).cpu()
    return torch.multinomial(probs, 1, generator=gen).reshape(logits.shape[:-1])


def _rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random +-1 tensor of ``like``'s shape (drawn on the CPU so runs are reproducible)."""
    v = torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8)
    return (v.to(like.dtype) * 2 - 1).to(like.device)
