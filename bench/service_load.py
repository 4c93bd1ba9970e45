"""Service load: requests per second and p50/p99 latency of the API's read endpoints with 1,000
jobs in the database while a worker runs a job, next to ``/healthz`` on the same server in the
same run; and jobs submitted per second (DESIGN.md section 4, issue 5's closing note).

What runs, all on this machine, loopback only:

- a fresh Postgres database on 127.0.0.1:5432 (trust auth), migrated, dropped at the end —
  or a temporary SQLite file with ``--backend sqlite`` (and the filesystem broker);
- one tenant and key, a zoo ``digits-cnn`` model record (no weights: the worker trains the
  dense model itself) and 1,000 queued jobs inserted through ``slimline.jobs.create_job``
  (not sent to the broker, so the worker never sees them);
- the API (``uvicorn slimline.service.app:create_app --factory``, one process) and a real
  ``slimline worker`` on Redis (an empty database number on 127.0.0.1:6379, flushed at the
  end), both built from the same ``SLIMLINE_*`` settings;
- one real job (digits-cnn on digits, method uniform, 16x, many fine-tuning epochs) submitted
  through the API and running on the worker for the whole measurement (cancelled at the end);
- an async httpx load generator (``--concurrency`` connections, each endpoint in turn for
  ``--seconds`` and at most ``--max-requests`` requests, after a short warm-up that is not
  counted): ``/healthz``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs?limit=50`` (first page and a
  deep page reached by cursor), ``POST /v1/jobs`` (each a new job sent to the broker).

The load generator shares the machine with the API, Postgres and the worker, so absolute
figures are lower bounds for this box; the ratios to ``/healthz`` are what carries over.

    python -m bench.service_load [--backend postgres|sqlite] [--seconds 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN = os.environ.get(
    "SLIMLINE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("SLIMLINE_BENCH_REDIS", "redis://127.0.0.1:6379")
# Redis database numbers tried for the broker, first empty one wins: not 0 (a developer's
# default) nor 13/14 (the test suites').
REDIS_DBS = (15, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
N_JOBS = 1000
PAGE = 50
WARMUP_S = 1.0
JOB_SPEC = {"data": "digits", "budget": "16x", "method": "uniform"}
# The job that keeps the worker busy: far more fine-tuning than the measurement lasts.
BUSY_SPEC = {**JOB_SPEC, "epochs": 10_000, "time_limit_s": 1800}


# ------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pick_redis_db() -> tuple[str, int]:
    import redis

    for n in REDIS_DBS:
        r = redis.Redis.from_url(f"{REDIS_BASE}/{n}", socket_connect_timeout=2)
        try:
            if r.dbsize() == 0:
                return f"{REDIS_BASE}/{n}", n
        finally:
            r.close()
    raise SystemExit(f"no empty Redis database among {REDIS_DBS} at {REDIS_BASE}")


@contextmanager
def postgres_database() -> Iterator[tuple[str, str]]:
    """A fresh database (its URL, the server's version), dropped at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"slimline_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False), server
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(database_url: str) -> dict[str, Any]:
    """Tenant, key, a zoo digits-cnn model record and ``N_JOBS`` queued jobs."""
    from slimline import jobs
    from slimline.db.migrate import upgrade
    from slimline.db.session import make_engine, session_scope
    from slimline.db.uploads import add_model
    from slimline.schemas import JobSpecIn

    t0 = time.perf_counter()
    upgrade(database_url)
    migrate_s = time.perf_counter() - t0
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as s:
            tenant = jobs.create_tenant(s, "bench")
            key, _ = jobs.create_api_key(s, tenant.id)
            model, _ = add_model(
                s,
                tenant.id,
                sha256=hashlib.sha256(b"zoo:digits-cnn:no-weights").hexdigest(),
                kind="zoo",
                zoo_name="digits-cnn",
                filename="digits-cnn",
                path="",  # no weights: the worker trains the dense model (and caches it)
                bytes=0,
            )
        spec = JobSpecIn(model=model.id, **JOB_SPEC).model_dump(mode="json")  # type: ignore[arg-type]
        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        t0 = time.perf_counter()
        with session_scope(engine) as s:
            for i in range(N_JOBS):
                jobs.create_job(
                    s, tenant.id, spec, model_id=model.id, data_name="digits",
                    now=start + dt.timedelta(seconds=i),
                )  # fmt: skip
        insert_s = time.perf_counter() - t0
    finally:
        engine.dispose()
    return {
        "key": key,
        "model_id": model.id,
        "migrate_s": migrate_s,
        "insert_jobs_s": insert_s,
    }


def child_env(settings: Any, extra: dict[str, str]) -> dict[str, str]:
    from slimline.worker.embedded import ENV_PREFIX, settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    env.update(extra)
    env.pop("http_proxy", None)
    env.pop("HTTP_PROXY", None)
    return env


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used (Linux ``/proc``), else None: a per-request
    cost that a busy machine slows down far less than it slows requests per second."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        with suppress(httpx.HTTPError):
            if check():
                return time.monotonic() - t0
        time.sleep(poll_s)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s")


# --------------------------------------------------------------------------------- load
@dataclass
class Endpoint:
    name: str
    method: str
    url: str
    body: Callable[[], dict[str, Any]] | None = None
    ok: tuple[int, ...] = (200,)


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None


async def hammer(
    client: httpx.AsyncClient, ep: Endpoint, seconds: float, max_requests: int, concurrency: int
) -> tuple[Outcome, float]:
    """``concurrency`` loops sending ``ep`` until ``seconds`` pass or ``max_requests`` were
    sent; (outcome, elapsed seconds)."""
    out = Outcome()
    sent = 0
    t_start = time.perf_counter()
    deadline = t_start + seconds

    async def loop() -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.request(
                    ep.method, ep.url, json=ep.body() if ep.body is not None else None
                )
            except httpx.HTTPError as exc:
                out.errors += 1
                out.statuses["exception"] = out.statuses.get("exception", 0) + 1
                out.first_error = out.first_error or f"{type(exc).__name__}: {exc}"
                continue
            dt_s = time.perf_counter() - t0
            code = str(r.status_code)
            out.statuses[code] = out.statuses.get(code, 0) + 1
            if r.status_code in ep.ok:
                out.latencies.append(dt_s)
            else:
                out.errors += 1
                out.first_error = out.first_error or f"{r.status_code}: {r.text[:300]}"

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return out, time.perf_counter() - t_start


def summarize(ep: Endpoint, out: Outcome, elapsed: float) -> dict[str, Any]:
    lat = np.asarray(out.latencies) * 1000.0

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if lat.size else float("nan")

    return {
        "endpoint": ep.name,
        "request": f"{ep.method} {ep.url.split('&cursor=')[0]}"
        + ("&cursor=..." if "&cursor=" in ep.url else ""),
        "seconds": elapsed,
        "ok": int(lat.size),
        "errors": out.errors,
        "statuses": out.statuses,
        "first_error": out.first_error,
        "requests_per_s": lat.size / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": float(lat.max()) if lat.size else float("nan"),
            "mean": float(lat.mean()) if lat.size else float("nan"),
        },
    }


