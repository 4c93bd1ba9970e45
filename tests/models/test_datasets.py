"""Dataset loading: named sets from real data (../shared/data), formats written by the tests
themselves (IDX, CIFAR-10 binary, npz, safetensors) and every validation error."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from slimline.errors import InvalidData
from slimline.models.datasets import (
    NORMALIZATION,
    Dataset,
    dataset_names,
    load_dataset,
    resolve_data_root,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MNIST_FILES = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIMLINE_DATA_ROOT", raising=False)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", DATA)


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def write_small_mnist(root: Path, n: int = 3) -> Path:
    d = root / "mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8).tobytes()
        labels = np.arange(n, dtype=np.uint8).tobytes()
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(2051, (n, 28, 28), pixels))
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(2049, (n,), labels))
    return d


def write_cifar(d: Path, per_batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Write the six CIFAR-10 binary batches; returns (all pixels [N,3,32,32], labels)."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    xs, ys = [], []
    for i, name in enumerate(names):
        pixels = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = np.array([(i * per_batch + j) % 10 for j in range(per_batch)], dtype=np.uint8)
        records = np.concatenate([labels[:, None], pixels.reshape(per_batch, -1)], axis=1)
        (d / name).write_bytes(records.tobytes())
        xs.append(pixels)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def classify_arrays(n_train: int = 20, n_val: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {
        "x_train": rng.standard_normal((n_train, 3, 4)).astype(np.float32),
        "y_train": rng.integers(0, 5, n_train).astype(np.int64),
        "x_val": rng.standard_normal((n_val, 3, 4)).astype(np.float32),
        "y_val": np.full(n_val, 6, dtype=np.int64),  # the largest label lives in val only
    }


def language_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    w = rng.integers(0, 256, size=(12, 17), dtype=np.int64)
    v = rng.integers(0, 256, size=(4, 17), dtype=np.int64)
    return {"x_train": w[:, :-1], "y_train": w[:, 1:], "x_val": v[:, :-1], "y_val": v[:, 1:]}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def expect_error(spec: str | Path, *fragments: str, root: Path | None = None) -> InvalidData:
    with pytest.raises(InvalidData) as info:
        load_dataset(str(spec), root)
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)
    return info.value


# --- named datasets -------------------------------------------------------------------------


def test_names() -> None:
    assert dataset_names() == ["cifar10", "digits", "mnist", "pycode"]


def test_mnist_real(mnist: Dataset) -> None:
    assert (mnist.name, mnist.task, mnist.num_classes) == ("mnist", "classify", 10)
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.x_train.shape == (60000, 1, 28, 28) and mnist.x_val.shape == (10000, 1, 28, 28)
    assert mnist.y_train.shape == (60000,) and mnist.y_val.shape == (10000,)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    for y in (mnist.y_train, mnist.y_val):
        assert set(y.unique().tolist()) == set(range(10))
    # fixed MNIST constants: the train set comes out at about zero mean, unit std
    assert abs(mnist.x_train.mean().item()) < 0.01
    assert abs(mnist.x_train.std().item() - 1) < 0.01
    mean, std = NORMALIZATION["mnist"]
    assert mnist.x_train.min().item() == pytest.approx(-mean[0] / std[0], abs=1e-5)


def test_mnist_uncompressed_copy(tmp_path: Path, mnist: Dataset) -> None:
    (tmp_path / "mnist").mkdir()
    for name in MNIST_FILES:
        raw = gzip.decompress((DATA / "mnist" / f"{name}.gz").read_bytes())
        (tmp_path / "mnist" / name).write_bytes(raw)
    plain = load_dataset("mnist", tmp_path)
    for key in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(plain, key), getattr(mnist, key))


def test_data_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_small_mnist(tmp_path)
    monkeypatch.setenv("SLIMLINE_DATA_ROOT", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    ds = load_dataset("MNIST")
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.y_val.tolist() == [0, 1, 2]


def test_digits() -> None:
    ds = load_dataset("digits")  # no data root needed
    assert (ds.task, ds.num_classes, ds.input_shape) == ("classify", 10, (1, 8, 8))
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_val.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_val.dtype == torch.int64
    counts = torch.bincount(ds.y_val, minlength=10)
    assert counts.min() >= 35  # stratified: every class about 36 times
    assert abs(ds.x_train.mean().item()) < 0.01 and abs(ds.x_train.std().item() - 1) < 0.01
    again = load_dataset("digits")
    assert torch.equal(again.y_val, ds.y_val) and torch.equal(again.x_train, ds.x_train)


def test_pycode() -> None:
    ds = load_dataset("pycode", DATA)
    text = gzip.decompress((DATA / "pycode" / "train.txt.gz").read_bytes())
    assert (ds.task, ds.num_classes, ds.input_shape) == ("language", 256, (128,))
    assert ds.x_train.shape == (len(text) // 129, 128) and ds.x_train.shape[0] > 22000
    assert ds.x_train.dtype == torch.int64 and ds.y_train.dtype == torch.int64
    assert ds.y_train.shape == ds.x_train.shape and ds.y_val.shape == ds.x_val.shape
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert x.min() >= 0 and x.max() <= 255 and y.max() <= 255
    assert bytes(ds.x_train[0].tolist()) == text[:128]
    assert bytes(ds.x_train[1].tolist()) == text[129 : 129 + 128]  # non-overlapping windows
    short = load_dataset("pycode", DATA, context=32)
    assert short.input_shape == (32,) and short.x_train.shape[0] == len(text) // 33


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-bin"])
def test_cifar10(tmp_path: Path, sub: str) -> None:
    pixels, labels = write_cifar(tmp_path / "cifar10" / sub if sub else tmp_path / "cifar10")
    ds = load_dataset("cifar10", tmp_path)
    assert (ds.task, ds.num_classes, ds.input_shape) == ("classify", 10, (3, 32, 32))
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_val.shape == (2, 3, 32, 32)
    assert ds.y_train.tolist() == labels[:10].tolist() and ds.y_val.tolist() == [0, 1]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["cifar10"])
    restored = torch.cat([ds.x_train, ds.x_val]) * std + mean
    assert torch.allclose(restored * 255, torch.from_numpy(pixels).float(), atol=1e-3)


# --- uploaded files ---------------------------------------------------------------------------


def save_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    return path


@pytest.mark.parametrize("save", [save_npz, save_safetensors], ids=["npz", "safetensors"])
def test_upload_classify_round_trip(tmp_path: Path, save) -> None:
    arrays = classify_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float16)  # float16 is accepted
    arrays["y_train"] = arrays["y_train"].astype(np.uint8)
    path = save(tmp_path / f"up{'.npz' if save is save_npz else '.safetensors'}", arrays)
    ds = load_dataset(str(path))
    assert (ds.task, ds.num_classes, ds.input_shape, ds.name) == (
        "classify",
        7,
        (3, 4),
        path.name,
    )
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # uploads are not re-normalized: the values are the user's own
    assert np.array_equal(ds.x_train.numpy(), arrays["x_train"].astype(np.float32))
    assert np.array_equal(ds.x_val.numpy(), arrays["x_val"])
    assert ds.y_train.tolist() == arrays["y_train"].tolist()


@pytest.mark.parametrize("save", [save_npz, save_safetensors], ids=["npz", "safetensors"])
def test_upload_language_round_trip(tmp_path: Path, save) -> None:
    arrays = language_arrays()
    path = save(tmp_path / f"lm{'.npz' if save is save_npz else '.safetensors'}", arrays)
    ds = load_dataset(str(path))
    assert (ds.task, ds.num_classes, ds.input_shape) == ("language", 256, (16,))
    for key, value in arrays.items():
        assert getattr(ds, key).dtype == torch.int64
        assert np.array_equal(getattr(ds, key).numpy(), value)


# --- errors -----------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    err = expect_error("mnist", "--data-root", "SLIMLINE_DATA_ROOT")
    assert err.field == "data_root"
    expect_error(
        "mnist", str(tmp_path / "nope"), "not an existing directory", root=tmp_path / "nope"
    )
    expect_error("cifar10", str(tmp_path / "cifar10"), "does not exist", root=tmp_path)


def test_unknown_name_lists_known() -> None:
    expect_error("imagenet", "'imagenet'", "cifar10, digits, mnist, pycode", ".npz")
    expect_error("/no/such/file.npz", "/no/such/file.npz", "does not exist")


def test_missing_mnist_file(tmp_path: Path) -> None:
    d = write_small_mnist(tmp_path)
    (d / "t10k-labels-idx1-ubyte").unlink()
    expect_error("mnist", "t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz", root=tmp_path)


def test_bad_idx_magic(tmp_path: Path) -> None:
    d = write_small_mnist(tmp_path)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes((2049).to_bytes(4, "big") + p.read_bytes()[4:])
    expect_error("mnist", str(p), "magic 2049", "expected 2051", root=tmp_path)


def test_truncated_idx(tmp_path: Path) -> None:
    d = write_small_mnist(tmp_path)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    expect_error("mnist", str(p), "truncated", str(16 + 3 * 784), root=tmp_path)
    p.write_bytes(b"\x00\x00")
    expect_error("mnist", "too short", root=tmp_path)


def test_truncated_gzip(tmp_path: Path) -> None:
    d = write_small_mnist(tmp_path)
    p = d / "train-labels-idx1-ubyte"
    gz = d / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(p.read_bytes())[:-6])
    p.unlink()
    expect_error("mnist", str(gz), "cannot read", root=tmp_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    d = write_small_mnist(tmp_path)
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(2049, (2,), b"\x01\x02"))
    expect_error("mnist", "3 images", "2 labels", root=tmp_path)


class _Payload:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_npz_object_array_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    arrays = classify_arrays()
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _Payload(marker), _Payload(marker)
    path = tmp_path / "evil.npz"
    np.savez(
        path, x_train=arrays["x_train"], y_train=evil, x_val=arrays["x_val"], y_val=arrays["y_val"]
    )
    err = expect_error(path, "'y_train'", "object", "numeric arrays only")
    assert err.field == "y_train"
    assert not marker.exists()
    # a bare pickle renamed to .npz is refused too
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    expect_error(raw, str(raw), "not a readable .npz")
    assert not marker.exists()


def test_missing_and_extra_keys(tmp_path: Path) -> None:
    arrays = classify_arrays()
    del arrays["y_val"]
    err = expect_error(save_npz(tmp_path / "a.npz", arrays), "missing key(s) y_val")
    assert err.field == "y_val"
    arrays = classify_arrays()
    arrays["labels"] = arrays["y_train"]
    expect_error(save_safetensors(tmp_path / "b.safetensors", arrays), "unexpected key(s) labels")


def test_mismatched_lengths(tmp_path: Path) -> None:
    arrays = classify_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    expect_error(save_npz(tmp_path / "a.npz", arrays), "x_train has 20", "y_train has 19")


def test_nan_in_x(tmp_path: Path) -> None:
    arrays = classify_arrays()
    arrays["x_val"][3, 1, 2] = np.nan
    arrays["x_val"][0, 0, 0] = np.inf
    expect_error(save_npz(tmp_path / "a.npz", arrays), "x_val", "2 NaN or Inf")
    arrays = classify_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float64)
    arrays["x_train"][0, 0, 0] = 1e300  # finite in float64, Inf once cast to float32
    expect_error(save_npz(tmp_path / "b.npz", arrays), "x_train", "1 NaN or Inf")


def test_labels_out_of_range(tmp_path: Path) -> None:
    arrays = classify_arrays()
    arrays["y_train"][5] = -1
    err = expect_error(save_npz(tmp_path / "a.npz", arrays), "y_train", "[-1,", "labels >= 0")
    assert err.value == -1
    lm = language_arrays()
    lm["y_val"] = lm["y_val"] + 1  # 256 appears
    lm["y_val"][0, 0] = 256
    expect_error(save_npz(tmp_path / "b.npz", lm), "y_val", "256]", "[0, 256)")


def test_wrong_dtypes(tmp_path: Path) -> None:
    arrays = classify_arrays()
    arrays["x_train"] = np.array([["a", "b"]] * 20)
    expect_error(save_npz(tmp_path / "a.npz", arrays), "x_train has dtype <U1", "float32")
    arrays = classify_arrays()
    arrays["y_val"] = arrays["y_val"].astype(np.float32)
    expect_error(save_npz(tmp_path / "b.npz", arrays), "y_val has dtype float32", "integer")
    arrays = classify_arrays()
    arrays["x_train"] = np.zeros((20, 3, 4), dtype=np.uint8)
    expect_error(save_npz(tmp_path / "c.npz", arrays), "x_train is integer", "language")
    lm = language_arrays()
    lm["x_val"] = lm["x_val"].astype(np.float32)
    expect_error(save_npz(tmp_path / "d.npz", lm), "x_val has dtype float32", "language")


def test_shape_mismatch(tmp_path: Path) -> None:
    arrays = classify_arrays()
    arrays["x_val"] = arrays["x_val"].reshape(8, 12)
    expect_error(save_npz(tmp_path / "a.npz", arrays), "x_val", "(12,)", "(3, 4)")
    arrays = classify_arrays()
    arrays["y_train"] = arrays["y_train"][:, None]
    expect_error(save_npz(tmp_path / "b.npz", arrays), "y_train has shape (20, 1)", "(20,)")


def test_empty_split(tmp_path: Path) -> None:
    arrays = classify_arrays()
    arrays["x_val"] = arrays["x_val"][:0]
    arrays["y_val"] = arrays["y_val"][:0]
    err = expect_error(save_npz(tmp_path / "a.npz", arrays), "x_val is empty", "at least one")
    assert err.field == "x_val"


def test_bad_upload_files(tmp_path: Path) -> None:
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\xff" * 40)
    expect_error(bad, str(bad), "not a readable safetensors")
    other = tmp_path / "data.csv"
    other.write_text("1,2\n")
    expect_error(other, "'.csv'", ".npz, .safetensors")


def test_cifar_wrong_length_and_missing_batch(tmp_path: Path) -> None:
    d = tmp_path / "cifar10"
    write_cifar(d)
    p = d / "data_batch_3.bin"
    p.write_bytes(p.read_bytes() + b"\x00")
    expect_error("cifar10", str(p), "6147 bytes", "3073", root=tmp_path)
    p.unlink()
    expect_error("cifar10", str(p), "missing CIFAR-10 batch", root=tmp_path)


def test_pycode_context_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidData, match="context must be a positive integer, got 0"):
        load_dataset("pycode", DATA, context=0)
    (tmp_path / "pycode").mkdir()
    (tmp_path / "pycode" / "train.txt").write_bytes(b"x" * 1000)
    (tmp_path / "pycode" / "val.txt").write_bytes(b"short")
    with pytest.raises(InvalidData, match="val.txt has 5 bytes, fewer than one window"):
        load_dataset("pycode", tmp_path, context=16)
