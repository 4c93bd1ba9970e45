"""Re-solving a job's stored scores for another budget: instant, no model, no training.

The scores are what the job's scoring pass stored (``Scores.to_dict()`` of
``slimline.search.scoring``: per layer its option strings, exact bytes and damage, plus tied
groups and measured joint damages). Two more numbers are needed: ``fixed_bytes`` (file bytes
outside the scored layers: other tensors and the header) and ``dense_bytes`` (to resolve a
ratio). They are read from the scores when the worker stored them there, else from the
finished job's metrics (``other_bytes + header_bytes``, ``dense_bytes``), else from the
model's inspection.
The knapsack is ``slimline.search.allocation``, which needs only numpy; we read the stored
JSON directly rather than through ``Scores`` because that module imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Engine

from slimline import jobs
from slimline.budget import parse_budget
from slimline.db import artifacts, uploads
from slimline.db.session import session_scope
from slimline.errors import Conflict, InfeasibleBudget, InvalidOption
from slimline.schemas import ResolveOut
from slimline.search.allocation import allocate, byte_range, named_joints


def _parse(scores: dict[str, Any]) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """(layer names, their option strings, the knapsack's arguments) of stored scores."""
    try:
        layers = scores["layers"]
        names = [str(x["name"]) for x in layers]
        options = [[str(o) for o in x["options"]] for x in layers]
        index = {n: i for i, n in enumerate(names)}
        joints = named_joints(
            names,
            options,
            [(j["layers"], j["options"], j["damage"]) for j in scores.get("joints", [])],
        )
        knapsack = {
            "bytes": [np.asarray(x["bytes"], dtype=np.int64) for x in layers],
            "damage": [np.asarray(x["damage"], dtype=np.float64) for x in layers],
            "groups": [[index[str(n)] for n in g] for g in scores.get("groups", [])],
            "joints": joints,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidOption(f"stored scores are malformed: {exc}", field="scores") from None
    return names, options, knapsack


def resolve(engine: Engine, tenant: jobs.Tenant, job_id: str, budget_text: str) -> ResolveOut:
    budget = parse_budget(budget_text)
    with session_scope(engine) as s:
        job = jobs.get_job(s, tenant.id, job_id)
        scores = artifacts.get_scores(s, tenant.id, job_id)
        model = uploads.get_model(s, tenant.id, job.model_id)
    if scores is None:
        raise Conflict(
            f"job {job_id!r} ({job.status}) has no stored scores: only a job whose method scored "
            "the layers (e.g. constrained) can be re-solved, once its plan stage is done",
            field="job_id",
            value=job_id,
        )
    names, options, knapsack = _parse(scores)
    metrics = job.metrics or {}
    fixed = scores.get("fixed_bytes")
    if fixed is None:
        fixed = int(metrics.get("other_bytes") or 0) + int(metrics.get("header_bytes") or 0)
    fixed = int(fixed)
    dense = scores.get("dense_bytes") or metrics.get("dense_bytes") or model.dense_bytes
    if budget.ratio is not None and not dense:
        raise Conflict(
            "the model's dense size is not known, so a ratio budget cannot be resolved; "
            "give the budget in bytes",
            field="budget",
        )
    budget_bytes = budget.resolve(int(dense or 0))
    smallest = byte_range(**knapsack)[0] + fixed
    if budget_bytes < smallest:
        raise InfeasibleBudget(
            f"budget {budget} ({budget_bytes} bytes) is below the smallest size these scores "
            f"reach: {smallest} bytes",
            field="budget",
            value=str(budget),
        )
    a = allocate(budget=budget_bytes - fixed, **knapsack)
    return ResolveOut(
        job_id=job_id,
        budget=str(budget),
        budget_bytes=budget_bytes,
        bytes=a.bytes + fixed,
        layer_bytes=a.bytes,
        fixed_bytes=fixed,
        damage=a.damage,
        plan={n: opts[c] for n, opts, c in zip(names, options, a.choice, strict=True)},
        solver=a.solver,
        seconds=a.seconds,
    )
