"""The upload checks' other side: real files from the real writers pass them (a torch.export
.pt2, np.savez_compressed data, safetensors), the zip-bomb rule at the default upload limit,
and the worker's own guards for what reaches it anyway (a bomb, a lying .npy header)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from slimline.errors import InvalidData, InvalidModel
from slimline.models.dataset_files import read_upload
from slimline.service import file_checks
from tests.security.conftest import api, user  # noqa: F401 - fixtures

DEFAULT_UPLOAD = 512 * 1024**2  # Settings.max_upload_bytes' default


def test_a_real_torch_export_program_passes(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.randn(2, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path / "m.pt2"
    torch.export.save(program, path)
    data = path.read_bytes()
    file_checks.check_pt2(path, data[:65536], "m.pt2", size=len(data), max_upload=len(data) * 2)


def test_real_dataset_files_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": (rng.random((500, 1, 28, 28)) > 0.8).astype(np.float32),  # mostly zeros
        "y_train": rng.integers(0, 10, 500),
        "x_val": rng.random((50, 1, 28, 28)).astype(np.float32),
        "y_val": rng.integers(0, 10, 50),
    }
    npz = tmp_path / "d.npz"
    np.savez_compressed(npz, **arrays)
    data = npz.read_bytes()
    file_checks.check_npz(npz, data[:65536], "d.npz", size=len(data), max_upload=DEFAULT_UPLOAD)
    st = tmp_path / "d.safetensors"
    save_file(arrays, st)
    file_checks.check_safetensors(st, st.stat().st_size, "d.safetensors", field="file", model=False)


def _infos(*sizes: int) -> list[zipfile.ZipInfo]:
    out = []
    for i, n in enumerate(sizes):
        info = zipfile.ZipInfo(f"m{i}.npy")
        info.file_size = n
        out.append(info)
    return out


@pytest.mark.parametrize(
    ("upload", "expanded", "refused"),
    [
        (1024**2, 60 * 1024**2, False),  # 60:1 under the 64 MiB floor: np.savez_compressed zeros
        (1024**2, 65 * 1024**2, False),  # 65:1 past the floor: still under 100:1
        (1024**2, 200 * 1024**2, True),  # a bomb: 200:1 and past the floor
        (300 * 1024**2, 900 * 1024**2, False),  # 3:1, a large compressed dataset
        (400 * 1024**2, 2100 * 1024**2, True),  # past 4x the default upload limit
    ],
)
def test_zip_bomb_rule_at_the_default_limit(upload: int, expanded: int, refused: bool) -> None:
    infos = _infos(expanded // 2, expanded - expanded // 2)
    check = lambda: file_checks.check_expansion(  # noqa: E731
        infos, upload, "d.npz", max_upload=DEFAULT_UPLOAD, error=InvalidData
    )
    if refused:
        with pytest.raises(InvalidData, match="zip bomb") as info:
            check()
        assert info.value.field == "file"
    else:
        check()


def test_too_many_members_is_refused() -> None:
    with pytest.raises(InvalidModel, match="archive members"):
        file_checks.check_expansion(
            _infos(*[1] * 10_001), 10**6, "m.pt2", max_upload=DEFAULT_UPLOAD, error=InvalidModel
        )


def _bomb(path: Path, member: str, expanded: int) -> None:
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open(member, "w", force_zip64=True) as m,
    ):
        chunk = b"\0" * (4 * 1024**2)
        for _ in range(expanded // len(chunk)):
            m.write(chunk)


def test_the_worker_refuses_an_npz_bomb_before_unpacking(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    _bomb(path, "x_train.npy", 80 * 1024**2)  # ~80 KB on disk
    with pytest.raises(InvalidData, match="zip bomb"):
        read_upload(path)


def test_the_worker_says_truncated_not_pickled_for_a_lying_header(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (1000,)}
    )
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(InvalidData) as info:
        read_upload(path)
    assert "truncated or corrupt" in info.value.message and info.value.field == "x_train"
    assert "pickled" not in info.value.message


def test_the_worker_inspection_refuses_a_pt2_bomb_that_got_past_the_api(api, user) -> None:  # noqa: F811
    """Defense in depth: a bomb recorded without the API's check (an older upload, a bug) is
    marked invalid by the real inspection before torch inflates anything."""
    from slimline.db import uploads
    from slimline.db.session import session_scope
    from slimline.worker.inspection import inspect_upload
    from tests.service.conftest import sha256

    tenant, _ = user
    rel = f"tenants/{tenant.id}/models/bomb.pt2"
    path = api.settings.artifact_dir / rel
    path.parent.mkdir(parents=True)
    _bomb(path, "m/data/weights/w0", 8 * 1024**2)  # 8 MiB unpacked, past 4 x 256 KiB
    data = path.read_bytes()
    with session_scope(api.engine) as s:
        rec, _ = uploads.add_model(
            s, tenant.id, sha256=sha256(data), kind="pt2", filename="m.pt2", path=rel,
            bytes=len(data),
        )  # fmt: skip
    assert inspect_upload(api.settings, api.engine, "model", rec.id) == "invalid"
    with session_scope(api.engine) as s:
        error = uploads.get_model(s, tenant.id, rec.id).error
    assert error is not None and "zip bomb" in error["message"] and error["field"] == "model"
