"""Embedding tables are compressible layers: one scale per token row, every option kind, eager
and .pt2 alike; tied weights stay ordinary tensors; files from before keep loading."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

import slimline
from slimline.models.zoo import build_model
from slimline.pipeline.stages import exact_positions
from slimline.search.accounting import layer_options, plan_bytes
from slimline.search.compressed import apply_plan
from slimline.search.export import build_header, other_stored_bytes, write_model
from slimline.search.finalize import finalize, other_tensor_names
from slimline.search.layers import find_layers
from slimline.search.options import Plan
from tests.search.test_export import _round_trip

SMALL = {"layers": 1, "width": 32, "heads": 2, "context": 16, "mlp_hidden": 64}


def test_bytegpt_embeddings_are_layers_with_a_row_per_token() -> None:
    model = build_model("bytegpt", SMALL)
    geoms = {g.name: g for g in find_layers(model)}
    assert geoms["tok_emb"].kind == "embedding"
    assert geoms["tok_emb"].shape == (256, 32)
    assert geoms["pos_emb"].shape == (16, 32)
    assert not geoms["tok_emb"].has_bias and geoms["tok_emb"].norm is None
    # the tables are no longer "other" (fp16) tensors: only the LayerNorms remain
    others = other_tensor_names(model, list(geoms.values()))
    assert others and all(k.startswith(("ln_f.", "blocks.0.ln")) for k in others), others


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_option_on_the_embeddings_round_trips(tmp_path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_model("bytegpt", SMALL).eval()
    geoms = find_layers(model)
    rng = random.Random(seed)
    emb = [g for g in geoms if g.kind == "embedding"]
    opts = layer_options(emb[0])
    assert {o.sparsity for o in opts} >= {"dense", "nm", "unstructured", "removed"}
    plan = Plan({g.name: rng.choice(layer_options(g)) for g in geoms})
    x = torch.randint(0, 256, (2, 16))
    arch = {"zoo": "bytegpt", "config": SMALL}
    _round_trip(model, plan, arch, tmp_path / "g.safetensors", x)


def test_program_embeddings_round_trip(tmp_path: Path) -> None:
    from slimline.loader import file_sha256
    from slimline.models.program import export_program, load_program
    from slimline.search.training import set_training_mode

    torch.manual_seed(3)
    eager = build_model("bytegpt", SMALL).eval()
    x = torch.randint(0, 256, (2, 16))
    export_program(eager, x, tmp_path / "g.pt2")
    gm = load_program(tmp_path / "g.pt2")
    set_training_mode(gm, False)
    geoms = find_layers(gm)
    assert [(g.name, g.kind) for g in geoms] == [(g.name, g.kind) for g in find_layers(eager)]
    rng = random.Random(3)
    plan = Plan({g.name: rng.choice(layer_options(g)) for g in geoms})
    arch = {"pt2": file_sha256(tmp_path / "g.pt2")}
    _round_trip(gm, plan, arch, tmp_path / "g.safetensors", x, program=tmp_path / "g.pt2")


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 40, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(x))))


def test_tied_weights_stay_ordinary_tensors() -> None:
    model = _Tied()
    assert [g.name for g in find_layers(model)] == ["mid"]
    gm = torch.export.export(model, (torch.zeros(1, 3, dtype=torch.long),)).module()
    assert [g.name for g in find_layers(gm)] == ["mid"]
    # and an embedding that renormalizes its table in place on lookup is left alone too
    renorm = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0), nn.Linear(4, 2))
    assert [g.kind for g in find_layers(renorm)] == ["linear"]


def test_a_file_with_fp16_embeddings_still_loads(tmp_path: Path) -> None:
    """Files written before embeddings were layers hold them as ordinary fp16 tensors."""
    torch.manual_seed(0)
    model = build_model("bytegpt", SMALL).eval()
    geoms = [g for g in find_layers(model) if g.kind != "embedding"]
    plan = Plan({g.name: layer_options(g)[5] for g in geoms})
    positions = exact_positions(model, geoms, plan)
    planned = plan_bytes(plan, geoms, other_stored_bytes(model, geoms), 0, position_bytes=positions)
    apply_plan(model, plan, geoms)
    fin = finalize(model, geoms)
    assert "tok_emb.weight" in fin.others
    header = build_header(
        arch={"zoo": "bytegpt", "config": SMALL},
        task="language",
        plan=plan,
        positions=positions,
        metrics={"metric": 0.5},
        accounting={"payload": planned.payload},
    )
    write_model(tmp_path / "old.safetensors", fin, header)
    reloaded = slimline.load(tmp_path / "old.safetensors")
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert (reloaded(x) - model(x)).abs().max().item() <= 1e-5
