"""Loading and validating a user's uploaded dataset file (``.npz`` or ``.safetensors``).

Why this is strict: an upload comes from a stranger and feeds a long job. A wrong dtype, a NaN
or a label out of range would otherwise surface hours later as a CUDA assert or a silently
useless accuracy number, so everything is checked once, here, and each failure names the key,
the value found and what is accepted. ``.npz`` is always opened with ``allow_pickle=False``: an
object array is refused, never unpickled (unpickling runs arbitrary code).

Uploaded inputs are *not* re-normalized: the user's model was trained on the user's own
preprocessing, so ``x`` is only cast to ``float32`` (classification) or ``int64`` (language).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from slimline.archives import check_archive_file
from slimline.errors import InvalidData

SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val")
UPLOAD_SUFFIXES = (".npz", ".safetensors")
LANGUAGE_VOCAB = 256


class ValidatedArrays(NamedTuple):
    task: str
    num_classes: int
    input_shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]  # x_* float32 or int64, y_* int64


def _bad(message: str, field: str, value: Any) -> InvalidData:
    return InvalidData(message, field=field, value=value)


# An archive may unpack to at most this many times its size once past EXPANSION_FLOOR bytes:
def _check_expansion(path: Path) -> None:
    # the API refuses zip bombs at upload; this is the worker's own check (slimline.archives)
    check_archive_file(path, error=InvalidData, field="data")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    _check_expansion(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _bad(
            f"{path} is not a readable .npz archive of plain arrays ({e}); "
            "save it with numpy.savez(path, x_train=..., y_train=..., x_val=..., y_val=...)",
            "data",
            str(path),
        ) from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _bad(
            f"{path} holds a single array, not an .npz archive with keys {', '.join(SPLIT_KEYS)}",
            "data",
            str(path),
        )
    out: dict[str, np.ndarray] = {}
    with npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError as e:
                if "allow_pickle" not in str(e):  # e.g. "EOF: reading array data, expected"
                    raise _bad(
                        f"{path}: array {key!r} is truncated or corrupt ({e})", key, str(path)
                    ) from e
                # "Object arrays cannot be loaded when allow_pickle=False"
                raise _bad(
                    f"{path}: array {key!r} is an object (pickled) array, which is refused "
                    f"because unpickling can run code ({e}); store numeric arrays only",
                    key,
                    "object",
                ) from e
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise _bad(f"{path}: cannot read array {key!r} ({e})", key, str(path)) from e
    return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _bad(f"{path} is not a readable safetensors file ({e})", "data", str(path)) from e
    return {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for k, t in tensors.items()}


def read_upload(path: Path) -> dict[str, np.ndarray]:
    """The four split arrays of an uploaded file, exactly those keys, no others."""
    suffix = path.suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise _bad(
            f"dataset file {path} has suffix {suffix!r}; accepted: {', '.join(UPLOAD_SUFFIXES)}",
            "data",
            str(path),
        )
    arrays = _read_npz(path) if suffix == ".npz" else _read_safetensors(path)
    missing = [k for k in SPLIT_KEYS if k not in arrays]
    if missing:
        raise _bad(
            f"{path} is missing key(s) {', '.join(missing)}; found {sorted(arrays) or 'none'}, "
            f"required exactly {', '.join(SPLIT_KEYS)}",
            missing[0],
            sorted(arrays),
        )
    extra = sorted(set(arrays) - set(SPLIT_KEYS))
    if extra:
        raise _bad(
            f"{path} has unexpected key(s) {', '.join(extra)}; "
            f"required exactly {', '.join(SPLIT_KEYS)}",
            extra[0],
            extra,
        )
    return {k: arrays[k] for k in SPLIT_KEYS}


def _check_dtypes(a: dict[str, np.ndarray]) -> None:
    for key in SPLIT_KEYS:
        arr, kind = a[key], a[key].dtype.kind
        if key.startswith("x") and not ((kind == "f" and arr.dtype.itemsize <= 8) or kind in "iu"):
            raise _bad(
                f"{key} has dtype {arr.dtype}; accepted: float16/float32/float64 "
                "(classification) or an integer type (language byte ids)",
                key,
                str(arr.dtype),
            )
        if key.startswith("y") and kind not in "iu":
            raise _bad(
                f"{key} has dtype {arr.dtype}; labels must be an integer type (int8..int64, "
                "uint8..uint64), e.g. y.astype('int64')",
                key,
                str(arr.dtype),
            )
        if arr.ndim == 0 or len(arr) == 0:
            raise _bad(
                f"{key} is empty (shape {arr.shape}); every split needs at least one example",
                key,
                list(arr.shape),
            )


def _infer_task(x: np.ndarray, y: np.ndarray) -> str:
    if x.dtype.kind in "iu":
        if x.ndim == 2 and y.shape == x.shape:
            return "language"
        raise _bad(
            f"x_train is integer ({x.dtype}) with shape {x.shape} and y_train shape {y.shape}; "
            "integer inputs are accepted only for language data (x [N, T] byte ids with y of "
            "the same shape); for classification give float inputs, e.g. x.astype('float32')",
            "x_train",
            str(x.dtype),
        )
    return "classify"


def validate_arrays(a: dict[str, np.ndarray], source: str) -> ValidatedArrays:
    """Check shapes, dtypes, values and labels; infer the task; cast to the training dtypes."""
    a = dict(a)  # casts below replace entries; leave the caller's dict alone
    _check_dtypes(a)
    task = _infer_task(a["x_train"], a["y_train"])
    input_shape = tuple(int(d) for d in a["x_train"].shape[1:])
    for split in ("train", "val"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if len(x) != len(y):
            raise _bad(
                f"{source}: x_{split} has {len(x)} examples but y_{split} has {len(y)}; "
                "they must be equal",
                f"y_{split}",
                [len(x), len(y)],
            )
        if (x.dtype.kind == "f") != (task == "classify"):
            raise _bad(
                f"{source}: x_{split} has dtype {x.dtype} but x_train ({a['x_train'].dtype}) "
                f"makes this a {task} dataset; both splits need the same kind of inputs",
                f"x_{split}",
                str(x.dtype),
            )
        if tuple(x.shape[1:]) != input_shape:
            raise _bad(
                f"{source}: x_{split} has per-example shape {tuple(x.shape[1:])}, x_train has "
                f"{input_shape}; they must match",
                f"x_{split}",
                list(x.shape),
            )
        want_y = (len(x), *input_shape) if task == "language" else (len(x),)
        if y.shape != want_y:
            raise _bad(
                f"{source}: y_{split} has shape {y.shape}; expected {want_y} "
                + (
                    "(the next byte of each x position)"
                    if task == "language"
                    else "(one integer class label per example)"
                ),
                f"y_{split}",
                list(y.shape),
            )
        if task == "classify" and x.ndim < 2:
            raise _bad(
                f"{source}: x_{split} has shape {x.shape}; classification inputs need a "
                "batch dimension plus at least one feature dimension, e.g. [N, D]",
                f"x_{split}",
                list(x.shape),
            )
        if x.dtype.kind == "f":
            with np.errstate(over="ignore"):  # float64 beyond float32 range -> Inf, caught next
                x = a[f"x_{split}"] = x.astype(np.float32, copy=False)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.size(x) - np.isfinite(x).sum())
            raise _bad(
                f"{source}: x_{split} contains {bad} NaN or Inf value(s) (as float32); "
                "inputs must be finite",
                f"x_{split}",
                bad,
            )
        ranged = (("x", x), ("y", y)) if task == "language" else (("y", y),)
        for name, arr in ranged:
            lo, hi = int(arr.min()), int(arr.max())
            top = LANGUAGE_VOCAB if task == "language" else None
            if lo < 0 or (top is not None and hi >= top):
                raise _bad(
                    f"{source}: {name}_{split} has values in [{lo}, {hi}]; accepted "
                    + (f"[0, {top}) (byte ids)" if top else "labels >= 0 (classes 0..K-1)"),
                    f"{name}_{split}",
                    lo if lo < 0 else hi,
                )
    if task == "language":
        num_classes = LANGUAGE_VOCAB
    else:
        num_classes = max(int(a["y_train"].max()), int(a["y_val"].max())) + 1
    out = {
        k: v.astype(np.float32 if (k[0] == "x" and task == "classify") else np.int64, copy=False)
        for k, v in a.items()
    }
    return ValidatedArrays(task, num_classes, input_shape, out)
