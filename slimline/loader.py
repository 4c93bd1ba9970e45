"""`slimline.load(path)`: a checkpoint file back to a runnable ``nn.Module`` in one call.

The file names its architecture: a zoo model (name + config) is rebuilt from the zoo; an
uploaded ``torch.export`` program is not inside the file (DESIGN.md section 5: a graph can
outweigh a tiny model's weights), so the caller passes it as ``program=`` and its sha256 is
checked against the one recorded at export. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from torch import nn

from slimline.errors import InvalidCheckpoint
from slimline.search.checkpoint_file import read_checkpoint_header
from slimline.search.export import read_model
from slimline.search.layers import find_layers
from slimline.search.training import set_training_mode


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_skeleton(arch: dict[str, object], program: str | os.PathLike[str] | None) -> nn.Module:
    """The uncompressed model a checkpoint's weights go into."""
    if "zoo" in arch:
        from slimline.models.zoo import build_model

        config = arch.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidCheckpoint("checkpoint arch.config is not an object", field="arch")
        return build_model(str(arch["zoo"]), config)
    if "pt2" in arch:
        if program is None:
            raise InvalidCheckpoint(
                "this checkpoint belongs to an uploaded .pt2 program: call "
                "slimline.load(path, program='model.pt2') with that program",
                field="program",
            )
        digest = file_sha256(program)
        if digest != arch["pt2"]:
            raise InvalidCheckpoint(
                f"program {program} has sha256 {digest[:12]}..., but the checkpoint was made "
                f"from {str(arch['pt2'])[:12]}...: pass the same .pt2 that was compressed",
                field="program",
                value=str(program),
            )
        from slimline.models.program import load_program

        return load_program(program)
    raise InvalidCheckpoint(
        f"checkpoint arch {arch!r} names neither a zoo model nor a .pt2", field="arch"
    )


def load(path: str | os.PathLike[str], program: str | os.PathLike[str] | None = None) -> nn.Module:
    """Rebuild the compressed model stored at ``path`` (fp32 weights, eval mode)."""
    if not Path(path).is_file():
        raise InvalidCheckpoint(f"checkpoint {path} does not exist", field="path", value=str(path))
    header = read_checkpoint_header(path)
    arch = header.get("arch")
    if not isinstance(arch, dict):
        raise InvalidCheckpoint(f"{path}: header has no architecture", field="arch")
    model = build_skeleton(arch, program)
    read_model(path, model, find_layers(model))
    set_training_mode(model, False)
    return model
