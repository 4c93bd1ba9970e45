"""SLOPE fine-tuning (slimline.search.slope) and training checkpoints.

digits-cnn on the digits data (the session's briefly trained dense model). Resuming is checked
bit for bit: one thread, CPU kernels, the same seed.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from slimline.search.accounting import layer_bytes
from slimline.search.compressed import compressed_weights, original_weight
from slimline.search.layers import find_layers
from slimline.search.methods import get_method
from slimline.search.options import LayerOption, Plan
from slimline.search.settings import FinetuneSettings
from slimline.search.slope import (
    SlopeRun,
    cosine_regularizer,
    distillation_loss,
    recalibrate_norms,
)
from slimline.search.train_checkpoint import load_checkpoint, save_checkpoint
from slimline.search.training import TrainConfig, batches
from tests.search.conftest import digits_context

NM = LayerOption.from_str("nm2:4/b4/ch")
UN = LayerOption.from_str("un0.25/b3/ch")
CFG = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=3)  # 1437 samples: 23 steps an epoch


def _plan(model: nn.Module, option: LayerOption) -> Plan:
    return Plan.uniform([g.name for g in find_layers(model)], option)


def _run(model: nn.Module, data, option: LayerOption, settings: FinetuneSettings, cfg=CFG,
         teacher: nn.Module | None = None) -> SlopeRun:  # type: ignore[no-untyped-def]  # fmt: skip
    return SlopeRun(model, find_layers(model), _plan(model, option), data, cfg, settings,
                    teacher=teacher)  # fmt: skip


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the loss terms
def test_regularizer_is_zero_when_the_compressed_rows_equal_the_dense_ones() -> None:
    w = torch.randn(6, 10)
    assert float(cosine_regularizer([(w, w.clone())])) == pytest.approx(0.0, abs=1e-6)
    # and positive when a row turns: one row reversed costs 2 / 6
    w_hat = w.clone()
    w_hat[2] = -w_hat[2]
    assert float(cosine_regularizer([(w, w_hat)])) == pytest.approx(2 / 6, rel=1e-5)


def test_regularizer_gradient_turns_the_compressed_row_towards_the_dense_one() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 16)
    w_hat = (w + 0.8 * torch.randn(4, 16)).requires_grad_(True)
    before = torch.nn.functional.cosine_similarity(w, w_hat, dim=1)
    cosine_regularizer([(w, w_hat)]).backward()
    assert w_hat.grad is not None
    stepped = w_hat.detach() - 0.05 * w_hat.grad
    after = torch.nn.functional.cosine_similarity(w, stepped, dim=1)
    assert bool((after > before).all()), (before, after)


def test_distillation_against_an_identical_teacher_at_temperature_one_adds_nothing() -> None:
    logits = torch.randn(8, 10)
    assert float(distillation_loss(logits, logits.clone(), 1.0)) == pytest.approx(0.0, abs=1e-6)
    # a next-token model's logits [B, T, V] likewise
    seq = torch.randn(2, 5, 7)
    assert float(distillation_loss(seq, seq.clone(), 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, torch.randn(8, 10), 1.0)) > 0.01


def test_the_slope_loss_with_teacher_equal_to_student_is_the_task_loss(dense_digits) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    student = copy.deepcopy(model)
    run = _run(student, data, NM, FinetuneSettings(distill=0.5, temperature=1.0, cosine=0.0),
               teacher=copy.deepcopy(student))  # fmt: skip
    x, y = data.x_train[:32], data.y_train[:32]
    with torch.no_grad():
        logits = student(x)
        run.teacher = copy.deepcopy(student)  # the teacher is the compressed student itself
        mixed = run.loss(logits, y, x)
        plain = torch.nn.functional.cross_entropy(logits, y)
    # (1 - a) * task + a * 0: half the task loss, nothing from the teacher
    assert float(mixed) == pytest.approx(0.5 * float(plain), rel=1e-5)


def test_a_run_gives_its_teacher_back_as_it_came(dense_digits) -> None:  # type: ignore[no-untyped-def]
    """The teacher is read, never changed: a caller's model passed as teacher can be copied
    and trained after (a run once froze its parameters in place)."""
    model, data = dense_digits
    teacher = copy.deepcopy(model)
    teacher.train(True)
    teacher.fc1.weight.requires_grad_(False)  # a caller's own flag, kept as it is
    flags = {n: p.requires_grad for n, p in teacher.named_parameters()}
    assert any(flags.values()) and not all(flags.values())
    before = _state(teacher)
    seen: list[bool] = []
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=3, max_steps=3)
    run = _run(copy.deepcopy(model), data, NM, FinetuneSettings(distill=0.5), cfg, teacher)
    run.run(on_step=lambda step: seen.append(teacher.training))
    assert seen and not any(seen)  # eval mode while it teaches
    assert all(m.training for m in teacher.modules())
    assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags
    after = _state(teacher)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Yang et al.'s ADMM phase distils from the same teacher, and gives it back the same way
    ft = FinetuneSettings(distill=0.5, eval_samples=0)
    c = digits_context(model, data, 16, copy_model=True, finetune=ft, teacher=teacher)
    method = get_method("constrained", {"projections": 1, "calibration_batches": 2})
    method.finetune(c, method.propose(c), replace(cfg, max_steps=6))
    assert all(m.training for m in teacher.modules())
    assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags
    assert all(torch.equal(before[k], v) for k, v in _state(teacher).items())


# ----------------------------------------------------------------------------- masks
def test_masks_stay_n_of_m_after_every_step_through_the_warm_up(dense_digits) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    student = copy.deepcopy(model)
    run = _run(student, data, NM, FinetuneSettings(mask_warmup=0.5, refresh_every=2))
    seen: list[int] = []

    def check(step: int) -> None:
        for name, cw in compressed_weights(student).items():
            assert cw.mask is not None
            groups = cw.mask.reshape(cw.rows, -1, 4).sum(-1)
            assert bool((groups == 2).all()), (name, step)
            w_hat = student.get_submodule(name).weight.detach().reshape(cw.rows, -1)
            kept = cw.mask[:, : cw.row_len]
            assert bool((w_hat[~kept] == 0).all()), (name, step)
        seen.append(step)

    masks_at_start = {n: cw.mask.clone() for n, cw in compressed_weights(student).items()}
    run.run(on_step=check)
    assert seen == list(range(1, CFG.steps(len(data.x_train)) + 1))
    assert run.frozen and run.refreshes >= 5
    moved = sum(int((cw.mask != masks_at_start[n]).sum())
                for n, cw in compressed_weights(student).items())  # fmt: skip
    assert moved > 0, "the warm-up re-picked no weight at all"


def test_masks_freeze_after_the_warm_up(dense_digits) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    student = copy.deepcopy(model)
    run = _run(student, data, NM, FinetuneSettings(mask_warmup=0.25, refresh_every=1))
    frozen_at: dict[str, torch.Tensor] = {}

    def check(step: int) -> None:
        if step == run.warmup_steps:
            frozen_at.update({n: cw.mask.clone() for n, cw in compressed_weights(student).items()})
        elif step > run.warmup_steps:
            for n, cw in compressed_weights(student).items():
                assert torch.equal(cw.mask, frozen_at[n]), (n, step)

    run.run(on_step=check)
    assert frozen_at


def test_unstructured_refreshes_never_outgrow_the_planned_position_bytes(dense_digits) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    student = copy.deepcopy(model)
    run = _run(student, data, UN, FinetuneSettings(mask_warmup=0.5, refresh_every=1))
    limits = dict(run.index_limit)
    assert limits
    geoms = {g.name: g for g in find_layers(model)}
    run.run()
    for name, cw in compressed_weights(student).items():
        assert layer_bytes(UN, geoms[name], mask=cw.mask).index <= limits[name]


# ----------------------------------------------------------------------------- norms
def test_recalibration_gives_the_running_statistics_of_the_current_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm1d)

    class Data:
        task = "classify"
        x_train = torch.randn(256, 5) * 3 + 1
        y_train = torch.zeros(256, dtype=torch.long)
        x_val, y_val = x_train[:8], y_train[:8]

    assert recalibrate_norms(net, Data(), batches_n=4, batch_size=64, seed=0, device="cpu") == 1
    # the plain average over the 4 batches (every sample once) of each batch's statistics
    with torch.no_grad():
        hs = [net[0](x) for x, _ in itertools.islice(batches(Data(), 64, 0), 4)]
    assert torch.allclose(bn.running_mean, torch.stack([h.mean(0) for h in hs]).mean(0), atol=1e-5)
    want_var = torch.stack([h.var(0, unbiased=True) for h in hs]).mean(0)
    assert torch.allclose(bn.running_var, want_var, rtol=1e-4)
    assert bn.momentum == 0.1, "the layer's momentum is put back"


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_files_round_trip_nested_state(tmp_path: Path) -> None:
    state = {"a": torch.arange(5.0), "b": {3: {"x": torch.ones(2, 2)}, "s": "t"},
             "c": [1, 2.5, None, True], "d": (torch.zeros(1), 4)}  # fmt: skip
    save_checkpoint(tmp_path, state)
    save_checkpoint(tmp_path, state)  # replacing leaves one tensor file
    back = load_checkpoint(tmp_path)
    assert back is not None
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"][3]["x"], torch.ones(2, 2))
    assert back["b"]["s"] == "t" and back["c"] == [1, 2.5, None, True]
    assert len(list(tmp_path.glob("state.safetensors.*"))) == 1
    assert load_checkpoint(tmp_path / "none") is None


class _StopAfter:
    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def test_slope_resumes_from_its_checkpoint_to_the_uninterrupted_weights(
    dense_digits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    settings = FinetuneSettings(
        mask_warmup=0.3, refresh_every=3, checkpoint_steps=5, cosine=1.0, distill=0.5
    )
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=64, seed=3)  # 46 steps, warm-up 13
    torch.manual_seed(0)
    whole = copy.deepcopy(model)
    _run(whole, data, NM, settings, cfg, teacher=copy.deepcopy(model)).run()

    torch.manual_seed(0)
    first = copy.deepcopy(model)
    events: list[dict] = []
    _run(first, data, NM, settings, cfg, teacher=copy.deepcopy(model)).run(
        checkpoint_dir=tmp_path, should_stop=_StopAfter(12), progress=events.append
    )  # stops after step 12; the last checkpoint is step 10, before the masks froze
    saved = load_checkpoint(tmp_path)
    assert saved is not None and saved["step"] == 10 and saved["extra"]["frozen"] is False
    assert any(e.get("checkpoint") and "metric" in e for e in events)

    torch.manual_seed(123)  # a new process: whatever the RNG was, the checkpoint restores it
    second = copy.deepcopy(model)
    events.clear()
    _run(second, data, NM, settings, cfg, teacher=copy.deepcopy(model)).run(
        checkpoint_dir=tmp_path, progress=events.append
    )
    assert events[0] == {"event": "resumed", "step": 10, "total": 46}
    want, got = _state(whole), _state(second)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_constrained_resumes_inside_admm_and_inside_slope(dense_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=64, seed=1)  # 46 steps: 23 ADMM, 23 SLOPE
    ft = FinetuneSettings(checkpoint_steps=4, eval_samples=0, distill=0.5)
    settings = {"projections": 2, "calibration_batches": 2}

    def ctx(stop=None):  # type: ignore[no-untyped-def]
        c = digits_context(model, data, 16, copy_model=True, finetune=ft,
                           teacher=copy.deepcopy(model), checkpoint_dir=tmp_path,
                           should_stop=stop)  # fmt: skip
        return c

    def fine_tune(c, directory):  # type: ignore[no-untyped-def]
        method = get_method("constrained", settings)
        plan = method.propose(c)
        c.checkpoint_dir = directory
        torch.manual_seed(0)
        return method.finetune(c, plan, cfg), c.model

    plan_a, whole = fine_tune(ctx(), None)
    fine_tune(ctx(_StopAfter(9)), tmp_path)  # stops inside ADMM (checkpoint at step 8)
    assert load_checkpoint(tmp_path / "admm")["step"] == 8
    assert load_checkpoint(tmp_path / "admm-done") is None
    # from 8: ADMM's 15 steps and 2 polls between the phases, then SLOPE stops after 6 steps
    fine_tune(ctx(_StopAfter(23)), tmp_path)
    assert load_checkpoint(tmp_path / "admm-done") is not None
    assert load_checkpoint(tmp_path / "slope")["step"] == 4
    plan_b, resumed = fine_tune(ctx(), tmp_path)
    assert plan_a == plan_b
    want, got = _state(whole), _state(resumed)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    for name, cw in compressed_weights(resumed).items():
        assert original_weight(resumed, name).shape == cw.shape
