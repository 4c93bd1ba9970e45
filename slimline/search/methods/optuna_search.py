"""`optuna`: black-box search over per-layer options, the byte budget a hard constraint.

Built on Optuna (Akiba et al., KDD 2019: define-by-run trials, TPE and NSGA-II samplers, studies
in a relational database shared by several workers). Each trial picks one option per layer,
fine-tunes a copy of the model for a few quantization-aware steps and reports the validation
loss; the best trial's plan is proposed.

What we do differently from a plain Optuna loop, and why:
  - The search space comes from the scoring pass (`slimline.search.scoring`): each layer may
    only take options that are Pareto-efficient in (exact bytes, estimated damage). An option
    that costs more and is expected to hurt more is never worth a trial, and dropping it shrinks
    the space from ~150 options per layer to a dozen or so.
  - The budget is a constraint, not a penalty: a sampled configuration over the budget is
    repaired before it is evaluated — the layer whose downgrade costs the least estimated
    damage per byte saved is moved to a cheaper option, until the plan fits — so no trial ever
    trains an over-budget plan. The sampler keeps the parameters it drew; the plan actually
    evaluated and the repair moves are the trial's user attributes.
  - The first trial is the knapsack solution of the same scores (`Scores.resolve`), so the
    search starts from what the `constrained` method would propose and can only improve on it
    (as measured by the proxy).
  - A repaired plan already evaluated (in this call or by another worker) is not trained again:
    its recorded loss is reused.
  - The objective is a proxy: `proxy_steps` of QAT from the dense weights on a deep copy
    (``ctx.model`` is never touched), measured on the first `val_samples` validation examples.

Bytes are exact: the scoring pass costs an unstructured option with the position stream of the
mask the dense weights give it, which is the mask plain QAT (the default `finetune`) keeps to
the end.

Several workers share one study through ``storage`` (an RDB URL such as the service's database
URL) and ``study_name`` (derived from a hash of the model, the data, the budget and the search
space when not given, so equal jobs meet in the same study). Optuna keeps its own tables and an
``alembic_version`` table: give it a database or schema of its own, not the one our migrations
manage.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch

from slimline.errors import InfeasibleBudget
from slimline.search.accounting import layer_bytes
from slimline.search.compressed import apply_plan
from slimline.search.estimators import get_estimator
from slimline.search.layers import LayerGeometry
from slimline.search.masks import option_mask
from slimline.search.method_settings import OptunaSettings
from slimline.search.methods.base import SearchContext, SearchMethod, register
from slimline.search.options import LayerOption, Plan
from slimline.search.scoring import Scores, count_measurements, score_model
from slimline.search.training import TrainConfig, TrainData, evaluate, train

HEARTBEAT_SECONDS = 30  # a worker that dies leaves its trial RUNNING; others fail it after 2x


# ---------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Choices:
    """What one search parameter may take: an option for one layer, or for a group of tied
    layers that must take the same option. Cheapest first, with their costs."""

    names: tuple[str, ...]  # the layers this parameter sets
    options: list[LayerOption]
    bytes: np.ndarray  # int64 [C], exact bytes summed over the layers (dense-weight masks)
    damage: np.ndarray  # float64 [C], estimated damage summed over the layers

    @property
    def param(self) -> str:
        return "+".join(self.names)

    def index(self, option_str: str) -> int:
        return [o.to_str() for o in self.options].index(option_str)


def exact_option_bytes(option: LayerOption, geom: LayerGeometry, weight: torch.Tensor) -> int:
    """Exact bytes of ``option`` on a layer whose mask is picked from ``weight`` by magnitude."""
    mask = None
    if option.sparsity == "unstructured":
        mask = option_mask(option, weight.detach().reshape(geom.rows, geom.row_len))
    return layer_bytes(option, geom, mask=mask).total


def pareto_indices(costs: np.ndarray, damage: np.ndarray) -> list[int]:
    """Indices not dominated in (cost, damage), cheapest first; among equals the first."""
    order = np.lexsort((damage, costs))  # by cost, then damage
    keep: list[int] = []
    best = np.inf
    for i in order:
        if damage[i] < best:
            keep.append(int(i))
            best = damage[i]
    return keep


def search_space(
    scores: Scores, geoms: Sequence[LayerGeometry], extra: Plan | None
) -> list[Choices]:
    """One parameter per layer (per group of tied layers): its Pareto-efficient scored options,
    plus ``extra``'s option when that is not among them."""
    names = [ls.name for ls in scores.layers]
    by_name = {ls.name: ls for ls in scores.layers}
    tied = [tuple(grp) for grp in scores.groups]
    grouped = {n for grp in tied for n in grp}
    items = tied + [(g.name,) for g in geoms if g.name not in grouped]
    items.sort(key=lambda grp: min(names.index(n) for n in grp))
    out = []
    for grp in items:
        options = list(by_name[grp[0]].options)  # equal for tied layers (Scores checks)
        costs = np.zeros(len(options), dtype=np.int64)
        damage = np.zeros(len(options), dtype=np.float64)
        for n in grp:
            costs += by_name[n].bytes  # exact: positions of the mask the dense weight gives
            damage += by_name[n].damage
        keep = pareto_indices(costs, damage)
        if extra is not None and options.index(extra[grp[0]]) not in keep:
            keep.append(options.index(extra[grp[0]]))
        keep.sort(key=lambda i: (costs[i], damage[i]))
        out.append(Choices(grp, [options[i] for i in keep], costs[keep], damage[keep]))
    return out


