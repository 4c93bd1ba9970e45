"""Dashboard list page render time with 1,000 jobs in the database (issue 6's closing note).

What runs, all on this machine, loopback only:

- the records: a temporary SQLite file (the embedded default) or, with ``--backend postgres``,
  a fresh Postgres database on 127.0.0.1:5432 (dropped at the end), migrated; one tenant and
  key, a digits-cnn model record and 1,000 jobs in a realistic mix (mostly succeeded with
  ratio and retention, some running mid-stage, queued, failed, cancelled) written through
  ``slimline.jobs.create_job`` and then set to their state directly (no broker, no worker);
- the API (``uvicorn slimline.service.app:create_app --factory``, one process);
- headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) signed in with the
  key; each run opens ``/jobs`` in a fresh page and waits until the table is rendered.

"Render time" is ``performance.now()`` when the list's first page is in the DOM (set by
``jobs-list.js``), i.e. from the start of navigation: the HTML, the script, the API reads of
models, datasets and the jobs page, and building the rows. Reported: median, min, max of
``--runs`` page loads (after one warm-up load) for the default page of 50 rows and for
``?limit=500``, and the API's ``GET /v1/jobs?limit=50`` latency alone (median, httpx).

    python -m bench.dashboard_render [--backend sqlite|postgres] [--runs 7]

Prints a table and writes ``bench/results/dashboard-render-<date>.json`` (``-postgres`` added
to the name for that backend).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.service_load import child_env, free_port, postgres_database, start, stop, wait_for

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = "/usr/bin/chromium"
N_JOBS = 1000
STAGES = ("inspect", "plan", "fine-tune", "export", "verify")


def seed(database_url: str) -> str:
    """Migrate, then a tenant, its key and ``N_JOBS`` jobs in a mix of states; the key."""
    from sqlalchemy import update

    from slimline import jobs
    from slimline.db.job_records import JOBS
    from slimline.db.migrate import upgrade
    from slimline.db.session import make_engine, session_scope
    from slimline.db.uploads import add_model

    upgrade(database_url)
    engine = make_engine(database_url)
    start_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    try:
        with session_scope(engine) as s:
            tenant = jobs.create_tenant(s, "bench")
            key, _ = jobs.create_api_key(s, tenant.id)
            model, _ = add_model(
                s, tenant.id, sha256=hashlib.sha256(b"bench:digits-cnn").hexdigest(),
                kind="zoo", zoo_name="digits-cnn", filename="digits-cnn", path="", bytes=0,
            )  # fmt: skip
            for i in range(N_JOBS):
                at = start_at + dt.timedelta(minutes=4 * i)
                spec = {"budget": f"{8 * (1 + i % 8)}x", "method": "constrained", "seed": i}
                job, _ = jobs.create_job(
                    s, tenant.id, spec, model_id=model.id, data_name="digits", now=at
                )
                if state := _state(i, at):
                    s.execute(update(JOBS).where(JOBS.c.id == job.id).values(**state))
    finally:
        engine.dispose()
    return key


def _state(i: int, at: dt.datetime) -> dict[str, Any]:
    """Job ``i``'s columns: 5% queued, 5% running, 5% failed, 5% cancelled, the rest done."""
    kind = i % 20
    if kind == 0:
        return {}
    end = at + dt.timedelta(minutes=3)
    if kind == 1:
        return dict(status="running", stage=STAGES[i % 5], progress=(i % 10) / 10,
                    started_at=at, attempts=1)  # fmt: skip
    if kind == 2:
        error = {"code": "infeasible_budget", "message": "budget below the smallest size"}
        return dict(status="failed", stage="plan", error=error, started_at=at, finished_at=end,
                    attempts=1)  # fmt: skip
    if kind == 3:
        return dict(status="cancelled", stage="fine-tune", progress=0.4, started_at=at,
                    finished_at=end, attempts=1)  # fmt: skip
    ratio = 8.0 * (1 + i % 8) * 1.02
    metrics = {"ratio": ratio, "retention": 1 - 0.0005 * (i % 8) ** 2, "file_bytes": 9000,
               "budget_bytes": 9600, "within_budget": True, "metric": 0.96}  # fmt: skip
    return dict(status="succeeded", stage="verify", progress=1.0, metrics=metrics,
                started_at=at, finished_at=end, attempts=1)  # fmt: skip


@contextmanager
def records(backend: str, tmp: Path) -> Iterator[tuple[str, str | None]]:
    if backend == "postgres":
        with postgres_database() as (url, server):
            yield url, f"postgres {server}"
    else:
        yield f"sqlite:///{tmp / 'slimline.db'}", None


def measure(base: str, key: str, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(base_url=base, viewport={"width": 1366, "height": 900})
            signed = ctx.request.post("/v1/session", data={"key": key})
            assert signed.ok, signed.text()
            for name, path in (("page_50_rows", "/jobs"), ("page_500_rows", "/jobs?limit=500")):
                times, rows = [], 0
                for run in range(runs + 1):
                    page = ctx.new_page()
                    page.goto(path)
                    page.wait_for_selector("#jobs-table[data-loaded]", timeout=60_000)
                    ms = float(page.evaluate("window.slimlineListRenderedMs"))
                    rows = page.locator("#jobs-body tr").count()
                    page.close()
                    if run:  # the first load warms the server and the browser's caches
                        times.append(ms)
                out[name] = {
                    "rows": rows, "median_ms": round(statistics.median(times), 1),
                    "min_ms": round(min(times), 1), "max_ms": round(max(times), 1),
                    "runs_ms": [round(t, 1) for t in times],
                }  # fmt: skip
        finally:
            browser.close()
    api = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(runs):
            t0 = time.perf_counter()
            c.get("/v1/jobs", params={"limit": 50}).raise_for_status()
            api.append(1000 * (time.perf_counter() - t0))
    out["api_list_50_median_ms"] = round(statistics.median(api), 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from slimline.config import Settings

    with tempfile.TemporaryDirectory(prefix="slimline-dash-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with records(args.backend, tmp) as (url, server):
            t0 = time.perf_counter()
            key = seed(url)
            seed_s = time.perf_counter() - t0
            settings = Settings(data_dir=tmp, database_url=url)
            port = free_port()
            env = child_env(settings, {})
            argv = [sys.executable, "-m", "uvicorn", "slimline.service.app:create_app",
                    "--factory", "--port", str(port), "--log-level", "warning"]  # fmt: skip
            api = start(argv, env, tmp / "api.log")
            base = f"http://127.0.0.1:{port}"
            try:
                wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 60, "the API")
                result = measure(base, key, args.runs)
            finally:
                stop(api)
    return {
        "benchmark": "dashboard_render",
        "date": dt.date.today().isoformat(),
        "jobs_in_database": N_JOBS,
        "backend": args.backend,
        "database_server": server,
        "seed_seconds": round(seed_s, 2),
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "chromium": CHROMIUM},
        **result,
    }


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    r = run(args)
    print(f"dashboard list render with {N_JOBS} jobs ({r['backend']}), median of {args.runs}:")
    for name in ("page_50_rows", "page_500_rows"):
        m = r[name]
        print(f"  {name:<14} {m['rows']:>4} rows  {m['median_ms']:>7.1f} ms  "
              f"(min {m['min_ms']:.1f}, max {m['max_ms']:.1f})")  # fmt: skip
    print(f"  API GET /v1/jobs?limit=50 alone: {r['api_list_50_median_ms']:.1f} ms")
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if r["backend"] == "sqlite" else f"-{r['backend']}"
    path = RESULTS / f"dashboard-render-{r['date']}{suffix}.json"
    path.write_text(json.dumps(r, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
