"""Drive one compression job on a worker: claim, run the remaining stages, record the result.

The stages are the CLI's (``pipeline.stages``); what the worker adds is what a process that
can die, be duplicated or be cancelled needs:

- **Claim first.** ``jobs.claim_job`` is a conditional update; a duplicate message for a job
  that is finished, held by a live worker or cancelled gets ``None`` and does nothing.
- **Resume.** Each stage's output is saved (``pipeline.persist``) before the stage counts as
  finished, in ``artifact_dir/jobs/<id>/stages``; a redelivered job restores the state of the
  last finished stage and runs only the rest; fine-tuning continues from the trainer's last
  checkpoint (``jobs/<id>/finetune-checkpoints``). An attempt that cannot restore starts over.
- **Writes are retried** while the database is unavailable (``heartbeat.WriteRetry``, bounded
  by ``settings.worker_write_*``): the claim, heartbeats, progress, cancel, fail and finish.
  A retried conditional write that meets a ``Conflict`` first checks whether its own earlier
  try committed before the connection dropped (the job is then in the state it asked for).
- **Heartbeat** (``worker.heartbeat``). A daemon thread calls ``jobs.heartbeat`` every
  ``settings.heartbeat_s``; it learns of cancellation there. ``Conflict`` means another
  worker took the job (this one was presumed dead): the runner stops and writes nothing more.
- **Stop between steps.** ``JobState.should_stop`` is polled by the training loop: cancel
  requested, job lost, or the time limit reached. Cancel -> ``mark_cancelled``. The time limit
  (``spec.time_limit_s``, else ``settings.job_time_limit_s``, counted from the job's first
  start) ends fine-tuning early and the job goes on to export what was trained: the plan
  already fits the budget, so the result is feasible. Stages other than fine-tuning run whole.
- **Progress** goes to the job row and its events through ``jobs.set_progress(worker=...)``,
  at most about once a second per stage (plus every stage start and end). ``job.progress`` is
  the fraction of the current stage (``job.stage``).
- **Errors.** A ``SlimlineError`` is the user's input (a model or dataset that inspection
  marked invalid included): the job fails for good with its code and message. Anything else
  (and ``Unavailable``, a database outage) may be transient: the job is re-queued while
  attempts remain (``claim_job`` counts them) and sent again after commit.
- **Result.** The checkpoint and report are recorded as artifacts (path relative to
  ``artifact_dir``, size, sha256), the scores stored, and the job finished, in one
  transaction: either all of it is recorded or none.

CUDA is touched only here, inside the task (``pick_device("auto")`` at run time).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from slimline import jobs
from slimline.budget import parse_budget
from slimline.config import Settings
from slimline.db.artifacts import add_artifact, save_scores
from slimline.db.session import make_engine, session_scope
from slimline.db.uploads import DatasetRecord, ModelRecord, load_dataset_record, load_model_record
from slimline.errors import Conflict, InvalidData, InvalidModel, SlimlineError, Unavailable
from slimline.worker.heartbeat import Heartbeat, JobLost, ProgressWriter, WriteRetry

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.slim.safetensors"
REPORT_NAME = "report.json"


def job_dir(settings: Settings, job_id: str) -> Path:
    """Where a job's files live: ``artifact_dir/jobs/<job_id>``."""
    return Path(settings.artifact_dir) / "jobs" / job_id


def _float(spec: Mapping[str, Any], key: str) -> float | None:
    value = spec.get(key)
    return None if value is None else float(value)


def build_spec(
    settings: Settings,
    job: jobs.Job,
    model: ModelRecord,
    dataset: DatasetRecord | None,
) -> Any:
    """The job's ``pipeline.stages.JobSpec`` from its row and its upload records.

    Spec keys read (others are ignored): ``budget`` (bytes or "20x"), ``method``,
    ``method_settings``, ``seed``, ``epochs``, ``max_steps`` (also inside ``finetune``) and
    ``time_limit_s`` (read by the runner). Named data are resolved from
    ``$SLIMLINE_DATA_ROOT``; uploaded files are under ``settings.artifact_dir``.
    """
    from slimline.pipeline.stages import JobSpec

    spec = dict(job.spec)
    finetune = dict(spec.get("finetune") or {})
    artifacts = Path(settings.artifact_dir)
    if model.kind == "zoo":
        if not model.zoo_name:
            raise SlimlineError(f"model {model.id} has no zoo name", field="model_id")
        source, config = model.zoo_name, dict(model.config or {})
        weights = str(artifacts / model.path) if model.path else None
    else:
        source, config, weights = str(artifacts / model.path), {}, None
    if dataset is not None:
        data = str(artifacts / dataset.path)
    elif job.data_name:
        data = job.data_name
    else:
        raise SlimlineError(f"job {job.id} names no dataset", field="data")
    epochs = finetune.get("epochs", spec.get("epochs"))
    max_steps = finetune.get("max_steps", spec.get("max_steps"))
    kwargs: dict[str, Any] = {}
    if spec.get("method"):
        kwargs["method"] = str(spec["method"])
    return JobSpec(
        model=source,
        data=data,
        budget=parse_budget(spec["budget"]),
        epochs=None if epochs is None else float(epochs),
        seed=int(spec.get("seed", 0)),
        weights=weights,
        config=config,
        out=job_dir(settings, job.id) / CHECKPOINT_NAME,
        device="auto",
        measured_max_bytes=settings.measured_max_bytes,
        max_steps=None if max_steps is None else int(max_steps),
        method_settings=dict(spec.get("method_settings") or spec.get("settings") or {}),
        finetune={k: v for k, v in finetune.items() if k not in ("epochs", "max_steps")},
        **kwargs,
    )


