"""Parsers for the on-disk formats of the named datasets: MNIST IDX and CIFAR-10 binary.

Why a parser of our own rather than torchvision: torchvision is not a dependency (it would pull
its own torch), and both formats are a few bytes of header plus raw ``uint8`` — numpy's
``frombuffer`` reads the full 60k MNIST set in well under a second. Both parsers check the
header and the file length against each other, so a truncated download or a wrong file gives an
:class:`InvalidData` that names the file, instead of a garbled tensor or a reshape error deep in
training. Nothing is cached on disk.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from slimline.errors import InvalidData

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"


def read_maybe_gz(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise InvalidData(
            f"cannot read {path}: {e}; expected a readable"
            f"{' gzip' if path.suffix == '.gz' else ''} file",
            field="data",
            value=str(path),
        ) from e


def find_plain_or_gz(directory: Path, name: str) -> Path:
    """``directory/name`` if present, else ``directory/name.gz``; a clear error if neither."""
    plain = directory / name
    if plain.is_file():
        return plain
    gz = directory / (name + ".gz")
    if gz.is_file():
        return gz
    raise InvalidData(
        f"missing dataset file: neither {plain} nor {gz} exists",
        field="data",
        value=str(plain),
    )


def parse_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes; returns a ``uint8`` array of the header's dims.

    Layout: big-endian int32 magic (``0x08`` = ubyte in byte 3, number of dims in byte 4), one
    big-endian int32 per dimension, then ``prod(dims)`` bytes.
    """
    raw = read_maybe_gz(path)
    if len(raw) < 8:
        raise InvalidData(
            f"{path} is {len(raw)} bytes, too short for an IDX header (at least 8 bytes)",
            field="data",
            value=str(path),
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise InvalidData(
            f"{path} has IDX magic {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}, unsigned bytes)",
            field="data",
            value=magic,
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InvalidData(
            f"{path} is {len(raw)} bytes, too short for its {ndim}-dimension IDX header "
            f"({header} bytes)",
            field="data",
            value=str(path),
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected_len = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_len:
        raise InvalidData(
            f"{path} is {len(raw)} bytes but its IDX header (dims {dims}) needs exactly "
            f"{expected_len}; the file is truncated or corrupt",
            field="data",
            value=len(raw),
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch -> (``uint8`` images ``[N,3,32,32]``, ``int64`` labels ``[N]``)."""
    if not path.is_file():
        raise InvalidData(
            f"missing CIFAR-10 batch {path}; expected {', '.join(CIFAR_TRAIN_FILES)} and "
            f"{CIFAR_TEST_FILE} (the 'binary version' of CIFAR-10)",
            field="data",
            value=str(path),
        )
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise InvalidData(
            f"{path} is {raw.size} bytes, not a positive multiple of the CIFAR-10 record size "
            f"{CIFAR_RECORD} (1 label byte + 3072 pixel bytes)",
            field="data",
            value=int(raw.size),
        )
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise InvalidData(
            f"{path} has label {int(labels.max())}; CIFAR-10 labels are 0..9",
            field="data",
            value=int(labels.max()),
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def cifar_dir(base: Path) -> Path:
    """``<root>/cifar10`` itself, or the ``cifar-10-batches-bin`` folder the archive unpacks to."""
    for candidate in (base, base / "cifar-10-batches-bin"):
        if (candidate / CIFAR_TEST_FILE).is_file() or (candidate / CIFAR_TRAIN_FILES[0]).is_file():
            return candidate
    raise InvalidData(
        f"no CIFAR-10 batches in {base} or {base / 'cifar-10-batches-bin'}; expected "
        f"{', '.join(CIFAR_TRAIN_FILES)} and {CIFAR_TEST_FILE}",
        field="data",
        value=str(base),
    )