async def measure(
    base: str,
    key: str,
    endpoints: list[Endpoint],
    busy_job: str | None,
    api_pid: int | None,
    seconds: float,
    max_requests: int,
    concurrency: int,
) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    rows = []
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=30.0, trust_env=False
    ) as client:

        async def worker_state() -> dict[str, Any] | None:
            if busy_job is None:
                return None
            j = (await client.get(f"/v1/jobs/{busy_job}")).json()
            return {k: j.get(k) for k in ("status", "stage", "progress")}

        for ep in endpoints:
            await hammer(client, ep, WARMUP_S, max_requests, concurrency)
            before = await worker_state()
            cpu0 = cpu_seconds(api_pid)
            out, elapsed = await hammer(client, ep, seconds, max_requests, concurrency)
            cpu1 = cpu_seconds(api_pid)
            row = summarize(ep, out, elapsed)
            row["api_cpu_ms_per_request"] = (
                1000.0 * (cpu1 - cpu0) / row["ok"]
                if cpu0 is not None and cpu1 is not None and row["ok"]
                else None
            )
            row["worker_job"] = {"before": before, "after": await worker_state()}
            rows.append(row)
            print(
                f"  {ep.name:<22} {row['requests_per_s']:8.1f} req/s  "
                f"p50 {row['latency_ms']['p50']:7.2f} ms  p99 {row['latency_ms']['p99']:7.2f} ms"
                f"  API CPU {row['api_cpu_ms_per_request'] or float('nan'):5.2f} ms/req"
                f"  errors {row['errors']}",
                flush=True,
            )
    return rows


