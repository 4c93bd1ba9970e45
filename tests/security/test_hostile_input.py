"""Hostile input: each gets a 4xx whose JSON is ``{code, message, field}`` naming the field at
fault, nothing is executed (no pickle is ever loaded: a canary pickle would write a file), and
nothing lands anywhere but the artifact store (and there only under its content address).

What tests/service/test_uploads.py already covers is not repeated here (a bare pickle sent as
a .pt2, a torch.save zip, a plain zip, "hello world", the wrong extension, '../../etc/passwd'
and '../../../../tmp/evil.pt2' as names, the size limit). Datasets whose content is wrong
(NaN/Inf, dtypes, lengths) pass the API's cheap checks and are refused by the worker's
inspection, called here in-process on the real record; a job on them is then refused with the
reason. ``HOSTILE_LOG`` collects (input, status, code, field) for the closing note.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as st_save

from slimline.worker.inspection import inspect_upload
from tests.security.conftest import (
    MAX_UPLOAD,
    Api,
    Live,
    auth,
    npz_bytes,
    pt2_bytes,
)
from tests.service.conftest import files_under
from tests.service.test_jobs import SPEC

HOSTILE_LOG: list[tuple[str, int, str | None, str | None]] = []


class Canary:
    """Unpickling this writes a file: if the file ever appears, something ran a pickle."""

    path = ""

    def __reduce__(self) -> Any:
        return (Path(self.path).write_text, ("pwned",))


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary-was-unpickled"
    Canary.path = str(path)
    return path


def note(what: str, r: httpx.Response) -> None:
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    body = body if isinstance(body, dict) else {}
    HOSTILE_LOG.append((what, r.status_code, body.get("code"), body.get("field")))


def refused(r: httpx.Response, what: str, *, status: int, field: str, needle: str) -> None:
    note(what, r)
    assert r.status_code == status, (what, r.status_code, r.text)
    body = r.json()
    assert set(body) <= {"code", "message", "field"}, (what, body)
    assert body["field"] == field, (what, body)
    assert needle.lower() in body["message"].lower(), (what, needle, body)


def nothing_stored(api: Api, canary: Path) -> None:
    # the whole data dir (the artifact store, its temp area and anything beside them) is empty
    assert files_under(api.settings.artifact_dir) == []
    assert files_under(canary.parent) == []
    assert not canary.exists(), "a pickle was loaded"
    assert api.messages() == []  # nothing was sent to a worker either


# ----------------------------------------------------------------------------- payloads
def zip_of(members: dict[str, bytes], *, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", mode) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb(inner: str, prefix: dict[str, bytes], expanded: int) -> bytes:
    """A small zip whose one big member inflates to ``expanded`` zero bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in prefix.items():
            zf.writestr(name, data)
        with zf.open(inner, "w", force_zip64=True) as m:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(expanded // len(chunk)):
                m.write(chunk)
    return buf.getvalue()


def safetensors_raw(header: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def npz_member() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, np.float32))
    return buf.getvalue()