def _deadline(job: jobs.Job, settings: Settings) -> float:
    limit = _float(job.spec, "time_limit_s") or settings.job_time_limit_s
    started = job.started_at or datetime.now(UTC)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return time.monotonic() + limit - max(0.0, elapsed)


def _sha256(path: Path) -> str:
    from slimline.pipeline.persist import file_sha256

    return file_sha256(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def run_job(
    settings: Settings,
    job_id: str,
    worker_name: str,
    *,
    engine: Engine | None = None,
    requeue: Callable[[str], None] | None = None,
) -> str:
    """Run the job if this worker can claim it; returns the outcome (``skipped`` for a
    duplicate message, else the job's status when this worker let go of it)."""
    if engine is None:
        own = make_engine(settings.database_url)
        try:
            return run_job(settings, job_id, worker_name, engine=own, requeue=requeue)
        finally:
            own.dispose()
    retry = WriteRetry.from_settings(settings)

    def claim(retried: bool) -> tuple[jobs.Job, ModelRecord, DatasetRecord | None] | None:
        with session_scope(engine) as s:
            job = jobs.claim_job(s, job_id, worker_name, stale_after_s=settings.stale_after_s)
            if job is None and retried:
                # An earlier try may have committed the claim before the connection dropped.
                now = jobs.load_job(s, job_id)
                if now.status == "running" and now.worker == worker_name:
                    job = now
            if job is None:
                return None
            model = load_model_record(s, job.model_id)
            dataset = load_dataset_record(s, job.dataset_id) if job.dataset_id else None
        return job, model, dataset

    claimed = retry.call(f"claim of job {job_id}", claim)
    if claimed is None:
        log.info("job %s: not claimable (duplicate message, or held/finished)", job_id)
        return "skipped"
    job, model, dataset = claimed
    heartbeat = Heartbeat(engine, job_id, worker_name, settings.heartbeat_s, retry)
    heartbeat.start()
    try:
        return _run_claimed(settings, engine, job, model, dataset, worker_name, heartbeat, retry)
    except JobLost:
        log.warning("job %s: taken over by another worker; stopping", job_id)
        return "lost"
    except Exception as exc:
        if heartbeat.lost.is_set():
            return "lost"
        # A SlimlineError is the user's input, except a database outage (worth a retry).
        retryable = not isinstance(exc, SlimlineError) or isinstance(exc, Unavailable)
        error: dict[str, Any] = (
            exc.to_dict()
            if isinstance(exc, SlimlineError)
            else {"code": "internal", "message": f"{type(exc).__name__}: {exc}"[:2000]}
        )
        error["retryable"] = retryable
        if retryable:
            log.exception("job %s failed (retryable)", job_id)
        else:
            log.info("job %s failed: %s", job_id, error["message"])

        def fail(retried: bool) -> jobs.Job | None:
            with session_scope(engine) as s:
                try:
                    return jobs.fail_job(s, job_id, worker_name, error)
                except Conflict:
                    now = jobs.load_job(s, job_id)
                    mine = retried and now.worker in (worker_name, None) and now.error == error
                    return now if mine and now.status in ("queued", "failed") else None

        after = retry.call(f"failure of job {job_id}", fail)
        if after is None:
            return "lost"
        if after.status == "queued" and requeue is not None:
            requeue(job_id)
        return after.status
    finally:
        heartbeat.stop()
        _release_device()


def _release_device() -> None:
    """Give the job's GPU memory back to the driver (the next job may be another process's)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _check_uploads(model: ModelRecord, dataset: DatasetRecord | None) -> None:
    """A job on an upload that inspection refused fails with inspection's reason."""
    if model.status == "invalid":
        why = (model.error or {}).get("message", "inspection refused it")
        raise InvalidModel(f"model {model.id} is invalid: {why}", field="model", value=model.id)
    if dataset is not None and dataset.status == "invalid":
        why = (dataset.error or {}).get("message", "inspection refused it")
        raise InvalidData(f"dataset {dataset.id} is invalid: {why}", field="data", value=dataset.id)


def _run_claimed(
    settings: Settings,
    engine: Engine,
    job: jobs.Job,
    model: ModelRecord,
    dataset: DatasetRecord | None,
    worker: str,
    heartbeat: Heartbeat,
    retry: WriteRetry,
) -> str:
    from slimline.pipeline.persist import load_state, save_stage
    from slimline.pipeline.stages import STAGE_FUNCTIONS, STAGES, JobState

    _check_uploads(model, dataset)
    spec = build_spec(settings, job, model, dataset)
    directory = job_dir(settings, job.id)
    stages_dir = directory / "stages"
    progress = ProgressWriter(engine, job.id, worker, retry=retry)
    try:
        state, done = load_state(spec, stages_dir)
    except SlimlineError:
        raise
    except Exception as exc:  # saved files that do not fit: start over
        log.warning("job %s: cannot restore saved stages (%s); starting over", job.id, exc)
        state, done = JobState(spec=spec), ()
    if done:
        progress.write(done[-1], 1.0, {"event": "resumed", "finished": list(done)})

    deadline = _deadline(job, settings)
    timed_out = threading.Event()

    def should_stop() -> bool:
        if time.monotonic() >= deadline:
            timed_out.set()
        return heartbeat.cancelled.is_set() or heartbeat.lost.is_set() or timed_out.is_set()

    state.should_stop = should_stop
    state.checkpoint_dir = directory / "finetune-checkpoints"

    def check_stop(stage: str) -> str | None:
        return _check_stop(engine, job.id, worker, heartbeat, stage, progress, retry)

    for name in STAGES:
        if name in done:
            continue
        if (outcome := check_stop(name)) is not None:
            return outcome
        progress.write(name, 0.0, {"event": "start"})
        t0 = time.perf_counter()
        STAGE_FUNCTIONS[name](state, progress)
        state.timings[name] = time.perf_counter() - t0
        if (outcome := check_stop(name)) is not None:
            return outcome
        if name == "fine-tune" and timed_out.is_set():
            progress.write(
                name, 1.0, {"event": "time_limit", "stopped_at_step": progress.last_step}
            )
        save_stage(state, name, stages_dir)
        progress.write(name, 1.0, {"event": "end", "seconds": state.timings[name]})
    return _finish(settings, engine, job, state, worker, timed_out.is_set(), retry)


def _check_stop(
    engine: Engine,
    job_id: str,
    worker: str,
    heartbeat: Heartbeat,
    stage: str,
    progress: ProgressWriter,
    retry: WriteRetry,
) -> str | None:
    """Between stages: a fresh heartbeat; a cancelled job is marked so, a lost one let go."""
    heartbeat.beat()
    if heartbeat.lost.is_set():
        raise JobLost(job_id)
    if not heartbeat.cancelled.is_set():
        return None
    event = {"event": "cancel", "stopped_at_step": progress.last_step}
    progress.write(stage, progress.fraction, event)

    def cancel(retried: bool) -> None:
        with session_scope(engine) as s:
            try:
                jobs.mark_cancelled(s, job_id, worker)
            except Conflict as exc:
                now = jobs.load_job(s, job_id)
                if not (retried and now.status == "cancelled" and now.worker == worker):
                    raise JobLost(str(exc)) from exc

    retry.call(f"cancellation of job {job_id}", cancel)
    log.info("job %s: cancelled during %s", job_id, stage)
    return "cancelled"


def _finish(
    settings: Settings,
    engine: Engine,
    job: jobs.Job,
    state: Any,
    worker: str,
    timed_out: bool,
    retry: WriteRetry | None = None,
) -> str:
    from slimline.pipeline.report import build_report

    directory = job_dir(settings, job.id)
    artifacts = Path(settings.artifact_dir)
    checkpoint = Path(state.spec.out)
    report = build_report(state)
    report["checkpoint"] = checkpoint.relative_to(artifacts).as_posix()
    report["stopped_early"] = "time_limit" if timed_out else None
    report_path = directory / REPORT_NAME
    # A temp name of this process's own: a worker presumed dead may still be writing here.
    tmp = report_path.with_name(f".{REPORT_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    _fsync(tmp)
    os.replace(tmp, report_path)
    _fsync(checkpoint)
    summary_keys = (
        "metric", "dense_metric", "retention", "file_bytes", "budget_bytes", "dense_bytes",
        "payload_bytes", "header_bytes", "other_bytes", "ratio", "weight_bits_ratio",
        "within_budget", "weights_source", "timings", "total_seconds", "stopped_early",
    )  # fmt: skip
    metrics = {k: report.get(k) for k in summary_keys}
    metrics["verified"] = bool(state.verify.get("equal"))
    metrics["eval"] = report.get("eval")
    scores = getattr(state, "scores", None)
    files = [
        (kind, path.relative_to(artifacts).as_posix(), path.stat().st_size, _sha256(path))
        for kind, path in (("checkpoint", checkpoint), ("report", report_path))
    ]

    def record(retried: bool) -> None:
        with session_scope(engine) as s:
            if retried:  # an earlier try may have committed before the connection dropped
                now = jobs.load_job(s, job.id)
                if now.status == "succeeded" and now.worker == worker:
                    return
            for kind, rel, size, sha in files:
                add_artifact(
                    s, job.tenant_id, kind=kind, path=rel, bytes=size, sha256=sha, job_id=job.id
                )
            if scores is not None:
                save_scores(s, job.id, scores)
            try:
                jobs.finish_job(s, job.id, worker, metrics, state.plan.to_dict())
            except Conflict as exc:
                raise JobLost(str(exc)) from exc

    (retry or WriteRetry()).call(f"result of job {job.id}", record)
    return "succeeded"