def deep_cursor(base: str, key: str, pages: int) -> tuple[str, int]:
    """The cursor after ``pages`` pages of ``PAGE`` jobs (and how many jobs precede it)."""
    cursor, seen = None, 0
    with httpx.Client(base_url=base, trust_env=False, timeout=30.0) as c:
        for _ in range(pages):
            params: dict[str, Any] = {"limit": PAGE}
            if cursor:
                params["cursor"] = cursor
            r = c.get("/v1/jobs", params=params, headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
            page = r.json()
            seen += len(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                raise RuntimeError(f"only {seen} jobs listed; expected more than {pages} pages")
    assert cursor is not None
    return cursor, seen


# ---------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from slimline.config import Settings

    tmp = Path(tempfile.mkdtemp(prefix="slimline-bench-"))
    api = worker = None
    redis_url, redis_db, pg_version = None, None, None
    result: dict[str, Any] = {}
    db = nullcontext(None) if args.backend == "sqlite" else postgres_database()
    with db as pg:
        try:
            if args.backend == "postgres":
                database_url, pg_version = pg  # type: ignore[misc]
                redis_url, redis_db = pick_redis_db()
                broker = redis_url
            else:
                database_url, broker = f"sqlite:///{tmp / 'slimline.db'}", ""
            settings = Settings(
                data_dir=tmp,
                database_url=database_url,
                broker_url=broker,
                rate_limit_jobs_per_minute=10**9,  # the bench measures the server, not the limit
            )
            seeded = seed(settings.database_url)
            key = seeded["key"]
            print(
                f"{args.backend}: migrated in {seeded['migrate_s']:.1f} s, {N_JOBS} jobs inserted "
                f"in {seeded['insert_jobs_s']:.1f} s",
                flush=True,
            )
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = child_env(settings, {"SLIMLINE_CACHE_DIR": str(tmp / "cache")})
            api = start(
                [sys.executable, "-m", "uvicorn", "slimline.service.app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                 "--no-access-log"],
                env, tmp / "api.log",
            )  # fmt: skip
            hc = httpx.Client(base_url=base, trust_env=False, timeout=10.0)
            hc.headers["Authorization"] = f"Bearer {key}"
            wait_for(lambda: hc.get("/readyz").status_code == 200, 60, "API ready")

            busy_job, worker_note, worker_start_s = None, None, None
            if not args.no_worker:
                worker = start(
                    [sys.executable, "-m", "slimline.cli", "worker", "--loglevel", "INFO",
                     "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h"],
                    env, tmp / "worker.log",
                )  # fmt: skip
                r = hc.post("/v1/jobs", json={"model": seeded["model_id"], **BUSY_SPEC})
                r.raise_for_status()
                busy_job = r.json()["id"]

                def running() -> bool:
                    if worker is not None and worker.poll() is not None:
                        raise RuntimeError(f"worker exited: see {tmp / 'worker.log'}")
                    return bool(hc.get(f"/v1/jobs/{busy_job}").json()["status"] == "running")

                try:
                    worker_start_s = wait_for(running, args.worker_timeout, "the job running")
                except (TimeoutError, RuntimeError) as exc:
                    worker_note = f"measured without a running job: {exc}"
                    print(worker_note, flush=True)
                    busy_job = None
            cursor, before_deep = deep_cursor(base, key, N_JOBS // PAGE - 1)

            def new_job() -> dict[str, Any]:
                return {"model": seeded["model_id"], **JOB_SPEC}

            job_id = hc.get("/v1/jobs", params={"limit": 1}).json()["items"][0]["id"]
            endpoints = [
                Endpoint("healthz", "GET", "/healthz"),
                Endpoint("get job", "GET", f"/v1/jobs/{job_id}"),
                Endpoint("list jobs (first page)", "GET", f"/v1/jobs?limit={PAGE}"),
                Endpoint("list jobs (deep page)", "GET", f"/v1/jobs?limit={PAGE}&cursor={cursor}"),
                Endpoint("healthz (again)", "GET", "/healthz"),
                Endpoint("submit job", "POST", "/v1/jobs", body=new_job, ok=(201,)),
            ]
            print(
                f"load: {args.concurrency} connections, {args.seconds:g} s per endpoint "
                f"(at most {args.max_requests} requests), worker "
                f"{'busy with job ' + busy_job if busy_job else 'idle/absent'}",
                flush=True,
            )
            load_before = list(os.getloadavg())
            rows = asyncio.run(
                measure(
                    base, key, endpoints, busy_job, api.pid, args.seconds, args.max_requests,
                    args.concurrency,
                )
            )  # fmt: skip
            busy_after = None
            if busy_job is not None:
                busy_after = hc.get(f"/v1/jobs/{busy_job}").json()
                hc.post(f"/v1/jobs/{busy_job}/cancel")
            total = hc.get("/v1/jobs", params={"limit": 1}).status_code
            hc.close()
            result = {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "backend": args.backend,
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    # Other processes share this machine (and the worker trains on it): the
                    # load average says how contended the CPUs were.
                    "loadavg_before": load_before,
                    "loadavg_after": list(os.getloadavg()),
                    "python": platform.python_version(),
                    "postgres": pg_version,
                    "redis": redis_version(redis_url) if redis_url else None,
                    "packages": {
                        d: version(d)
                        for d in (
                            "fastapi",
                            "uvicorn",
                            "sqlalchemy",
                            "psycopg",
                            "httpx",
                            "celery",
                            "kombu",
                            "redis",
                            "pydantic",
                        )
                    },  # fmt: skip
                },
                "setup": {
                    "jobs_in_database": N_JOBS,
                    "page_limit": PAGE,
                    "deep_page_after_jobs": before_deep,
                    "concurrency": args.concurrency,
                    "seconds_per_endpoint": args.seconds,
                    "max_requests_per_endpoint": args.max_requests,
                    "warmup_s": WARMUP_S,
                    "api": "uvicorn, 1 process, loopback; access log off",
                    "broker": (f"redis db {redis_db}" if redis_db is not None else "filesystem"),
                    "load_generator": "httpx.AsyncClient in one process on the same machine",
                    "migrate_s": seeded["migrate_s"],
                    "insert_jobs_s": seeded["insert_jobs_s"],
                },
                "worker": {
                    "running_job": busy_job,
                    "job_spec": BUSY_SPEC,
                    "seconds_until_running": worker_start_s,
                    "note": worker_note or ("no worker (--no-worker)" if args.no_worker else None),
                    "job_after_measurement": (
                        {k: busy_after.get(k) for k in ("status", "stage", "progress", "attempts")}
                        if busy_after
                        else None
                    ),
                },
                "results": rows,
                "final_list_status": total,
            }
        finally:
            stop(worker, 30.0)
            stop(api)
            if redis_url is not None:
                import redis

                client = redis.Redis.from_url(redis_url)
                client.flushdb()  # it was empty when picked: only this run's messages are in it
                client.close()
            if args.keep_logs:
                print(f"logs kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return result


def redis_version(url: str) -> str | None:
    import redis

    r = redis.Redis.from_url(url)
    try:
        return str(r.info("server").get("redis_version"))
    finally:
        r.close()


def table(r: dict[str, Any]) -> str:
    rows = r["results"]
    hz = next(x for x in rows if x["endpoint"] == "healthz")
    w = r["worker"]
    busy = f"worker running job {w['running_job']}" if w["running_job"] else "no running job"
    lines = [
        f"{r['backend']}, {r['setup']['jobs_in_database']} jobs in the database, {busy}, "
        f"{r['setup']['concurrency']} connections, {r['machine']['cpus']} CPUs",
        "",
        "| endpoint | requests | req/s | x healthz | p50 ms | p99 ms | API CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lat = x["latency_ms"]
        c = x.get("api_cpu_ms_per_request")
        cpu = f"{c:.2f}" if c is not None else "-"
        rel = x["requests_per_s"] / hz["requests_per_s"] if hz["requests_per_s"] else 0.0
        lines.append(
            f"| {x['endpoint']} | {x['ok']} | {x['requests_per_s']:.1f} | {rel:.2f} "
            f"| {lat['p50']:.2f} | {lat['p99']:.2f} | {cpu} | {x['errors']} |"
        )
    if w["job_after_measurement"]:
        lines.append(f"\nthe worker's job after the measurement: {w['job_after_measurement']}")
    if w["note"]:
        lines.append(f"\nnote: {w['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--seconds", type=float, default=10.0, help="per endpoint")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=50_000, help="per endpoint")
    ap.add_argument("--worker-timeout", type=float, default=180.0)
    ap.add_argument("--no-worker", action="store_true", help="measure with no worker")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    r = run(args)
    print()
    print(table(r))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.backend == "postgres" else f"-{args.backend}"
        out = RESULTS / f"service-load-{dt.date.today().isoformat()}{suffix}.json"
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
