"""The benchmark suite (../shared/docs/BENCHMARKS.md): accuracy kept per byte, every method side
by side, from the same dense weights with the same fine-tuning steps.

Commands (run from the repository root; data from ../shared/data unless --data-root):

    python -m bench.suite --quick                 # digits + lenet5, 16x/32x, 3 methods, 40 steps
    python -m bench.suite                         # the full suite: 4 tasks x 7 methods x budgets
    python -m bench.suite --resume                # continue an interrupted run (today's files,
                                                  #   else the newest file of each task)
    python -m bench.suite --tasks lenet5 --methods uniform-qat slimline --budgets 64 128 \\
        --max-steps 300 --threads 1
    python -m bench.suite --ablation              # lenet5 + bytegpt at 32x: SLOPE parts removed
    python -m bench.suite --ablation --tasks lenet5 --max-steps 100
    python -m bench.suite --tasks bytegpt --budgets 16 --max-steps 3 --dense-steps 20 \\
        --results /tmp/bg -v                      # the bytegpt code path in minutes, not hours

Tasks: lenet5, lenet300 (MNIST), bytegpt (pycode), digits (scikit-learn digits, smoke only).
Budgets: 8x 16x 24x 32x for every task, and 64x 128x 256x for the MNIST tasks.
Methods: uniform-ptq (method "uniform", no fine-tuning), uniform-qat ("uniform"), squantizer,
constrained (with Yang et al.'s ADMM phase, ``projections`` 3), bitshare, optuna — all with
plain QAT (`FinetuneSettings.plain()`) — and slimline (method "constrained" with its default
settings, no ADMM, and the default SLOPE fine-tuning settings, ``finetune={}``).

Every method gets the same fine-tuning steps: ``--max-steps`` (default: the task's
``finetune_steps`` below) and ``--epochs`` (default: the model's fine-tuning recipe), capped by
``--max-steps``. Each task's dense model is trained once with the shared recipe
(slimline.pipeline.sources.DENSE_RECIPES) and cached by hash in ``--cache-dir`` (default
``$SLIMLINE_CACHE_DIR``, else bench/results/.work/cache); where bench/dense/ holds that recipe's
weights (the ones the README table started from: the same recipe trains other bytes on another
CPU), they are copied into the cache first (bench.reference_dense; ``--own-dense``: not, so
that the cache's or this machine's own weights are used). ``--dense-steps N`` trains a shorter
dense model instead (its own hash) for trying the code path quickly; the suite's numbers use the
shared recipe.

The optuna method's search trains too (its proxy: ``trials`` x ``proxy_steps`` QAT steps on
copies). As BENCHMARKS.md asks ("the same number of fine-tuning steps in total"), those steps
come out of its step cap: 8 trials share half of it (`optuna_split`), the best plan fine-tunes
for the rest; their seconds are part of its search seconds.

``--jobs`` cells run at once (default: CPUs // threads on the CPU, 1 on a GPU), the longest
first; each cell's seconds are then measured with the others running beside it.

Each cell runs in its own spawned child process (its peak RSS is the cell's peak memory); a cell
that cannot reach its budget is recorded ``infeasible``, one that crashes is recorded ``error``
with its message. Outputs, written after every cell:

    bench/results/<date>-<task>.json / .md / .png     (suite; plot: metric vs file bytes)
    bench/results/.work/quick/<date>-<task>-quick.json / .md / .png   (--quick; gitignored)
    bench/results/<date>-ablation.json / .md          (--ablation)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
WORK = RESULTS / ".work"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"

MNIST_BUDGETS = [8.0, 16.0, 24.0, 32.0, 64.0, 128.0, 256.0]
SMALL_BUDGETS = [8.0, 16.0, 24.0, 32.0]


@dataclass(frozen=True)
class Task:
    name: str
    model: str  # zoo name
    data: str  # dataset name
    budgets: list[float]
    finetune_steps: int  # default fine-tuning steps for every method (--max-steps overrides)
    metric: str = "top-1"


TASKS: dict[str, Task] = {
    "lenet5": Task("lenet5", "lenet5", "mnist", MNIST_BUDGETS, 300),
    "lenet300": Task("lenet300", "lenet300", "mnist", MNIST_BUDGETS, 300),
    "bytegpt": Task("bytegpt", "bytegpt", "pycode", SMALL_BUDGETS, 200, "next-byte accuracy"),
    "digits": Task("digits", "digits-cnn", "digits", SMALL_BUDGETS, 100),
}


UNTIMED = {"search_share": None}  # probing within probe_share of the steps, without a time limit


@dataclass(frozen=True)
class Method:
    """A column of the comparison: a search method, its fine-tuning settings, and whether it
    trains at all."""

    label: str
    method: str
    slope: bool = False  # the default (SLOPE) fine-tuning settings, else plain QAT
    train: bool = True  # False: post-training quantization (epochs=0)
    finetune: dict[str, Any] | None = None  # explicit settings (ablation variants)
    settings: dict[str, Any] | None = None  # the search method's own settings (None: defaults)

    def finetune_settings(self) -> dict[str, Any]:
        from slimline.search.settings import FinetuneSettings

        if self.finetune is not None:
            return dict(self.finetune)
        return {} if self.slope else FinetuneSettings.plain().to_dict()


METHODS: dict[str, Method] = {
    m.label: m
    for m in [
        Method("uniform-ptq", "uniform", train=False),
        Method("uniform-qat", "uniform"),
        Method("squantizer", "squantizer"),
        # Yang et al. as published: ADMM re-projection for half the steps (off in slimline's
        # default pipeline: at equal steps it lost in 8 of 13 comparisons, bench/FINDINGS.md)
        Method("constrained", "constrained", settings={"projections": 3}),
        Method("bitshare", "bitshare"),
        Method("optuna", "optuna"),
        # the default pipeline; its search is not held to time, as no method's is here (so
        # the plans do not depend on the machine's speed): `slimline.search.probes.ProbeClock`
        Method("slimline", "constrained", slope=True, settings=UNTIMED),
    ]
}


# BENCHMARKS.md gives optuna "the same number of fine-tuning steps in total": its trials'
# proxy QAT steps come out of the cell's step cap. OPTUNA_TRIALS trials share at most
# OPTUNA_PROXY_SHARE of the cap (and never more than the method's default proxy steps each);
# the best plan fine-tunes for what is left.
OPTUNA_TRIALS = 8
OPTUNA_PROXY_SHARE = 0.5
OPTUNA_BUDGET_NOTE = " (optuna: its trials' proxy steps included)"


def optuna_split(max_steps: int, settings: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The optuna settings and the fine-tuning step cap that together train ``max_steps``
    steps. ``trials`` and ``proxy_steps`` given in ``settings`` are kept (their steps still
    come out of the cap)."""
    from slimline.search.method_settings import OptunaSettings

    trials = int(settings.get("trials", OPTUNA_TRIALS))
    if "proxy_steps" in settings:
        proxy = int(settings["proxy_steps"])
    else:
        share = int(max_steps * OPTUNA_PROXY_SHARE) // trials
        proxy = max(1, min(OptunaSettings().proxy_steps, share))
    rest = max(1, max_steps - trials * proxy)
    return {**settings, "trials": trials, "proxy_steps": proxy}, rest