# ---------------------------------------------------------------------------------- repair
@dataclass(frozen=True)
class Repair:
    choice: list[int]  # index into each parameter's choices, after repair
    moves: list[tuple[str, str, str]]  # (parameter, from option, to option), in order
    bytes_before: int
    bytes_after: int


def repair(space: Sequence[Choices], choice: Sequence[int], budget: int) -> Repair:
    """Downgrade layers until the plan fits ``budget``: each move goes to a cheaper option of
    one layer, the one adding the least estimated damage per byte saved."""
    cur = list(choice)
    total = int(sum(lc.bytes[c] for lc, c in zip(space, cur, strict=True)))
    before, moves = total, []
    while total > budget:
        best: tuple[float, int, int] | None = None  # (damage per byte, parameter, option)
        for li, lc in enumerate(space):
            c = cur[li]
            cheaper = np.nonzero(lc.bytes < lc.bytes[c])[0]
            if cheaper.size == 0:
                continue
            saved = (lc.bytes[c] - lc.bytes[cheaper]).astype(np.float64)
            rate = np.maximum(lc.damage[cheaper] - lc.damage[c], 0.0) / saved
            j = int(np.argmin(rate))
            cand = (float(rate[j]), li, int(cheaper[j]))
            if best is None or cand[0] < best[0]:
                best = cand
        if best is None:
            raise InfeasibleBudget(
                f"no choice of options fits {budget} layer bytes (the cheapest takes {total})",
                field="budget",
                value=budget,
            )
        _, li, j = best
        lc = space[li]
        moves.append((lc.param, lc.options[cur[li]].to_str(), lc.options[j].to_str()))
        total -= int(lc.bytes[cur[li]] - lc.bytes[j])
        cur[li] = j
    return Repair(cur, moves, before, total)


def plan_of(space: Sequence[Choices], choice: Sequence[int]) -> Plan:
    return Plan({n: lc.options[c] for lc, c in zip(space, choice, strict=True) for n in lc.names})


# ----------------------------------------------------------------------------------- proxy
@dataclass(frozen=True)
class ValSubset:
    """The training split as it is, the validation split cut to its first ``n`` examples."""

    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @classmethod
    def of(cls, data: TrainData, n: int) -> ValSubset:
        return cls(data.task, data.x_train, data.y_train, data.x_val[:n], data.y_val[:n])


