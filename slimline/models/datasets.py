"""Datasets for scoring, fine-tuning and evaluating a model: named sets or an uploaded file.

Why it looks like this: a job names its data with one string. A known name (``mnist``,
``digits``, ``pycode``, ``cifar10``) is resolved on the worker from a *data root* (the
``--data-root`` setting, else ``SLIMLINE_DATA_ROOT``), so large files are never copied into jobs;
anything else must be a path to an uploaded ``.npz``/``.safetensors`` file. Either way the result
is one in-memory :class:`Dataset` of tensors with the dtypes training wants, checked once here
so that later stages can trust it. Nothing is downloaded and nothing is cached on disk.

Normalization (classification ``x`` is ``float32``):

- named image sets use *fixed* per-dataset constants (:data:`NORMALIZATION`), the usual published
  train-set mean/std of pixels scaled to [0, 1] (digits: 0..16 scaled to [0, 1], constants
  measured on our fixed train split). Fixed constants mean a model trained elsewhere with the
  standard recipe sees the inputs it expects, and the values do not shift with the split.
- uploaded files are *not* normalized, only cast to ``float32``: the user's model was trained on
  the user's own preprocessing.

Language data: ``x`` int64 ``[N, T]`` byte ids, ``y`` int64 ``[N, T]`` the next byte of each
position, ``num_classes`` 256.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimline.errors import InvalidData
from slimline.models import dataset_formats as fmt
from slimline.models.dataset_files import UPLOAD_SUFFIXES, read_upload, validate_arrays

DATA_ROOT_ENV = "SLIMLINE_DATA_ROOT"

#: dataset -> (per-channel mean, per-channel std) applied after scaling pixels to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "digits": ((0.3054,), (0.3761,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

DIGITS_VAL_SIZE = 360
DIGITS_SEED = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation tensors plus what a model needs to know about them."""

    name: str
    task: str  # "classify" or "language"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, train={len(self.x_train)}, "
            f"val={len(self.x_val)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` resolves without a file path."""
    return sorted(_NAMED)


def resolve_data_root(explicit: str | Path | None) -> Path:
    """The data root: ``explicit`` if given, else ``$SLIMLINE_DATA_ROOT``; must be a directory."""
    if explicit is not None and str(explicit) != "":
        root, source = Path(explicit), "--data-root"
    elif os.environ.get(DATA_ROOT_ENV):
        root, source = Path(os.environ[DATA_ROOT_ENV]), DATA_ROOT_ENV
    else:
        raise InvalidData(
            "no data root for named datasets: set --data-root or SLIMLINE_DATA_ROOT to the "
            "directory that holds mnist/, pycode/, cifar10/",
            field="data_root",
            value=None,
        )
    if not root.is_dir():
        raise InvalidData(
            f"data root {root} (from {source}) is not an existing directory; set --data-root or "
            f"{DATA_ROOT_ENV} to the directory that holds mnist/, pycode/, cifar10/",
            field="data_root",
            value=str(root),
        )
    return root


def load_dataset(spec: str, data_root: str | Path | None = None, *, context: int = 128) -> Dataset:
    """Load a named dataset (see :func:`dataset_names`) or an uploaded ``.npz``/``.safetensors``.

    ``context`` is the window length of language datasets (``pycode``); ignored otherwise.
    """
    name = spec.strip().lower()
    if name in _NAMED:
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise InvalidData(
                f"context must be a positive integer, got {context!r}",
                field="context",
                value=context,
            )
        return _NAMED[name](data_root, context)
    path = Path(spec).expanduser()
    if path.suffix.lower() in UPLOAD_SUFFIXES or path.is_file():
        if not path.is_file():
            raise InvalidData(f"dataset file {path} does not exist", field="data", value=str(path))
        checked = validate_arrays(read_upload(path), str(path))
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in checked.arrays.items()}
        return Dataset(
            path.name,
            checked.task,
            t["x_train"],
            t["y_train"],
            t["x_val"],
            t["y_val"],
            checked.num_classes,
            checked.input_shape,
        )
    raise InvalidData(
        f"unknown dataset {spec!r}: not one of {', '.join(dataset_names())} and not an existing "
        f"file; an uploaded dataset must be a {' or '.join(UPLOAD_SUFFIXES)} file",
        field="data",
        value=spec,
    )


