"""The knapsack solvers: exact is the true optimum (brute force), greedy is safe and bounded.

Brute force enumerates every choice of small instances (6 layers x 5 options = 15,625 choices,
vectorized); larger instances are checked against the LP bound and HiGHS.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from slimline.errors import InfeasibleBudget, InvalidOption
from slimline.search.allocation import (
    Joint,
    allocate,
    byte_range,
    lp_bound,
    pareto_front,
)


def random_instance(
    rng: np.random.Generator, layers: int = 6, options: int = 5
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Unstructured instances: any bytes/damage pairs, ties and dominated options included."""
    bytes_, damage = [], []
    for _ in range(layers):
        b = rng.integers(1, 60, options)
        d = rng.random(options) * rng.choice([0.01, 1.0, 100.0])
        if rng.random() < 0.3:
            d = np.round(d, 1)  # ties
        if rng.random() < 0.1:
            d = d - d.mean()  # negative damages (a measured loss can drop)
        bytes_.append(b)
        damage.append(d)
    return bytes_, damage


def realistic_instance(
    rng: np.random.Generator, layers: int, options: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Damage decreasing, roughly convex in bytes, with noise (bench/allocate.py's shape)."""
    bytes_, damage = [], []
    for _ in range(layers):
        n = int(np.exp(rng.uniform(np.log(500), np.log(1e6))))
        bpw = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 8.5, options - 2)), [16.0]])
        b = np.ceil(n * bpw / 8).astype(np.int64) + max(8, n // 100)
        d = np.exp(rng.normal(0, 1.5)) * np.exp(-1.1 * bpw) * np.exp(rng.normal(0, 0.4, options))
        bytes_.append(b)
        damage.append(d)
    return bytes_, damage


def brute_force(
    bytes_: list[np.ndarray],
    damage: list[np.ndarray],
    budget: int,
    groups: list[list[int]] | tuple = (),
    joints: list[Joint] | tuple = (),
) -> tuple[float, int] | None:
    """(least damage, its bytes) over every choice within the budget; None if none fits.
    A choice that takes a joint's combination has the joint's damage for those layers."""
    shape = tuple(len(b) for b in bytes_)
    idx = np.indices(shape).reshape(len(shape), -1)  # [layers, choices]
    total_b = sum(b[i] for b, i in zip(bytes_, idx, strict=True))
    total_d = sum(d[i] for d, i in zip(damage, idx, strict=True))
    for jt in joints:
        taken = np.all([idx[x] == o for x, o in zip(jt.layers, jt.options, strict=True)], axis=0)
        summed = sum(damage[x][o] for x, o in zip(jt.layers, jt.options, strict=True))
        total_d = np.where(taken, total_d - summed + jt.damage, total_d)
    ok = total_b <= budget
    for g in groups:
        for other in g[1:]:
            ok &= idx[g[0]] == idx[other]
    if not ok.any():
        return None
    j = np.flatnonzero(ok)[np.argmin(total_d[ok])]
    return float(total_d[j]), int(total_b[j])


def tie(bytes_: list[np.ndarray], damage: list[np.ndarray], groups: list[list[int]]) -> None:
    """Tied layers are the same weight: same bytes per option (damages may differ)."""
    for g in groups:
        for other in g[1:]:
            bytes_[other] = bytes_[g[0]].copy()


def cost(bytes_: list[np.ndarray], damage: list[np.ndarray], choice: list[int]):
    b = sum(int(x[c]) for x, c in zip(bytes_, choice, strict=True))
    d = sum(float(x[c]) for x, c in zip(damage, choice, strict=True))
    return b, d


@pytest.mark.parametrize("with_groups", [False, True])
def test_exact_equals_brute_force(with_groups: bool) -> None:
    checked = 0
    for seed in range(320):
        rng = np.random.default_rng(seed)
        bytes_, damage = random_instance(rng)
        groups = [[0, 3], [1, 2, 5]] if with_groups else []
        tie(bytes_, damage, groups)
        lo, _ = byte_range(bytes_, damage, groups=groups)
        hi = sum(int(b.max()) for b in bytes_)
        budget = int(rng.integers(lo, hi + 1))
        best = brute_force(bytes_, damage, budget, groups)
        assert best is not None
        a = allocate(bytes_, damage, budget, groups=groups)
        b, d = cost(bytes_, damage, a.choice)
        assert (a.bytes, a.solver) == (b, "exact")
        assert a.damage == pytest.approx(d, rel=1e-12, abs=1e-12)
        assert a.bytes <= budget
        assert a.damage == pytest.approx(best[0], rel=1e-9, abs=1e-12), (seed, budget)
        for g in groups:
            assert len({a.choice[i] for i in g}) == 1
        checked += 1
    assert checked == 320


def test_joint_damage_replaces_the_sum_and_exact_equals_brute_force() -> None:
    """Joints (e.g. a block's layers removed together) at a damage below, or above, the sum
    of their layers' damages: every solver stays within budget, exact equals brute force, and
    the reported damage and taken joints are those of the choice."""
    taken_somewhere = 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        bytes_, damage = random_instance(rng)
        joints = []
        for layers in ([0, 1, 2], [4, 5]):
            opts = tuple(int(rng.integers(0, 5)) for _ in layers)
            summed = sum(float(damage[x][o]) for x, o in zip(layers, opts, strict=True))
            factor = rng.choice([0.0, 0.3, 1.5])
            joints.append(Joint(tuple(layers), opts, summed * factor - 0.01 * (factor == 0)))
        lo, _ = byte_range(bytes_, damage, joints=joints)
        hi = sum(int(b.max()) for b in bytes_)
        budget = int(rng.integers(lo, hi + 1))
        best = brute_force(bytes_, damage, budget, joints=joints)
        assert best is not None
        for solver in ("exact", "greedy", "milp"):
            a = allocate(bytes_, damage, budget, solver=solver, joints=joints)
            b, d = cost(bytes_, damage, a.choice)
            taken = [
                j
                for j, jt in enumerate(joints)
                if all(a.choice[x] == o for x, o in zip(jt.layers, jt.options, strict=True))
            ]
            for j in taken:
                jt = joints[j]
                d += jt.damage - sum(
                    damage[x][o] for x, o in zip(jt.layers, jt.options, strict=True)
                )
            assert a.bytes == b <= budget
            assert a.damage == pytest.approx(d, rel=1e-9, abs=1e-12), (seed, solver)
            assert a.damage >= best[0] - 1e-9 * max(1.0, abs(best[0]))
            if solver != "greedy":
                assert a.damage == pytest.approx(best[0], rel=1e-9, abs=1e-9), (seed, solver)
            # a joint combination that is dominated may be taken without being reported
            assert set(a.joints) <= set(taken)
            taken_somewhere += bool(a.joints)
    assert taken_somewhere > 20  # the instances do exercise the joint rows


def test_a_cheap_joint_removal_wins_over_keeping_one_layer_of_a_dead_pair() -> None:
    # alone: removing either layer costs 5, so the least damage at 10 bytes keeps one layer
    # at 10 bytes; together the pair costs 5 as well (the second adds nothing): remove both
    # and spend the 10 bytes on layer 2
    bytes_ = [np.array([0, 10]), np.array([0, 10]), np.array([0, 10])]
    damage = [np.array([5.0, 0.0]), np.array([5.0, 0.0]), np.array([4.0, 0.0])]
    a = allocate(bytes_, damage, 20)
    assert a.choice.count(0) == 1 and a.damage == pytest.approx(4.0)
    joint = Joint((0, 1), (0, 0), 5.0)
    a = allocate(bytes_, damage, 10, joints=[joint])
    assert (a.choice, a.bytes, a.damage, a.joints) == ([0, 0, 1], 10, 5.0, (0,))
    with pytest.raises(ValueError, match="tied or in another joint"):
        allocate(bytes_, damage, 10, joints=[joint], groups=[[0, 2]])
    with pytest.raises(ValueError, match="no option 2"):
        allocate(bytes_, damage, 10, joints=[Joint((0, 1), (0, 2), 1.0)])


def test_infeasible_budget_names_the_smallest_size() -> None:
    rng = np.random.default_rng(7)
    bytes_, damage = random_instance(rng)
    smallest = sum(int(b.min()) for b in bytes_)
    assert brute_force(bytes_, damage, smallest - 1) is None
    for solver in ("exact", "greedy", "milp"):
        with pytest.raises(InfeasibleBudget, match=f"smallest allocation, {smallest} bytes"):
            allocate(bytes_, damage, smallest - 1, solver=solver)
    a = allocate(bytes_, damage, smallest)
    assert a.bytes == smallest


def test_tied_groups_are_infeasible_as_a_whole() -> None:
    # alone each layer could go to 1 byte, but tied they must share an option index
    bytes_ = [np.array([1, 10]), np.array([10, 1])]
    damage = [np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    assert allocate(bytes_, damage, 2).choice == [0, 1]
    with pytest.raises(InfeasibleBudget, match="11 bytes"):
        allocate(bytes_, damage, 10, groups=[[0, 1]])
    a = allocate(bytes_, damage, 11, groups=[[0, 1]])
    assert a.choice[0] == a.choice[1] and a.bytes == 11


def test_greedy_is_never_over_budget_and_within_the_lp_bound() -> None:
    for seed in range(300):
        rng = np.random.default_rng(1000 + seed)
        bytes_, damage = random_instance(rng)
        lo = sum(int(b.min()) for b in bytes_)
        hi = sum(int(b.max()) for b in bytes_)
        budget = int(rng.integers(lo, hi + 1))
        g = allocate(bytes_, damage, budget, solver="greedy")
        e = allocate(bytes_, damage, budget)
        lp = lp_bound(bytes_, damage, budget)
        assert g.bytes <= budget
        assert lp <= e.damage + 1e-9 * max(1.0, abs(e.damage))
        assert e.damage <= g.damage + 1e-12
        # greedy stops at most one hull step short of the LP optimum
        step = max(largest_hull_step(b, d) for b, d in zip(bytes_, damage, strict=True))
        assert g.damage <= lp + step + 1e-9 * max(1.0, abs(lp)), seed


def largest_hull_step(b: np.ndarray, d: np.ndarray) -> float:
    """Largest damage saved by one step along the lower convex hull (gift wrapping)."""
    i, best = int(np.lexsort((d, b))[0]), 0.0
    while True:
        right = np.flatnonzero((b > b[i]) & (d < d[i]))
        if right.size == 0:
            return best
        slope = (d[right] - d[i]) / (b[right] - b[i])
        steepest = right[slope == slope.min()]
        j = int(steepest[np.argmax(b[steepest])])
        best, i = max(best, float(d[i] - d[j])), j


def convex_instance(rng: np.random.Generator, layers: int, options: int):
    """Every option on its layer's strictly convex hull (greedy's best case)."""
    bytes_, damage = [], []
    for _ in range(layers):
        b = np.cumsum(rng.integers(1, 40, options))
        slopes = np.sort(rng.uniform(0.01, 5.0, options - 1))[::-1]  # decreasing savings/byte
        d = 100.0 - np.concatenate([[0.0], np.cumsum(slopes * np.diff(b))])
        bytes_.append(b)
        damage.append(d)
    return bytes_, damage


def test_greedy_is_optimal_at_the_budgets_of_its_own_path() -> None:
    for seed in range(200):
        rng = np.random.default_rng(5000 + seed)
        bytes_, damage = convex_instance(rng, 6, 5)
        # the greedy path: upgrades sorted by damage saved per byte, best first
        ups = sorted(
            (
                (d[k] - d[k + 1]) / (b[k + 1] - b[k]),
                int(b[k + 1] - b[k]),
            )
            for b, d in zip(bytes_, damage, strict=True)
            for k in range(len(b) - 1)
        )[::-1]
        path = np.cumsum([0] + [u[1] for u in ups]) + sum(int(b[0]) for b in bytes_)
        budget = int(path[rng.integers(0, len(path))])
        g = allocate(bytes_, damage, budget, solver="greedy")
        e = allocate(bytes_, damage, budget)
        best = brute_force(bytes_, damage, budget)
        assert best is not None
        assert g.bytes == budget  # the path point is reached exactly
        assert g.damage == pytest.approx(e.damage, rel=1e-12)
        assert e.damage == pytest.approx(best[0], rel=1e-12)
        assert lp_bound(bytes_, damage, budget) == pytest.approx(best[0], rel=1e-9)


def test_dominated_options_are_never_chosen() -> None:
    # option 2 costs more than option 1 and is no better: never needed
    bytes_ = [np.array([1, 5, 9, 20]), np.array([2, 4])]
    damage = [np.array([3.0, 1.0, 1.0, 0.5]), np.array([1.0, 0.0])]
    for budget in range(3, 25):
        for solver in ("exact", "greedy"):
            assert allocate(bytes_, damage, budget, solver=solver).choice[0] != 2


def test_exact_beats_or_ties_highs_and_respects_the_lp_bound_at_scale() -> None:
    rng = np.random.default_rng(11)
    bytes_, damage = realistic_instance(rng, layers=60, options=40)
    lo, hi = byte_range(bytes_, damage)
    for frac in (0.02, 0.25, 0.6):
        budget = int(lo + frac * (hi - lo))
        e = allocate(bytes_, damage, budget)
        m = allocate(bytes_, damage, budget, solver="milp")
        g = allocate(bytes_, damage, budget, solver="greedy")
        lp = lp_bound(bytes_, damage, budget)
        assert max(e.bytes, m.bytes, g.bytes) <= budget
        assert lp <= e.damage * (1 + 1e-12)
        assert e.damage <= m.damage * (1 + 1e-12)  # HiGHS stops at its gap tolerance
        assert e.damage <= g.damage * (1 + 1e-12)
        assert cost(bytes_, damage, e.choice) == (e.bytes, pytest.approx(e.damage))


def test_exact_on_medium_instances_equals_exhaustive_search_over_survivors() -> None:
    # 9 layers x 4 options: 262,144 choices, still enumerable; budgets at the hard middle
    for seed in range(5):
        rng = np.random.default_rng(300 + seed)
        bytes_, damage = realistic_instance(rng, layers=9, options=4)
        lo, hi = byte_range(bytes_, damage)
        for frac in (0.1, 0.3, 0.5, 0.7):
            budget = int(lo + frac * (hi - lo))
            best = brute_force(bytes_, damage, budget)
            assert best is not None
            a = allocate(bytes_, damage, budget)
            assert a.damage == pytest.approx(best[0], rel=1e-12)


def test_pareto_front_is_exact_and_strictly_monotone() -> None:
    for seed in range(20):
        rng = np.random.default_rng(3 + seed)
        bytes_, damage = random_instance(rng)
        damage = [np.round(d, 1) for d in damage]  # many ties on damage
        lo, hi = byte_range(bytes_, damage)
        front = pareto_front(bytes_, damage, 12)
        assert front[0][0] == lo and front[-1][0] == hi
        assert all(b1 < b2 and d1 > d2 for (b1, d1), (b2, d2) in itertools.pairwise(front))
        for b, d in front:
            best = brute_force(bytes_, damage, b)
            assert best is not None and d == pytest.approx(best[0], rel=1e-9, abs=1e-12)


def test_budget_above_everything_takes_the_least_damage_option_each() -> None:
    rng = np.random.default_rng(4)
    bytes_, damage = random_instance(rng)
    a = allocate(bytes_, damage, 10**12)
    assert a.damage == pytest.approx(sum(float(d.min()) for d in damage))
    assert byte_range(bytes_, damage)[1] == a.bytes


def test_single_option_layers_and_bad_inputs() -> None:
    a = allocate([np.array([5]), np.array([3, 1])], [np.array([0.5]), np.array([0.0, 2.0])], 8)
    assert a.choice == [0, 0] and a.bytes == 8
    with pytest.raises(InvalidOption, match="exact, greedy, milp"):
        allocate([np.array([1])], [np.array([0.0])], 1, solver="dp")
    with pytest.raises(ValueError, match="finite"):
        allocate([np.array([1])], [np.array([np.nan])], 1)
    with pytest.raises(ValueError, match="same number of options"):
        allocate([np.array([1]), np.array([1, 2])], [np.zeros(1), np.zeros(2)], 5, groups=[[0, 1]])