def proxy_loss(
    ctx: SearchContext, plan: Plan, data: ValSubset, settings: OptunaSettings, seed: int
) -> float:
    """Validation loss after ``proxy_steps`` QAT steps of a copy of the dense model."""
    model = copy.deepcopy(ctx.model)
    apply_plan(model, plan, ctx.geoms)
    cfg = TrainConfig(
        epochs=1e9,  # the step count is proxy_steps, however small the training set
        max_steps=settings.proxy_steps,
        lr=settings.proxy_lr,
        batch_size=min(settings.proxy_batch_size, len(data.x_train)),
        seed=seed,
    )
    train(model, data, cfg, device=ctx.device, should_stop=ctx.should_stop)
    return evaluate(model, data, device=ctx.device)["loss"]


def study_fingerprint(
    ctx: SearchContext, data: ValSubset, space: Sequence[Choices], settings: OptunaSettings
) -> str:
    """A name for the study that equal jobs (model, data, budget, space, proxy) share."""
    h = hashlib.sha256()
    for key, t in sorted(ctx.model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for t in (data.x_val, data.y_val):
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    meta = {
        "train": list(data.x_train.shape),
        "budget": ctx.layer_budget,
        "space": {lc.param: [o.to_str() for o in lc.options] for lc in space},
        "proxy": [settings.proxy_steps, settings.proxy_lr, settings.proxy_batch_size],
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return f"slimline-{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------------- method
@register
class OptunaMethod(SearchMethod):
    name = "optuna"
    settings_cls = OptunaSettings
    settings: OptunaSettings
    study: optuna.Study | None = None  # the latest call's study (notebooks, tests)

    def propose(self, ctx: SearchContext) -> Plan:
        s = self.settings
        t0 = time.perf_counter()
        est = get_estimator(s.estimator)
        scores = score_model(
            ctx.model,
            ctx.geoms,
            ctx.data,
            estimator=est,
            batches=s.calibration_batches,
            batch_size=s.calibration_batch_size,
            device=ctx.device,
            seed=ctx.seed,
            progress=ctx.progress,
            store=ctx.measurements,
        )
        self.last_scores = scores
        self.report["scores_seconds"] = time.perf_counter() - t0
        count_measurements(self.report, est)
        warm = scores.resolve(ctx.layer_budget)
        space = search_space(scores, ctx.geoms, warm)
        smallest = int(sum(lc.bytes.min() for lc in space))
        if smallest > ctx.layer_budget:
            raise InfeasibleBudget(
                f"the optuna method cannot fit {ctx.payload_budget} payload bytes: its smallest "
                f"plan needs {smallest + ctx.other_bytes} bytes",
                field="budget",
                value=ctx.payload_budget,
            )
        data = ValSubset.of(ctx.data, s.val_samples)
        seed = ctx.seed if s.seed is None else s.seed
        objective = _Objective(ctx, space, data, s, seed)
        warm_params = {lc.param: warm[lc.names[0]].to_str() for lc in space}
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress goes to ctx.progress
        try:
            study = self._study(ctx, data, space, seed)
            study.enqueue_trial(warm_params, user_attrs={"source": "knapsack"}, skip_if_exists=True)
            study.optimize(objective, n_trials=s.trials, callbacks=[objective.after_trial])
        finally:
            optuna.logging.set_verbosity(verbosity)
        self.study = study
        plan, best = self._best(ctx, study, space, warm_params)
        self.report.update(
            {
                "optuna_study": study.study_name,
                "optuna_trials": len(study.trials),
                "optuna_best_trial": best.number if best is not None else None,
                "optuna_best_loss": best.value if best is not None else None,
                "optuna_repaired": sum(
                    1 for t in study.trials if t.user_attrs.get("repaired") is True
                ),
                "search_seconds": time.perf_counter() - t0,
            }
        )
        return plan

    def _study(
        self, ctx: SearchContext, data: ValSubset, space: Sequence[Choices], seed: int
    ) -> optuna.Study:
        """The study to add trials to (created, or loaded from the shared storage)."""
        s = self.settings
        storage: optuna.storages.BaseStorage
        if s.storage is None:
            storage = optuna.storages.InMemoryStorage()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    s.storage, heartbeat_interval=HEARTBEAT_SECONDS
                )
        name = s.study_name or study_fingerprint(ctx, data, space, s)
        probe = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )
        # Offset the sampler's seed by the trials already there, so a second worker on the
        # same study does not redraw the first one's random start-up points.
        seed += len(probe.trials)
        sampler: optuna.samplers.BaseSampler
        if s.sampler == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(
                seed=seed, population_size=max(4, s.trials // 3)
            )
        else:
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, s.trials // 3))
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)

    def _best(
        self,
        ctx: SearchContext,
        study: optuna.Study,
        space: Sequence[Choices],
        warm_params: dict[str, str],
    ) -> tuple[Plan, optuna.trial.FrozenTrial | None]:
        """The best completed trial's evaluated plan that fits this context's budget."""
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for trial in sorted(done, key=lambda t: t.value if t.value is not None else np.inf):
            strs = trial.user_attrs.get("plan")
            if not isinstance(strs, dict) or set(strs) != {g.name for g in ctx.geoms}:
                continue
            plan = Plan({n: LayerOption.from_str(v) for n, v in strs.items()})
            used = 0
            for g in ctx.geoms:
                weight = ctx.model.get_submodule(g.name).weight
                used += exact_option_bytes(plan[g.name], g, weight)
            if used <= ctx.layer_budget:
                return plan, trial
        # Nothing completed (stopped at once): the knapsack plan, repaired if need be.
        fixed = repair(space, [lc.index(warm_params[lc.param]) for lc in space], ctx.layer_budget)
        return plan_of(space, fixed.choice), None


