"""The model zoo: named architectures a job can refer to by name + config + safetensors weights.

A zoo model never travels as code or pickle: the worker rebuilds the module from the registry
here and loads plain tensors into it with ``strict=True``, so a weights file can only ever be
numbers of exactly the expected names and shapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from slimline.errors import InvalidModel
from slimline.models._config import ModelConfig
from slimline.models.bytegpt import ByteGPT, ByteGPTConfig
from slimline.models.digits_cnn import DigitsCNN, DigitsCNNConfig
from slimline.models.lenet import LeNet5, LeNet5Config, LeNet300, LeNet300Config
from slimline.models.mobilenet import MobileNetConfig, MobileNetSmall
from slimline.models.resnet import CifarResNet, ResNetConfig
from slimline.models.vit import ViT, ViTConfig


@dataclass(frozen=True)
class ZooEntry:
    name: str  # registry key, e.g. "resnet20"
    config_cls: type[ModelConfig]  # frozen dataclass with to_dict/from_dict
    build: Callable[[Any], nn.Module]  # config -> freshly initialised module
    task: str  # "classify" (logits [B, classes]) or "language" (logits [B, T, 256])
    example_input: Callable[..., torch.Tensor]  # (config, batch=2) -> input of the right dtype
    default_data: str  # named dataset the model is usually trained on


def _images(channels: int, side: Callable[[Any], int]) -> Callable[..., torch.Tensor]:
    def example(config: Any, batch: int = 2) -> torch.Tensor:
        s = side(config)
        return torch.randn(batch, channels, s, s)  # [B, C, H, W] float32

    return example


def _bytes(config: ByteGPTConfig, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, config.context), dtype=torch.int64)  # [B, T]


_ENTRIES = (
    ZooEntry(
        "lenet5", LeNet5Config, LeNet5, "classify", _images(1, lambda c: c.image_size), "mnist"
    ),
    ZooEntry(
        "lenet300",
        LeNet300Config,
        LeNet300,
        "classify",
        _images(1, lambda c: c.image_size),
        "mnist",
    ),
    ZooEntry(
        "digits-cnn", DigitsCNNConfig, DigitsCNN, "classify", _images(1, lambda c: 8), "digits"
    ),
    ZooEntry(
        "resnet20", ResNetConfig, CifarResNet, "classify", _images(3, lambda c: 32), "cifar10"
    ),
    ZooEntry(
        "mobilenet-small",
        MobileNetConfig,
        MobileNetSmall,
        "classify",
        _images(3, lambda c: 32),
        "cifar10",
    ),
    ZooEntry("vit-tiny", ViTConfig, ViT, "classify", _images(3, lambda c: c.image_size), "cifar10"),
    ZooEntry("bytegpt", ByteGPTConfig, ByteGPT, "language", _bytes, "pycode"),
)
_REGISTRY = {e.name: e for e in _ENTRIES}


def zoo_names() -> list[str]:
    """Names accepted by ``get_entry``/``build_model``, in registry order."""
    return list(_REGISTRY)


def get_entry(name: str) -> ZooEntry:
    """The registry entry for ``name``; InvalidModel listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidModel(
            f"unknown zoo model {name!r}; known models: {zoo_names()}", field="name", value=name
        ) from None


def make_config(name: str, config: Mapping[str, Any] | None = None) -> ModelConfig:
    """Validated config for zoo model ``name``; ``None`` or ``{}`` gives the defaults."""
    return get_entry(name).config_cls.from_dict(config or {})


def build_model(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised zoo model. Deterministic given ``torch.manual_seed``."""
    entry = get_entry(name)
    return entry.build(entry.config_cls.from_dict(config or {}))


def save_zoo_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the model's state dict (parameters and buffers) as a safetensors file."""
    # contiguous() + clone: safetensors refuses views and tensors that share storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, os.fspath(path))


def load_zoo_model(
    name: str, config: Mapping[str, Any] | None, weights_path: str | os.PathLike[str]
) -> nn.Module:
    """Rebuild zoo model ``name`` and load safetensors weights into it, strictly."""
    model = build_model(name, config)
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise InvalidModel(f"weights file {path!r} does not exist", field="weights", value=path)
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InvalidModel(
            f"weights file {path!r} is not a readable safetensors file ({e}); "
            f"save weights with save_zoo_weights or safetensors.torch.save_file",
            field="weights",
            value=path,
        ) from None
    _check_state_dict(name, model.state_dict(), tensors)
    model.load_state_dict(tensors, strict=True)
    return model


def _check_state_dict(
    name: str, expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
) -> None:
    # load_state_dict(strict=True) would raise too, but with a long RuntimeError listing every
    # key; we name the first problem so the message says exactly what to fix.
    missing = [k for k in expected if k not in got]
    if missing:
        raise InvalidModel(
            f"weights for {name} are missing tensor(s) {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)",
            field="weights",
            value=missing[0],
        )
    unexpected = [k for k in got if k not in expected]
    if unexpected:
        raise InvalidModel(
            f"weights for {name} have unexpected tensor(s) {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}; does the config match the weights?",
            field="weights",
            value=unexpected[0],
        )
    for k, ref in expected.items():
        t = got[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise InvalidModel(
                f"weights for {name}: tensor {k!r} has shape {list(t.shape)}, "
                f"the model expects {list(ref.shape)}; does the config match the weights?",
                field="weights",
                value=k,
            )
        # Floating dtypes convert on load (bf16/fp16 weights into an fp32 model); anything else
        # (an int buffer stored as float, float weights stored as int) is a different tensor.
        if t.dtype != ref.dtype and not (t.dtype.is_floating_point and ref.dtype.is_floating_point):
            raise InvalidModel(
                f"weights for {name}: tensor {k!r} has dtype {t.dtype}, "
                f"the model expects {ref.dtype}",
                field="weights",
                value=k,
            )
