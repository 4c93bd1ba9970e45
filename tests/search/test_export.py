"""Checkpoint round trips: planned bytes == payload bytes, header share, and slimline.load
giving the finalized model's outputs, for zoo models (with BatchNorm folding and fp16 others)
and for a .pt2 program."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

import slimline
from slimline.errors import InvalidCheckpoint
from slimline.models.zoo import build_model
from slimline.pipeline.stages import dense_checkpoint_bytes, exact_positions
from slimline.search.accounting import layer_options, plan_bytes
from slimline.search.compressed import apply_plan
from slimline.search.export import (
    build_header,
    other_stored_bytes,
    reserve_header_bytes,
    write_model,
)
from slimline.search.finalize import finalize
from slimline.search.layers import find_layers
from slimline.search.method_settings import UniformSettings
from slimline.search.methods.base import SearchContext
from slimline.search.methods.uniform import UniformMethod
from slimline.search.options import Plan


def _randomize_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


def _round_trip(
    model: nn.Module,
    plan: Plan,
    arch: dict,
    path: Path,
    x: torch.Tensor,
    program: Path | None = None,
) -> tuple[int, int, int]:
    geoms = find_layers(model)
    positions = exact_positions(model, geoms, plan)
    planned = plan_bytes(plan, geoms, other_stored_bytes(model, geoms), 0, position_bytes=positions)
    apply_plan(model, plan, geoms)
    fin = finalize(model, geoms)
    header = build_header(
        arch=arch,
        task="classify",
        plan=plan,
        positions=positions,
        metrics={"metric": 0.5},
        accounting={"payload": planned.payload},
    )
    info, _ = write_model(path, fin, header)
    assert info.payload_bytes == planned.payload
    assert info.header_bytes == reserve_header_bytes(header, planned.payload)
    reloaded = slimline.load(path, program=program)
    with torch.no_grad():
        diff = (reloaded(x) - model(x)).abs().max().item()
    assert diff <= 1e-5
    return info.file_bytes, info.header_bytes, planned.payload


def _eval(model: nn.Module) -> nn.Module:
    from slimline.search.training import set_training_mode

    set_training_mode(model, False)
    return model


def test_lenet5_at_20x_header_under_one_percent(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    geoms = find_layers(model)
    budget = dense_checkpoint_bytes(model) // 20
    reserve = 600
    ctx = SearchContext(
        model=model,
        geoms=geoms,
        data=None,
        payload_budget=budget - reserve,  # type: ignore[arg-type]
        other_bytes=other_stored_bytes(model, geoms),
    )
    plan = UniformMethod(UniformSettings(tries=1)).propose(ctx)  # no data: the largest fit
    x = torch.randn(8, 1, 28, 28)
    file_bytes, header_bytes, payload = _round_trip(
        model, plan, {"zoo": "lenet5", "config": {}}, tmp_path / "l5.safetensors", x
    )
    assert file_bytes <= budget
    assert file_bytes - header_bytes == payload
    assert header_bytes < 0.01 * file_bytes, (header_bytes, file_bytes)


@pytest.mark.parametrize("seed", [0, 1])
def test_resnet20_mixed_plan_with_folded_norms(tmp_path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_model("resnet20")
    _randomize_norms(model)
    model.eval()
    geoms = find_layers(model)
    assert sum(g.norm is not None for g in geoms) >= 19  # every conv is followed by its BN
    rng = random.Random(seed)
    plan = Plan({g.name: rng.choice(layer_options(g, group_sizes=(16,))) for g in geoms})
    x = torch.randn(4, 3, 32, 32)
    _round_trip(model, plan, {"zoo": "resnet20", "config": {}}, tmp_path / "r.safetensors", x)


def test_bytegpt_others_are_stored_as_fp16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("bytegpt").eval()
    geoms = find_layers(model)
    assert len(geoms) >= 4 * 6 + 1  # q, k, v, out, 2 MLP per block + head
    plan = Plan.uniform([g.name for g in geoms], layer_options(geoms[0])[5])
    x = torch.randint(0, 256, (2, 128))
    file_bytes, _, payload = _round_trip(
        model, plan, {"zoo": "bytegpt", "config": {}}, tmp_path / "g.safetensors", x
    )
    assert other_stored_bytes(build_model("bytegpt"), geoms) > 0
    assert payload < file_bytes


def test_pt2_program_round_trip_and_wrong_program(tmp_path: Path) -> None:
    from slimline.loader import file_sha256
    from slimline.models.program import export_program, load_program

    torch.manual_seed(0)
    eager = build_model("resnet20")
    _randomize_norms(eager)
    eager.eval()
    export_program(eager, torch.randn(2, 3, 32, 32), tmp_path / "r.pt2")
    gm = _eval(load_program(tmp_path / "r.pt2"))
    geoms = find_layers(gm)
    assert len(geoms) == len(find_layers(eager))
    assert sum(g.norm is not None for g in geoms) == sum(
        g.norm is not None for g in find_layers(eager)
    )
    rng = random.Random(0)
    plan = Plan({g.name: rng.choice(layer_options(g)) for g in geoms})
    x = torch.randn(3, 3, 32, 32)
    arch = {"pt2": file_sha256(tmp_path / "r.pt2")}
    path = tmp_path / "r.safetensors"
    _round_trip(gm, plan, arch, path, x, program=tmp_path / "r.pt2")
    with pytest.raises(InvalidCheckpoint, match="program="):
        slimline.load(path)
    export_program(build_model("digits-cnn").eval(), torch.randn(2, 1, 8, 8), tmp_path / "o.pt2")
    with pytest.raises(InvalidCheckpoint, match="sha256"):
        slimline.load(path, program=tmp_path / "o.pt2")


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidCheckpoint, match="does not exist"):
        slimline.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle's opening bytes
    with pytest.raises(InvalidCheckpoint):
        slimline.load(junk)
