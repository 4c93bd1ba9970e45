"""How long a job fine-tunes: the model's recipe up to its reference ratio, stretched past it."""

from __future__ import annotations

import math

import pytest

from slimline.budget import Budget
from slimline.pipeline.sources import (
    FINETUNE_MAX_STRETCH,
    FINETUNE_RECIPES,
    finetune_stretch,
    resolve_model,
)
from slimline.pipeline.stages import JobSpec, JobState, finetune_config


def test_the_stretch_is_one_up_to_the_reference_and_four_a_doubling_past_it() -> None:
    assert finetune_stretch(256.0, 128.0, math.log2(6.0)) == pytest.approx(6.0)
    assert finetune_stretch(8.0, 128.0) == 1.0
    assert finetune_stretch(128.0, 128.0) == 1.0
    assert finetune_stretch(256.0, 128.0) == pytest.approx(4.0)
    assert finetune_stretch(181.0, 128.0) == pytest.approx((181 / 128) ** 2)
    assert finetune_stretch(4096.0, 128.0) == FINETUNE_MAX_STRETCH
    ratios = [100.0, 130.0, 200.0, 256.0, 300.0, 400.0, 1000.0]
    stretches = [finetune_stretch(r, 128.0) for r in ratios]
    assert stretches == sorted(stretches)  # more compression never fine-tunes less


def _state(model: str, ratio: float, **spec: object) -> JobState:
    state = JobState(spec=JobSpec(model=model, data="mnist", budget=Budget(ratio=ratio), **spec))  # type: ignore[arg-type]
    state.src = resolve_model(model)
    state.dense_bytes = 1_000_000
    state.budget_bytes = Budget(ratio=ratio).resolve(state.dense_bytes)
    return state


def test_a_budget_past_the_models_reference_fine_tunes_longer() -> None:
    recipe = FINETUNE_RECIPES["lenet5"]
    cfg, stretch = finetune_config(_state("lenet5", 64))
    assert (cfg.epochs, stretch) == (recipe.epochs, 1.0)
    cfg, stretch = finetune_config(_state("lenet5", 256))
    # lenet5 takes six times a doubling (FINETUNE_STRETCH_POWERS); the budget rounds to bytes
    assert stretch == pytest.approx(6.0, rel=1e-3)
    assert cfg.epochs == pytest.approx(6 * recipe.epochs, rel=1e-3)
    assert (cfg.lr, cfg.batch_size) == (recipe.lr, recipe.batch_size)  # only the length changes
    cfg, stretch = finetune_config(_state("lenet300", 128))  # the others: four a doubling
    assert stretch == pytest.approx(4.0, rel=1e-3)
    assert cfg.epochs == pytest.approx(4 * FINETUNE_RECIPES["lenet300"].epochs, rel=1e-3)


def test_the_users_epochs_replace_the_recipe_and_max_steps_caps_it() -> None:
    cfg, stretch = finetune_config(_state("lenet5", 256, epochs=1.5))
    assert (cfg.epochs, cfg.max_steps, stretch) == (1.5, None, 1.0)
    cfg, stretch = finetune_config(_state("lenet5", 256, max_steps=300))
    assert cfg.max_steps == 300 and cfg.steps(60_000) == 300


def test_a_step_capped_recipe_stretches_its_cap_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    capped = replace(FINETUNE_RECIPES["bytegpt"], max_steps=500)
    monkeypatch.setitem(FINETUNE_RECIPES, "bytegpt", capped)
    cfg, stretch = finetune_config(_state("bytegpt", 32))
    assert stretch == pytest.approx(4.0, rel=1e-3)
    assert cfg.max_steps == round(500 * stretch)
