"""The `slimline` command. Errors print as `error[code]: message` and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from slimline.errors import InvalidInput, SlimlineError


class StageBar:
    """A one-line progress bar per stage on stderr (plain lines when not a terminal)."""

    def __init__(self, stream: Any = None, quiet: bool = False) -> None:
        stream = sys.stderr if stream is None else stream  # read now: tests swap sys.stderr
        self.stream, self.quiet = stream, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_line = 0.0

    def __call__(self, stage: str, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event.get("event") == "start":
            self._write(f"[{stage}] ...", final=not self.tty)
        elif event.get("event") == "end":
            self._write(f"[{stage}] done in {event['seconds']:.1f}s", final=True)
        elif "total" in event:
            step, total = event["step"], event["total"]
            now = time.monotonic()
            if not self.tty and step != total and now - self.last_line < 5:
                return
            self.last_line = now
            width = 30
            filled = int(width * step / max(1, total))
            loss = f" loss {event['loss']:.4f}" if "loss" in event else ""
            bar = "#" * filled + "-" * (width - filled)
            self._write(f"[{stage}] [{bar}] {step}/{total}{loss}", final=not self.tty)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--{flag} is not valid JSON: {exc}", field=flag) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"--{flag} must be a JSON object, got {text!r}", field=flag)
    return value


FINETUNE_HELP = (
    "SLOPE fine-tuning settings as JSON, e.g. '{\"distill\": 0.3}'; "
    '\'{"distill": 0, "cosine": 0, "mask_warmup": 0, "recalibrate_batches": 0}\' '
    "is plain QAT (all settings: slimline/search/settings.py)"
)


def _compress(args: argparse.Namespace) -> int:
    from slimline.budget import parse_budget
    from slimline.config import get_settings
    from slimline.pipeline.report import build_report, render_report
    from slimline.pipeline.stages import JobSpec, run_job

    config = _json_object(args.config, "config")
    spec = JobSpec(
        model=args.model,
        data=args.data,
        budget=parse_budget(args.budget),
        method=args.method,
        epochs=args.epochs,
        seed=args.seed,
        data_root=args.data_root,
        weights=args.weights,
        config=config,
        out=Path(args.out),
        device=args.device,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        measured_max_bytes=get_settings().measured_max_bytes,
        method_settings=_json_object(args.method_settings, "method-settings"),
        max_steps=args.max_steps,
        finetune=_json_object(args.finetune, "finetune"),
    )
    state = run_job(spec, StageBar(quiet=args.json))
    report = build_report(state)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else render_report(report))
    return 0 if report["within_budget"] and report["verify"].get("equal") else 1


def _keys_create(args: argparse.Namespace) -> int:
    from slimline.config import get_settings
    from slimline.db.migrate import upgrade
    from slimline.service.keys import create_key_command

    settings = get_settings()
    upgrade(settings.database_url)  # idempotent: the embedded default starts with no database
    key = create_key_command(settings, args.tenant)
    print(key)
    print(
        f"(a new key for tenant {args.tenant!r}; only its hash is stored, keep it now)",
        file=sys.stderr,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from slimline.config import get_settings
    from slimline.worker.celery_app import create_app

    app = create_app(get_settings())
    argv = ["worker", "--pool=solo", "--concurrency=1", f"--loglevel={args.loglevel}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from slimline.config import get_settings
    from slimline.service.serve import serve

    serve(get_settings(), host=args.host, port=args.port)
    return 0


# ------------------------------------------------------------------ client commands
def _client(args: argparse.Namespace) -> Any:
    import os

    from slimline.client import LOCAL_URL, Client

    url = args.url or os.environ.get("SLIMLINE_URL") or LOCAL_URL
    key = args.key or os.environ.get("SLIMLINE_KEY")
    if key:
        return Client(url, key)
    return Client.local(url)


def _progress_printer(bar: StageBar) -> Any:
    def on_event(event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("kind") == "progress" and event.get("stage"):
            if data.get("event") == "end" and "seconds" not in data:
                return
            bar(str(event["stage"]), data)

    return on_event


def _job_line(job: dict[str, Any]) -> str:
    spec = job.get("spec") or {}
    stage = (
        f"{job['stage']} {100 * float(job.get('progress') or 0):.0f}%" if job.get("stage") else "-"
    )
    data = job.get("data_name") or job.get("dataset_id") or "-"
    return (
        f"{job['id']}  {job['status']:<9}  {stage:<16}  {spec.get('method', '-'):<11}  "
        f"{spec.get('budget', '-'):<8}  data {data}  {str(job.get('created_at', ''))[:19]}"
    )


def _print_job(job: dict[str, Any]) -> None:
    print(_job_line(job))
    metrics = job.get("metrics") or {}
    if job["status"] == "succeeded" and metrics:
        metric, dense = (
            f"{v:.4f}" if isinstance(v, float) else str(v)
            for v in (metrics.get("metric"), metrics.get("dense_metric"))
        )
        size = metrics.get("file_bytes")
        print(
            f"  file {size} bytes (budget {metrics.get('budget_bytes')}), ratio "
            f"{metrics.get('ratio') or 0:.1f}x, metric {metric} (dense {dense})"
        )
    if job.get("error"):
        print(f"  error[{job['error'].get('code')}]: {job['error'].get('message')}")


def _follow(client: Any, job_id: str) -> int:
    job = client.wait(job_id, on_event=_progress_printer(StageBar()))
    _print_job(job)
    return 0 if job["status"] == "succeeded" else 1


def _submit(args: argparse.Namespace) -> int:
    from slimline.schemas import NAMED_DATASETS

    config = _json_object(args.config, "config") or None
    with _client(args) as client:
        model_arg = args.model
        if model_arg.endswith(".safetensors"):
            if not args.zoo:
                raise InvalidInput(
                    "a .safetensors model is a zoo model's weights: name it with --zoo NAME",
                    field="zoo",
                )
            model = client.upload_model(args.zoo, config=config, weights=model_arg)
        else:
            model = client.upload_model(model_arg, config=config)
        data = args.data
        if data not in NAMED_DATASETS and Path(data).suffix in (".npz", ".safetensors"):
            data = client.upload_dataset(data)["id"]
        job = client.submit(
            model["id"], data, args.budget, method=args.method, epochs=args.epochs,
            method_settings=_json_object(args.method_settings, "method-settings") or None,
            finetune=_json_object(args.finetune, "finetune") or None,
            seed=args.seed, idempotency_key=args.idempotency_key,
        )  # fmt: skip
        print(job["id"])
        print(f"submitted: {_job_line(job)}", file=sys.stderr)
        if args.wait:
            return _follow(client, job["id"])
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.watch:
            return _follow(client, args.job)
        _print_job(client.job(args.job))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for job in client.jobs(status=args.status):
            print(_job_line(job))
    return 0


def _download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.download(args.job, args.output, kind=args.kind)
    print(path)
    return 0


def _resolve(args: argparse.Namespace) -> int:
    with _client(args) as client:
        out = client.resolve(args.job, args.budget)
    print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress a model into a size budget, locally")
    c.add_argument("model", help="a zoo model name (lenet5, digits-cnn, ...) or a .pt2 file")
    c.add_argument(
        "--data",
        required=True,
        help="a named dataset (mnist, digits, pycode, cifar10) or a .npz/.safetensors",
    )
    c.add_argument(
        "--budget",
        required=True,
        help="file size in bytes (60000, 60KB, 1.5MB) or a ratio of the dense size (20x)",
    )
    c.add_argument(
        "--data-root", default=None, help="folder of named datasets (default: $SLIMLINE_DATA_ROOT)"
    )
    c.add_argument(
        "--method",
        default="constrained",
        help="search method: constrained (default), uniform, bitshare, squantizer, optuna",
    )
    c.add_argument(
        "--method-settings",
        default=None,
        help="the method's settings as JSON, e.g. '{\"rho\": 0.01}'",
    )
    c.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="fine-tuning epochs (default: the model's recipe, "
        "longer for budgets past its reference ratio)",
    )
    c.add_argument("--finetune", default=None, help=FINETUNE_HELP)
    c.add_argument("--max-steps", type=int, default=None, help="cap on fine-tuning steps")
    c.add_argument(
        "--weights",
        default=None,
        help="safetensors weights for a zoo model "
        "(without: the dense model is trained once and cached)",
    )
    c.add_argument("--config", default=None, help="zoo model config as JSON")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    c.add_argument(
        "--cache-dir",
        default=None,
        help="dense-model cache (default: $SLIMLINE_CACHE_DIR or ~/.cache/slimline)",
    )
    c.add_argument("--out", default="model.slim.safetensors", help="checkpoint path")
    c.add_argument("--report", default=None, help="also write the JSON report here")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_compress)

    keys = sub.add_parser("keys", help="API keys of the service").add_subparsers(
        dest="keys_command", required=True
    )
    kc = keys.add_parser("create", help="create a key for a tenant (the tenant is made if new)")
    kc.add_argument("--tenant", required=True, help="tenant name")
    kc.set_defaults(func=_keys_create)

    w = sub.add_parser("worker", help="run a Celery worker (one job at a time) from the settings")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument("--hostname", default=None, help="worker name (default: celery's)")
    w.set_defaults(func=_worker)

    sv = sub.add_parser(
        "serve",
        help="API + dashboard + one worker on this machine "
        "(SQLite and a serverless broker unless configured)",
    )
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.set_defaults(func=_serve)

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--url", default=None, help="server (default: $SLIMLINE_URL or http://127.0.0.1:8000)"
    )
    conn.add_argument(
        "--key", default=None, help="API key (default: $SLIMLINE_KEY or the local server's key)"
    )
    sb = sub.add_parser("submit", parents=[conn], help="submit a compression job to a server")
    sb.add_argument(
        "model", help="a zoo name (its dense weights trained on the worker), a .pt2, or a "
        ".safetensors with --zoo NAME",
    )  # fmt: skip
    sb.add_argument("--data", required=True, help="a named dataset or a .npz/.safetensors file")
    sb.add_argument("--budget", required=True, help="bytes (60KB) or a ratio (16x)")
    sb.add_argument("--method", default=None, help="search method (server default: constrained)")
    sb.add_argument("--method-settings", default=None, help="the method's settings as JSON")
    sb.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="fine-tuning epochs (default: the model's recipe, "
        "longer for budgets past its reference ratio)",
    )
    sb.add_argument("--finetune", default=None, help=FINETUNE_HELP)
    sb.add_argument("--zoo", default=None, help="zoo name of a .safetensors model")
    sb.add_argument("--config", default=None, help="zoo model config as JSON")
    sb.add_argument("--seed", type=int, default=0)
    sb.add_argument("--idempotency-key", default=None)
    sb.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    sb.set_defaults(func=_submit)

    st = sub.add_parser("status", parents=[conn], help="a job's status")
    st.add_argument("job", help="job id")
    st.add_argument("--watch", action="store_true", help="follow it with a progress bar per stage")
    st.set_defaults(func=_status)

    js = sub.add_parser("jobs", parents=[conn], help="list jobs, newest first")
    js.add_argument("--status", default=None, help="queued, running, succeeded, failed, cancelled")
    js.set_defaults(func=_jobs)

    dl = sub.add_parser("download", parents=[conn], help="download a finished job's checkpoint")
    dl.add_argument("job", help="job id")
    dl.add_argument("-o", "--output", required=True, help="where to write it")
    dl.add_argument("--kind", default="checkpoint", help="checkpoint (default) or report")
    dl.set_defaults(func=_download)

    rs = sub.add_parser("resolve", parents=[conn], help="re-solve a job's scores for a budget")
    rs.add_argument("job", help="job id")
    rs.add_argument("--budget", required=True, help="bytes or a ratio")
    rs.set_defaults(func=_resolve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SlimlineError as exc:
        print(f"error[{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
