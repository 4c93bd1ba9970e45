"""Payload <-> streams round trips, stream lengths == accounting, and the checkpoint container."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch

from slimline.errors import InvalidCheckpoint
from slimline.search.checkpoint_file import (
    FileInfo,
    header_bytes_for,
    read_checkpoint,
    read_checkpoint_header,
    read_checkpoint_payload,
    split_payload,
    stream_list,
    write_checkpoint,
)
from slimline.search.options import FP16, GROUP_SIZES, REMOVED, LayerOption
from slimline.search.packing import (
    LayerStreams,
    pack_payload,
    padded_row_len,
    unpack_payload,
    unstructured_kept,
)
from slimline.search.payload import LayerPayload, dequantize, scale_shape
from slimline.search.position_codes import position_stream_bytes

try:
    from slimline.search.accounting import layer_bytes, layer_options
    from slimline.search.layers import LayerGeometry
except ImportError as exc:  # pragma: no cover - only while accounting is being written
    ACCOUNTING_MISSING: str | None = f"slimline.search.accounting not importable: {exc}"
else:
    ACCOUNTING_MISSING = None

SHAPES = [(10, 30), (8, 3, 5, 5), (16, 1, 3, 3)]  # Linear, conv, depthwise conv


def make_payload(
    option: LayerOption,
    shape: tuple[int, ...],
    *,
    has_bias: bool,
    folded_norm: bool = False,
    seed: int = 0,
) -> LayerPayload:
    """A random payload of the right structure (what finalize would produce)."""
    g = torch.Generator().manual_seed(seed)
    rows, k = shape[0], math.prod(shape[1:])
    mask = None
    if option.sparsity == "nm":
        kp = padded_row_len(option, k)
        scores = torch.rand(rows, kp // option.m, option.m, generator=g)
        idx = scores.topk(option.n, dim=-1).indices
        mask = torch.zeros(rows, kp // option.m, option.m, dtype=torch.bool)
        mask = mask.scatter_(-1, idx, True).reshape(rows, kp)
    elif option.sparsity == "unstructured":
        kept = unstructured_kept(option, rows, k)
        mask = torch.zeros(rows * k, dtype=torch.bool)
        mask[torch.randperm(rows * k, generator=g)[:kept]] = True
        mask = mask.reshape(rows, k)
    dense_count = 0 if option.sparsity == "removed" else rows * k
    count = int(mask.sum()) if mask is not None else dense_count
    if option.bits == 16:
        vals = torch.randn(count, generator=g).half()
        codes = vals.view(torch.int16).to(torch.int64) & 0xFFFF
    else:
        codes = torch.randint(0, 1 << max(option.bits, 1), (count,), generator=g)
    scales = None
    if option.quantized:
        srows, scols = scale_shape(option, rows, k)
        if folded_norm:
            srows = rows
        scales = (torch.rand(srows, scols, generator=g) + 0.01).half()
    bias = torch.randn(rows, generator=g).half() if has_bias else None
    return LayerPayload(
        name="layer", option=option, shape=shape, mask=mask, codes=codes, scales=scales, bias=bias
    )


def all_options() -> list[LayerOption]:
    """Every sparsity kind x every quantized bit-width x every granularity, plus fp16."""
    opts = {FP16, REMOVED}
    for bits in (2, 3, 4, 5, 6, 8):
        grans = [{"granularity": "channel"}, {"granularity": "tensor"}] + [
            {"granularity": "group", "group_size": gs} for gs in GROUP_SIZES
        ]
        sparsities = [
            {"sparsity": "dense"},
            {"sparsity": "unstructured", "density": 0.0625},
            {"sparsity": "unstructured", "density": 0.5},
        ]
        sparsities += [
            {"sparsity": "nm", "n": n, "m": m} for n, m in ((1, 4), (2, 4), (1, 8), (2, 8), (4, 8))
        ]
        for sp in sparsities:
            opts.add(LayerOption(bits=16, **sp) if sp["sparsity"] != "dense" else FP16)
            for gr in grans:
                opts.add(LayerOption(bits=bits, **sp, **gr))
    return sorted(opts, key=LayerOption.to_str)


def assert_payloads_equal(a: LayerPayload, b: LayerPayload) -> None:
    assert torch.equal(dequantize(a), dequantize(b))
    assert torch.equal(a.codes, b.codes)
    assert (a.mask is None) == (b.mask is None)
    if a.mask is not None:
        assert torch.equal(a.mask, b.mask)
    for x, y in ((a.scales, b.scales), (a.bias, b.bias)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype == torch.float16
            assert torch.equal(x, y)


@pytest.mark.parametrize("shape", SHAPES)
def test_payload_round_trip_every_option(shape: tuple[int, ...]) -> None:
    for i, opt in enumerate(all_options()):
        for has_bias in (False, True):
            p = make_payload(opt, shape, has_bias=has_bias, seed=i)
            streams = pack_payload(p)
            q = unpack_payload(streams, "layer", opt, shape, has_bias)
            assert q.shape == shape and q.option == opt
            assert_payloads_equal(p, q)


@pytest.mark.parametrize("shape", SHAPES)
def test_folded_norm_makes_tensor_scales_per_channel(shape: tuple[int, ...]) -> None:
    opt = LayerOption(sparsity="nm", n=2, m=4, bits=4, granularity="tensor")
    p = make_payload(opt, shape, has_bias=True, folded_norm=True)
    assert p.scales is not None and p.scales.shape == (shape[0], 1)
    q = unpack_payload(pack_payload(p), "layer", opt, shape, True)
    assert_payloads_equal(p, q)


def test_unstructured_mask_is_rows_by_k_and_masks_have_right_counts() -> None:
    opt = LayerOption(sparsity="unstructured", density=0.125, bits=3, granularity="channel")
    p = make_payload(opt, (8, 3, 5, 5), has_bias=False)
    q = unpack_payload(pack_payload(p), "c", opt, (8, 3, 5, 5), False)
    assert q.mask is not None and q.mask.shape == (8, 75)
    assert int(q.mask.sum()) == unstructured_kept(opt, 8, 75) == round(0.125 * 600)
    nm = LayerOption(sparsity="nm", n=2, m=8, bits=2, granularity="channel")
    q = unpack_payload(
        pack_payload(make_payload(nm, (16, 1, 3, 3), has_bias=False)), "d", nm, (16, 1, 3, 3), False
    )
    assert q.mask is not None and q.mask.shape == (16, 16)  # K = 9 padded to 16
    assert int(q.mask.sum()) == 16 * 2 * 2


def test_stream_layout_is_what_the_docs_say() -> None:
    opt = LayerOption(sparsity="nm", n=2, m=4, bits=4, granularity="channel")
    p = make_payload(opt, (10, 30), has_bias=True)
    s = pack_payload(p)
    assert len(s.values) == math.ceil(10 * 8 * 2 * 4 / 8)  # Kp = 32: 8 groups x 2 kept
    assert len(s.index) == math.ceil(10 * 8 * 3 / 8)
    assert s.scales == p.scales.numpy().astype("<f2").tobytes()
    assert s.bias == p.bias.numpy().astype("<f2").tobytes()
    assert pack_payload(make_payload(FP16, (10, 30), has_bias=False)).index == b""
    removed = pack_payload(make_payload(REMOVED, (10, 30), has_bias=True))
    assert removed.lengths() == (0, 0, 0, 20)


def test_pack_rejects_inconsistent_payloads() -> None:
    opt = LayerOption(bits=4, granularity="channel")
    p = make_payload(opt, (4, 8), has_bias=True)
    with pytest.raises(ValueError, match="float16"):
        pack_payload(LayerPayload(**{**p.__dict__, "scales": p.scales.float()}))
    with pytest.raises(ValueError, match="codes"):
        pack_payload(LayerPayload(**{**p.__dict__, "codes": p.codes[:-1]}))
    with pytest.raises(ValueError):
        pack_payload(LayerPayload(**{**p.__dict__, "codes": p.codes + 16}))  # out of range


def test_unpack_rejects_corrupt_streams() -> None:
    opt = LayerOption(sparsity="unstructured", density=0.0625, bits=4, granularity="channel")
    p = make_payload(opt, (64, 100), has_bias=True)
    s = pack_payload(p)
    bad = [
        LayerStreams(s.values[:-1], s.index, s.scales, s.bias),
        LayerStreams(s.values, s.index[:-1], s.scales, s.bias),
        LayerStreams(s.values, s.index, s.scales + b"\0\0", s.bias),
        LayerStreams(s.values, s.index, s.scales, b""),
    ]
    for streams in bad:
        with pytest.raises(InvalidCheckpoint, match="layer 'x'"):
            unpack_payload(streams, "x", opt, (64, 100), True)


@pytest.mark.skipif(ACCOUNTING_MISSING is not None, reason=str(ACCOUNTING_MISSING))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", [None, "bn"])
def test_accounting_equals_stream_lengths(shape: tuple[int, ...], norm: str | None) -> None:
    for has_bias in (False, True):
        geom = LayerGeometry(
            name="layer",
            kind="linear" if len(shape) == 2 else "conv2d",
            shape=shape,
            has_bias=has_bias,
            norm=norm,
        )
        stores_bias = has_bias or norm is not None
        for i, opt in enumerate(layer_options(geom, group_sizes=GROUP_SIZES)):
            p = make_payload(opt, shape, has_bias=stores_bias, folded_norm=norm is not None, seed=i)
            streams = pack_payload(p)
            pos = None
            if opt.sparsity == "unstructured":
                assert p.mask is not None
                pos = position_stream_bytes(p.mask.numel(), int(p.mask.sum()), p.mask)
                bound = layer_bytes(opt, geom)
                assert bound.index >= len(streams.index), opt.to_str()
            counted = layer_bytes(opt, geom, position_bytes=pos)
            got = streams.lengths()
            assert (counted.values, counted.index, counted.scales, counted.bias) == got, (
                opt.to_str(),
                shape,
                norm,
                has_bias,
            )


# --------------------------------------------------------------------- checkpoint container
def _streams(seed: int) -> tuple[list[LayerStreams], list[bytes]]:
    opts = [
        LayerOption(sparsity="nm", n=2, m=4, bits=4, granularity="channel"),
        LayerOption(sparsity="unstructured", density=0.0625, bits=3, granularity="tensor"),
        REMOVED,
        FP16,
    ]
    layers = [
        pack_payload(make_payload(o, (8, 3, 5, 5), has_bias=True, seed=seed + i))
        for i, o in enumerate(opts)
    ]
    others = [bytes(range(7)), b"", torch.randn(5).half().numpy().tobytes()]
    return layers, others


HEADER = {
    "format": 1,
    "arch": {"zoo": "lenet5"},
    "plan": {"conv1": "nm2:4/b4/ch"},
    "name": 'ünïcode "quoted"',
}


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    layers, others = _streams(0)
    path = tmp_path / "model.safetensors"
    info = write_checkpoint(path, HEADER, layers, others)
    chunks = stream_list(layers, others)
    payload_bytes = sum(map(len, chunks))
    assert isinstance(info, FileInfo)
    assert info.file_bytes == path.stat().st_size == info.header_bytes + info.payload_bytes
    assert info.payload_bytes == payload_bytes
    assert info.header_bytes == header_bytes_for(HEADER, payload_bytes)
    assert info.header_bytes < 300
    assert read_checkpoint_header(path) == HEADER
    payload = read_checkpoint_payload(path)
    assert payload == b"".join(chunks)
    views = split_payload(payload, [len(c) for c in chunks])
    assert [bytes(v) for v in views] == chunks
    header, payload2 = read_checkpoint(path)
    assert header == HEADER and payload2 == payload
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_checkpoint_is_a_safetensors_file(tmp_path: Path) -> None:
    from safetensors import safe_open

    layers, others = _streams(1)
    path = tmp_path / "m.safetensors"
    write_checkpoint(path, HEADER, layers, others)
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["slimline"]) == HEADER
        t = f.get_tensor("payload")
    assert t.dtype == torch.uint8
    assert t.numpy().tobytes() == read_checkpoint_payload(path)


@pytest.mark.parametrize("payload_bytes", [0, 9, 10, 99_999, 100_000, 86_000])
def test_header_bytes_for_is_exact(tmp_path: Path, payload_bytes: int) -> None:
    path = tmp_path / "c.safetensors"
    info = write_checkpoint(path, HEADER, [], [bytes(payload_bytes)])
    assert info.header_bytes == header_bytes_for(HEADER, payload_bytes)


def test_checkpoint_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    write_checkpoint(path, {"v": 1}, [], [b"abc"])
    write_checkpoint(path, {"v": 2}, [], [b"defg"])
    assert read_checkpoint(path) == ({"v": 2}, b"defg")


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    layers, others = _streams(2)
    good = tmp_path / "good.safetensors"
    write_checkpoint(good, HEADER, layers, others)
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    files = {
        "empty": b"",
        "short": raw[:5],
        "truncated": raw[:-3],
        "extended": raw + b"\0",
        "header cut": raw[: 8 + n // 2],
        "wrong length": struct.pack("<Q", n + 5) + raw[8:],
        "huge length": struct.pack("<Q", 2**63) + raw[8:],
        "garbage json": struct.pack("<Q", 12) + b"{not json!!}" + raw[8 + n :],
        "not utf8": struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
        "json list": struct.pack("<Q", 2) + b"[]",
        "pickle": pickle.dumps({"weight": [1.0, 2.0]}),
        "torch save": b"PK\x03\x04" + bytes(100),
    }
    header = json.dumps(
        {
            "__metadata__": {"slimline": "[1]"},
            "payload": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},
        }
    ).encode()
    files["header not object"] = struct.pack("<Q", len(header)) + header
    header = json.dumps(
        {
            "__metadata__": {"slimline": "{"},
            "payload": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},
        }
    ).encode()
    files["inner garbage"] = struct.pack("<Q", len(header)) + header
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    files["plain safetensors"] = struct.pack("<Q", len(header)) + header + bytes(4)
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        p.write_bytes(data)
        out[name] = p
    out["missing"] = tmp_path / "nope.safetensors"
    return out


def test_corrupt_checkpoints_raise_invalid_checkpoint(tmp_path: Path) -> None:
    for what, path in _corrupt_files(tmp_path).items():
        with pytest.raises(InvalidCheckpoint) as info:
            read_checkpoint_header(path)
        assert str(path) in info.value.message, what
        with pytest.raises(InvalidCheckpoint):
            read_checkpoint_payload(path)


def test_split_payload_rejects_wrong_lengths() -> None:
    with pytest.raises(InvalidCheckpoint):
        split_payload(b"abcdef", [2, 3])
    with pytest.raises(InvalidCheckpoint):
        split_payload(b"abcdef", [2, 5])
    assert [bytes(v) for v in split_payload(b"abcdef", [0, 2, 4, 0])] == [b"", b"ab", b"cdef", b""]


def test_container_costs_about_a_hundred_bytes_beyond_the_header_json() -> None:
    # The fixed part (length, tensor entry, metadata key) is ~100 bytes; the caller's JSON is
    # stored as a JSON string, so each of its quotes costs one extra escape byte.
    assert header_bytes_for({}, 86_000) <= 110
    plan = {f"features.{i}.conv": "nm2:4/b4/ch" for i in range(20)}
    header = {"v": 1, "arch": {"zoo": "lenet5", "config": {}}, "plan": plan}
    text = json.dumps(header, separators=(",", ":"))
    fixed = header_bytes_for({}, 86_000) - len("{}")
    assert header_bytes_for(header, 86_000) == fixed + len(text) + text.count('"')