def ablation_methods() -> dict[str, Method]:
    """slimline with one SLOPE part removed at a time, the naive combination, and slimline with
    the ADMM phase added."""
    from slimline.search.settings import FinetuneSettings

    variants = [
        Method("slimline", "constrained", finetune={}),  # the defaults, whatever they are
        Method("slope-full", "constrained", finetune={**FULL, "cosine": 1.0}),
        Method("no-cosine", "constrained", finetune={**FULL, "cosine": 0.0}),
        Method("no-distill", "constrained", finetune={**FULL, "cosine": 1.0, "distill": 0.0}),
        Method("naive", "constrained", finetune=FinetuneSettings.plain().to_dict()),
        # slimline's defaults plus Yang et al.'s ADMM phase (on by choice, not by default)
        Method("slimline-admm", "constrained", finetune={}, settings={"projections": 3}),
    ]
    return {m.label: replace(m, settings={**UNTIMED, **(m.settings or {})}) for m in variants}


# every SLOPE part on, spelled out (not the defaults, which measurement may change)
FULL = {"distill": 0.5, "temperature": 2.0, "mask_warmup": 0.25, "recalibrate_batches": 20}
ABLATION_TASKS = ["lenet5", "bytegpt"]
ABLATION_BUDGETS = [32.0]
QUICK = {
    "tasks": ["digits", "lenet5"],
    "budgets": [16.0, 32.0],
    "methods": ["uniform-ptq", "uniform-qat", "slimline"],
    "max_steps": 40,
}


@dataclass
class Cell:
    """Everything a child process needs to run one cell (picklable, JSON-able)."""

    task: str
    method: str  # the column label
    ratio: float
    search_method: str
    finetune: dict[str, Any]
    train: bool
    method_settings: dict[str, Any]
    epochs: float | None
    max_steps: int | None
    data_root: str
    cache_dir: str
    out: str
    threads: int | None = None
    device: str = "cpu"  # where the job runs (the dense model is trained on the CPU)
    weights: str | None = None  # dense weights (--dense-steps); None: the shared cache
    seed: int = 0
    verbose: bool = False  # print each stage's start and end (long cells)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}@{self.ratio:g}x"


