"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a nested structure of dicts, lists, numbers, strings and tensors (model and
optimizer state, scheduler state, RNG state, the step, a method's own state). It is written as
two files, no pickle: ``state.safetensors`` holds the tensors under their path in the tree, and
``state.json`` holds the tree with each tensor replaced by ``{"__tensor__": path}``. Both are
written to temporary names, fsynced and renamed; ``state.json`` goes last, so a checkpoint
exists only once it is whole, and a crash while writing leaves the previous one readable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS = "state.safetensors"
TREE = "state.json"
_TENSOR_KEY = "__tensor__"


def flatten(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """The JSON-safe image of ``tree``; its tensors are added to ``tensors`` by path."""
    if isinstance(tree, torch.Tensor):
        key = path or "root"
        tensors[key] = tree.detach().cpu().contiguous().clone()
        return {_TENSOR_KEY: key}
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str | int):
                raise TypeError(f"checkpoint keys must be str or int, not {type(k).__name__}")
            # int keys (optimizer state by parameter index) are kept apart from str keys
            name = f"#{k}" if isinstance(k, int) else k
            out[name] = flatten(v, tensors, f"{path}.{name}" if path else name)
        return out
    if isinstance(tree, list | tuple):
        return [flatten(v, tensors, f"{path}[{i}]") for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"cannot checkpoint a {type(tree).__name__} at {path or 'root'}")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR_KEY}:
            return tensors[tree[_TENSOR_KEY]]
        return {
            (int(k[1:]) if k.startswith("#") else k): unflatten(v, tensors) for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def _durable_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``directory`` (replacing the checkpoint there, atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, tensors)
    # the tree names the tensor file it belongs to, so a tree never pairs with older tensors
    tree = {"tree": tree, "tensors": f"{TENSORS}.{os.getpid()}.{id(tensors)}"}
    tensor_path = directory / tree["tensors"]
    save_file(tensors, str(tensor_path))
    with open(tensor_path, "rb+") as f:
        os.fsync(f.fileno())
    tmp = directory / (TREE + ".tmp")
    tmp.write_text(json.dumps(tree))
    _durable_replace(tmp, directory / TREE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in directory.glob(TENSORS + ".*"):  # tensors no tree names any more
        if old.name != tree["tensors"]:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path | None) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None when there is none."""
    if directory is None or not (directory / TREE).is_file():
        return None
    meta = json.loads((directory / TREE).read_text())
    tensors = load_file(str(directory / meta["tensors"]))
    state = unflatten(meta["tree"], tensors)
    assert isinstance(state, dict)
    return state
