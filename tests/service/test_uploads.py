"""Uploads: streamed to the store, content-addressed, cheaply checked, inspected by a task."""

from __future__ import annotations

import io
import pickle
import zipfile

from slimline.enqueue import INSPECT_UPLOAD
from tests.service.conftest import (
    MAX_UPLOAD,
    Api,
    files_under,
    npz_bytes,
    pt2_bytes,
    safetensors_bytes,
    sha256,
)


def test_pt2_upload_is_stored_recorded_and_inspected(api: Api, user) -> None:
    tenant, h = user
    data = pt2_bytes("a")
    r = api.client.post("/v1/models", headers=h, files={"file": ("net.pt2", data)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "pt2" and body["status"] == "pending"
    assert body["sha256"] == sha256(data) and body["bytes"] == len(data)
    assert r.headers["location"] == f"/v1/models/{body['id']}"
    stored = files_under(api.settings.artifact_dir)
    assert [p.read_bytes() for p in stored] == [data]
    assert stored[0].name == f"{sha256(data)}.pt2"
    assert api.messages() == [(INSPECT_UPLOAD, ("model", body["id"]))]
    got = api.client.get(f"/v1/models/{body['id']}", headers=h)
    assert got.status_code == 200 and got.json()["id"] == body["id"]


def test_same_bytes_twice_give_the_same_record(api: Api, user) -> None:
    _, h = user
    data = pt2_bytes("dup")
    a = api.client.post("/v1/models", headers=h, files={"file": ("a.pt2", data)})
    b = api.client.post("/v1/models", headers=h, files={"file": ("b.pt2", data)})
    assert (a.status_code, b.status_code) == (201, 200)
    assert a.json()["id"] == b.json()["id"]
    assert len(files_under(api.settings.artifact_dir)) == 1
    # Still pending: the second upload sends the inspection again (a lost message is repaired).
    assert [m[1] for m in api.messages()] == [("model", a.json()["id"])] * 2


def test_zoo_model_and_datasets(api: Api, user) -> None:
    _, h = user
    zoo = api.client.post(
        "/v1/models",
        headers=h,
        data={"name": "lenet5", "config": '{"width": 2}'},
        files={"file": ("w.safetensors", safetensors_bytes())},
    )
    assert zoo.status_code == 201, zoo.text
    assert zoo.json()["kind"] == "zoo" and zoo.json()["zoo_name"] == "lenet5"
    assert zoo.json()["config"] == {"width": 2}
    npz = api.client.post("/v1/datasets", headers=h, files={"file": ("d.npz", npz_bytes())})
    st = api.client.post(
        "/v1/datasets", headers=h, files={"file": ("d.safetensors", safetensors_bytes(8))}
    )
    assert npz.status_code == 201 and st.status_code == 201, (npz.text, st.text)
    assert api.client.get(f"/v1/datasets/{npz.json()['id']}", headers=h).status_code == 200
    sent = api.messages()
    assert (INSPECT_UPLOAD, ("dataset", npz.json()["id"])) in sent
    assert (INSPECT_UPLOAD, ("model", zoo.json()["id"])) in sent
    assert len(api.client.get("/v1/datasets", headers=h).json()) == 2


def test_over_limit_is_413_and_leaves_no_file(api: Api, user) -> None:
    _, h = user
    big = pt2_bytes() + b"\0" * (MAX_UPLOAD + 1)
    r = api.client.post("/v1/models", headers=h, files={"file": ("big.pt2", big)})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_large" and str(MAX_UPLOAD) in r.json()["message"]
    assert files_under(api.settings.artifact_dir) == []
    assert api.messages() == []


def test_over_limit_without_content_length_is_cut_mid_stream(api: Api, user) -> None:
    _, h = user
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = []

    def body():  # a generator: sent chunked, no Content-Length to refuse up front
        yield head
        for _ in range(64):
            chunk = b"\0" * 16384
            sent.append(len(chunk))
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**h, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    r = api.client.post("/v1/datasets", headers=headers, content=body())
    assert r.status_code == 413, r.text
    assert files_under(api.settings.artifact_dir) == []


def test_pickles_and_wrong_files_are_422_naming_the_problem(api: Api, user) -> None:
    _, h = user
    torch_save_like = io.BytesIO()
    with zipfile.ZipFile(torch_save_like, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    plain_zip = io.BytesIO()
    with zipfile.ZipFile(plain_zip, "w") as zf:
        zf.writestr("readme.txt", "hi")
    cases = {
        "pickle": ("m.pt2", pickle.dumps({"weights": [1, 2]})),
        "torch.save": ("m.pt2", torch_save_like.getvalue()),
        "not a torch.export .pt2 archive": ("m.pt2", plain_zip.getvalue()),
        "not a zip": ("m.pt2", b"hello world"),
        "expected a .pt2": ("m.bin", pt2_bytes()),
    }
    for needle, (name, data) in cases.items():
        r = api.client.post("/v1/models", headers=h, files={"file": (name, data)})
        assert r.status_code == 422, (needle, r.text)
        assert r.json()["code"] == "invalid_model" and r.json()["field"] == "file"
        assert needle in r.json()["message"], (needle, r.json())
    bad_st = api.client.post(
        "/v1/models",
        headers=h,
        data={"name": "lenet5"},
        files={"file": ("w.safetensors", b"x" * 20)},
    )
    assert bad_st.status_code == 422 and "safetensors" in bad_st.json()["message"]
    bad_npz = api.client.post("/v1/datasets", headers=h, files={"file": ("d.npz", b"nope")})
    assert bad_npz.status_code == 422 and bad_npz.json()["code"] == "invalid_data"
    missing = api.client.post("/v1/models", headers=h, data={"name": "lenet5"})
    assert missing.status_code in (400, 422)
    assert files_under(api.settings.artifact_dir) == []
    assert api.messages() == []


def test_path_like_file_names_stay_inside_the_store(api: Api, user) -> None:
    _, h = user
    evil = api.client.post(
        "/v1/models", headers=h, files={"file": ("../../../../tmp/evil.pt2", pt2_bytes("e"))}
    )
    assert evil.status_code == 201, evil.text
    assert evil.json()["filename"] == "evil.pt2"
    passwd = api.client.post(
        "/v1/datasets", headers=h, files={"file": ("../../etc/passwd", b"root:x:0:0")}
    )
    assert passwd.status_code == 422 and passwd.json()["field"] == "file"
    root = api.settings.artifact_dir.resolve()
    stored = files_under(root)
    assert len(stored) == 1 and stored[0].is_relative_to(root)
    assert not (root.parent / "tmp" / "evil.pt2").exists()


def test_declared_length_over_the_limit_is_refused_before_reading(api: Api, user) -> None:
    _, h = user
    huge = b"\0" * (MAX_UPLOAD + 9 * 1024**2)  # past the limit plus the room for form fields
    r = api.client.post("/v1/datasets", headers=h, files={"file": ("d.npz", huge)})
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    declared = int(r.request.headers["content-length"])
    assert f"upload of {declared} bytes" in r.json()["message"]  # refused on the header alone
    assert files_under(api.settings.artifact_dir) == []
