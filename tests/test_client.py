"""The client and the client commands of the CLI against a real `slimline serve` (the embedded
default on a fresh data dir): a zoo model uploaded without weights is inspected from its
architecture and trained on the worker; the job is followed, downloaded, loaded and evaluated.

The worker's dense-model cache is seeded with a briefly trained digits-cnn under the key the
worker computes (model, data, seed, default recipe), so the test does not spend two minutes on
the dense training that `slimline compress` tests already cover; the worker still goes through
the no-weights path (its report says where the weights came from).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import slimline
from slimline.cli import main as cli_main
from slimline.client import Client, Unauthorized
from slimline.models.datasets import load_dataset
from slimline.models.zoo import build_model
from slimline.pipeline.sources import DENSE_RECIPES, ModelSource, dense_cache_key
from slimline.search.training import TrainConfig, evaluate, train
from slimline.service.routes.models import zoo_sha256
from tests.service.test_serve import _free_port, _wait_ready


def _seed_dense_cache(cache: Path) -> None:
    recipe = TrainConfig(**{**asdict(DENSE_RECIPES["digits-cnn"]), "seed": 0})
    key = dense_cache_key(ModelSource(zoo="digits-cnn", config={}), "digits", 0, recipe)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build_model("digits-cnn", {})
    train(model, load_dataset("digits"), TrainConfig(epochs=3, lr=3e-3, batch_size=64))
    cache.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(cache / f"dense-digits-cnn-{key}.safetensors"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("client")
    _seed_dense_cache(root / "cache")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
    env["SLIMLINE_DATA_DIR"] = str(root / "data")
    env["SLIMLINE_CACHE_DIR"] = str(root / "cache")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimline.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{base}/readyz", proc, 120)
        key = (root / "data" / "local.key").read_text().strip()
        yield base, key
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]


@pytest.mark.slow
def test_zoo_model_without_weights_end_to_end(
    server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, key = server
    with Client(base, key) as c:
        model = c.upload_model("digits-cnn")
        assert model["kind"] == "zoo" and model["zoo_name"] == "digits-cnn"
        assert model["bytes"] == 0 and model["sha256"] == zoo_sha256("digits-cnn", {})
        assert c.upload_model("digits-cnn")["id"] == model["id"]  # content-addressed
        deadline = time.monotonic() + 60
        while c.model(model["id"])["status"] == "pending":
            assert time.monotonic() < deadline, "inspection did not settle"
            time.sleep(0.2)  # the worker inspects it; bounded by the deadline
        inspected = c.model(model["id"])
        assert inspected["status"] == "ready", inspected
        assert [layer["name"] for layer in inspected["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
        assert 0 < inspected["smallest_bytes"] < inspected["dense_bytes"]

        job = c.submit(model["id"], "digits", "16x", method="uniform", epochs=1)
        events: list[dict[str, object]] = []
        final = c.wait(job["id"], on_event=events.append, timeout_s=120)
        assert final["status"] == "succeeded", final
        assert final["metrics"]["weights_source"].startswith("cache:")
        stages = {e["stage"] for e in events if e["kind"] == "progress"}
        assert {"inspect", "plan", "fine-tune", "export", "verify"} <= stages
        path = c.download(job["id"], tmp_path / "m.slim.safetensors")
        assert path.stat().st_size == final["metrics"]["file_bytes"]
        loaded = slimline.load(path)
        accuracy = evaluate(loaded, load_dataset("digits"))["metric"]
        assert abs(accuracy - final["metrics"]["metric"]) <= 1e-6
        assert [j["id"] for j in c.jobs(status="succeeded")] == [job["id"]]
        assert list(c.jobs(status="failed")) == []

    conn = ["--url", base, "--key", key]
    capsys.readouterr()
    assert cli_main(["jobs", *conn]) == 0
    listed = capsys.readouterr().out
    assert job["id"] in listed and "succeeded" in listed
    assert cli_main(["status", job["id"], *conn]) == 0
    status = capsys.readouterr().out
    assert job["id"] in status and "succeeded" in status and "ratio" in status
    out = tmp_path / "cli.slim.safetensors"
    assert cli_main(["download", job["id"], "-o", str(out), *conn]) == 0
    assert out.read_bytes() == path.read_bytes()
    assert capsys.readouterr().out.strip() == str(out)
    submit = ["submit", "digits-cnn", "--data", "digits", "--budget", "32x", "--method", "uniform"]
    assert cli_main([*submit, "--epochs", "1", "--wait", *conn]) == 0
    submitted = capsys.readouterr()
    second = submitted.out.splitlines()[0]
    assert submitted.err.startswith(f"submitted: {second}")
    assert "[fine-tune] done" in submitted.err  # the stage bars, on stderr
    assert submitted.out.splitlines()[1].startswith(f"{second}  succeeded")
    assert cli_main(["status", second, "--watch", *conn]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert cli_main(["resolve", second, "--budget", "8x", *conn]) == 2  # uniform stores no scores
    assert "error[conflict]" in capsys.readouterr().err


def test_errors_carry_the_server_code(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    base, key = server
    with Client(base, "sl_nope") as bad, pytest.raises(Unauthorized) as err:
        bad.job("x")
    assert err.value.code == "unauthorized"
    capsys.readouterr()
    assert cli_main(["jobs", "--url", base, "--key", "sl_nope"]) == 2
    assert capsys.readouterr().err.startswith("error[unauthorized]: ")
    assert cli_main(["status", "no-such-job", "--url", base, "--key", key]) == 2
    assert "error[not_found]" in capsys.readouterr().err
    with Client(base, key) as c:
        model = c.upload_model("digits-cnn")
        r = cli_main(["resolve", "x", "--budget", "8x", "--url", base, "--key", key])
        assert r == 2
        assert "error[" in capsys.readouterr().err
        with pytest.raises(slimline.errors.InvalidData):
            c.submit(model["id"], "nope", "16x")


def test_zoo_uploads_without_weights_are_checked(server: tuple[str, str]) -> None:
    base, key = server
    with Client(base, key) as c:
        with pytest.raises(slimline.errors.InvalidModel) as bad_name:
            c.upload_model("not a name!")
        assert bad_name.value.field == "name"
        r = c.http.post("/v1/models", files=[("name", (None, "lenet5")), ("config", (None, "[1]"))])
        assert r.status_code == 422 and r.json()["field"] == "config"
        wide = c.upload_model("lenet5", config={"width": 2})
        assert wide["id"] != c.upload_model("lenet5")["id"]  # the config is part of the address
        unknown = c.upload_model("no-such-model")
        deadline = time.monotonic() + 60
        while (rec := c.model(unknown["id"]))["status"] == "pending":
            assert time.monotonic() < deadline, "inspection did not settle"
            time.sleep(0.2)  # the worker inspects it; bounded by the deadline
        assert rec["status"] == "invalid" and rec["error"]["code"] == "invalid_model", rec
        with pytest.raises(slimline.errors.InvalidModel):
            c.submit(unknown["id"], "digits", "16x")