class _Objective:
    """One trial: sample, repair onto the budget, then the proxy loss (or a recorded one)."""

    def __init__(
        self,
        ctx: SearchContext,
        space: Sequence[Choices],
        data: ValSubset,
        settings: OptunaSettings,
        seed: int,
    ) -> None:
        self.ctx = ctx
        self.space = space
        self.data = data
        self.settings = settings
        self.seed = seed  # batch order of every proxy fine-tune: trials see the same batches
        self.done = 0

    def __call__(self, trial: optuna.Trial) -> float:
        ctx, budget = self.ctx, self.ctx.layer_budget
        choice = [
            lc.index(trial.suggest_categorical(lc.param, [o.to_str() for o in lc.options]))
            for lc in self.space
        ]
        fixed = repair(self.space, choice, budget)
        plan = plan_of(self.space, fixed.choice)
        trial.set_user_attr("budget", budget)
        trial.set_user_attr("sampled_bytes", fixed.bytes_before)
        trial.set_user_attr("bytes", fixed.bytes_after)
        trial.set_user_attr("repaired", bool(fixed.moves))
        trial.set_user_attr("repairs", [list(m) for m in fixed.moves])
        trial.set_user_attr("plan", plan.to_strs())
        assert fixed.bytes_after <= budget, "repair left the plan over budget"
        if ctx.should_stop is not None and ctx.should_stop():
            raise optuna.TrialPruned("stopped before training")
        known = self._recorded(trial.study, plan)
        if known is not None:
            trial.set_user_attr("reused_from", known[0])
            return known[1]
        loss = proxy_loss(ctx, plan, self.data, self.settings, self.seed)
        if ctx.should_stop is not None and ctx.should_stop():
            raise optuna.TrialPruned("stopped while training")
        return loss

    @staticmethod
    def _recorded(study: optuna.Study, plan: Plan) -> tuple[int, float] | None:
        strs = plan.to_strs()
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.value is not None and t.user_attrs.get("plan") == strs:
                return t.number, float(t.value)
        return None

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done += 1
        if self.ctx.progress is not None:
            event: dict[str, Any] = {"step": self.done, "total": self.settings.trials}
            if trial.value is not None:
                event["loss"] = trial.value
            self.ctx.progress(event)
        if self.ctx.should_stop is not None and self.ctx.should_stop():
            study.stop()
