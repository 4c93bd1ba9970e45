"""One compression job as a sequence of stages: inspect -> plan -> fine-tune -> export -> verify.

Each stage is a function of a `JobState` that fills in the fields the next stage reads. The CLI
runs them back to back; the worker (service issue) runs the same functions and persists each
stage's result before the next starts. Budget feasibility is checked in `inspect`, before any
training, from the architecture alone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from slimline.budget import Budget
from slimline.errors import InfeasibleBudget, SlimlineError
from slimline.pipeline.sources import (
    DEFAULT_FINETUNE,
    DEFAULT_REFERENCE_RATIO,
    FINETUNE_RECIPES,
    FINETUNE_REFERENCE_RATIO,
    FINETUNE_STRETCH_POWER,
    FINETUNE_STRETCH_POWERS,
    ModelSource,
    build_skeleton,
    check_data_fits,
    default_cache_dir,
    dense_metrics,
    finetune_stretch,
    load_dense_weights,
    task_of,
)
from slimline.search.accounting import ModelBytes, layer_bytes, plan_bytes
from slimline.search.compressed import compressed_weights
from slimline.search.export import (
    build_header,
    other_stored_bytes,
    position_lengths,
    reserve_header_bytes,
    write_model,
)
from slimline.search.finalize import finalize
from slimline.search.layers import LayerGeometry, find_layers
from slimline.search.masks import option_mask
from slimline.search.methods import SearchContext, get_method
from slimline.search.methods.base import search_seconds
from slimline.search.options import REMOVED, Plan
from slimline.search.scoring import Scores
from slimline.search.settings import FinetuneSettings
from slimline.search.store_folder import DEFAULT_MAX_BYTES, StoreFolder
from slimline.search.training import TrainConfig, evaluate, pick_device

StageProgress = Callable[[str, dict[str, Any]], None]
STAGES = ("inspect", "plan", "fine-tune", "export", "verify")
# The longest option string a header can hold ("un" + a float's repr + "/b8/g128"): reserving
# for it before the plan exists means the real header never outgrows the reserve.
_WIDEST_OPTION_CHARS = 2 + 24 + len("/b8/g128")


@dataclass
class JobSpec:
    model: str
    data: str
    budget: Budget
    method: str = "constrained"
    epochs: float | None = None  # fine-tuning epochs (None: the model's default)
    seed: int = 0
    data_root: str | None = None
    weights: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    out: Path = Path("model.slim.safetensors")
    device: str = "auto"
    cache_dir: Path | None = None
    # the size limit of the cache's measurements folder (`store_folder`; Settings)
    measured_max_bytes: int = DEFAULT_MAX_BYTES
    max_steps: int | None = None  # cap on fine-tuning steps (quick runs)
    method_settings: dict[str, Any] = field(default_factory=dict)  # the method's own knobs
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneSettings (SLOPE) knobs


@dataclass
class JobState:
    spec: JobSpec
    src: ModelSource | None = None
    model: nn.Module | None = None  # dense, then compressed, then finalized
    dense_model: nn.Module | None = None
    data: Any = None
    task: str = ""
    geoms: list[LayerGeometry] = field(default_factory=list)
    dense_bytes: int = 0
    other_bytes: int = 0
    budget_bytes: int = 0
    header_reserve: int = 0
    dense_metrics: dict[str, float] = field(default_factory=dict)
    weights_source: str = ""
    plan: Plan | None = None
    scores: dict[str, Any] | None = None  # the scoring pass, JSON-safe (re-solvable later)
    search_report: dict[str, Any] = field(default_factory=dict)
    planned: ModelBytes | None = None
    positions: dict[str, int] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    file_bytes: int = 0
    header_bytes: int = 0
    verify: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # what fine-tuning ran: epochs, steps, lr, batch size, and the recipe's stretch for the budget
    finetune_recipe: dict[str, Any] = field(default_factory=dict)
    # Polled between training steps (the worker's cancellation and time limit); None: never.
    should_stop: Callable[[], bool] | None = None
    # Where fine-tuning writes its checkpoints and resumes from (the worker sets it); None:
    # no checkpoints (the CLI).
    checkpoint_dir: Path | None = None

    @property
    def source(self) -> ModelSource:
        """The resolved model source (set by `inspect`)."""
        assert self.src is not None, "inspect has not run"
        return self.src

    @property
    def device(self) -> torch.device:
        return pick_device(self.spec.device)


def dense_checkpoint_bytes(model: nn.Module) -> int:
    """Size of the model's fp32 safetensors checkpoint: the ratio's numerator."""
    state = {
        k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    return len(safetensors_bytes(state))


def header_reserve(state: JobState) -> int:
    """Bytes the container header may take, reserved before the plan is known: every layer's
    option string at its widest, every number at its longest."""
    header = build_header(
        arch=state.source.arch(),
        task="language",  # the longer of the two task names
        plan=Plan({}),
        positions={g.name: 10**9 for g in state.geoms},
        metrics={"metric": -1.0, "dense_metric": -1.0},
        accounting={"payload": 10**12, "dense": 10**12},
    )
    header["plan"] = {g.name: "x" * _WIDEST_OPTION_CHARS for g in state.geoms}
    return reserve_header_bytes(header, 10**12)


def smallest_bytes(state: JobState) -> tuple[int, int]:
    """(smallest file any plan gives: every layer removed, smallest file the job's method
    reaches) — both from the architecture alone."""
    fixed = state.other_bytes + state.header_reserve
    floor = sum(layer_bytes(REMOVED, g).total for g in state.geoms) + fixed
    return floor, get_method(state.spec.method).min_layer_bytes(state.geoms) + fixed


def inspect(state: JobState, progress: StageProgress) -> None:
    from slimline.models.datasets import load_dataset
    from slimline.pipeline.sources import resolve_model

    spec = state.spec
    # refuse bad knobs up front, before a dense model is built or trained
    FinetuneSettings.from_dict(spec.finetune, field="finetune")
    get_method(spec.method, spec.method_settings)
    state.src = resolve_model(spec.model, config=spec.config or None, weights=spec.weights)
    torch.manual_seed(spec.seed)
    model = build_skeleton(state.src)
    state.geoms = find_layers(model)
    state.dense_bytes = dense_checkpoint_bytes(model)
    state.other_bytes = other_stored_bytes(model, state.geoms)
    state.budget_bytes = spec.budget.resolve(state.dense_bytes)
    state.header_reserve = header_reserve(state)
    floor, method_floor = smallest_bytes(state)
    if state.budget_bytes < max(floor, method_floor):
        by_method = (
            f"; the {spec.method} method reaches {method_floor} bytes at best"
            if method_floor > floor
            else ""
        )
        raise InfeasibleBudget(
            f"budget {spec.budget} = {state.budget_bytes} bytes is below the smallest size "
            f"slimline can reach for {state.src.label}: {floor} bytes{by_method} (dense "
            f"checkpoint {state.dense_bytes} bytes, at most "
            f"{state.dense_bytes / max(floor, method_floor):.1f}x)",
            field="budget",
            value=state.budget_bytes,
        )
    state.data = load_dataset(spec.data, spec.data_root)
    state.task = task_of(state.src, model, state.data)
    check_data_fits(model, state.data, state.src.label)
    state.weights_source = load_dense_weights(
        state.src,
        model,
        state.data,
        data_spec=spec.data,
        seed=spec.seed,
        cache_dir=spec.cache_dir or default_cache_dir(),
        device=state.device,
        progress=lambda e: progress("inspect", e),
    )
    state.model = model.cpu()
    state.dense_metrics = dense_metrics(state.weights_source, model, state.data, state.device)
    model.cpu()


MEASURED_DIR = "measured"  # measured calibration losses, in the dense-model cache


def search_context(state: JobState, stage: str, progress: StageProgress) -> SearchContext:
    assert state.model is not None
    return SearchContext(
        model=state.model,
        geoms=state.geoms,
        data=state.data,
        payload_budget=state.budget_bytes - state.header_reserve,
        other_bytes=state.other_bytes,
        progress=lambda e: progress(stage, e),
        device=state.device,
        seed=state.spec.seed,
        should_stop=state.should_stop,
        finetune=FinetuneSettings.from_dict(state.spec.finetune, field="finetune"),
        teacher=state.dense_model if stage == "fine-tune" else None,
        checkpoint_dir=state.checkpoint_dir if stage == "fine-tune" else None,
        search_seconds=search_seconds(state.search_report) if stage == "fine-tune" else 0.0,
        # beside the dense models: jobs on the same model and data share their measurements
        measurements=StoreFolder(
            (state.spec.cache_dir or default_cache_dir()) / MEASURED_DIR,
            state.spec.measured_max_bytes,
        )
        if stage == "plan"
        else None,
    )


def plan(state: JobState, progress: StageProgress) -> None:
    assert state.model is not None
    method = get_method(state.spec.method, state.spec.method_settings)
    state.plan = method.propose(search_context(state, "plan", progress))
    state.search_report.update(method.report)
    if method.last_scores is not None:
        state.scores = method.last_scores.to_dict()
    state.positions = exact_positions(state.model, state.geoms, state.plan)
    state.planned = plan_bytes(
        state.plan, state.geoms, state.other_bytes, 0, position_bytes=state.positions
    )
    assert state.planned.payload + state.header_reserve <= state.budget_bytes, "method over budget"
    progress("plan", {"step": 1, "total": 1})


def exact_positions(model: nn.Module, geoms: list[LayerGeometry], p: Plan) -> dict[str, int]:
    """Exact position-stream bytes of unstructured layers, from the masks they will get."""
    masks = {
        g.name: option_mask(p[g.name], model.get_submodule(g.name).weight.detach()
                            .reshape(g.rows, g.row_len))
        for g in geoms if p[g.name].sparsity == "unstructured"
    }  # fmt: skip
    return position_lengths_of(masks, geoms, p)


def position_lengths_of(
    masks: dict[str, torch.Tensor | None], geoms: list[LayerGeometry], p: Plan
) -> dict[str, int]:
    """{layer: position-stream bytes} for the unstructured layers of ``p`` with these masks."""
    return {
        g.name: layer_bytes(p[g.name], g, mask=masks[g.name]).index
        for g in geoms
        if p[g.name].sparsity == "unstructured"
    }


def finetune_config(state: JobState) -> tuple[TrainConfig, float]:
    """The model's fine-tuning recipe, stretched for budgets past its reference ratio
    (`sources.finetune_stretch`), and the stretch; the spec's ``epochs`` replace the recipe's
    (stretch 1), its ``max_steps`` cap them."""
    zoo = state.source.zoo or ""
    base = FINETUNE_RECIPES.get(zoo, DEFAULT_FINETUNE)
    kw: dict[str, Any] = {"seed": state.spec.seed}
    stretch = 1.0
    if state.spec.epochs is not None:
        kw["epochs"] = state.spec.epochs
        kw["max_steps"] = None
    else:
        ratio = state.dense_bytes / max(1, state.budget_bytes)
        reference = FINETUNE_REFERENCE_RATIO.get(zoo, DEFAULT_REFERENCE_RATIO)
        power = FINETUNE_STRETCH_POWERS.get(zoo, FINETUNE_STRETCH_POWER)
        stretch = finetune_stretch(ratio, reference, power)
        kw["epochs"] = base.epochs * stretch
        if base.max_steps is not None:
            kw["max_steps"] = round(base.max_steps * stretch)
    if state.spec.max_steps is not None:
        kw["max_steps"] = state.spec.max_steps
    return TrainConfig(**{**base.__dict__, **kw}), stretch


def finetune(state: JobState, progress: StageProgress) -> None:
    """The method's fine-tuning (SLOPE with the spec's settings, after the method's own phases;
    checkpointed in ``state.checkpoint_dir`` when set), then the exact bytes
    of the masks the model ended with."""
    assert state.model is not None and state.plan is not None
    state.dense_model = copy.deepcopy(state.model)
    method = get_method(state.spec.method, state.spec.method_settings)
    if state.scores is not None:  # the plan stage's scoring (ADMM re-scores its front only)
        method.last_scores = Scores.from_dict(state.scores)
    torch.manual_seed(state.spec.seed)
    ctx = search_context(state, "fine-tune", progress)
    cfg, stretch = finetune_config(state)
    state.finetune_recipe = {
        "epochs": cfg.epochs,
        "steps": cfg.steps(len(state.data.x_train)),
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "stretch": stretch,
    }
    state.plan = method.finetune(ctx, state.plan, cfg)
    for key, value in method.report.items():
        if isinstance(value, float) and isinstance(state.search_report.get(key), float):
            state.search_report[key] += value
        else:
            state.search_report[key] = value
    state.model.cpu()
    masks = {name: cw.mask for name, cw in compressed_weights(state.model).items()}
    state.positions = position_lengths_of(masks, state.geoms, state.plan)
    state.planned = plan_bytes(
        state.plan, state.geoms, state.other_bytes, 0, position_bytes=state.positions
    )
    if state.planned.payload + state.header_reserve > state.budget_bytes:
        raise SlimlineError(
            f"method {state.spec.method} ended fine-tuning {state.planned.payload} payload "
            f"bytes over a {state.budget_bytes - state.header_reserve} byte allowance; "
            "this is a bug in the method, please report it",
            field="method",
        )


def export(state: JobState, progress: StageProgress) -> None:
    assert state.model is not None and state.plan is not None and state.planned is not None
    fin = finalize(state.model, state.geoms)
    state.metrics = evaluate(state.model, state.data, device=state.device)
    state.model.cpu()
    header = build_header(
        arch=state.source.arch(),
        task=state.task,
        plan=state.plan,
        positions=state.positions,
        metrics={"metric": state.metrics["metric"], "dense_metric": state.dense_metrics["metric"]},
        accounting={"payload": state.planned.payload, "dense": state.dense_bytes},
    )
    out = Path(state.spec.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info, streams = write_model(out, fin, header)
    assert position_lengths(streams, state.plan) == state.positions
    assert info.payload_bytes == state.planned.payload, (info.payload_bytes, state.planned.payload)
    state.file_bytes, state.header_bytes = info.file_bytes, info.header_bytes
    progress("export", {"step": 1, "total": 1})


# validation examples whose outputs verify compares (after the tensors themselves)
VERIFY_PROBE_EXAMPLES = 256


def tensors_differ(trained: nn.Module, reloaded: nn.Module) -> list[str]:
    """state_dict entries that ``reloaded`` lacks, adds, or holds with another dtype, shape or
    any other bit than ``trained`` (BatchNorm batch counters aside: the file does not store
    them, and they do not change what the model computes)."""
    mine, theirs = trained.state_dict(), reloaded.state_dict()
    out = []
    for k in sorted(set(mine) | set(theirs)):
        if k.endswith("num_batches_tracked"):
            continue
        a, b = mine.get(k), theirs.get(k)
        same = (
            a is not None
            and b is not None
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.detach().cpu(), b.detach().cpu())
        )
        if not same:
            out.append(k)
    return out


def verify(state: JobState, progress: StageProgress) -> None:
    """Reload the file and compare it with the finalized in-memory model: every tensor bit for
    bit, then the outputs on the first `VERIFY_PROBE_EXAMPLES` validation examples (which
    catches a skeleton that wires the same tensors differently). Equal tensors through the
    same computation give the same metric, so the validation set is not evaluated again
    (DESIGN.md has verify re-run the held-out evaluation: for bytegpt that was a second full
    pass, ~20 s a job on the CPU, proving less than the tensors' equality does)."""
    from slimline.loader import load

    assert state.model is not None
    program = state.source.program
    reloaded = load(state.spec.out, program=program)
    differ = tensors_differ(state.model, reloaded)
    x = state.data.x_val[:VERIFY_PROBE_EXAMPLES]
    with torch.no_grad():
        diff = float((reloaded(x) - state.model(x)).abs().max())
    state.verify = {
        "max_abs_diff": diff,
        "probe_examples": len(x),
        "tensors": len(reloaded.state_dict()),
        "tensors_differ": differ,
        "equal": diff <= 1e-5 and not differ,
        "within_budget": state.file_bytes <= state.budget_bytes,
    }
    progress("verify", {"step": 1, "total": 1})


STAGE_FUNCTIONS = {
    "inspect": inspect,
    "plan": plan,
    "fine-tune": finetune,
    "export": export,
    "verify": verify,
}


def run_job(spec: JobSpec, progress: StageProgress | None = None) -> JobState:
    """All stages, in order, timing each."""
    state = JobState(spec=spec)
    cb = progress or (lambda stage, event: None)
    for name in STAGES:
        t0 = time.perf_counter()
        cb(name, {"event": "start"})
        STAGE_FUNCTIONS[name](state, cb)
        state.timings[name] = time.perf_counter() - t0
        cb(name, {"event": "end", "seconds": state.timings[name]})
    return state
