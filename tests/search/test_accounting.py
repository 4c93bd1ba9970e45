"""Byte accounting on hand-computed cases (the packed-stream equality is in test_packing)."""

from __future__ import annotations

import math

from slimline.search.accounting import layer_bytes, plan_bytes
from slimline.search.layers import LayerGeometry
from slimline.search.options import LayerOption, Plan

LIN = LayerGeometry(name="fc", kind="linear", shape=(10, 30), has_bias=True)
CONV_BN = LayerGeometry(
    name="conv", kind="conv2d", shape=(8, 3, 5, 5), has_bias=False, norm="bn", norm_eps=1e-5
)


def opt(s: str) -> LayerOption:
    return LayerOption.from_str(s)


def test_nm_layer_counts_padding_values_pattern_scales_and_bias() -> None:
    # rows of 30 pad to 32: 8 groups of 4 per row, 2 kept each -> 160 values at 4 bits
    b = layer_bytes(opt("nm2:4/b4/ch"), LIN)
    assert (b.values, b.index, b.scales, b.bias) == (80, math.ceil(80 * 3 / 8), 20, 20)


def test_dense_fp16_and_removed() -> None:
    assert layer_bytes(opt("dense/b16"), LIN).total == 2 * 300 + 20
    assert layer_bytes(opt("removed"), LIN).total == 20  # the bias stays
    assert layer_bytes(opt("dense/b3/t"), LIN).values == math.ceil(300 * 3 / 8)


def test_group_scales_and_folded_norm() -> None:
    # conv rows are 75 long: 3 groups of 32 per row, 8 rows
    assert layer_bytes(opt("dense/b4/g32"), CONV_BN).scales == 2 * 8 * 3
    # a per-tensor scale becomes per channel when a BatchNorm is folded into it
    assert layer_bytes(opt("dense/b4/t"), CONV_BN).scales == 2 * 8
    # no bias of its own, but the folded norm's shift is stored
    assert layer_bytes(opt("dense/b4/ch"), CONV_BN).bias == 2 * 8


def test_unstructured_bound_is_an_upper_bound_of_the_exact_count() -> None:
    bound = layer_bytes(opt("un0.125/b4/ch"), LIN).index
    assert 0 < bound <= math.ceil(300 / 8)
    exact = layer_bytes(opt("un0.125/b4/ch"), LIN, position_bytes=3)
    assert exact.index == 3


def test_plan_bytes_sums_layers_and_others() -> None:
    plan = Plan({"fc": opt("nm2:4/b4/ch"), "conv": opt("removed")})
    mb = plan_bytes(plan, [LIN, CONV_BN], other_bytes=100, other_dense_bytes=200)
    assert mb.payload == layer_bytes(opt("nm2:4/b4/ch"), LIN).total + 16 + 100
