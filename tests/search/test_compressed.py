"""The fake-quantized weight a layer trains with is exactly the weight its packed streams give.

For every option on every layer type the zoo uses (Linear, Conv1d, Conv2d, depthwise and
grouped Conv2d): parametrize, read the fake-quantized weight, build the payload, pack it,
unpack it, dequantize — bit-for-bit equal — and the stream lengths equal the accounting.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimline.search.accounting import layer_bytes, layer_options
from slimline.search.compressed import CompressedWeight, apply_plan
from slimline.search.finalize import layer_payload
from slimline.search.layers import find_layers
from slimline.search.options import LayerOption, Plan
from slimline.search.packing import pack_payload, unpack_payload
from slimline.search.payload import dequantize
from slimline.search.position_codes import position_stream_bytes

LAYERS = {
    "linear": lambda: nn.Linear(30, 10),
    "conv1d": lambda: nn.Conv1d(3, 8, 5, bias=False),
    "conv2d": lambda: nn.Conv2d(3, 8, 5),
    "depthwise": lambda: nn.Conv2d(16, 16, 3, groups=16),
    "grouped": lambda: nn.Conv2d(8, 12, 3, groups=2, bias=False),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_packed_weights_equal_fake_quantized_for_every_option(kind: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(LAYERS[kind]())
    (geom,) = find_layers(model)
    options = layer_options(geom, group_sizes=(16, 32))
    assert len(options) > 100
    for opt in options:
        m = nn.Sequential(LAYERS[kind]())
        m.load_state_dict(model.state_dict())
        (cw,) = apply_plan(m, Plan({"0": opt}), [geom]).values()
        with torch.no_grad():
            fake = m[0].weight.clone()
        p = layer_payload(m, geom, cw)
        streams = pack_payload(p)
        back = unpack_payload(streams, geom.name, opt, geom.shape, geom.has_bias)
        assert torch.equal(dequantize(back), fake), opt.to_str()
        pos = None
        if opt.sparsity == "unstructured":
            pos = position_stream_bytes(geom.numel, int(cw.mask.sum()), cw.mask.reshape(-1))
        b = layer_bytes(opt, geom, position_bytes=pos)
        assert streams.lengths() == (b.values, b.index, b.scales, b.bias), opt.to_str()


@pytest.mark.parametrize("pattern", ["nm1:4/b4/ch", "nm2:4/b3/t", "nm2:8/b2/ch", "nm4:8/b16"])
def test_nm_masks_keep_exactly_n_per_group_and_stay_after_training_steps(pattern: str) -> None:
    torch.manual_seed(1)
    lin = nn.Sequential(nn.Linear(37, 9))  # 37 is not a multiple of 4 or 8: padding
    geoms = find_layers(lin)
    opt = LayerOption.from_str(pattern)
    (cw,) = apply_plan(lin, Plan({"0": opt}), geoms).values()
    sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(3):
        loss = lin(torch.randn(16, 37)).pow(2).mean()
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        w = lin[0].weight.detach()  # [9, 37]
        padded = torch.nn.functional.pad(w, (0, cw.mask.shape[1] - 37))
        groups = cw.mask.reshape(9, -1, opt.m)
        assert (groups.sum(-1) == opt.n).all()
        assert ((padded != 0) & ~cw.mask).sum() == 0  # nothing outside the mask survives


def test_ste_gradients_reach_weights_and_scales() -> None:
    torch.manual_seed(2)
    lin = nn.Sequential(nn.Linear(16, 4))
    (cw,) = apply_plan(
        lin, Plan({"0": LayerOption.from_str("nm2:4/b4/ch")}), find_layers(lin)
    ).values()
    lin(torch.randn(8, 16)).sum().backward()
    original = lin[0].parametrizations.weight.original
    kept = cw.mask[:, :16]
    assert (original.grad[kept] != 0).any()
    assert (original.grad[~kept] == 0).all()  # masked weights get no gradient through the mask
    assert cw.step.grad is not None and cw.step.grad.abs().sum() > 0


def test_initial_scales_beat_max_abs_scaling() -> None:
    torch.manual_seed(3)
    w = torch.randn(32, 64)
    w[0, 0] = 12.0  # an outlier that max-abs scaling would spend the range on
    opt = LayerOption.from_str("dense/b3/ch")
    cw = CompressedWeight(opt, w)
    err_init = (cw(w) - w).pow(2).sum()
    naive = CompressedWeight(opt, w)
    with torch.no_grad():
        naive.step.copy_(w.abs().amax(1, keepdim=True) / 3)
    assert err_init < (naive(w) - w).pow(2).sum()


def test_parametrization_changes_a_graph_modules_output(tmp_path) -> None:
    from slimline.models.program import export_program, load_program

    torch.manual_seed(4)
    eager = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    export_program(eager, torch.randn(2, 1, 8, 8), tmp_path / "m.pt2")
    gm = load_program(tmp_path / "m.pt2")
    geoms = find_layers(gm)
    assert [g.kind for g in geoms] == ["conv2d", "linear"]
    assert [g.shape for g in geoms] == [(4, 1, 3, 3), (3, 144)]
    x = torch.randn(5, 1, 8, 8)
    before = gm(x)
    apply_plan(gm, Plan({g.name: LayerOption.from_str("removed") for g in geoms}), geoms)
    after = gm(x)
    assert not torch.allclose(before, after)
    # with every weight removed only the last bias is left
    assert torch.allclose(after, eager[3].bias.expand(5, 3), atol=1e-6)
    parametrize.remove_parametrizations(gm.get_submodule(geoms[0].name), "weight")