# --------------------------------------------------------------------------- child processes


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_gpu_mb() -> float | None:
    """Peak CUDA memory the cell's tensors took (torch's allocator); None if CUDA never ran."""
    import torch

    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell in this process; a dict of the recorded figures (never raises)."""
    _set_threads(cell.threads)
    row: dict[str, Any] = {
        "task": cell.task,
        "method": cell.method,
        "search_method": cell.search_method,
        "ratio_target": cell.ratio,
        "finetune_settings": cell.finetune,
        "method_settings": cell.method_settings,
        "epochs": cell.epochs if cell.train else 0,
        "max_steps": cell.max_steps if cell.train else 0,
    }
    t0 = time.perf_counter()
    try:
        from slimline.budget import Budget
        from slimline.errors import InfeasibleBudget
        from slimline.pipeline.report import build_report
        from slimline.pipeline.stages import JobSpec, run_job

        spec = JobSpec(
            model=TASKS[cell.task].model,
            data=TASKS[cell.task].data,
            budget=Budget(ratio=cell.ratio),
            method=cell.search_method,
            epochs=cell.epochs if cell.train else 0,
            seed=cell.seed,
            data_root=cell.data_root,
            weights=cell.weights,
            out=Path(cell.out),
            device=cell.device,
            cache_dir=Path(cell.cache_dir),
            max_steps=cell.max_steps if cell.train else None,
            finetune=dict(cell.finetune),
            method_settings=dict(cell.method_settings),
        )

        def progress(stage: str, event: dict[str, Any]) -> None:
            if cell.verbose and event.get("event") in ("start", "end"):
                took = f" ({event['seconds']:.1f} s)" if "seconds" in event else ""
                print(f"  {cell.task} {cell.key}: {stage} {event['event']}{took}", flush=True)

        try:
            report = build_report(run_job(spec, progress))
        except InfeasibleBudget as exc:
            row.update(status="infeasible", error=exc.message)
            return row
    except Exception as exc:  # recorded, never silent
        row.update(
            status="error",
            error=f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}",
            traceback=traceback.format_exc()[-4000:],
        )
        return row
    finally:
        row["total_seconds"] = round(time.perf_counter() - t0, 3)
        row["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        gpu = _peak_gpu_mb()
        if gpu is not None:
            row["peak_gpu_mb"] = round(gpu, 1)
    t = report["timings"]
    ev, dense_ev = report["eval"], report["dense_eval"]
    row.update(
        status="ok",
        metric=report["metric"],
        dense_metric=report["dense_metric"],
        retention=report["retention"],
        bits_per_byte=ev.get("bits_per_token"),
        dense_bits_per_byte=dense_ev.get("bits_per_token"),
        planned_bytes=report["planned_bytes"],
        file_bytes=report["file_bytes"],
        budget_bytes=report["budget_bytes"],
        dense_bytes=report["dense_bytes"],
        ratio=report["ratio"],
        within_budget=bool(report["within_budget"] and report["verify"].get("within_budget")),
        reload_equal=bool(report["verify"].get("equal")),
        max_abs_diff=report["verify"].get("max_abs_diff"),
        search_seconds=t.get("plan", 0.0),
        finetune_seconds=t.get("fine-tune", 0.0),
        # every scoring pass and knapsack solve, the plan stage's and those inside fine-tuning
        # (ADMM re-projections): the search's whole cost
        scores_seconds=report.get("scores_seconds"),
        allocation_seconds=report.get("allocation_seconds"),
        probe_seconds=report.get("probe_seconds"),  # probing, inside the fine-tune stage
        # losses the plan's scoring measured, and those earlier cells on the same dense model
        # had measured (slimline.search.measurements: looked up, bit for bit the same)
        measured=report.get("measured"),
        measured_reused=report.get("measured_reused"),
        probes=report.get("probes") or None,  # each probed plan and its loss
        probe_gap=report.get("probe_gap"),  # the kept plan's probe loss over the dense model's
        distilled=report.get("distilled"),  # the distillation weight the gap turned on
        searches=report.get("searches") or None,  # bitshare's gate searches
        total_seconds=report["total_seconds"],  # the job's stages, inspect to verify
        child_seconds=row["total_seconds"],  # the job + imports and the report
        timings=t,
        finetune_recipe=report.get("finetune"),  # epochs and steps that ran (the recipe's stretch)
        weights_source=report["weights_source"],
        plan={layer["name"]: layer["option"] for layer in report["layers"]},
    )
    return row


def _child(fn_name: str, arg: Any, result_path: str) -> None:
    fns: dict[str, Callable[[Any], dict[str, Any]]] = {
        "run_cell": run_cell,
        "prepare_dense": prepare_dense,
    }
    fn = fns[fn_name]
    out = fn(arg)
    Path(result_path).write_text(json.dumps(out, default=str))


def in_child(fn_name: str, arg: Any, timeout: float | None = None) -> dict[str, Any]:
    """Run ``fn_name(arg)`` in a fresh spawned process; its dict, or an error dict if the child
    died (killed, out of memory, timed out) without answering."""
    ctx = mp.get_context("spawn")
    fd, result_path = tempfile.mkstemp(prefix="suite-", suffix=".json", dir=_tmp_dir())
    os.close(fd)
    try:
        p = ctx.Process(target=_child, args=(fn_name, arg, result_path))
        p.start()
        p.join(timeout)
        if p.is_alive():
            p.terminate()
            p.join()
            return {"status": "error", "error": f"timed out after {timeout:g} s"}
        text = Path(result_path).read_text()
        if p.exitcode != 0 or not text:
            return {"status": "error", "error": f"child process exited with code {p.exitcode}"}
        out: dict[str, Any] = json.loads(text)
        return out
    finally:
        Path(result_path).unlink(missing_ok=True)


def _tmp_dir() -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    return str(WORK)


@dataclass
class DenseJob:
    task: str
    data_root: str
    cache_dir: str
    threads: int | None = None
    dense_steps: int | None = None  # None: the shared recipe (sources.DENSE_RECIPES)
    seed: int = 0
    reference: bool = True  # copy bench/dense/'s weights into the cache first (reference_dense)


def prepare_dense(job: DenseJob) -> dict[str, Any]:
    """Train (or find cached) the task's dense model, exactly as the job's inspect stage would;
    the hash, where it is, its metric and how long training took."""
    _set_threads(job.threads)
    import torch
    from safetensors.torch import save_file

    from slimline.loader import file_sha256
    from slimline.models.datasets import load_dataset
    from slimline.pipeline.sources import (
        build_skeleton,
        dense_cache_key,
        dense_cache_path,
        dense_recipe,
        load_dense_weights,
        resolve_model,
    )
    from slimline.search.training import TrainConfig, evaluate, train

    task = TASKS[job.task]
    t0 = time.perf_counter()
    try:
        src = resolve_model(task.model)
        torch.manual_seed(job.seed)  # as inspect: the skeleton's init comes from the seed
        model = build_skeleton(src)
        data = load_dataset(task.data, job.data_root)
        cache = Path(job.cache_dir)
        weights: str | None = None
        reference = "off"
        if job.dense_steps is None:
            if job.reference:
                from bench.reference_dense import seed_cache

                reference = seed_cache(dense_cache_path(src, task.data, job.seed, cache))
            source = load_dense_weights(
                src,
                model,
                data,
                data_spec=task.data,
                seed=job.seed,
                cache_dir=cache,
                device=torch.device("cpu"),
            )
            path = source.split(":", 1)[1]
            recipe = dense_recipe(src, job.seed)
        else:
            base = dense_recipe(src, job.seed)
            recipe = TrainConfig(**{**asdict(base), "max_steps": job.dense_steps})
            key = dense_cache_key(src, task.data, job.seed, recipe)
            path = str(cache / f"dense-{task.model}-short-{key}.safetensors")
            if Path(path).is_file():
                from safetensors.torch import load_file

                model.load_state_dict(load_file(path))
                source = f"cache:{path}"
            else:
                torch.manual_seed(job.seed)
                train(model, data, recipe, device="cpu")
                model.cpu()
                cache.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
                source = f"trained:{path}"
            weights = path
        ev = evaluate(model, data)
    except Exception as exc:
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    return {
        "status": "ok",
        "model": task.model,
        "data": task.data,
        "hash": Path(path).stem.rsplit("-", 1)[-1],
        "path": path,
        "weights": weights,
        "trained": source.startswith("trained:"),
        # "reference": bench/dense/'s weights (copied, or already in the cache); "replaced":
        # they replaced other bytes of that name; "none": no reference for this recipe; "off"
        "reference": reference,
        "seconds": round(time.perf_counter() - t0, 3),
        "recipe": asdict(recipe),
        # the recipe hash names how the weights were trained; the same recipe gives other
        # weights on another CPU (its float kernels round differently), so the file's digest
        # is what says two results started from the same dense model
        "sha256": file_sha256(path),
        "metric": ev["metric"],
        "bits_per_byte": ev.get("bits_per_token"),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


# --------------------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _num(x: Any, fmt: str = ",") -> str:
    return "" if x is None else format(x, fmt)


def markdown(rows: list[dict[str, Any]], *, language: bool = False) -> str:
    """The table of ``rows`` (one line per cell, in the given order)."""
    head = ["task", "budget", "method", "metric", "retention"]
    if language:
        head.append("bits/byte")
    head += [
        "planned bytes", "file bytes", "ratio", "in budget", "reload = trained",
        "search s", "fine-tune s", "total s", "peak MB",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], f"{r['ratio_target']:g}x", r["method"]]
        if r.get("status") != "ok":
            note = f"{r.get('status', 'error')}: {str(r.get('error', ''))[:90]}"
            cells += [note.replace("|", "/").replace("\n", " ")] + [""] * (len(head) - 4)
        else:
            cells += [_pct(r["metric"]), _pct(r["retention"])]
            if language:
                cells.append(_num(r.get("bits_per_byte"), ".3f"))
            cells += [
                _num(r["planned_bytes"]),
                _num(r["file_bytes"]),
                f"{r['ratio']:.1f}x",
                "yes" if r["within_budget"] else "NO",
                "yes" if r["reload_equal"] else "NO",
                f"{r['search_seconds']:.1f}",
                f"{r['finetune_seconds']:.1f}",
                f"{r['total_seconds']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sorted_rows(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    rank = {m: i for i, m in enumerate(order)}
    return sorted(rows, key=lambda r: (r["ratio_target"], rank.get(r["method"], 99)))


def render_markdown(doc: dict[str, Any], title: str) -> str:
    meta = doc["meta"]
    parts = [f"# {title} ({meta['date']})", "", f"`{meta['command']}`", ""]
    for task, dense in meta["dense"].items():
        if dense.get("status") == "ok":
            bpb = (
                f", {dense['bits_per_byte']:.3f} bits/byte"
                if dense.get("bits_per_byte") is not None
                else ""
            )
            parts.append(
                f"- {task}: dense {TASKS[task].metric} {100 * dense['metric']:.2f}%{bpb} "
                f"(recipe hash {dense['hash']}"
                + (f", weights sha256 {dense['sha256'][:12]}" if dense.get("sha256") else "")
                + f", recipe {dense['recipe']['epochs']:g} epochs"
                + (
                    f", at most {dense['recipe']['max_steps']} steps"
                    if dense["recipe"].get("max_steps")
                    else ""
                )
                + ")"
            )
        else:
            parts.append(f"- {task}: dense model failed: {dense.get('error')}")
    parts += [
        f"- fine-tuning for every method: {meta['finetune_budget']}; seed {meta['seed']}; "
        f"{meta['threads'] or 'default'} torch thread(s)"
        + (f", {meta['jobs']} cells at once" if meta.get("jobs", 1) > 1 else "")
        + f"; {meta['machine']}, "
        + (f"{meta['cpu_model']}, " if meta.get("cpu_model") else "")
        + f"{meta['cpus']} CPUs"
        + (f" ({meta['matmul_gflops']:g} GFLOP/s a thread)" if meta.get("matmul_gflops") else "")
        + (f"; device {meta['device']}" if meta.get("device", "cpu") != "cpu" else "")
        + (f"; wall time {meta['wall_seconds']:.0f} s" if meta.get("wall_seconds") else ""),
    ]
    if meta["kind"] == "ablation":
        parts += [
            f"- {label}: method {m['method']}, finetune "
            + (json.dumps(m["finetune"]) if m["finetune"] else "{} (slimline's defaults)")
            + (f", method settings {json.dumps(m['settings'])}" if m.get("settings") else "")
            for label, m in meta["method_settings"].items()
        ]
    parts.append("")
    order = meta["methods"]
    for task in meta["tasks"]:
        rows = [r for r in doc["cells"] if r["task"] == task]
        if rows:
            parts += [
                markdown(_sorted_rows(rows, order), language=TASKS[task].data == "pycode"),
                "",
            ]
    return "\n".join(parts)


def plot(doc: dict[str, Any], path: Path, task: str) -> Path | None:
    """Metric against file bytes, a line per method; None if matplotlib is not installed
    (``pip install -e .[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    rows = [r for r in doc["cells"] if r["task"] == task and r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in doc["meta"]["methods"]:
        pts = sorted((r["file_bytes"], r["metric"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=method)
    dense = doc["meta"]["dense"].get(task, {})
    if dense.get("status") == "ok":
        ax.axhline(100 * dense["metric"], color="grey", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("file bytes (log)")
    ax.set_ylabel(f"{TASKS[task].metric} (%)")
    ax.set_title(f"{task}: {TASKS[task].metric} against file size ({doc['meta']['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_doc(doc: dict[str, Any], stem: Path, title: str) -> None:
    """JSON then markdown, each written to a temporary file and renamed (an interrupted run
    leaves the last complete file)."""
    for suffix, text in (
        (".json", json.dumps(doc, indent=2, default=str) + "\n"),
        (".md", render_markdown(doc, title) + "\n"),
    ):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_suffix(suffix))


# --------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="digits + lenet5, 2 budgets, 3 methods")
    p.add_argument("--ablation", action="store_true", help="the SLOPE ablation at 32x")
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS))
    p.add_argument("--methods", nargs="+", help=f"labels: {', '.join(METHODS)}")
    p.add_argument("--budgets", nargs="+", type=float, help="compression ratios (8 16 ...)")
    p.add_argument("--max-steps", type=int, help="fine-tuning steps, every method")
    p.add_argument("--epochs", type=float, help="fine-tuning epochs, every method")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    p.add_argument("--jobs", type=int, help="cells at once (default: CPUs // threads; 1 on a GPU)")
    p.add_argument(
        "--device", default="cpu", help="where cells run: cpu (default), cuda[:N] or auto"
    )
    p.add_argument("--resume", action="store_true", help="skip cells already in the JSON")
    p.add_argument("--date", help="date in the file names (default today, UTC)")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT)
    p.add_argument("--cache-dir", type=Path, help="dense cache ($SLIMLINE_CACHE_DIR or .work)")
    p.add_argument("--dense-steps", type=int, help="shorter dense training (code-path checks)")
    p.add_argument(
        "--own-dense",
        action="store_true",
        help="do not copy bench/dense/'s reference weights into the cache (train here)",
    )
    p.add_argument(
        "--results", type=Path, help="output folder (bench/results; --quick: .work/quick)"
    )
    p.add_argument("--cell-timeout", type=float, default=3600.0, help="seconds per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--finetune-seed",
        type=int,
        help="seed of the cells' search and fine-tuning, from the --seed dense weights "
        "(default: --seed); for the spread over fine-tuning seeds (bench.seeds)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every stage of a cell")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks or QUICK["tasks"]
        args.budgets = args.budgets or QUICK["budgets"]
        args.methods = args.methods or QUICK["methods"]
        if args.max_steps is None:
            args.max_steps = QUICK["max_steps"]
    if args.ablation:
        args.tasks = args.tasks or ABLATION_TASKS
        args.budgets = args.budgets or ABLATION_BUDGETS
    known = ablation_methods() if args.ablation else METHODS
    args.methods = args.methods or list(known)
    bad = [m for m in args.methods if m not in known]
    if bad:
        p.error(f"unknown method(s) {bad}; accepted: {', '.join(known)}")
    args.tasks = args.tasks or list(TASKS)
    if args.results is None:  # quick checks stay out of the committed results
        args.results = WORK / "quick" if args.quick else RESULTS
    if args.cache_dir is None:
        env = os.environ.get("SLIMLINE_CACHE_DIR")
        args.cache_dir = Path(env) if env else WORK / "cache"
    if args.jobs is None:  # cells on one GPU would share it: one at a time unless asked
        args.jobs = default_jobs(args.threads) if args.device == "cpu" else 1
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    args.date_given = args.date is not None
    args.date = args.date or dt.datetime.now(dt.UTC).date().isoformat()
    return args


def _command(argv: list[str] | None) -> str:
    return "python -m bench.suite " + " ".join(sys.argv[1:] if argv is None else argv)


def _load_resume(
    stem: Path, name: str, results: Path, explicit_date: bool
) -> dict[str, Any] | None:
    """The document to continue: ``stem``.json, else (no --date given) the newest
    ``*-<name>.json``."""
    path = stem.with_suffix(".json")
    if not path.is_file() and not explicit_date:
        found = sorted(results.glob(f"????-??-??-{name}.json"))
        path = found[-1] if found else path
    if not path.is_file():
        return None
    print(f"resuming from {path}", flush=True)
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def make_cells(
    task: str, budgets: list[float], methods: list[Method], args: argparse.Namespace,
    weights: str | None, run: str = "cells",
) -> list[Cell]:  # fmt: skip
    """The cells of ``task``; their files go to .work/cells/``run``-<pid>/ (runs side by side
    never share a file)."""
    t = TASKS[task]
    max_steps = args.max_steps if args.max_steps is not None else t.finetune_steps
    out_dir = WORK / "cells" / f"{run}-{os.getpid()}"
    split = {
        m.label: optuna_split(max_steps, dict(m.settings or {}))
        if m.method == "optuna"
        else (dict(m.settings or {}), max_steps)
        for m in methods
    }
    return [
        Cell(
            task=task,
            method=m.label,
            ratio=ratio,
            search_method=m.method,
            finetune=m.finetune_settings(),
            train=m.train,
            method_settings=split[m.label][0],
            epochs=args.epochs,
            max_steps=split[m.label][1],
            data_root=str(args.data_root),
            cache_dir=str(args.cache_dir),
            out=str(out_dir / f"{task}-{m.label}-{ratio:g}x.slim.safetensors"),
            threads=args.threads,
            device=args.device,
            weights=weights,
            seed=args.seed if args.finetune_seed is None else args.finetune_seed,
            verbose=args.verbose,
        )
        for ratio in budgets
        for m in methods
    ]


# Relative cost of a cell (seconds of one core, roughly, from the 2026-11-23 runs), so that
# `--jobs` > 1 starts the longest cells first and the run does not end on one long cell.
TASK_COST = {"bytegpt": 10.0, "lenet5": 2.0, "lenet300": 0.5, "digits": 0.2}
METHOD_COST = {"bitshare": 3.0, "optuna": 2.0, "constrained": 1.2, "uniform-ptq": 0.3}


def cell_cost(cell: Cell) -> float:
    return TASK_COST.get(cell.task, 1.0) * METHOD_COST.get(cell.method, 1.0)


def default_jobs(threads: int | None) -> int:
    """Cells run side by side: one per ``threads`` cores."""
    return max(1, (os.cpu_count() or 1) // max(1, threads or 1))


def run_suite(args: argparse.Namespace, argv: list[str] | None = None) -> list[Path]:
    """Every (task, budget, method) cell; a document per task (per run for the ablation),
    written after every cell. ``args.jobs`` cells run at once, each in its own process, the
    longest first. Returns the files written."""
    args.results.mkdir(parents=True, exist_ok=True)
    known = ablation_methods() if args.ablation else METHODS
    methods = [known[m] for m in args.methods]
    t_run = time.perf_counter()
    # The ablation is one document over its tasks; the suite writes one per task.
    groups = [("ablation", args.tasks)] if args.ablation else [(t, [t]) for t in args.tasks]
    docs: list[tuple[dict[str, Any], Path, float]] = []  # doc, stem, wall seconds before
    pending: list[tuple[int, Cell]] = []
    for group, tasks in groups:
        # --quick files are named apart, so a quick check never mixes with a full run's file.
        name = group + ("-quick" if args.quick else "")
        stem = args.results / f"{args.date}-{name}"
        doc = _new_doc(args, argv, tasks, methods)
        if args.resume:
            _resume_into(doc, stem, name, args)
        docs.append((doc, stem, doc["meta"].pop("wall_seconds", None) or 0.0))
        for task in tasks:
            cells = _task_cells(doc, stem, task, methods, args, name)
            pending += [(len(docs) - 1, c) for c in cells]
    if args.jobs > 1:
        pending.sort(key=lambda p: -cell_cost(p[1]))
    lock = threading.Lock()

    def run_one(item: tuple[int, Cell]) -> None:
        i, cell = item
        t0 = time.perf_counter()
        row = in_child("run_cell", cell, timeout=args.cell_timeout)
        row.setdefault("task", cell.task)
        row.setdefault("method", cell.method)
        row.setdefault("ratio_target", cell.ratio)
        row.setdefault("search_method", cell.search_method)
        row["cell_seconds"] = round(time.perf_counter() - t0, 3)  # with process start
        doc, stem, _ = docs[i]
        with lock:
            doc["cells"].append(row)
            write_doc(doc, stem, _title(args))
            lang = TASKS[cell.task].data == "pycode"
            print(markdown([row], language=lang).splitlines()[-1], flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(run_one, p) for p in pending]:
            future.result()  # in_child never raises for a cell; anything else is a bug

    written: list[Path] = []
    wall = time.perf_counter() - t_run
    for (doc, stem, before), (group, _) in zip(docs, groups, strict=True):
        # with several documents in one run, each gets the run's wall time (cells interleave)
        doc["meta"]["wall_seconds"] = round(before + wall, 1)
        write_doc(doc, stem, _title(args))
        written += [stem.with_suffix(".json"), stem.with_suffix(".md")]
        if not args.ablation:
            png = plot(doc, stem.with_suffix(".png"), group)
            if png:
                written.append(png)
        print("\n" + render_markdown(doc, _title(args)) + "\n", flush=True)
    return written


def _new_doc(
    args: argparse.Namespace, argv: list[str] | None, tasks: list[str], methods: list[Method]
) -> dict[str, Any]:
    meta = {
        "date": args.date,
        "command": _command(argv),
        "kind": "ablation" if args.ablation else "suite",
        "tasks": tasks,
        "methods": args.methods,
        "method_settings": {m.label: asdict(m) for m in methods},
        "epochs": args.epochs,
        "max_steps": {
            t: args.max_steps if args.max_steps is not None else TASKS[t].finetune_steps
            for t in tasks
        },
        "finetune_budget": "",
        "seed": args.seed,
        "finetune_seed": args.finetune_seed,  # None: the seed
        "threads": args.threads,
        "jobs": args.jobs,
        "device": args.device,
        "machine": platform.platform(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        # wall times of two runs compare only at equal speed: one thread's fp32 matmul rate
        "matmul_gflops": matmul_gflops(),
        "python": platform.python_version(),
        "dense_steps": args.dense_steps,
        "dense": {},
    }
    steps = meta["max_steps"]
    meta["finetune_budget"] = (
        (f"{args.epochs:g} epochs, " if args.epochs is not None else "the recipe's epochs, ")
        + "at most "
        + ", ".join(f"{s} steps ({t})" for t, s in steps.items())
        + (" (uniform-ptq: none)" if "uniform-ptq" in args.methods else "")
        + (OPTUNA_BUDGET_NOTE if "optuna" in args.methods else "")
    )
    return {"meta": meta, "cells": []}


def cpu_model() -> str:
    """The processor's name (/proc/cpuinfo's "model name"; else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_gflops(n: int = 512, repeat: int = 5) -> float:
    """One thread's fp32 matmul rate (GFLOP/s, best of ``repeat`` [n, n] products). Machines
    that all say "2 CPUs" ran the same cell 2.7x apart (bitshare bytegpt 8x: 219 s and 585 s,
    the same result; README "Benchmarks"), which no other field of the meta shows."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return round(2 * n**3 / best / 1e9, 1)


def _resume_into(doc: dict[str, Any], stem: Path, name: str, args: argparse.Namespace) -> None:
    """Carry the finished cells (and dense models, wall time, command) of the file to
    continue into ``doc``."""
    meta = doc["meta"]
    old = _load_resume(stem, name, args.results, explicit_date=args.date_given)
    if old is None:
        return
    keys = ("epochs", "max_steps", "seed", "finetune_seed")
    if not all(old["meta"].get(k) == meta[k] for k in keys):
        raise SystemExit(
            f"--resume: {stem}.json was run with other fine-tuning settings "
            f"(epochs/max_steps/seed/finetune_seed); start a new file with --date"
        )
    doc["cells"] = [c for c in old["cells"] if c.get("status") in ("ok", "infeasible")]
    meta["dense"] = old["meta"].get("dense", {})
    meta["wall_seconds"] = old["meta"].get("wall_seconds", 0.0)
    meta["command"] = old["meta"].get("command", meta["command"])


def check_same_dense(task: str, recorded: dict[str, Any] | None, dense: dict[str, Any]) -> None:
    """--resume: the cells already in the file must have started from the weights the new ones
    will start from (the same sha256), or the table would compare methods across two dense
    models; a file from before the digest was recorded is carried on with a warning."""
    old = (recorded or {}).get("sha256")
    new = dense.get("sha256")
    if dense.get("status") != "ok" or old == new:
        return
    if old is None:
        print(
            f"[{task}] warning: the file does not record its dense weights' sha256; the cells "
            f"carried over may have started from other weights than {str(new)[:12]}",
            flush=True,
        )
        return
    raise SystemExit(
        f"--resume: {task}'s dense weights are now sha256 {str(new)[:12]}..., but the file's "
        f"cells started from {old[:12]}... (a different machine or cache trains other weights "
        "from the same recipe); start a new file with --date, or put the original weights "
        "back in --cache-dir"
    )


def _task_cells(
    doc: dict[str, Any], stem: Path, task: str, methods: list[Method],
    args: argparse.Namespace, name: str,
) -> list[Cell]:  # fmt: skip
    """The task's dense model (trained or found cached, in a child), then the cells still to
    run; a task whose dense model failed gets every cell recorded as an error."""
    meta = doc["meta"]
    budgets = args.budgets or TASKS[task].budgets
    recorded = meta["dense"].get(task)
    print(f"[{task}] dense model ...", flush=True)
    dense = in_child(
        "prepare_dense",
        DenseJob(
            task,
            str(args.data_root),
            str(args.cache_dir),
            args.threads,
            args.dense_steps,
            args.seed,
            reference=not args.own_dense,
        ),
    )
    if any(c["task"] == task for c in doc["cells"]):
        check_same_dense(task, recorded, dense)
    meta["dense"][task] = dense
    write_doc(doc, stem, _title(args))
    if dense.get("status") != "ok":
        print(f"[{task}] dense model failed: {dense.get('error')}", flush=True)
        for cell in make_cells(task, budgets, methods, args, None):
            doc["cells"].append(
                {
                    "task": task,
                    "method": cell.method,
                    "search_method": cell.search_method,
                    "ratio_target": cell.ratio,
                    "status": "error",
                    "error": f"dense model failed: {dense.get('error')}",
                }
            )
        write_doc(doc, stem, _title(args))
        return []
    print(
        f"[{task}] dense {100 * dense['metric']:.2f}% (hash {dense['hash']}, "
        f"sha256 {dense['sha256'][:12]}, "
        f"{_dense_origin(dense)}, {dense['seconds']:.0f} s)",
        flush=True,
    )
    done = {(c["task"], c["method"], c["ratio_target"]) for c in doc["cells"]}
    return [
        c
        for c in make_cells(task, budgets, methods, args, _cell_weights(dense, args), name)
        if (task, c.method, c.ratio) not in done
    ]


def _dense_origin(dense: dict[str, Any]) -> str:
    if dense.get("reference") == "replaced":
        return "bench/dense's reference weights, which replaced the cache's other bytes"
    if dense.get("reference") == "reference":
        return "bench/dense's reference weights"
    # "none" is worth saying: the table's cells are then not comparable with other machines'
    trained = "trained here" if dense["trained"] else "cached"
    return trained + (
        ", no reference weights for this recipe" if dense.get("reference") == "none" else ""
    )


def _cell_weights(dense: dict[str, Any], args: argparse.Namespace) -> str | None:
    """The dense weights a cell loads: the short run's file, or with ``--finetune-seed`` the
    cached file itself (a job's own seed would look up another dense model); None: the job
    finds the cached model by its seed."""
    if dense.get("weights") is not None or args.finetune_seed is None:
        return dense.get("weights")
    return str(dense["path"])


def _title(args: argparse.Namespace) -> str:
    return "slimline ablation: SLOPE parts removed" if args.ablation else "slimline benchmark suite"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    files = run_suite(args, argv)
    print(f"done in {time.perf_counter() - t0:.0f} s: " + ", ".join(str(f) for f in files))


if __name__ == "__main__":
    # Through the package's module, so the cells pickled for the child processes are
    # bench.suite objects rather than __main__ ones.
    from bench.suite import main as _main

    _main()
