"""Joint removal of a branch's layers: which layers form branches, the measured joint damage,
and the knapsack taking it where the per-layer sum would not (real MNIST, a residual MLP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimline.models.bytegpt import ByteGPT, ByteGPTConfig
from slimline.models.datasets import load_dataset
from slimline.search.allocation import allocate
from slimline.search.branches import removal_branches
from slimline.search.estimators import LossDeltaEstimator
from slimline.search.layers import find_layers
from slimline.search.scoring import Scores, score_model
from slimline.search.training import TrainConfig, train
from slimline.service.resolve import _parse
from tests.search.test_scoring import Split

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class ResidualMLP(nn.Module):
    """stem -> x + fc2(relu(fc1(x))) -> head: removing fc1 alone already silences the branch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(784, 32)
        self.block = nn.Module()
        self.block.fc1 = nn.Linear(32, 64)
        self.block.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x.flatten(1)))
        x = x + self.block.fc2(torch.relu(self.block.fc1(x)))
        return self.head(x)


@pytest.fixture(scope="module")
def mnist() -> Split:
    data = load_dataset("mnist", DATA_ROOT)
    return Split("classify", data.x_train, data.y_train, data.x_val, data.y_val)


@pytest.fixture(scope="module")
def trained(mnist) -> ResidualMLP:
    model = ResidualMLP()
    train(model, mnist, TrainConfig(epochs=1, max_steps=200, lr=3e-3, batch_size=64))
    return model


def test_branches_are_a_blocks_direct_layers_or_a_small_subtree() -> None:
    names = [g.name for g in find_layers(ByteGPT(ByteGPTConfig(layers=2, width=16, heads=2)))]
    assert removal_branches(names) == [
        ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.out"],
        ["blocks.0.fc1", "blocks.0.fc2"],
        ["blocks.1.attn.q", "blocks.1.attn.k", "blocks.1.attn.v", "blocks.1.attn.out"],
        ["blocks.1.fc1", "blocks.1.fc2"],
    ]  # embeddings and head belong to the root: never a branch
    # a ResNet block: the residual convs, not the shortcut's downsample
    resnet = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.downsample.0", "fc"]
    assert removal_branches(resnet) == [["layer1.0.conv1", "layer1.0.conv2"]]
    # MobileNet blocks keep their convs in sub-sequences: the block's subtree
    mobile = ["features.1.conv.0.0", "features.1.conv.1", "features.2.conv.0.0"]
    assert removal_branches(mobile) == [["features.1.conv.0.0", "features.1.conv.1"]]
    assert removal_branches(["conv1", "conv2", "fc1", "fc2"]) == []  # flat: nothing
    assert removal_branches([f"m.l{i}" for i in range(5)]) == []  # too many for one item
    assert removal_branches([f"m.l{i}" for i in range(5)], max_layers=5) == [
        [f"m.l{i}" for i in range(5)]
    ]


def test_joint_removal_is_measured_and_taken_where_the_sum_overstates_it(mnist, trained) -> None:
    model, geoms = trained, find_layers(trained)
    branch = ["block.fc1", "block.fc2"]
    scores = score_model(model, geoms, mnist, batches=4, branches=[branch])
    (jt,) = scores.joints
    assert (jt.layers, jt.options) == (branch, ["removed", "removed"])

    # the joint damage is twice the loss increase of both layers zeroed, measured directly on
    # the examples the Fisher estimator measures on (128 of the training set, seed 0)
    ref = LossDeltaEstimator(examples=128)
    ref.prepare(model, geoms, mnist, batches=4, batch_size=64)
    by_name = {g.name: g for g in geoms}
    zeros = [(by_name[n], torch.zeros_like(model.get_submodule(n).weight)) for n in branch]
    assert jt.damage == pytest.approx(2 * ref.joint_damage(zeros), rel=1e-6)
    # and well below the sum of the two single removals (each silences the branch alone)
    single = [2 * ref.joint_damage([z]) for z in zeros]
    assert jt.damage > 0 and jt.damage < 0.75 * sum(single)

    # a tight budget (1% of the way from the smallest allocation to the least-damage one):
    # the knapsack removes the branch with the joint, at less damage than the per-layer sum
    # lets it reach (it keeps one layer of the branch, or pays both removals)
    back = Scores.from_dict(json.loads(json.dumps(scores.to_dict())))
    assert back.joints == scores.joints
    index = {ls.name: i for i, ls in enumerate(back.layers)}
    removed = {n: back.layers[index[n]].option_strs().index("removed") for n in branch}
    budget = int(back.min_bytes() + 0.01 * (back.max_bytes() - back.min_bytes()))
    a = back.allocation(budget)
    assert a.joints == (0,)
    assert [a.choice[index[n]] for n in branch] == [removed[n] for n in branch]
    others = sum(
        float(ls.damage[a.choice[i]]) for i, ls in enumerate(back.layers) if ls.name not in branch
    )
    assert a.damage == pytest.approx(others + jt.damage, rel=1e-12)
    without = Scores(back.layers, back.estimator).allocation(budget)
    assert without.joints == () and without.damage > a.damage
    # the service reads stored scores without torch: the same allocation
    _, _, knapsack = _parse(scores.to_dict())
    again = allocate(budget=budget, **knapsack)
    assert (again.choice, again.bytes, again.damage, again.joints) == (
        a.choice,
        a.bytes,
        a.damage,
        a.joints,
    )


def test_estimators_that_do_not_run_the_model_measure_no_joints(mnist, trained) -> None:
    geoms = find_layers(trained)
    scores = score_model(
        trained, geoms, mnist, batches=2, estimator="hessian", branches=[["block.fc1", "block.fc2"]]
    )
    assert scores.joints == []


@pytest.mark.parametrize("joint_removal", [True, False])
def test_the_default_method_measures_joint_removals_unless_told_not_to(
    mnist, trained, joint_removal: bool
) -> None:
    from slimline.search.methods import SearchContext, get_method

    geoms = find_layers(trained)
    dense = sum(4 * g.numel for g in geoms)
    ctx = SearchContext(trained, geoms, mnist, payload_budget=dense // 64, other_bytes=0)
    method = get_method("constrained", {"joint_removal": joint_removal, "calibration_batches": 2})
    method.propose(ctx)
    joints = method.last_scores.joints
    assert [jt.layers for jt in joints] == ([["block.fc1", "block.fc2"]] if joint_removal else [])