def npz_with(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def classify(n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.standard_normal((n, 4)).astype(np.float32),
        "y_train": rng.integers(0, 3, n).astype(np.int64),
        "x_val": rng.standard_normal((4, 4)).astype(np.float32),
        "y_val": np.arange(4, dtype=np.int64) % 3,
    }


def form_only(fields: dict[str, str]) -> tuple[str, bytes]:
    """A multipart/form-data body of text fields only."""
    b = "fields-only"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    return f"multipart/form-data; boundary={b}", ("".join(parts) + f"--{b}--\r\n").encode()


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 64
GZIP = b"\x1f\x8b\x08\x00" + b"\0" * 64


# ------------------------------------------------------------------------- model files
def model_cases() -> list[tuple[str, dict[str, Any], dict[str, str], str, str]]:
    """(what, files, form fields, field named, message fragment) — each must be a 422."""
    good = pt2_bytes("ok")
    st_ok = safetensors_raw(
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    zoo = {"name": "lenet5"}
    deep = "[" * 100_000 + "]" * 100_000
    return [
        ("pt2 zip bomb (8 MiB of zeros in ~8 KB)",
         {"file": ("m.pt2", zip_bomb("m/data/weights/w0", {"m/archive_format": b"pt2"}, 8 << 20))},
         {}, "file", "zip bomb"),
        ("pt2 truncated to half", {"file": ("m.pt2", good[: len(good) // 2])}, {}, "file",
         "truncated"),
        ("pt2 with PNG magic", {"file": ("m.pt2", PNG)}, {}, "file", "not a zip"),
        ("pt2 with ELF magic", {"file": ("m.pt2", ELF)}, {}, "file", "not a zip"),
        ("pt2 that is gzip", {"file": ("m.pt2", GZIP)}, {}, "file", "not a zip"),
        ("pt2 of 0 bytes", {"file": ("m.pt2", b"")}, {}, "file", "empty (0 bytes)"),
        ("pt2 with a member named ../../../etc/cron.d/x",
         {"file": ("m.pt2", zip_of({"m/archive_format": b"pt2",
                                    "../../../etc/cron.d/x": b"* * * * * root sh"}))},
         {}, "file", "outside the archive"),
        ("pt2 with a member named C:\\evil",
         {"file": ("m.pt2", zip_of({"m/archive_format": b"pt2", "C:\\evil": b"x"}))},
         {}, "file", "outside the archive"),
        ("canary pickle as .pt2", {"file": ("m.pt2", pickle.dumps(Canary()))}, {}, "file",
         "pickle"),
        ("pt2 zip holding a canary pickle",
         {"file": ("m.pt2", zip_of({"m/archive_format": b"pt2",
                                    "m/data.pkl": pickle.dumps(Canary())}))},
         {}, "file", "pickle"),
        ("zoo weights of 0 bytes", {"file": ("w.safetensors", b"")}, zoo, "file",
         "empty (0 bytes)"),
        ("zoo weights truncated (offsets past the end)", {"file": ("w.safetensors", st_ok[:-4])},
         zoo, "file", "truncated"),
        ("zoo weights with an unknown dtype",
         {"file": ("w.safetensors",
                   safetensors_raw({"w": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 1]}},
                                   b"\0"))},
         zoo, "file", "dtype"),
        ("zoo weights with a header length of 2^63",
         {"file": ("w.safetensors", safetensors_raw({}, b"", length=2**63))}, zoo, "file",
         "header length"),
        ("zoo weights whose header nests 100k deep",
         {"file": ("w.safetensors", safetensors_raw(deep.encode()))}, zoo, "file",
         "nests too deeply"),
        ("zoo weights whose header is a list", {"file": ("w.safetensors", safetensors_raw([]))},
         zoo, "file", "bad header"),
        ("zoo weights that are a pickle", {"file": ("w.safetensors", pickle.dumps(Canary()))},
         zoo, "file", "safetensors"),
        ("zoo config nested 100k deep", {"file": ("w.safetensors", st_ok)},
         {**zoo, "config": deep}, "config", "nests too deeply"),
        ("zoo config nested 40 deep", {"file": ("w.safetensors", st_ok)},
         {**zoo, "config": '{"a":' * 40 + "1" + "}" * 40}, "config", "nests too deeply"),
        ("zoo config that is a list", {"file": ("w.safetensors", st_ok)},
         {**zoo, "config": "[1]"}, "config", "JSON object"),
        ("zoo name that is a path", {"file": ("w.safetensors", st_ok)},
         {"name": "../../etc/passwd"}, "name", "not a valid model name"),
        ("zoo name without a file, nested config", {}, {**zoo, "config": deep}, "config",
         "nests too deeply"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", model_cases(), ids=lambda c: c[0])
def test_hostile_model_files_are_422_naming_the_field(api: Api, user, canary, case) -> None:
    what, files, data, field, needle = case
    _, h = user
    if files:
        r = api.client.post("/v1/models", headers=h, files=files, data=data)
    else:  # httpx would send fields alone url-encoded
        ctype, body = form_only(data)
        r = api.client.post("/v1/models", headers={**h, "Content-Type": ctype}, content=body)
    refused(r, what, status=422, field=field, needle=needle)
    nothing_stored(api, canary)


# ----------------------------------------------------------------------- dataset files
def dataset_cases() -> list[tuple[str, bytes, str, str, str]]:
    """(what, bytes, file name, field named, message fragment): refused at the upload."""
    ok = npz_bytes()
    big = classify()
    liar = io.BytesIO()  # an .npy member whose header claims 10^12 elements
    with zipfile.ZipFile(liar, "w") as zf:
        arr = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            arr, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
        )
        zf.writestr("x_train.npy", arr.getvalue() + b"\0" * 16)
    obj = io.BytesIO()
    np.savez(obj, **{**big, "x_train": np.array([Canary(), 1], dtype=object)}, allow_pickle=True)
    return [
        ("npz of 0 bytes", b"", "d.npz", "file", "empty (0 bytes)"),
        ("safetensors of 0 bytes", b"", "d.safetensors", "file", "empty (0 bytes)"),
        ("npz truncated to half", ok[: len(ok) // 2], "d.npz", "file", "truncated"),
        ("npz with PNG magic", PNG, "d.npz", "file", "not an .npz"),
        ("canary pickle as .npz", pickle.dumps(Canary()), "d.npz", "file", "pickle"),
        ("npz with an object array holding a canary pickle", obj.getvalue(), "d.npz", "x_train",
         "object array"),
        ("npz member declaring 10^12 floats in 16 bytes", liar.getvalue(), "d.npz", "x_train",
         "truncated"),
        ("npz zip bomb (8 MiB of zeros)",
         zip_bomb("x_train.npy", {}, 8 << 20), "d.npz", "file", "zip bomb"),
        ("npz with a non-array member", zip_of({"x.npy": b"", "evil.pkl": b""}), "d.npz", "file",
         "not .npy"),
        ("npz with a member named ../../x.npy", zip_of({"../../x_train.npy": npz_member()}),
         "d.npz", "file", "outside the archive"),
        ("npz with a member named /etc/x.npy", zip_of({"/etc/x_train.npy": npz_member()}),
         "d.npz", "file", "outside the archive"),
        ("safetensors whose header nests 100k deep",
         safetensors_raw(("[" * 100_000 + "]" * 100_000).encode()), "d.safetensors", "file",
         "nests too deeply"),
        ("safetensors truncated", st_save(big)[:-10], "d.safetensors", "file", "truncated"),
        ("dataset as a .pkl", pickle.dumps(Canary()), "d.pkl", "file", "expected one of"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", dataset_cases(), ids=lambda c: c[0])
def test_hostile_dataset_files_are_422_naming_the_field(api: Api, user, canary, case) -> None:
    what, data, name, field, needle = case
    _, h = user
    r = api.client.post("/v1/datasets", headers=h, files={"file": (name, data)})
    refused(r, what, status=422, field=field, needle=needle)
    nothing_stored(api, canary)


# Datasets that are well-formed files with bad content: accepted (201, pending), then refused
# by the worker's inspection (in-process, on the real record), then a job on them is a 422.
def _content_cases() -> list[tuple[str, dict[str, np.ndarray], str, str, str]]:
    c = classify()
    nan, inf = c["x_train"].copy(), c["x_val"].copy()
    nan[0, 0], inf[1, 2] = np.nan, np.inf
    return [
        ("NaN in x_train", {**c, "x_train": nan}, "npz", "x_train", "NaN or Inf"),
        ("Inf in x_val", {**c, "x_val": inf}, "safetensors", "x_val", "NaN or Inf"),
        ("float64 overflowing float32", {**c, "x_val": c["x_val"].astype(np.float64) * 1e300},
         "npz", "x_val", "NaN or Inf"),
        ("float labels", {**c, "y_train": c["y_train"].astype(np.float32)}, "npz", "y_train",
         "integer type"),
        ("complex inputs", {**c, "x_train": c["x_train"].astype(np.complex64)}, "npz",
         "x_train", "complex64"),
        ("string inputs", {**c, "x_train": c["x_train"].astype("U8")}, "npz", "x_train", "<U8"),
        ("bool inputs", {**c, "x_train": c["x_train"] > 0}, "safetensors", "x_train", "bool"),
        ("x_train and y_train of different lengths", {**c, "y_train": c["y_train"][:-1]},
         "npz", "y_train", "must be equal"),
        ("x_val and y_val of different lengths", {**c, "y_val": c["y_val"][:2]},
         "safetensors", "y_val", "must be equal"),
        ("negative labels", {**c, "y_val": -c["y_val"] - 1}, "npz", "y_val", "labels >= 0"),
        ("a missing split", {k: v for k, v in c.items() if k != "x_val"}, "npz", "x_val",
         "missing"),
        ("an extra array", {**c, "extra": c["y_val"]}, "npz", "extra", "unexpected"),
        ("train and val of different shapes", {**c, "x_val": np.zeros((4, 5), np.float32)},
         "npz", "x_val", "must match"),
        ("empty split", {**c, "x_val": np.zeros((0, 4), np.float32),
                         "y_val": np.zeros(0, np.int64)}, "npz", "x_val", "empty"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _content_cases(), ids=lambda c: c[0])
def test_bad_dataset_content_is_refused_by_inspection_then_by_jobs(
    api: Api, user, canary, case
) -> None:
    what, arrays, fmt, field, needle = case
    _, h = user
    data = npz_with(**arrays) if fmt == "npz" else st_save(arrays)
    up = api.client.post("/v1/datasets", headers=h, files={"file": (f"d.{fmt}", data)})
    if up.status_code != 201:  # some are caught by the cheap checks already: also fine
        refused(up, f"dataset: {what}", status=422, field=field, needle=needle)
        return
    ds = up.json()["id"]
    assert inspect_upload(api.settings, api.engine, "dataset", ds) == "invalid"
    rec = api.client.get(f"/v1/datasets/{ds}", headers=h).json()
    assert rec["status"] == "invalid" and rec["error"]["code"] == "invalid_data", rec
    assert rec["error"]["field"] == field and needle in rec["error"]["message"], rec
    model = api.client.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes())})
    job = api.client.post("/v1/jobs", headers=h, json={**SPEC, "model": model.json()["id"],
                                                       "data": ds})  # fmt: skip
    refused(job, f"dataset (inspected): {what}", status=422, field="data", needle=needle)
    assert not canary.exists()


# --------------------------------------------------------------------------- names, paths
EVIL_NAMES = [
    "../../etc/passwd.pt2",
    "..\\..\\..\\windows\\evil.pt2",
    "/etc/cron.d/evil.pt2",
    "....//....//evil.pt2",
    "%2e%2e%2f%2e%2e%2fevil.pt2",
    "evil\r\nX-Injected: 1.pt2",
    "a" * 10_000 + ".pt2",
    "..",
    "\u202eevil2tp.pt2",
]


@pytest.mark.parametrize("name", EVIL_NAMES, ids=range(len(EVIL_NAMES)))
def test_path_like_names_never_become_paths(api: Api, user, tmp_path: Path, name: str) -> None:
    _, h = user
    data = pt2_bytes(name[:50])
    r = api.client.post("/v1/models", headers=h, files={"file": (name, data)})
    note(f"model file named {name[:40]!r}", r)
    root = api.settings.artifact_dir.resolve()
    if r.status_code == 201:
        rec = r.json()
        assert "/" not in rec["filename"] and "\\" not in rec["filename"]
        assert len(rec["filename"]) <= 255 and rec["filename"] not in ("", ".", "..")
    elif r.status_code == 400:  # a name of 10k characters: the part's header is too long
        assert "header line" in r.json()["message"], r.text
    else:  # a name without .pt2 left after cleaning: refused, naming the file
        assert r.status_code == 422 and r.json()["field"] == "file", r.text
    stored = files_under(tmp_path)
    outside = [p for p in stored if not p.resolve().is_relative_to(root)]
    assert outside == []
    assert all(p.name.split(".")[0] in {"", *[rec_sha(data)]} for p in files_under(root))


def rec_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- JSON bodies
def test_deeply_nested_and_nul_json_bodies(api: Api, user) -> None:
    _, h = user
    model = api.client.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes())})
    spec = {**SPEC, "model": model.json()["id"]}
    jh = {**h, "Content-Type": "application/json"}
    deep = b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = api.client.post("/v1/jobs", headers=jh, content=deep)
    note("job body nested 100k deep", r)
    assert r.status_code == 400 and r.json()["code"] == "bad_request", r.text
    assert "nested" in r.json()["message"]
    nested = '{"a":' * 40 + "1" + "}" * 40
    body = json.dumps({**spec, "method_settings": "@"}).replace('"@"', nested)
    r = api.client.post("/v1/jobs", headers=jh, content=body.encode())
    refused(r, "method_settings nested 40 deep", status=422, field="method_settings",
            needle="nests too deeply")  # fmt: skip
    r = api.client.post("/v1/jobs", headers=h, json={**spec, "method_settings": {"k": "a\0b"}})
    refused(r, "NUL in method_settings", status=422, field="method_settings", needle="NUL")
    r = api.client.post(
        "/v1/jobs", headers=h, json={**spec, "method_settings": {"k": "x" * 70_000}}
    )
    refused(r, "method_settings of 70 KB", status=422, field="method_settings", needle="bytes")
    r = api.client.post("/v1/jobs/" + "a" * 36 + "/resolve", headers=jh, content=deep)
    note("resolve body nested 100k deep", r)
    assert r.status_code == 400 and r.json()["code"] == "bad_request", r.text
    for what, kwargs in {
        "a JSON array body": {"json": [1, 2]},
        "a JSON string body": {"json": "x"},
        "a body of invalid UTF-8": {"content": b'{"model": "\xff\xfe"}'},
        "a NUL in the job's data": {"json": {**spec, "data": "digits\0"}},
        "a 1 MB string as the model": {"json": {**spec, "model": "m" * 1_000_000}},
    }.items():
        r = api.client.post("/v1/jobs", headers=jh, **kwargs)
        note(what, r)
        assert r.status_code in (400, 404, 422), (what, r.text)
        assert set(r.json()) <= {"code", "message", "field"}
    assert api.client.get("/v1/jobs", headers=h).json()["items"] == []


def test_nul_and_junk_in_query_and_path(api: Api, user) -> None:
    _, h = user
    for what, url in {
        "NUL in a job id": "/v1/jobs/a%00b",
        "NUL in a model id": "/v1/models/%00",
        "NUL in an artifact id": "/v1/artifacts/x%00",
        "NUL in a status filter": "/v1/jobs?status=queued%00",
        "NUL in a cursor": "/v1/jobs?cursor=%00",
        "a junk cursor": "/v1/jobs?cursor=" + "z" * 5000,
        "after_id past BIGINT": "/v1/jobs/" + "0" * 36 + "/events?after_id=" + "9" * 30,
        "a path-like job id": "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
    }.items():
        r = api.client.get(url, headers=h)
        note(what, r)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        assert set(r.json()) <= {"code", "message", "field"}, (what, r.text)


# --------------------------------------------------------------------------- multipart
def test_malformed_multipart(api: Api, user) -> None:
    _, h = user
    b = "bnd"
    part = (
        (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="m.pt2"\r\n\r\n').encode()
        + pt2_bytes()
        + b"\r\n"
    )
    cases = {
        "no multipart boundary": ({"Content-Type": "multipart/form-data"}, part, "content-type"),
        "not multipart": ({"Content-Type": "application/json"}, b"{}", "content-type"),
        "file field sent twice": (
            {"Content-Type": f"multipart/form-data; boundary={b}"},
            part + part + f"--{b}--\r\n".encode(),
            "file",
        ),
        "a file in an unknown field": (
            {"Content-Type": f"multipart/form-data; boundary={b}"},
            part.replace(b'name="file"', b'name="../x"') + f"--{b}--\r\n".encode(),
            "../x",
        ),
        "a 2 MB text field": (
            {"Content-Type": f"multipart/form-data; boundary={b}"},
            f'--{b}\r\nContent-Disposition: form-data; name="config"\r\n\r\n'.encode()
            + b"{" * (2 << 20)
            + f"\r\n--{b}--\r\n".encode(),
            "config",
        ),
    }
    for what, (headers, body, field) in cases.items():
        r = api.client.post("/v1/models", headers={**h, **headers}, content=body)
        note(what, r)
        assert r.status_code in (400, 413, 422), (what, r.text)
        assert r.json().get("field") == field, (what, r.json())
    r = api.client.post(
        "/v1/models",
        headers={**h, "Content-Type": f"multipart/form-data; boundary={b}"},
        content=b"".join([part] * 9) + f"--{b}--\r\n".encode(),
    )
    note("9 form parts", r)
    assert r.status_code in (400, 422)
    assert files_under(api.settings.artifact_dir) == []


# ------------------------------------------------------------------------ huge headers
def test_huge_header_values_over_real_http(live: Live) -> None:
    """Over uvicorn (its own header limits apply before the app's)."""
    a = live.api
    _, key = a.tenant()
    h = auth(key)
    c = a.client
    cases: dict[str, tuple[str, str, dict[str, str], tuple[int, ...], str | None]] = {
        "an 8 KB bearer key": ("GET", "/v1/models", {"Authorization": "Bearer " + "k" * 8192},
                               (401,), "authorization"),
        "a 1 MB Authorization header": ("GET", "/v1/models",
                                        {"Authorization": "Bearer " + "k" * (1 << 20)},
                                        (400, 401, 431), None),
        "a 10 KB Idempotency-Key": ("POST", "/v1/jobs", {**h, "Idempotency-Key": "i" * 10_000},
                                    (422,), "idempotency-key"),
        "a 10 KB Last-Event-ID": ("GET", "/v1/jobs/" + "0" * 36 + "/events",
                                  {**h, "Last-Event-ID": "9" * 10_000}, (422,), "last-event-id"),
        "a 10 KB If-None-Match": ("GET", "/v1/artifacts/x", {**h, "If-None-Match": "x" * 10_000},
                                  (404,), "artifact_id"),
        "a 60 KB multipart boundary": ("POST", "/v1/models",
                                       {**h, "Content-Type": "multipart/form-data; boundary="
                                        + "b" * 60_000}, (400, 413, 422, 431), None),
        "200 headers of 4 KB": ("GET", "/v1/models",
                                {**h, **{f"X-Junk-{i}": "j" * 4096 for i in range(200)}},
                                (200, 400, 431), None),
    }  # fmt: skip
    for what, (method, path, headers, ok, field) in cases.items():
        body = json.dumps({**SPEC, "model": "0" * 36}) if method == "POST" else None
        try:
            r = c.request(method, path, headers=headers, content=body)
        except httpx.HTTPError as exc:  # the server may close the connection instead
            HOSTILE_LOG.append((what, 0, type(exc).__name__, None))
            continue
        note(what, r)
        assert r.status_code in ok, (what, r.status_code, r.text[:300])
        if field is not None:
            assert r.json()["field"] == field, (what, r.json())
    assert c.get("/healthz").status_code == 200  # and the server is still there


# -------------------------------------------------------------------------- the record
def test_zz_write_the_hostile_log() -> None:
    """Writes the inputs tried and what each got (``$SLIMLINE_HOSTILE_REPORT``)."""
    out = os.environ.get("SLIMLINE_HOSTILE_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump(HOSTILE_LOG, f, indent=0)
    assert MAX_UPLOAD > 0
