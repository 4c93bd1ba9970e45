"""``make demo`` (``python -m slimline.demo``): the service end to end on this machine.

Starts the embedded default (``slimline serve``, its log in ``out/serve.log``), waits until
``/readyz`` answers, submits digits-cnn (a zoo model without weights: the worker trains the
dense model once and caches it) on ``digits`` at 16x through the client and follows its
progress, downloads the checkpoint to ``out/``, loads it with ``slimline.load`` and prints its
accuracy on the digits validation split next to the report's. Then it prints the dashboard URL
and keeps serving in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from slimline.cli import StageBar, _print_job, _progress_printer
from slimline.client import Client
from slimline.errors import SlimlineError


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"slimline serve exited ({proc.returncode}); see {log}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text[:200]
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)  # the server is starting; bounded by the deadline
    raise SystemExit(f"{url}/readyz did not answer in {timeout_s:.0f}s ({last}); see {log}")


def run(client: Client, out: Path, epochs: float) -> int:
    import slimline
    from slimline.models.datasets import load_dataset
    from slimline.search.training import evaluate

    model = client.upload_model("digits-cnn")
    print(f"demo: model {model['id']} (digits-cnn, dense weights trained on the worker)")
    job = client.submit(model["id"], "digits", "16x", epochs=epochs)
    print(f"demo: job {job['id']} submitted (16x, {epochs:g} fine-tuning epochs); following it")
    final = client.wait(job["id"], on_event=_progress_printer(StageBar()))
    _print_job(final)
    if final["status"] != "succeeded":
        return 1
    path = client.download(job["id"], out / "digits-cnn.slim.safetensors")
    client.download(job["id"], out / "digits-cnn.report.json", kind="report")
    loaded = slimline.load(path)
    digits: Any = load_dataset("digits")  # a Dataset is a TrainData (frozen fields)
    accuracy = evaluate(loaded, digits)["metric"]
    report = final["metrics"]["metric"]
    print(f"demo: checkpoint {path} ({path.stat().st_size} bytes)")
    print(
        f"demo: accuracy of the loaded checkpoint on digits val {accuracy:.4f}, report {report:.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slimline.demo", description=__doc__)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", default="out")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--ready-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress reaches a log file as it happens
    signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # Ctrl-C, even if started with it ignored
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    log = out / "serve.log"
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slimline.cli", "serve", "--port", str(args.port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    print(f"demo: started `slimline serve` on {url} (pid {proc.pid}, log {log})")
    try:
        wait_ready(url, proc, args.ready_timeout, log)
        print("demo: the server is ready")
        with Client.local(url) as client:
            rc = run(client, out, args.epochs)
        print(f"demo: dashboard at {url}/  (API docs {url}/docs); serving until Ctrl-C")
        while proc.poll() is None:
            time.sleep(1)
        return rc or proc.returncode
    except SlimlineError as exc:
        print(f"error[{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ndemo: stopping the server")
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
