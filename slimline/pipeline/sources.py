"""Where a job's model comes from: a zoo name (+ config, + weights or a cached dense training
run) or a user's ``torch.export`` program; and the dense recipes that train zoo models.

A zoo model given without weights is trained once per (model, config, data, seed, recipe) and
cached by a hash of those, so every method and every budget starts from the same dense weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.errors import InvalidData, InvalidModel
from slimline.search.training import Progress, TrainConfig, TrainData, train

# Dense training recipes per zoo model (CPU-sized; BENCHMARKS.md trains each dense model once).
DENSE_RECIPES: dict[str, TrainConfig] = {
    "lenet5": TrainConfig(epochs=6, lr=2e-3, batch_size=128),
    "lenet300": TrainConfig(epochs=8, lr=2e-3, batch_size=128),
    "digits-cnn": TrainConfig(epochs=40, lr=3e-3, batch_size=64),
    "resnet20": TrainConfig(epochs=30, lr=2e-3, batch_size=128),
    "mobilenet-small": TrainConfig(epochs=30, lr=2e-3, batch_size=128),
    "vit-tiny": TrainConfig(epochs=30, lr=1e-3, batch_size=128),
    "bytegpt": TrainConfig(epochs=1.0, lr=3e-3, batch_size=32, max_steps=800),
}
# Fine-tuning (quantization-aware) defaults: a fraction of the dense recipe at a lower rate.
# Each recipe is enough up to its model's FINETUNE_REFERENCE_RATIO; past it, see finetune_stretch.
FINETUNE_RECIPES: dict[str, TrainConfig] = {
    # measured at 128x: 99.36% of the dense accuracy kept after 2 epochs, 99.66% after 4
    "lenet5": TrainConfig(epochs=4, lr=5e-4, batch_size=128),
    # an MLP fine-tunes in seconds an epoch, and at 64x-128x it keeps gaining to ~10 epochs
    # (measured: 64x keeps 98.6% of its accuracy after 2 epochs, 99.6% after 10)
    "lenet300": TrainConfig(epochs=10, lr=5e-4, batch_size=128),
    "digits-cnn": TrainConfig(epochs=15, lr=1e-3, batch_size=64),
    # one epoch of pycode is 719 steps; measured at 16x (slimline's defaults): 97.5% of the dense
    # next-byte accuracy kept after 200 steps, 102.0% after one epoch
    # (bench/results/2026-11-23-long-bytegpt.json)
    "bytegpt": TrainConfig(epochs=1.0, lr=1e-3, batch_size=32),
}
DEFAULT_FINETUNE = TrainConfig(epochs=2, lr=5e-4, batch_size=128)

# The compression ratio up to which each recipe above wins back what compression takes
# (measured: lenet5 99.57% kept at 128x, lenet300 99.84% at 64x, bytegpt 102% at 16x).
FINETUNE_REFERENCE_RATIO: dict[str, float] = {"lenet5": 128.0, "lenet300": 64.0, "bytegpt": 16.0}
DEFAULT_REFERENCE_RATIO = 32.0  # models without a measured recipe (uploaded programs, the rest)
# Past the reference ratio, each doubling of the ratio takes four times the fine-tuning: measured
# on all three models one doubling past the reference (bench/results/2026-11-23-gpu*), the
# recipe's length left 1-16 points unrecovered and four to eight times it recovered them
# (lenet5 256x: 4 epochs 97.71%, 16 epochs 98.90%, 32 epochs 99.17%; lenet300 128x: 10 epochs
# 98.96%, 30 epochs 99.48%; bytegpt 32x: 1 epoch 83.28%, 5 epochs 96.96%). Capped, so that a
# budget far past the reference does not make a job run for days.
FINETUNE_STRETCH_POWER = 2.0
# lenet5 takes six times a doubling (log2 6): at 256x on the CPU, 16 epochs kept 98.97% of the
# dense accuracy, 24 epochs 99.10-99.17% (bench/results/2026-11-23g-lenet5-256x.md); lenet300
# (99.23% at 128x) and bytegpt (95.97% at 32x) reach their marks with four.
FINETUNE_STRETCH_POWERS: dict[str, float] = {"lenet5": math.log2(6.0)}
FINETUNE_MAX_STRETCH = 8.0


def finetune_stretch(
    ratio: float, reference: float, power: float = FINETUNE_STRETCH_POWER
) -> float:
    """How many times the recipe's epochs a job compressing ``ratio`` times fine-tunes:
    1 up to ``reference``, then (ratio / reference) ** ``power`` (the model's
    FINETUNE_STRETCH_POWERS entry, else FINETUNE_STRETCH_POWER), at most FINETUNE_MAX_STRETCH."""
    if ratio <= reference:
        return 1.0
    return min(FINETUNE_MAX_STRETCH, (ratio / reference) ** power)


def default_cache_dir() -> Path:
    env = os.environ.get("SLIMLINE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "slimline"


@dataclass(frozen=True)
class ModelSource:
    """A zoo model (``zoo`` name + ``config``, optional ``weights``) or a ``.pt2`` program."""

    zoo: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    program: Path | None = None

    @property
    def label(self) -> str:
        return self.zoo if self.zoo else str(self.program)

    def arch(self) -> dict[str, Any]:
        """What the checkpoint header records to rebuild the architecture."""
        if self.zoo:
            from slimline.models.zoo import make_config

            return {"zoo": self.zoo, "config": make_config(self.zoo, self.config).to_dict()}
        from slimline.loader import file_sha256

        assert self.program is not None
        return {"pt2": file_sha256(self.program)}


def resolve_model(
    spec: str,
    *,
    config: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> ModelSource:
    """A zoo name or a path to a ``.pt2``; the error lists both kinds of accepted value."""
    from slimline.models.zoo import zoo_names

    if spec in zoo_names():
        if weights is not None and not Path(weights).is_file():
            raise InvalidModel(
                f"weights file {weights} does not exist", field="weights", value=str(weights)
            )
        return ModelSource(
            zoo=spec, config=dict(config or {}), weights=Path(weights) if weights else None
        )
    path = Path(spec)
    if path.suffix == ".pt2" or path.is_file():
        if not path.is_file():
            raise InvalidModel(f"model file {spec} does not exist", field="model", value=spec)
        if weights is not None or config:
            raise InvalidModel(
                "--weights and --config apply to zoo models, not to a .pt2 "
                "(its weights are inside the program)",
                field="weights",
            )
        return ModelSource(program=path)
    raise InvalidModel(
        f"model {spec!r} is neither a zoo model ({', '.join(zoo_names())}) nor a .pt2 file",
        field="model",
        value=spec,
    )


def build_skeleton(src: ModelSource) -> nn.Module:
    """The model with its architecture but not (yet) its trained weights for zoo models."""
    if src.zoo:
        from slimline.models.zoo import build_model

        return build_model(src.zoo, src.config)
    from slimline.models.program import load_program

    assert src.program is not None
    return load_program(src.program)


def task_of(src: ModelSource, model: nn.Module, data: TrainData) -> str:
    if src.zoo:
        from slimline.models.zoo import get_entry

        task = get_entry(src.zoo).task
        if task != data.task:
            raise InvalidData(
                f"model {src.zoo} is a {task} model but the data is for {data.task}",
                field="data",
                value=data.task,
            )
        return task
    return data.task


def check_data_fits(model: nn.Module, data: TrainData, label: str) -> None:
    """Run one validation example through the model: a mismatch fails here, clearly."""
    x = data.x_val[:2]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the user's data or model is wrong; say which and how
        raise InvalidData(
            f"model {label} cannot run on the data's inputs of shape {tuple(x.shape[1:])} "
            f"and dtype {x.dtype}: {str(exc).splitlines()[0][:200]}",
            field="data",
            value=list(x.shape[1:]),
        ) from None
    classes = int(max(int(data.y_train.max()), int(data.y_val.max()))) + 1
    if out.shape[-1] < classes:
        raise InvalidData(
            f"model {label} has {out.shape[-1]} outputs but the data has labels up to "
            f"{classes - 1}",
            field="data",
            value=classes,
        )


def dense_cache_key(src: ModelSource, data_spec: str, seed: int, recipe: TrainConfig) -> str:
    blob = json.dumps(
        {"arch": src.arch(), "data": data_spec, "seed": seed, "recipe": asdict(recipe), "v": 1},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dense_recipe(src: ModelSource, seed: int) -> TrainConfig:
    """How a zoo model without weights is trained dense (``DENSE_RECIPES``, with ``seed``)."""
    assert src.zoo is not None
    recipe = DENSE_RECIPES.get(src.zoo, TrainConfig(epochs=10))
    return TrainConfig(**{**asdict(recipe), "seed": seed})


def dense_cache_path(src: ModelSource, data_spec: str, seed: int, cache_dir: Path) -> Path:
    """Where the dense cache keeps that model: ``dense-<zoo name>-<recipe hash>.safetensors``."""
    key = dense_cache_key(src, data_spec, seed, dense_recipe(src, seed))
    return Path(cache_dir) / f"dense-{src.zoo}-{key}.safetensors"


def load_dense_weights(
    src: ModelSource,
    model: nn.Module,
    data: TrainData,
    *,
    data_spec: str,
    seed: int,
    cache_dir: Path,
    device: torch.device,
    progress: Progress | None = None,
) -> str:
    """Give ``model`` its dense weights; returns where they came from (for the report)."""
    from safetensors.torch import load_file, save_file

    if src.program is not None:
        return "program"
    assert src.zoo is not None
    if src.weights is not None:
        from slimline.models.zoo import load_zoo_model

        model.load_state_dict(load_zoo_model(src.zoo, src.config, src.weights).state_dict())
        return str(src.weights)
    recipe = dense_recipe(src, seed)
    path = dense_cache_path(src, data_spec, seed, cache_dir)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return f"cache:{path}"
    torch.manual_seed(seed)
    train(model, data, recipe, device=device, progress=progress)
    model.cpu()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return f"trained:{path}"


def dense_metrics(
    weights_source: str, model: nn.Module, data: TrainData, device: torch.device
) -> dict[str, float]:
    """The dense model's validation metrics, kept beside cached dense weights.

    Weights from the dense cache (``cache:`` / ``trained:`` sources) are a pure function of
    the cache key, and so is their evaluation: it is stored next to them as
    ``<weights>.metrics.json`` (atomically) and read back by later jobs, which saves one full
    validation pass per job (about 25-50 s for bytegpt on a CPU). Anything else is evaluated.
    """
    from slimline.search.training import evaluate

    kind, _, path = weights_source.partition(":")
    if kind not in ("cache", "trained") or not path:
        return evaluate(model, data, device=device)
    sidecar = Path(path).with_suffix(".metrics.json")
    try:
        stored = json.loads(sidecar.read_text())
        if isinstance(stored, dict) and isinstance(stored.get("metric"), float):
            return {str(k): float(v) for k, v in stored.items()}
    except (OSError, ValueError, TypeError):
        pass  # absent or unreadable: evaluate and write it again
    metrics = evaluate(model, data, device=device)
    tmp = sidecar.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(metrics))
        os.replace(tmp, sidecar)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache still gives the right metrics
    return metrics
