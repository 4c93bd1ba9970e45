"""A Python client of the slimline REST API (no torch needed).

```python
from slimline.client import Client
c = Client.local()                       # the embedded default (`slimline serve`) on this machine
model = c.upload_model("digits-cnn")     # a zoo model; the worker trains its dense weights
job = c.submit(model["id"], "digits", "16x", method="uniform", epochs=1)
done = c.wait(job["id"], on_event=print)
c.download(job["id"], "model.slim.safetensors")
```

Every error the server answers is raised as a ``SlimlineError`` subclass with the server's
``code``, ``message`` and ``field``; a server that cannot be reached is ``Unavailable``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from slimline import errors
from slimline.errors import SlimlineError

LOCAL_URL = "http://127.0.0.1:8000"
FINAL = ("succeeded", "failed", "cancelled")
JSON = dict[str, Any]

_BY_CODE: dict[str, type[SlimlineError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput, errors.InvalidOption, errors.InvalidBudget, errors.InfeasibleBudget,
        errors.InvalidModel, errors.InvalidData, errors.InvalidCheckpoint, errors.NotFound,
        errors.Conflict, errors.Unavailable,
    )
}  # fmt: skip


class ApiError(SlimlineError):
    """An error answer with a code this client has no class for (unauthorized, too_large...)."""

    def __init__(self, code: str, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code
        self.http_status = status


class Unauthorized(ApiError):
    pass


class DownloadMismatch(SlimlineError):
    code = "download_mismatch"


def _error(r: httpx.Response) -> SlimlineError:
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"http_{r.status_code}")
    message = str(body.get("message") or r.text[:500] or r.reason_phrase)
    field = body.get("field")
    cls = _BY_CODE.get(code)
    if cls is not None:
        err = cls(message, field=field)
        err.http_status = r.status_code
        return err
    if r.status_code == 401:
        return Unauthorized(code, message, status=r.status_code, field=field)
    return ApiError(code, message, status=r.status_code, field=field)


class Client:
    """The REST API under ``url`` with the bearer ``key``."""

    def __init__(self, url: str = LOCAL_URL, key: str | None = None, timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    @classmethod
    def local(cls, url: str | None = None) -> Client:
        """The embedded default's server and the key it wrote to ``<data_dir>/local.key``."""
        from slimline.config import Settings

        path = Path(Settings().data_dir) / "local.key"
        if not path.is_file():
            raise errors.NotFound(
                f"no local key at {path}: start the embedded server (`slimline serve`) once, "
                "or pass --key / $SLIMLINE_KEY",
                field="key",
            )
        return cls(url or LOCAL_URL, path.read_text().strip())

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.Unavailable(
                f"cannot reach the slimline server at {self.url}: {exc}"
            ) from None
        if r.status_code >= 400:
            raise _error(r)
        return r

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ uploads
    def upload_model(
        self,
        model: str | os.PathLike[str],
        config: dict[str, Any] | None = None,
        weights: str | os.PathLike[str] | None = None,
    ) -> JSON:
        """A ``.pt2`` path, or a zoo name (+ ``config``, + ``weights`` safetensors; without
        weights the worker trains the dense model). Returns the model record."""
        text = str(model)
        is_program = text.endswith(".pt2")
        parts: list[tuple[str, Any]] = []
        if is_program:
            if weights is not None or config:
                raise errors.InvalidInput("weights and config are for zoo models", field="weights")
        else:
            parts.append(("name", (None, text)))
            if config:
                parts.append(("config", (None, json.dumps(config))))
        path = Path(text) if is_program else (Path(weights) if weights is not None else None)
        if path is not None:
            if not path.is_file():
                raise errors.InvalidInput(f"file {path} does not exist", field="file")
            with open(path, "rb") as f:
                parts.append(("file", (path.name, f, "application/octet-stream")))
                return dict(self._json("POST", "/v1/models", files=parts))
        return dict(self._json("POST", "/v1/models", files=parts))

    def upload_dataset(self, path: str | os.PathLike[str]) -> JSON:
        p = Path(path)
        if not p.is_file():
            raise errors.InvalidInput(f"file {p} does not exist", field="file")
        with open(p, "rb") as f:
            files = {"file": (p.name, f, "application/octet-stream")}
            return dict(self._json("POST", "/v1/datasets", files=files))

    def model(self, model_id: str) -> JSON:
        return dict(self._json("GET", f"/v1/models/{model_id}"))

    # ------------------------------------------------------------------ jobs
    def submit(
        self,
        model_id: str,
        data: str,
        budget: str | int,
        method: str | None = None,
        epochs: float | None = None,
        method_settings: dict[str, Any] | None = None,
        seed: int = 0,
        idempotency_key: str | None = None,
        finetune: dict[str, Any] | None = None,
    ) -> JSON:
        body: JSON = {"model": model_id, "data": data, "budget": str(budget), "seed": seed}
        if method is not None:
            body["method"] = method
        if epochs is not None:
            body["epochs"] = epochs
        if method_settings:
            body["method_settings"] = method_settings
        if finetune:
            body["finetune"] = finetune
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._json("POST", "/v1/jobs", json=body, headers=headers))

    def job(self, job_id: str) -> JSON:
        return dict(self._json("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, status: str | None = None, page_size: int = 100) -> Iterator[JSON]:
        """Every job of the tenant, newest first, following the cursor over all pages."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", "/v1/jobs", params=params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def events(self, job_id: str, after_id: int = 0) -> list[JSON]:
        """The job's events after ``after_id`` (all pages), oldest first."""
        out: list[JSON] = []
        while True:
            page = self._json(
                "GET", f"/v1/jobs/{job_id}/events", params={"after_id": after_id, "limit": 500}
            )
            out.extend(page["items"])
            after_id = int(page["last_id"])
            if not page.get("more"):
                return out

    def wait(
        self,
        job_id: str,
        on_event: Callable[[JSON], None] | None = None,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
    ) -> JSON:
        """Follow the job's events until it is final; returns the final job. ``TimeoutError``
        when ``timeout_s`` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        after = 0
        while True:
            job = self.job(job_id)
            for event in self.events(job_id, after):
                after = int(event["id"])
                if on_event is not None:
                    on_event(event)
            if job["status"] in FINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_s}s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> JSON:
        return dict(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def resolve(self, job_id: str, budget: str | int) -> JSON:
        return dict(self._json("POST", f"/v1/jobs/{job_id}/resolve", json={"budget": str(budget)}))

    def artifacts(self, job_id: str) -> list[JSON]:
        return list(self._json("GET", f"/v1/jobs/{job_id}/artifacts"))

    def download(self, job_id: str, path: str | os.PathLike[str], kind: str = "checkpoint") -> Path:
        """Write the job's ``kind`` artifact to ``path``; its sha256 is checked against the
        ETag (the file is only put in place when it matches)."""
        found = [a for a in self.artifacts(job_id) if a["kind"] == kind]
        if not found:
            raise errors.NotFound(
                f"job {job_id} has no {kind} artifact (is it finished?)", field="kind", value=kind
            )
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        try:
            with self.http.stream("GET", found[0]["url"]) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error(r)
                etag = r.headers.get("etag", "").strip().removeprefix("W/").strip('"')
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise errors.Unavailable(f"download from {self.url} failed: {exc}") from None
        if etag and digest.hexdigest() != etag:
            tmp.unlink(missing_ok=True)
            raise DownloadMismatch(
                f"downloaded {kind} of job {job_id} has sha256 {digest.hexdigest()}, "
                f"the server's ETag says {etag}"
            )
        os.replace(tmp, dest)
        return dest
