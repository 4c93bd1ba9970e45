"""The zoo: every architecture builds, runs, exports with a dynamic batch, round-trips its
config and weights; bad configs and bad weight files fail with messages that say what to fix."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from slimline.errors import InvalidModel
from slimline.models.zoo import (
    build_model,
    get_entry,
    load_zoo_model,
    make_config,
    save_zoo_weights,
    zoo_names,
)

ALL = zoo_names()


def test_registry_has_the_documented_models() -> None:
    assert set(ALL) == {
        "lenet5",
        "lenet300",
        "digits-cnn",
        "resnet20",
        "mobilenet-small",
        "vit-tiny",
        "bytegpt",
    }
    assert {get_entry(n).default_data for n in ALL} == {"mnist", "digits", "cifar10", "pycode"}


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(InvalidModel) as e:
        get_entry("resnet18")
    assert e.value.field == "name" and "'resnet18'" in e.value.message
    assert "resnet20" in e.value.message and "bytegpt" in e.value.message


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_dynamic_batch_export(name: str) -> None:
    entry = get_entry(name)
    config = entry.config_cls()
    torch.manual_seed(0)
    model = build_model(name).eval()
    x2, x5 = entry.example_input(config, batch=2), entry.example_input(config, batch=5)
    with torch.no_grad():
        y2 = model(x2)
    if entry.task == "classify":
        assert x2.dtype == torch.float32
        assert y2.shape == (2, 10)
    else:
        assert x2.dtype == torch.int64
        assert y2.shape == (2, x2.shape[1], 256)
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},)).module()
    with torch.no_grad():
        for x in (x2, x5):
            torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_build_is_deterministic_given_seed(name: str) -> None:
    torch.manual_seed(3)
    a = build_model(name).state_dict()
    torch.manual_seed(3)
    b = build_model(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ALL)
def test_config_round_trips_through_json(name: str) -> None:
    config = make_config(name)
    again = get_entry(name).config_cls.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert make_config(name, None) == make_config(name, {}) == config


def test_unknown_config_key_names_the_key_and_the_accepted_keys() -> None:
    with pytest.raises(InvalidModel) as e:
        build_model("lenet5", {"hiden": 300})
    assert e.value.field == "hiden"
    assert "'hiden'" in e.value.message and "hidden" in e.value.message


@pytest.mark.parametrize(
    ("name", "config", "field", "shown"),
    [
        ("resnet20", {"width": -16}, "width", "-16"),
        ("resnet20", {"depth": 21}, "depth", "21"),
        ("resnet20", {"shortcut": "B"}, "shortcut", "'B'"),
        ("lenet300", {"hidden1": 0}, "hidden1", "0"),
        ("lenet5", {"image_size": 12}, "image_size", "12"),
        ("digits-cnn", {"channels1": True}, "channels1", "True"),
        ("mobilenet-small", {"stage_blocks": [1, 2]}, "stage_blocks", "[1, 2]"),
        ("mobilenet-small", {"dropout": 1.5}, "dropout", "1.5"),
        ("vit-tiny", {"heads": 5}, "heads", "5"),
        ("vit-tiny", {"patch_size": 5}, "patch_size", "5"),
        ("bytegpt", {"width": "128"}, "width", "'128'"),
    ],
)
def test_bad_config_names_field_and_value(
    name: str, config: dict[str, object], field: str, shown: str
) -> None:
    with pytest.raises(InvalidModel) as e:
        build_model(name, config)
    assert e.value.field == field
    assert field in e.value.message and shown in e.value.message


def test_non_default_configs_build() -> None:
    assert build_model("resnet20", {"depth": 56}).layer1[8] is not None
    conv = build_model("resnet20", {"shortcut": "conv"})
    assert conv.layer2[0].downsample[0].weight.shape == (32, 16, 1, 1)
    y = conv(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)


def test_lenet5_has_the_caffe_layer_shapes() -> None:
    shapes = {k: tuple(v.shape) for k, v in build_model("lenet5").state_dict().items()}
    assert shapes == {
        "conv1.weight": (20, 1, 5, 5),
        "conv1.bias": (20,),
        "conv2.weight": (50, 20, 5, 5),
        "conv2.bias": (50,),
        "fc1.weight": (500, 800),
        "fc1.bias": (500,),
        "fc2.weight": (10, 500),
        "fc2.bias": (10,),
    }
    assert sum(v.numel() for k, v in build_model("lenet5").named_parameters()) == 431_080


def test_lenet300_and_digits_sizes() -> None:
    lenet300 = build_model("lenet300")
    assert [tuple(m.weight.shape) for m in (lenet300.fc1, lenet300.fc2, lenet300.fc3)] == [
        (300, 784),
        (100, 300),
        (10, 100),
    ]
    digits = sum(p.numel() for p in build_model("digits-cnn").parameters())
    assert 10_000 < digits < 100_000


def test_bytegpt_shapes() -> None:
    model = build_model("bytegpt")
    sd = model.state_dict()
    assert sd["tok_emb.weight"].shape == (256, 128)
    assert sd["pos_emb.weight"].shape == (128, 128)
    assert sd["head.weight"].shape == (256, 128)
    assert sd["head.weight"].data_ptr() != sd["tok_emb.weight"].data_ptr()  # untied
    assert len(model.blocks) == 4
    for proj in ("q", "k", "v", "out"):
        assert sd[f"blocks.3.attn.{proj}.weight"].shape == (128, 128)
    assert sd["blocks.0.fc1.weight"].shape == (512, 128)
    assert not any(k.startswith("blocks.4.") for k in sd)


def test_bytegpt_is_causal_and_takes_shorter_inputs() -> None:
    torch.manual_seed(0)
    model = build_model("bytegpt").eval()
    idx = torch.randint(0, 256, (2, 64))
    changed = idx.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert a.shape == (2, 64, 256)
    torch.testing.assert_close(a[:, :40], b[:, :40], atol=1e-6, rtol=0)
    assert (a[:, 40:] - b[:, 40:]).abs().max() > 1e-3
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 129, dtype=torch.int64))


def test_weights_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # nothing changes in eval; buffers saved too
    path = tmp_path / "w.safetensors"
    save_zoo_weights(model, path)
    torch.manual_seed(1)
    loaded = load_zoo_model("resnet20", None, path).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_bf16_weights_load_into_fp32_model(tmp_path) -> None:
    model = build_model("lenet300")
    half = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_file(half, str(tmp_path / "w.safetensors"))
    loaded = load_zoo_model("lenet300", None, tmp_path / "w.safetensors")
    assert loaded.fc1.weight.dtype == torch.float32


def test_missing_weights_file(tmp_path) -> None:
    with pytest.raises(InvalidModel) as e:
        load_zoo_model("lenet5", None, tmp_path / "nope.safetensors")
    assert "does not exist" in e.value.message and e.value.field == "weights"


def test_pickle_is_not_a_weights_file(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(pickle.dumps(build_model("lenet5").state_dict()))
    with pytest.raises(InvalidModel) as e:
        load_zoo_model("lenet5", None, path)
    assert "not a readable safetensors file" in e.value.message


def test_truncated_weights_file(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_zoo_weights(build_model("lenet300"), path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(InvalidModel) as e:
        load_zoo_model("lenet300", None, path)
    assert "not a readable safetensors file" in e.value.message


def test_wrong_shape_names_the_tensor(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_zoo_weights(build_model("lenet5", {"hidden": 400}), path)
    with pytest.raises(InvalidModel) as e:
        load_zoo_model("lenet5", None, path)
    assert "'fc1.weight'" in e.value.message and "[400, 800]" in e.value.message
    assert "[500, 800]" in e.value.message
    load_zoo_model("lenet5", {"hidden": 400}, path)  # the matching config loads


def test_missing_and_unexpected_tensors_are_named(tmp_path) -> None:
    sd = build_model("lenet300").state_dict()
    missing = {k: v for k, v in sd.items() if k != "fc2.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(InvalidModel) as e:
        load_zoo_model("lenet300", None, tmp_path / "missing.safetensors")
    assert "missing" in e.value.message and "fc2.bias" in e.value.message
    extra = {**sd, "fc9.weight": torch.zeros(3)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(InvalidModel) as e:
        load_zoo_model("lenet300", None, tmp_path / "extra.safetensors")
    assert "unexpected" in e.value.message and "fc9.weight" in e.value.message
