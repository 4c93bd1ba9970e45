"""Scoring: exact bytes and estimated damage of every candidate option on every layer.

The "score" stage of DESIGN.md: one calibration pass (the estimator's `prepare`), then for
each layer and option the compressed weight w_hat exactly as fine-tuning starts it
(`CompressedWeight(option, w)(w)`: magnitude mask, then survivors quantized with the initial
scales), its exact bytes in the file (unstructured positions from that very mask) and its
damage. Interactions of sparsity and quantization are measured on the combined w_hat, not
assumed additive. The result, `Scores`, is stored with the job; re-solving it for another
budget (`Scores.resolve`) or drawing the whole accuracy-vs-size curve (`Scores.pareto`) needs
no model.

Compared with Yang et al. (CVPR 2020), who score one bit-width per layer by its quantization
distortion, an option here is a (sparsity pattern, bits, scale granularity) triple, its cost is
the file's bytes (scales, indices and bias included) and its damage is loss-aware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimline.errors import InvalidOption
from slimline.search.accounting import kept_count, layer_bytes
from slimline.search.allocation import (
    Allocation,
    allocate,
    byte_range,
    named_joints,
    pareto_front,
)
from slimline.search.compressed import CompressedWeight
from slimline.search.estimators import (
    DamageEstimator,
    FisherEstimator,
    LossDeltaEstimator,
    calibration_mode,
    get_estimator,
    layer_weight,
)
from slimline.search.layers import LayerGeometry
from slimline.search.options import DENSITIES, FP16, NM_PATTERNS, REMOVED, LayerOption, Plan
from slimline.search.store_folder import StoreFolder
from slimline.search.training import Progress, TrainData

DENSE_BITS = (2, 3, 4, 5, 6, 8)
NM_BITS = (2, 3, 4, 6, 8)  # and fp16
UNSTRUCTURED_BITS = (2, 3, 4)
TENSOR_SCALE_BITS = (2, 3, 4)  # bits at which small layers also get one scale per tensor
# A layer is "small" when its per-channel fp16 scales exceed this share of its dense 4-bit
# values: there one scale per tensor can be worth its extra error.
SMALL_LAYER_SCALE_SHARE = 0.10


def candidate_options(geom: LayerGeometry) -> list[LayerOption]:
    """The default search space of one layer (about 60-110 options; small layers more).

    fp16; dense at 2-8 bits; every N:M pattern that fits a row at 2, 3, 4, 6, 8 bits and
    fp16; unstructured at each of `DENSITIES` (distinct kept counts only) at 2, 3, 4 bits,
    with one scale per tensor as well where per-channel scales would outweigh 10% of the values;
    removed. Quantized options use per-channel scales; a small layer (see
    `SMALL_LAYER_SCALE_SHARE`) without a folded norm also gets per-tensor variants at 2-4 bits
    (with a folded norm a per-tensor scale becomes per-channel anyway). A plain function:
    pass another to `score_model` to search a different space.
    """
    out = [FP16]
    out += [LayerOption(bits=b, granularity="channel") for b in DENSE_BITS]
    for n, m in NM_PATTERNS:
        if m > geom.row_len:
            continue  # a group longer than the row would be mostly padding
        out.append(LayerOption(sparsity="nm", n=n, m=m, bits=16))
        out += [
            LayerOption(sparsity="nm", n=n, m=m, bits=b, granularity="channel") for b in NM_BITS
        ]
    seen: set[int] = set()
    for d in DENSITIES:
        opt = LayerOption(sparsity="unstructured", density=d, bits=2, granularity="channel")
        k = kept_count(opt, geom.rows, geom.row_len)
        if k >= geom.numel or k in seen:
            continue
        seen.add(k)
        for b in UNSTRUCTURED_BITS:
            out.append(replace(opt, bits=b))
            # very sparse: the per-channel scales outweigh a share of the values, so one
            # scale per tensor is offered too (a folded norm makes it per-channel anyway)
            if (
                geom.norm is None
                and geom.rows > 1
                and 2 * geom.rows > SMALL_LAYER_SCALE_SHARE * k * b / 8
            ):
                out.append(replace(opt, bits=b, granularity="tensor"))
    small = 2 * geom.rows > SMALL_LAYER_SCALE_SHARE * geom.numel * 4 / 8
    if small and geom.norm is None and geom.rows > 1:
        out += [
            replace(o, granularity="tensor")
            for o in list(out)
            if o.quantized and o.bits in TENSOR_SCALE_BITS
        ]
    out.append(REMOVED)
    return list(dict.fromkeys(out))  # each option once, in order


@dataclass(frozen=True, eq=False)
class LayerScores:
    """One layer's candidate options with their exact bytes and estimated damage."""

    name: str  # module path of the layer
    options: list[LayerOption]
    bytes: np.ndarray  # int64 [options]: exact bytes of the layer's streams in the file
    damage: np.ndarray  # float64 [options]: estimated loss damage

    def __post_init__(self) -> None:
        object.__setattr__(self, "bytes", np.asarray(self.bytes, dtype=np.int64))
        object.__setattr__(self, "damage", np.asarray(self.damage, dtype=np.float64))
        n = len(self.options)
        if n == 0 or self.bytes.shape != (n,) or self.damage.shape != (n,):
            raise InvalidOption(
                f"layer {self.name!r}: {n} options need {n} bytes and {n} damages, got "
                f"{self.bytes.shape} and {self.damage.shape}",
                field="scores",
                value=self.name,
            )
        if not np.isfinite(self.damage).all():
            raise InvalidOption(
                f"layer {self.name!r}: damages must be finite", field="scores", value=self.name
            )

    def option_strs(self) -> list[str]:
        return [o.to_str() for o in self.options]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "options": [o.to_str() for o in self.options],
            "bytes": [int(b) for b in self.bytes],
            "damage": [float(d) for d in self.damage],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerScores:
        try:
            return cls(
                name=str(data["name"]),
                options=[LayerOption.from_str(str(s)) for s in data["options"]],
                bytes=np.asarray(data["bytes"], dtype=np.int64),
                damage=np.asarray(data["damage"], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidOption(
                f"layer scores need name, options, bytes and damage: {exc}", field="scores"
            ) from None


@dataclass(frozen=True)
class JointDamage:
    """The measured damage of some layers taking the given options together (`branches`)."""

    layers: list[str]  # layer names
    options: list[str]  # the option of each layer (`LayerOption.to_str` form)
    damage: float

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "options": list(self.options), "damage": self.damage}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JointDamage:
        try:
            return cls(
                layers=[str(n) for n in data["layers"]],
                options=[str(o) for o in data["options"]],
                damage=float(data["damage"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidOption(
                f"a joint damage needs layers, options and damage: {exc}", field="joints"
            ) from None


@dataclass(frozen=True, eq=False)
class Scores:
    """Scores of every compressible layer of a model: enough to allocate any budget."""

    VERSION = 1

    layers: list[LayerScores]
    estimator: str  # name of the damage estimator that produced the damages
    groups: list[list[str]] = field(default_factory=list)  # tied layers: same option each
    joints: list[JointDamage] = field(default_factory=list)  # measured joint damages

    def __post_init__(self) -> None:
        index = {ls.name: i for i, ls in enumerate(self.layers)}
        if len(index) != len(self.layers):
            raise InvalidOption("layer names in scores must be unique", field="scores")
        for jt in self.joints:
            for name, opt in zip(jt.layers, jt.options, strict=True):
                if name not in index or opt not in self.layers[index[name]].option_strs():
                    raise InvalidOption(
                        f"joint damage names layer {name!r} with option {opt!r}, which the "
                        "scores do not have",
                        field="joints",
                        value=name,
                    )
        for group in self.groups:
            unknown = [n for n in group if n not in index]
            if unknown:
                raise InvalidOption(
                    f"tied group {group} names unknown layers {unknown}",
                    field="groups",
                    value=group,
                )
            opts = {tuple(o.to_str() for o in self.layers[index[n]].options) for n in group}
            if len(opts) > 1:
                raise InvalidOption(
                    f"tied layers {group} must have the same options", field="groups", value=group
                )

    # ------------------------------------------------------------------------- allocation
    def _arrays(self) -> dict[str, Any]:
        """The knapsack's arguments: per-layer bytes and damage, tied groups and joints."""
        index = {ls.name: i for i, ls in enumerate(self.layers)}
        joints = named_joints(
            [ls.name for ls in self.layers],
            [ls.option_strs() for ls in self.layers],
            [(jt.layers, jt.options, jt.damage) for jt in self.joints],
        )
        return {
            "bytes": [ls.bytes for ls in self.layers],
            "damage": [ls.damage for ls in self.layers],
            "groups": [[index[n] for n in g] for g in self.groups],
            "joints": joints,
        }

    def allocation(self, layer_budget: int, solver: str = "exact") -> Allocation:
        """The least-damage choice whose layer bytes fit ``layer_budget``."""
        return allocate(budget=layer_budget, solver=solver, **self._arrays())

    def resolve(self, layer_budget: int, solver: str = "exact") -> Plan:
        """The plan of the least-damage allocation within ``layer_budget`` layer bytes."""
        a = self.allocation(layer_budget, solver)
        return Plan({ls.name: ls.options[c] for ls, c in zip(self.layers, a.choice, strict=True)})

    def pareto(self, points: int = 40) -> list[dict[str, Any]]:
        """Optimal (bytes, damage) at ``points`` budgets from `min_bytes` to `max_bytes`."""
        front = pareto_front(points=points, **self._arrays())
        return [{"bytes": nb, "damage": nd} for nb, nd in front]

    def min_bytes(self) -> int:
        """The fewest layer bytes any allocation needs (every layer at its cheapest option)."""
        return byte_range(**self._arrays())[0]

    def max_bytes(self) -> int:
        """Layer bytes of the least-damage allocation: no budget above it lowers damage."""
        return byte_range(**self._arrays())[1]

    # ---------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.VERSION,
            "estimator": self.estimator,
            "groups": [list(g) for g in self.groups],
            "joints": [jt.to_dict() for jt in self.joints],
            "layers": [ls.to_dict() for ls in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        version = data.get("version")
        if version != cls.VERSION:
            raise InvalidOption(
                f"scores version {version!r} is not supported (this slimline reads {cls.VERSION})",
                field="version",
                value=version,
            )
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise InvalidOption("scores 'layers' must be a list", field="layers", value=layers)
        return cls(
            layers=[LayerScores.from_dict(x) for x in layers],
            estimator=str(data.get("estimator", "")),
            groups=[[str(n) for n in g] for g in data.get("groups", [])],
            joints=[JointDamage.from_dict(x) for x in data.get("joints", [])],
        )


def score_model(
    model: nn.Module,
    geoms: Sequence[LayerGeometry],
    data: TrainData,
    *,
    estimator: str | DamageEstimator = "fisher",
    options: Callable[[LayerGeometry], list[LayerOption]] = candidate_options,
    batches: int = 8,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    groups: Sequence[Sequence[str]] = (),
    progress: Progress | None = None,
    budget: int | None = None,
    solver: str = "exact",
    monotone: bool = True,
    branches: Sequence[Sequence[str]] = (),
    store: StoreFolder | Path | None = None,
) -> Scores:
    """Bytes and damage of every option of every layer, from one calibration pass.

    ``estimator`` is a name (`estimators.get_estimator`) or an instance (prepared here). The
    model is left unchanged. ``progress`` gets ``{"step": i, "total": n}`` after each layer.
    The model is run ``batches`` times by `prepare` and never per option (except by the
    "loss" estimator, whose damage is a measurement, and the Fisher estimator's measurements
    of far options).

    With ``budget`` (layer bytes) the Fisher estimator measures far options only where the
    allocation for that budget needs them (`_measure_for_budget`): the allocation of the
    returned scores at ``budget`` is the one measuring every far option would give, with a
    small share of the forward passes. Damages of far options no allocation at that budget
    wanted stay Fisher estimates, which are lower bounds of what measuring gives, so a re-solve
    at a very different budget (the what-if curve) can be optimistic there. ``monotone`` (with
    ``budget``) also takes a measured damage as a lower bound for the layer's unmeasured options
    that compress at least as much (`compresses_at_least`): 30-60% fewer forward passes on the
    zoo models, exact where damage grows with compression along those chains
    (`_measure_for_budget`).

    ``branches`` (`branches.removal_branches`): sets of layers whose removal together is
    measured, one forward pass each, and stored as a `JointDamage` the knapsack can take in
    place of the sum of their removals (none where the estimator does not run the model).

    ``store``: a folder where measured losses are kept between runs on the same model and
    calibration set (`measurements`): what was measured there before is looked up, not run
    (a `StoreFolder` carries its size limit; a bare path gets the default).
    """
    est = get_estimator(estimator) if isinstance(estimator, str) else estimator
    geoms = list(geoms)
    for geom in geoms:
        layer_weight(model, geom)  # refuse parametrized layers before any work
    measuring = measuring_estimator(est)
    if measuring is not None:
        measuring.store_dir = store
    out: list[LayerScores] = []
    with calibration_mode(model, device), _saving(measuring):
        est.prepare(
            model, geoms, data, batches=batches, batch_size=batch_size, device=device, seed=seed
        )
        lazy = budget is not None and isinstance(est, FisherEstimator) and est.measured is not None
        pending: list[_Pending] = []
        for step, geom in enumerate(geoms, start=1):
            w = layer_weight(model, geom).detach().clone()
            opts = list(options(geom))
            if lazy:
                assert isinstance(est, FisherEstimator)
                nbytes, damage, far = _fisher_layer(est, geom, w, opts)
                pending.append(_Pending(geom, w, far, damage.copy()))
            elif isinstance(est, FisherEstimator) and est.measured is not None:
                nbytes, damage = _score_layer_measuring_far(est, geom, w, opts)
            else:
                nbytes = np.empty(len(opts), dtype=np.int64)
                damage = np.empty(len(opts), dtype=np.float64)
                for j, opt in enumerate(opts):
                    nbytes[j], damage[j] = _score_option(est, geom, w, opt)
            out.append(LayerScores(geom.name, opts, nbytes, damage))
            if progress is not None:
                progress({"step": step, "total": len(geoms)})
        tied = {n for g in groups for n in g}
        branches = [b for b in branches if not tied.intersection(b)]
        joints = _joint_removals(est, model, geoms, out, branches)
        scores = Scores(out, est.name, [list(g) for g in groups], joints)
        if lazy:
            assert isinstance(est, FisherEstimator) and budget is not None
            _measure_for_budget(est, scores, pending, budget, solver, monotone)
    return scores


def measuring_estimator(est: DamageEstimator) -> LossDeltaEstimator | None:
    """The estimator that runs the model for ``est``'s measurements (None: it never does)."""
    if isinstance(est, FisherEstimator):
        return est.measured
    return est if isinstance(est, LossDeltaEstimator) else None


def count_measurements(report: dict[str, Any], est: DamageEstimator | None) -> None:
    """Record in ``report`` how many losses ``est`` measured (``measured``: a forward pass over
    the calibration set each, ``measured_seconds`` in all) and how many it looked up in the
    store (``measured_reused``)."""
    measuring = measuring_estimator(est) if est is not None else None
    if measuring is not None:
        report["measured"] = measuring.runs
        report["measured_seconds"] = measuring.run_seconds
        report["measured_reused"] = measuring.reused


@contextmanager
def _saving(measuring: LossDeltaEstimator | None) -> Iterator[None]:
    """Keep what was measured inside the block, also when it ends by an error or a stop."""
    try:
        yield
    finally:
        if measuring is not None:
            measuring.save()


@dataclass
class _Pending:
    """A layer whose far options are measured on demand (`_measure_for_budget`)."""

    geom: LayerGeometry
    w: torch.Tensor  # the dense weight
    far: np.ndarray  # bool [options]: far and not yet measured (updated in place)
    fisher: np.ndarray  # float64 [options]: the Fisher estimates, before any bound or measure


def compresses_at_least(a: LayerOption, b: LayerOption) -> bool:
    """Whether ``a`` keeps at most what ``b`` keeps, at most as precisely, in the same family:
    removed compresses at least as much as anything; otherwise the same sparsity kind and scale
    granularity (and N:M group length) with no more bits and no larger kept fraction."""
    if a.sparsity == "removed":
        return True
    if (a.sparsity, a.granularity, a.group_size, a.m) != (
        b.sparsity,
        b.granularity,
        b.group_size,
        b.m,
    ):
        return False
    return a.bits <= b.bits and a.n <= b.n and a.density <= b.density


def _measure_for_budget(
    est: FisherEstimator,
    scores: Scores,
    layers: list[_Pending],
    budget: int,
    solver: str,
    monotone: bool = True,
) -> None:
    """Measure far options where the allocation at ``budget`` picks them, until it picks none.

    Lazy constraint generation: every unmeasured far option's damage is its Fisher estimate,
    a lower bound of max(Fisher, measured) (what `FisherEstimator.damage` gives); when the
    optimal allocation picks only measured (or near) options, its damage is exact while any
    other allocation's is at most underestimated, so it is optimal for the fully measured
    damages too (with the "greedy" solver the loop ends the same way, without that guarantee).

    With ``monotone``, a measured damage also raises the unmeasured far options of the layer
    that compress at least as much (`compresses_at_least`) to it: keeping fewer weights, or
    fewer bits, of the same family rarely damages less. Where that holds, the bounds are still
    lower bounds and the argument above still gives the optimum; where it does not, such an
    option's damage can be overstated by the difference. Without it, at tight budgets the
    allocation walks down each layer's chain one option a round (bytegpt at 32x: 1,264 forward
    passes); with it, a measurement rules out the rest of the chain at once (880, the same
    plan; the same plans on lenet5 and lenet300 at 64x-256x too).

    ``far`` is updated in place; damages are raised in ``scores`` in place.
    """
    while True:
        a = scores.allocation(budget, solver)
        joined = {n for j in a.joints for n in scores.joints[j].layers}  # damage measured jointly
        todo = [
            (i, int(c))
            for i, c in enumerate(a.choice)
            if layers[i].far[int(c)] and scores.layers[i].name not in joined
        ]
        if not todo:
            return
        for i, j in todo:
            p, ls = layers[i], scores.layers[i]
            _measure_option(est, p.geom, p.w, ls.options, ls.damage, p.far, j, p.fisher[j])
            if monotone:
                for k in np.flatnonzero(p.far):
                    if compresses_at_least(ls.options[k], ls.options[j]):
                        ls.damage[k] = max(ls.damage[k], ls.damage[j])


def _joint_removals(
    est: DamageEstimator,
    model: nn.Module,
    geoms: Sequence[LayerGeometry],
    scored: list[LayerScores],
    branches: Sequence[Sequence[str]],
) -> list[JointDamage]:
    """The measured damage of removing each branch's layers at once; none where the estimator
    cannot measure, and no joint for a branch with a layer that cannot be removed."""
    by_name = {g.name: g for g in geoms}
    options = {ls.name: ls.option_strs() for ls in scored}
    removed = REMOVED.to_str()
    out = []
    for branch in branches:
        if any(removed not in options.get(n, ()) for n in branch):
            continue
        changes = []
        for n in branch:
            w = layer_weight(model, by_name[n]).detach()
            with torch.no_grad():
                changes.append((by_name[n], CompressedWeight(REMOVED, w).to(w.device)(w)))
        damage = est.joint_damage(changes)
        if damage is None:
            return []
        out.append(JointDamage(list(branch), [removed] * len(branch), damage))
    return out


def _fisher_layer(
    est: FisherEstimator, geom: LayerGeometry, w: torch.Tensor, opts: list[LayerOption]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact bytes, Fisher damage, far and not yet measured) of every option of one layer;
    with ``est.reuse_measurements`` an option measured in an earlier pass has its Fisher
    estimate scaled by the ratio measured then, and counts as measured."""
    nbytes = np.empty(len(opts), dtype=np.int64)
    damage = np.empty(len(opts), dtype=np.float64)
    far = np.zeros(len(opts), dtype=bool)
    for j, opt in enumerate(opts):
        with torch.no_grad():
            cw = CompressedWeight(opt, w).to(w.device)
            w_hat = cw(w)
        nbytes[j] = layer_bytes(opt, geom, mask=cw.mask).total
        damage[j], far[j] = est.estimate(geom, w, w_hat)
    if est.reuse_measurements:
        for j, opt in enumerate(opts):
            ratio = est.ratios.get((geom.name, opt.to_str()))
            if far[j] and ratio is not None:
                damage[j] *= ratio
                far[j] = False
    return nbytes, damage, far


def _score_layer_measuring_far(
    est: FisherEstimator, geom: LayerGeometry, w: torch.Tensor, opts: list[LayerOption]
) -> tuple[np.ndarray, np.ndarray]:
    """Fisher damages, with the options that move the layer far measured — lazily: only those
    on the layer's bytes-vs-damage front, until the front holds no unmeasured far option. An
    option off the front cannot be allocated, and measuring only raises a damage, so the
    result equals measuring every far option (`FisherEstimator.damage`) on what can be
    chosen, at a fraction of the forward passes. With ``est.reuse_measurements`` an option
    measured in an earlier pass is not run again: its Fisher estimate is scaled by the ratio
    measured then."""
    nbytes, damage, far = _fisher_layer(est, geom, w, opts)
    while True:
        todo = [j for j in front_indices(nbytes, damage) if far[j]]
        if not todo:
            return nbytes, damage
        for j in todo:
            _measure_option(est, geom, w, opts, damage, far, j)


def _measure_option(
    est: FisherEstimator,
    geom: LayerGeometry,
    w: torch.Tensor,
    opts: list[LayerOption],
    damage: np.ndarray,
    far: np.ndarray,
    j: int,
    fisher: float | None = None,
) -> None:
    """Raise option ``j``'s damage to what is measured (in place), remember the ratio of
    max(Fisher, measured) to the Fisher estimate (``fisher``, default the damage now) for later
    passes, and mark it measured."""
    with torch.no_grad():
        w_hat = CompressedWeight(opts[j], w).to(w.device)(w)
    f = float(damage[j]) if fisher is None else float(fisher)
    measured = est.measure(geom, w, w_hat)
    damage[j] = max(float(damage[j]), measured)
    est.ratios[(geom.name, opts[j].to_str())] = max(f, measured) / max(f, 1e-30)
    far[j] = False


def front_indices(nbytes: np.ndarray, damage: np.ndarray) -> list[int]:
    """Indices no other option beats on both bytes and damage."""
    keep, best = [], float("inf")
    for i in np.lexsort((damage, nbytes)):
        if damage[i] < best:
            keep.append(int(i))
            best = float(damage[i])
    return keep


def _score_option(
    est: DamageEstimator, geom: LayerGeometry, w: torch.Tensor, opt: LayerOption
) -> tuple[int, float]:
    """(exact bytes, damage) of ``opt`` on the layer whose dense weight is ``w``."""
    with torch.no_grad():
        cw = CompressedWeight(opt, w).to(w.device)
        w_hat = cw(w)
    nbytes = layer_bytes(opt, geom, mask=cw.mask).total
    return nbytes, est.damage(geom, w, w_hat)