def _subdir(data_root: str | Path | None, name: str) -> Path:
    d = resolve_data_root(data_root) / name
    if not d.is_dir():
        raise InvalidData(
            f"dataset {name!r}: directory {d} does not exist under the data root",
            field="data",
            value=str(d),
        )
    return d


def _images(name: str, pixels: np.ndarray, scale: float) -> torch.Tensor:
    """uint8/float pixels [N,C,H,W] -> float32, scaled to [0,1], normalized per channel."""
    mean, std = NORMALIZATION[name]
    x = torch.from_numpy(np.array(pixels, dtype=np.float32)).div_(scale)  # a writable copy
    shape = (1, len(mean), 1, 1)
    return x.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


def _load_mnist(data_root: str | Path | None, context: int) -> Dataset:
    d = _subdir(data_root, "mnist")
    splits = []
    for prefix in ("train", "t10k"):
        img_path = fmt.find_plain_or_gz(d, f"{prefix}-images-idx3-ubyte")
        lab_path = fmt.find_plain_or_gz(d, f"{prefix}-labels-idx1-ubyte")
        images = fmt.parse_idx(img_path, fmt.IDX_IMAGES_MAGIC)
        labels = fmt.parse_idx(lab_path, fmt.IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise InvalidData(
                f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels; "
                "the counts must agree",
                field="data",
                value=[len(images), len(labels)],
            )
        if images.shape[1:] != (28, 28):
            raise InvalidData(
                f"{img_path} has images of {images.shape[1:]}; MNIST images are (28, 28)",
                field="data",
                value=list(images.shape),
            )
        if len(labels) and labels.max() > 9:
            raise InvalidData(
                f"{lab_path} has label {int(labels.max())}; MNIST labels are 0..9",
                field="data",
                value=int(labels.max()),
            )
        splits.append(
            (_images("mnist", images[:, None], 255.0), torch.from_numpy(labels.astype(np.int64)))
        )
    (xt, yt), (xv, yv) = splits
    return Dataset("mnist", "classify", xt, yt, xv, yv, 10, (1, 28, 28))


def _load_digits(data_root: str | Path | None, context: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    idx = np.arange(len(bunch.target))
    tr, va = train_test_split(
        idx, test_size=DIGITS_VAL_SIZE, stratify=bunch.target, random_state=DIGITS_SEED
    )
    tr, va = np.sort(tr), np.sort(va)
    images = bunch.images[:, None].astype(np.float32)  # [N,1,8,8], values 0..16
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset(
        "digits",
        "classify",
        _images("digits", images[tr], 16.0),
        y[tr],
        _images("digits", images[va], 16.0),
        y[va],
        10,
        (1, 8, 8),
    )


def _windows(path: Path, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.frombuffer(fmt.read_maybe_gz(path), dtype=np.uint8)
    n = len(data) // (context + 1)
    if n == 0:
        raise InvalidData(
            f"{path} has {len(data)} bytes, fewer than one window of context+1 = {context + 1}; "
            "use a smaller context or a longer text",
            field="context",
            value=context,
        )
    w = torch.from_numpy(data[: n * (context + 1)].astype(np.int64)).view(n, context + 1)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _load_pycode(data_root: str | Path | None, context: int) -> Dataset:
    d = _subdir(data_root, "pycode")
    xt, yt = _windows(fmt.find_plain_or_gz(d, "train.txt"), context)
    xv, yv = _windows(fmt.find_plain_or_gz(d, "val.txt"), context)
    return Dataset("pycode", "language", xt, yt, xv, yv, 256, (context,))


def _load_cifar10(data_root: str | Path | None, context: int) -> Dataset:
    d = fmt.cifar_dir(_subdir(data_root, "cifar10"))
    train = [fmt.read_cifar_batch(d / f) for f in fmt.CIFAR_TRAIN_FILES]
    xv, yv = fmt.read_cifar_batch(d / fmt.CIFAR_TEST_FILE)
    xt = np.concatenate([b[0] for b in train])
    yt = np.concatenate([b[1] for b in train])
    return Dataset(
        "cifar10",
        "classify",
        _images("cifar10", xt, 255.0),
        torch.from_numpy(yt),
        _images("cifar10", xv, 255.0),
        torch.from_numpy(yv),
        10,
        (3, 32, 32),
    )


_NAMED = {
    "mnist": _load_mnist,
    "digits": _load_digits,
    "pycode": _load_pycode,
    "cifar10": _load_cifar10,
}
