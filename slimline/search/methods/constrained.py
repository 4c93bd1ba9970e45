"""`constrained`: loss-aware scoring, an exact knapsack onto the byte budget, and ADMM.

After Yang, Gui, Zhu, Liu, "Automatic Neural Network Compression by Sparsity-Quantization Joint
Learning: A Constrained Optimization-based Approach" (CVPR 2020, arXiv 1910.05897). Their loop:
SGD on the loss plus rho/2 ||W - V + U||^2; every so often project onto the budget set
(V <- project(W + U)) and update the scaled dual (U <- U + W - V); freeze the bit-widths; then
fine-tune with the compressed structure fixed.

What we do differently, and why:
  - the projection chooses a whole `LayerOption` per layer (sparsity pattern x bits x scales),
    not a bit-width plus a global magnitude prefix; it is the exact multiple-choice knapsack
    over *file bytes* (every stream counted), not the greedy hull over weight bits;
  - the distortion of an option is loss-aware (Fisher-weighted squared error of the combined
    mask-then-quantize weight), not the plain quantization error;
  - the ADMM phase is opt-in (``projections`` > 0): at an equal number of steps, giving half
    of them to ADMM lost accuracy in 8 of 13 comparisons (it helped at the hardest budget of
    lenet5 and bytegpt, never on the MLP), so by default the knapsack's plan is fine-tuned
    directly;
  - after the freeze the compressed structure is trained with learned quantizer steps by the
    fine-tuning settings (SLOPE by default: mask warm-up and norm re-calibration, with
    distillation and the cosine regularizer as settings; plain quantization-aware training
    with ``FinetuneSettings.plain()``), rather than with masks and codebooks fixed;
  - where probing (`search.probes`) finds the kept plan within ``distill_gap`` of the dense
    model's loss, that fine-tuning distils from the dense model (``distill_weight``).
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimline.search.branches import removal_branches
from slimline.search.compressed import CompressedWeight
from slimline.search.estimators import (
    DamageEstimator,
    FisherEstimator,
    calibration_mode,
    get_estimator,
)
from slimline.search.method_settings import ConstrainedSettings
from slimline.search.methods.base import SearchContext, SearchMethod, register, search_seconds
from slimline.search.options import LayerOption, Plan
from slimline.search.probes import run_probes
from slimline.search.scoring import Scores, count_measurements, score_model
from slimline.search.slope import distillation_loss
from slimline.search.train_checkpoint import load_checkpoint, save_checkpoint
from slimline.search.training import (
    Checkpointing,
    TrainConfig,
    set_training_mode,
    task_loss,
    train,
)


@register
class ConstrainedMethod(SearchMethod):
    name = "constrained"
    settings_cls = ConstrainedSettings
    settings: ConstrainedSettings
    _estimator: DamageEstimator | None = None  # one per run: it keeps what it measured

    # ------------------------------------------------------------------ search
    def _score(
        self, ctx: SearchContext, model: nn.Module, restrict: dict[str, list[LayerOption]] | None
    ) -> Scores:
        """One scoring pass; ``restrict`` limits each layer to the given options."""
        s = self.settings
        t0 = time.perf_counter()
        kw: dict[str, Any] = {} if restrict is None else {"options": lambda g: restrict[g.name]}
        if self._estimator is None:
            kw_est = {"measure_above": s.measure_above} if s.estimator == "fisher" else {}
            self._estimator = get_estimator(s.estimator, **kw_est)
        elif isinstance(self._estimator, FisherEstimator):
            # re-projections: options measured in the first pass are not run again
            self._estimator.reuse_measurements = True
        scores = score_model(
            model,
            ctx.geoms,
            ctx.data,
            estimator=self._estimator,
            batches=s.calibration_batches,
            batch_size=s.calibration_batch_size,
            device=ctx.device,
            seed=ctx.seed,
            progress=ctx.progress,
            budget=ctx.layer_budget,  # far options measured where this budget's choice needs
            solver=s.solver,
            branches=removal_branches([g.name for g in ctx.geoms]) if s.joint_removal else (),
            # set by the pipeline's plan stage only: the dense model's losses are worth keeping
            store=ctx.measurements,
            **kw,
        )
        self.report["scores_seconds"] = self.report.get("scores_seconds", 0.0) + (
            time.perf_counter() - t0
        )
        return scores

    def _solve(self, ctx: SearchContext, scores: Scores) -> Plan:
        t0 = time.perf_counter()
        plan = scores.resolve(ctx.layer_budget, solver=self.settings.solver)
        self.report["allocation_seconds"] = self.report.get("allocation_seconds", 0.0) + (
            time.perf_counter() - t0
        )
        return plan

    def propose(self, ctx: SearchContext) -> Plan:
        self.last_scores = self._score(ctx, ctx.model, None)
        count_measurements(self.report, self._estimator)
        return self._solve(ctx, self.last_scores)

    # --------------------------------------------------------------- fine-tune
    def finetune(self, ctx: SearchContext, plan: Plan, cfg: TrainConfig) -> Plan:
        """ADMM with periodic exact re-projection (with the fine-tuning settings'
        distillation), then SLOPE fine-tuning with the last plan frozen. With
        ``ctx.checkpoint_dir`` both phases checkpoint and resume: the ADMM phase in ``admm/``,
        its outcome (final plan and weights) in ``admm-done/``, SLOPE in ``slope/``."""
        s = self.settings
        total = cfg.steps(len(ctx.data.x_train))
        admm_steps = int(total * s.admm_fraction) if s.projections > 0 and cfg.epochs > 0 else 0
        ckpt = ctx.checkpoint_dir
        if admm_steps > 0:
            done = load_checkpoint(ckpt / "admm-done") if ckpt else None
            if done is not None:
                plan = Plan.from_dict(json.loads(done["plan"]))
                ctx.model.load_state_dict(done["model"])
                self.report.update(json.loads(done["report"]))
            else:
                admm_dir = ckpt / "admm" if ckpt else None
                plan = self._admm(ctx, plan, replace(cfg, max_steps=admm_steps), admm_dir)
                if ckpt is not None and not _stopped(ctx):
                    save_checkpoint(
                        ckpt / "admm-done",
                        {
                            "plan": plan.to_json(),
                            "model": ctx.model.state_dict(),
                            "report": json.dumps(self.report, default=str),
                        },
                    )
        elif s.probe_groups > 0 and cfg.epochs > 0 and self.last_scores is not None:
            plan = self._probe(ctx, plan, cfg)
            ctx = self._gap_distillation(ctx)
        rest = total - admm_steps
        # after the ADMM phase SLOPE draws other batches than it did; without that phase it is
        # the job's only fine-tuning and draws the batches every method's fine-tuning draws
        # (the job's seed), so that methods compare on the same batch order
        slope_seed = cfg.seed + 1 if admm_steps > 0 else cfg.seed
        slope_cfg = replace(cfg, max_steps=rest, seed=slope_seed)
        if rest <= 0 or _stopped(ctx):
            slope_cfg = replace(cfg, epochs=0)
        self.slope(ctx, plan, slope_cfg, ckpt / "slope" if ckpt else None)
        return plan

    def _probe(self, ctx: SearchContext, plan: Plan, cfg: TrainConfig) -> Plan:
        """The probed plan (`search.probes`); with checkpoints, a resumed job reads the
        choice from ``probes.json`` instead of probing again."""
        assert self.last_scores is not None
        saved = ctx.checkpoint_dir / "probes.json" if ctx.checkpoint_dir else None
        if saved is not None and saved.exists():
            done = json.loads(saved.read_text())
        else:
            # the plan stage's search (a job) or this object's own (`propose` then `finetune`)
            spent = ctx.search_seconds + search_seconds(self.report)
            found = run_probes(ctx, self.last_scores, cfg, self.settings, spent)
            if _stopped(ctx) or (found["plan"] is None and found["stopped"] is None):
                return plan  # cancelled, or nothing to choose from
            done = {**found, "plan": None if found["plan"] is None else found["plan"].to_json()}
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(done))
        self.report["probe_seconds"] = float(done["seconds"])
        self.report["probes"] = done["probes"]
        self.report["probe_dense_loss"] = done.get("dense_loss")
        if done.get("stopped"):
            self.report["probes_stopped"] = done["stopped"]
        return plan if done["plan"] is None else Plan.from_json(done["plan"])

    def _gap_distillation(self, ctx: SearchContext) -> SearchContext:
        """``ctx`` with distillation on where the probed plan's loss came within
        ``distill_gap`` of the dense model's, either side (see the settings); the gap goes in
        the report."""
        s, probes = self.settings, self.report.get("probes") or []
        dense = self.report.get("probe_dense_loss")
        if not probes or dense is None:
            return ctx
        gap = min(p["loss"] for p in probes) - dense
        self.report["probe_gap"] = gap
        if s.distill_gap is None or ctx.finetune.distill is not None or ctx.teacher is None:
            return ctx
        if abs(gap) > s.distill_gap:
            return ctx
        self.report["distilled"] = s.distill_weight
        return replace(ctx, finetune=replace(ctx.finetune, distill=s.distill_weight))

    def _admm(
        self, ctx: SearchContext, plan: Plan, cfg: TrainConfig, checkpoint_dir: Path | None
    ) -> Plan:
        model, geoms, rho = ctx.model.to(ctx.device), ctx.geoms, self.settings.rho
        weights = {g.name: model.get_submodule(g.name).weight for g in geoms}
        v = {n: _compress(plan[n], w) for n, w in weights.items()}  # projection of W
        u = {n: torch.zeros_like(w) for n, w in weights.items()}  # scaled dual
        every = max(1, cfg.steps(len(ctx.data.x_train)) // (self.settings.projections + 1))
        state = {"plan": plan}
        # Re-projections score only the options that were Pareto-efficient (bytes vs damage)
        # in the first pass: a dominated option rarely becomes optimal as W moves, and it
        # makes each re-projection several times cheaper.
        restrict = efficient_options(self.last_scores) if self.last_scores is not None else None

        a, ft = ctx.finetune.distill_share, ctx.finetune
        teacher = ctx.teacher if a > 0 else None
        # the teacher in eval mode on the device while it teaches, given back as it came
        teacher_mode: AbstractContextManager[object] = nullcontext()
        if teacher is not None:
            teacher_mode = calibration_mode(teacher, ctx.device)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            penalty = torch.stack([((weights[n] - v[n] + u[n]) ** 2).sum() for n in weights]).sum()
            loss = task_loss(ctx.data.task, logits, y)
            if teacher is not None:  # SLOPE's distillation holds here too
                with torch.no_grad():
                    target = teacher(x)
                soft = distillation_loss(logits, target, ft.temperature)
                loss = (1 - a) * loss + a * soft
            return loss + 0.5 * rho * penalty

        def project(step: int) -> None:
            if step % every or step // every > self.settings.projections:
                return
            # V <- project(W + U): re-score at W + U and re-solve the knapsack exactly
            with torch.no_grad():
                saved = {n: w.detach().clone() for n, w in weights.items()}
                for n, w in weights.items():
                    w.add_(u[n])
            state["plan"] = self._solve(ctx, self._score(ctx, model, restrict))
            set_training_mode(model, True)  # scoring evaluates; training goes on
            with torch.no_grad():
                for n, w in weights.items():
                    v[n] = _compress(state["plan"][n], w)
                    w.copy_(saved[n])
                    u[n] += w.detach() - v[n]
            self.report.setdefault("projections", []).append(
                {"step": step, "plan": state["plan"].to_strs()}
            )

        def extra_state() -> dict[str, Any]:
            return {
                "u": dict(u),
                "v": dict(v),
                "plan": state["plan"].to_json(),
                "report": json.dumps(self.report, default=str),
                # what the re-projections measured so far: a resumed run reuses the same ratios
                "ratios": json.dumps([[*key, r] for key, r in _ratios(self._estimator).items()]),
            }

        def load_extra(saved: dict[str, Any]) -> None:
            u.update(saved["u"])
            v.update({n: t.to(ctx.device) for n, t in saved["v"].items()})
            for n in u:
                u[n] = u[n].to(ctx.device)
            state["plan"] = Plan.from_json(saved["plan"])
            self.report.update(json.loads(saved["report"]))
            ratios = _ratios(self._estimator)
            ratios.update({(n, o): float(r) for n, o, r in json.loads(saved.get("ratios", "[]"))})

        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Checkpointing(
                checkpoint_dir, ctx.finetune.checkpoint_steps, extra_state, load_extra
            )
        with teacher_mode:
            train(
                model,
                ctx.data,
                cfg,
                device=ctx.device,
                progress=ctx.progress,
                loss_fn=loss_fn,
                should_stop=ctx.should_stop,
                on_step=project,
                checkpoint=ckpt,
            )
        # the final structure: re-score and re-solve at the trained W, so the masks the QAT
        # phase starts from are exactly the ones the allocation counted
        return self._solve(ctx, self._score(ctx, model, restrict))


def _ratios(est: DamageEstimator | None) -> dict[tuple[str, str], float]:
    """The Fisher estimator's measured-to-estimated ratios (a throwaway dict for the others)."""
    return est.ratios if isinstance(est, FisherEstimator) else {}


def _stopped(ctx: SearchContext) -> bool:
    return ctx.should_stop is not None and ctx.should_stop()


def efficient_options(scores: Scores) -> dict[str, list[LayerOption]]:
    """Per layer, the options no other option beats on both bytes and damage."""
    out: dict[str, list[LayerOption]] = {}
    for layer in scores.layers:
        order = np.lexsort((layer.damage, layer.bytes))  # by bytes, then damage
        keep, best = [], float("inf")
        for i in order:
            if layer.damage[i] < best:
                keep.append(layer.options[i])
                best = float(layer.damage[i])
        out[layer.name] = keep
    return out


def _compress(option: Any, w: torch.Tensor) -> torch.Tensor:
    """The compressed weight an option gives ``w`` (mask, then quantize the survivors)."""
    with torch.no_grad():
        return CompressedWeight(option, w.detach()).to(w.device)(w.detach())
