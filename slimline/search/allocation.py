"""Allocation: one option per layer, least total damage, total bytes within the budget.

This is a multiple-choice knapsack (MCKP). Yang et al. (CVPR 2020, arXiv 1910.05897) solve the
same problem in their V-step with `mckp_greedy`: per layer, drop dominated options, keep the
lower convex hull of (bytes, damage), start every layer at its cheapest point and apply hull
upgrades in decreasing damage-saved-per-byte while they fit. That is ``solver="greedy"`` here,
kept as the fast fallback and as a test oracle.

What we do differently: the default ``solver="exact"`` returns a proven optimum. Plain MILP
(``solver="milp"``, scipy's HiGHS) is slow at 200 layers x 40 options and stops at HiGHS's
absolute gap tolerance, so it is only kept as an independent cross-check. The exact solver is a
branch and bound built on the LP relaxation, which the greedy computes for free:

1. The LP optimum of an MCKP takes every layer to a hull vertex except one fractional layer;
   its critical slope ``lam`` is a Lagrange multiplier for the byte constraint. For any
   feasible choice x, with reduced cost r(o) = d(o) + lam*b(o) - min_o' (d(o') + lam*b(o')) >= 0,
       damage(x) = LP + sum_l r_l(x_l) + lam * (budget - bytes(x))          (identity)
   so a choice can beat the greedy incumbent only if its reduced costs sum to less than
   gap = damage(greedy) - LP. Options with r >= gap are fixed out (reduced-cost fixing);
   on real instances this leaves one option for most layers and two or three for a few.
2. A dynamic program over the layers that still have a choice keeps the Pareto set of partial
   (bytes, damage) states, pruned by the LP bound of the layers not yet decided. Everything is
   in coordinates local to each layer's LP vertex, so the numbers compared are of the size of
   the gap, not of the (possibly huge) damage of removing a layer. A first pass keeps only
   the `BEAM` best-bounded states per layer (a heuristic that usually finds the optimum and so
   shrinks the gap); the second, untruncated pass proves optimality. Its state count is not
   bounded a priori (pathological instances could be slow), but on realistic 200 x 40
   instances it stays in the thousands: about 0.1 s (bench/allocate.py).
Greedy, LP bound and exact solver share one preparation (`_Knapsack`), so a Pareto curve of 40
budgets costs 40 small searches.

Tied layers (``groups``: layers that must take the same option index) are merged into one item
whose bytes and damage are the sums.

Joint options (``joints``): the damage of some layers' options taken together, measured, where
it is not the sum of their damages. Removing a block's ``fc1`` already silences its MLP, so
removing ``fc2`` as well costs next to nothing more, yet the per-layer sum counts the MLP's loss
twice (bytegpt: the knapsack removed ``fc1`` and kept ``fc2``, bytes spent on a layer whose
input is a constant). A joint's layers become one item whose options are the undominated
combinations of their own options, the joint combination at its measured damage: still a
multiple-choice knapsack, solved exactly as above.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slimline.errors import InfeasibleBudget, InvalidOption
from slimline.search.method_settings import SOLVERS

BEAM = 256  # states kept per layer by the exact solver's first (heuristic) pass


@dataclass(frozen=True)
class Allocation:
    """The chosen option index of every layer, and what the choice costs."""

    choice: list[int]  # option index per layer (into that layer's option list)
    bytes: int  # total bytes of the chosen options
    damage: float  # total damage of the chosen options (joint damages where joints are taken)
    solver: str  # exact | greedy | milp
    seconds: float  # wall time of the solve (preparation included)
    joints: tuple[int, ...] = ()  # indices of the joint options taken


@dataclass(frozen=True)
class Joint:
    """Layers whose given options, taken together, damage ``damage`` (not their sum)."""

    layers: tuple[int, ...]  # layer indices, two or more, each in no other joint or tied group
    options: tuple[int, ...]  # the option index of each of those layers
    damage: float


def named_joints(
    names: Sequence[str],
    options: Sequence[Sequence[str]],
    joints: Sequence[tuple[Sequence[str], Sequence[str], float]],
) -> list[Joint]:
    """`Joint`s from (layer names, option strings, damage) triples, given every layer's name
    and option strings (how stored scores name them). Raises KeyError or ValueError for a
    name or option the layers do not have."""
    index = {n: i for i, n in enumerate(names)}
    return [
        Joint(
            tuple(index[str(n)] for n in layers),
            tuple(
                list(options[index[str(n)]]).index(str(o))
                for n, o in zip(layers, opts, strict=True)
            ),
            float(damage),
        )
        for layers, opts, damage in joints
    ]


def allocate(
    bytes: Sequence[np.ndarray],
    damage: Sequence[np.ndarray],
    budget: int,
    *,
    solver: str = "exact",
    groups: Sequence[Sequence[int]] = (),
    joints: Sequence[Joint] = (),
) -> Allocation:
    """Pick one option per layer minimising total ``damage`` with total ``bytes`` <= ``budget``.

    ``bytes[l]`` (int) and ``damage[l]`` (float) are layer l's per-option arrays. ``groups``
    lists sets of layer indices that must take the same option index (tied weights; their
    option lists must be the same length). ``joints`` give the damage of some combinations
    (`Joint`). Raises `InfeasibleBudget` when even the cheapest choice does not fit.
    """
    t0 = time.perf_counter()
    ks = _Knapsack(bytes, damage, groups, joints)
    choice = ks.solve(int(budget), solver)
    return ks.allocation(choice, solver, time.perf_counter() - t0)


def lp_bound(
    bytes: Sequence[np.ndarray],
    damage: Sequence[np.ndarray],
    budget: int,
    *,
    groups: Sequence[Sequence[int]] = (),
    joints: Sequence[Joint] = (),
) -> float:
    """Damage of the LP relaxation (a fractional option allowed): no allocation does better."""
    ks = _Knapsack(bytes, damage, groups, joints)
    ks.check_feasible(int(budget))
    return ks.lp(int(budget)).value


def byte_range(
    bytes: Sequence[np.ndarray],
    damage: Sequence[np.ndarray],
    *,
    groups: Sequence[Sequence[int]] = (),
    joints: Sequence[Joint] = (),
) -> tuple[int, int]:
    """(fewest total bytes any allocation needs, bytes of the least-damage allocation)."""
    ks = _Knapsack(bytes, damage, groups, joints)
    return ks.min_bytes, ks.max_bytes


def pareto_front(
    bytes: Sequence[np.ndarray],
    damage: Sequence[np.ndarray],
    points: int,
    *,
    groups: Sequence[Sequence[int]] = (),
    joints: Sequence[Joint] = (),
) -> list[tuple[int, float]]:
    """Exact optima at ``points`` budgets evenly spaced from the smallest to the largest total.

    Returns (bytes used, damage) pairs, bytes strictly increasing and damage strictly
    decreasing: optima that tie on damage are merged into the cheapest, so there may be fewer
    than ``points``. The first uses the fewest bytes possible, the last reaches the least damage.
    """
    ks = _Knapsack(bytes, damage, groups, joints)
    budgets = np.unique(np.linspace(ks.min_bytes, ks.max_bytes, max(1, points)).round())
    found = []
    for b in budgets.astype(np.int64):
        a = ks.allocation(ks.solve(int(b), "exact"), "exact", 0.0)
        found.append((a.bytes, a.damage))
    front: list[tuple[int, float]] = []
    for b, d in sorted(found):
        if front and d >= front[-1][1]:
            continue  # no better than a cheaper point
        front.append((b, d))
    return front


# ------------------------------------------------------------------------------ preparation
def _undominated(b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices (by ascending bytes) of options no other option beats on both bytes and damage.

    An option with more bytes and no less damage than another is never needed; among equal
    bytes the least damage is kept, among equal damage the fewest bytes.
    """
    order = np.lexsort((d, b))
    ds = d[order]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], ds[:-1]]))
    return order[ds < best_before]


def _lower_hull(b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of points sorted by ascending b (monotone chain).

    Collinear points are kept: they are finer steps for the greedy at no loss.
    """
    bs, ds = b.tolist(), d.tolist()  # Python floats: ~5x faster than numpy scalars here
    hull: list[int] = []
    for i in range(len(bs)):
        while len(hull) >= 2:
            j, k = hull[-2], hull[-1]
            # k lies strictly above the chord j -> i: not on the hull
            if (ds[k] - ds[j]) * (bs[i] - bs[j]) > (ds[i] - ds[j]) * (bs[k] - bs[j]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.asarray(hull, dtype=np.int64)


@dataclass(frozen=True)
class _LP:
    value: float  # LP relaxation damage
    lam: float  # critical slope (damage saved per byte at the margin); 0 if nothing binds
    prefix: int  # hull upgrades (in global order) taken whole
    hull_pos: np.ndarray  # per item: hull index reached by the prefix


class _Knapsack:
    """Items (layers, merged tied groups or joints) with dominated options removed, hulls and
    upgrades. An item's option k sets its member layers to the options in row k of `combo`."""

    def __init__(
        self,
        bytes: Sequence[np.ndarray],
        damage: Sequence[np.ndarray],
        groups: Sequence[Sequence[int]],
        joints: Sequence[Joint] = (),
    ) -> None:
        if len(bytes) != len(damage):
            raise ValueError(f"{len(bytes)} byte arrays but {len(damage)} damage arrays")
        self.n_layers = len(bytes)
        b_in = [np.asarray(x, dtype=np.int64).reshape(-1) for x in bytes]
        d_in = [np.asarray(x, dtype=np.float64).reshape(-1) for x in damage]
        for i, (b, d) in enumerate(zip(b_in, d_in, strict=True)):
            if b.size == 0 or b.size != d.size:
                raise ValueError(f"layer {i}: {b.size} byte entries, {d.size} damage entries")
            if not np.isfinite(d).all():
                raise ValueError(f"layer {i}: damage must be finite")
        tied = _merge_groups(self.n_layers, groups, [b.size for b in b_in])
        _check_joints(joints, tied, [b.size for b in b_in])
        in_joint = {layer for jt in joints for layer in jt.layers}
        self.members = [mem for mem in tied if mem[0] not in in_joint]
        self.raw_b = b_in
        self.raw_d = d_in
        # per item: option rows (layer option per member), their bytes and damage
        self.combo: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.d: list[np.ndarray] = []
        self.joint_row: list[tuple[int, int, int]] = []  # (joint, item, row) of joint rows kept
        for mem in self.members:
            b = np.sum([b_in[i] for i in mem], axis=0)
            d = np.sum([d_in[i] for i in mem], axis=0)
            k = _undominated(b, d)
            self.combo.append(np.repeat(k[:, None], len(mem), axis=1))
            self.b.append(b[k])
            self.d.append(d[k])
        for j, jt in enumerate(joints):
            combo, b, d = _joint_item(b_in, d_in, jt)
            k = _undominated(b, d)
            row = np.flatnonzero(k == combo.shape[0] - 1)  # the joint row is the last one
            if row.size:
                self.joint_row.append((j, len(self.b), int(row[0])))
            self.members.append(list(jt.layers))
            self.combo.append(combo[k])
            self.b.append(b[k])
            self.d.append(d[k])
        self.min_bytes = int(sum(b[0] for b in self.b))
        self.max_bytes = int(sum(b[-1] for b in self.b))
        self._build_upgrades()

    def _build_upgrades(self) -> None:
        """Every hull upgrade of every item, in the greedy's global order."""
        self.hulls = [_lower_hull(b, d) for b, d in zip(self.b, self.d, strict=True)]
        items, steps, db, dd = [], [], [], []
        for i, h in enumerate(self.hulls):
            if h.size < 2:
                continue
            items.append(np.full(h.size - 1, i))
            steps.append(np.arange(h.size - 1))
            db.append(np.diff(self.b[i][h]))
            dd.append(-np.diff(self.d[i][h]))  # damage saved, > 0
        if not items:  # every item has a single option
            items, steps = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
            db, dd = [np.zeros(0, np.int64)], [np.zeros(0)]
        item, step = np.concatenate(items), np.concatenate(steps)
        up_b, up_d = np.concatenate(db).astype(np.int64), np.concatenate(dd)
        rate = up_d / up_b
        order = np.lexsort((step, item, -rate))  # best rate first; a layer's steps in order
        self.up_item, self.up_b, self.up_d, self.up_rate = (
            item[order],
            up_b[order],
            up_d[order],
            rate[order],
        )
        self.cum_b = np.cumsum(self.up_b)
        self.cum_d = np.cumsum(self.up_d)
        self.base_damage = float(sum(d[0] for d in self.d))

    # -------------------------------------------------------------------------- results
    def check_feasible(self, budget: int) -> None:
        if budget < self.min_bytes:
            raise InfeasibleBudget(
                f"budget {budget} bytes is below the smallest allocation, {self.min_bytes} "
                f"bytes (every layer at its cheapest option); give at least {self.min_bytes}",
                field="budget",
                value=budget,
            )

    def solve(self, budget: int, solver: str) -> list[int]:
        """Chosen option per item (index into the item's kept options)."""
        if solver not in SOLVERS:
            raise InvalidOption(
                f"solver {solver!r} is not one of {', '.join(SOLVERS)}",
                field="solver",
                value=solver,
            )
        self.check_feasible(budget)
        if solver == "greedy":
            return self.greedy(budget)
        if solver == "milp":
            return self.milp(budget)
        return self.exact(budget)

    def allocation(self, item_choice: list[int], solver: str, seconds: float) -> Allocation:
        choice = [0] * self.n_layers
        for mem, combo, c in zip(self.members, self.combo, item_choice, strict=True):
            for layer, opt in zip(mem, combo[c], strict=True):
                choice[layer] = int(opt)
        total_b = sum(int(self.raw_b[i][c]) for i, c in enumerate(choice))
        total_d = float(sum(float(d[c]) for d, c in zip(self.d, item_choice, strict=True)))
        taken = tuple(j for j, item, row in self.joint_row if item_choice[item] == row)
        return Allocation(choice, total_b, total_d, solver, seconds, taken)

    def _cost(self, choice: Sequence[int]) -> tuple[int, float]:
        b = sum(int(self.b[i][c]) for i, c in enumerate(choice))
        return b, float(sum(float(self.d[i][c]) for i, c in enumerate(choice)))

    # ----------------------------------------------------------------------- LP, greedy
    def lp(self, budget: int) -> _LP:
        residual = budget - self.min_bytes
        p = int(np.searchsorted(self.cum_b, residual, side="right"))
        hull_pos = np.bincount(self.up_item[:p], minlength=len(self.b))
        value = self.base_damage - (float(self.cum_d[p - 1]) if p else 0.0)
        lam = 0.0
        if p < self.up_b.size:
            lam = float(self.up_rate[p])
            used = int(self.cum_b[p - 1]) if p else 0
            value -= float(self.up_d[p]) * (residual - used) / float(self.up_b[p])
        return _LP(value, lam, p, hull_pos)

    def greedy(self, budget: int) -> list[int]:
        """Yang et al.'s hull greedy, then single upgrades that still fit (best first)."""
        lp = self.lp(budget)
        pos = lp.hull_pos.copy()
        residual = budget - self.min_bytes - (int(self.cum_b[lp.prefix - 1]) if lp.prefix else 0)
        dead = np.zeros(len(self.b), dtype=bool)
        # past the LP prefix: an upgrade that does not fit ends its layer (later ones build on it)
        items, ups = self.up_item[lp.prefix :].tolist(), self.up_b[lp.prefix :].tolist()
        for i, ub in zip(items, ups, strict=True):
            if dead[i]:
                continue
            if ub <= residual:
                pos[i] += 1
                residual -= ub
            else:
                dead[i] = True
        choice = [int(h[p]) for h, p in zip(self.hulls, pos, strict=True)]
        return self._final_pass(choice, residual)

    def _final_pass(self, choice: list[int], residual: int) -> list[int]:
        """Apply the single option change saving most damage that fits, until none does."""
        item = np.concatenate([np.full(b.size, i) for i, b in enumerate(self.b)])
        opt = np.concatenate([np.arange(b.size) for b in self.b])
        all_b, all_d = np.concatenate(self.b), np.concatenate(self.d)
        cur = np.asarray(choice)
        while True:
            cur_b = np.array([self.b[i][c] for i, c in enumerate(cur)])[item]
            cur_d = np.array([self.d[i][c] for i, c in enumerate(cur)])[item]
            extra, saved = all_b - cur_b, cur_d - all_d
            ok = (extra <= residual) & (saved > 0)
            if not ok.any():
                return [int(c) for c in cur]
            j = int(np.flatnonzero(ok)[np.argmax(saved[ok])])
            cur[item[j]] = opt[j]
            residual -= int(extra[j])

    # ------------------------------------------------------------------------------ exact
    def exact(self, budget: int) -> list[int]:
        """Proven optimum: reduced-cost fixing against an incumbent, then a bounded DP.

        A first DP keeps only the ``BEAM`` most promising states per layer: a heuristic that
        usually finds the optimum and so shrinks the gap; the second, untruncated DP proves it.
        """
        red = _Reduced(self, budget)
        incumbent = self.greedy(budget)
        gap = red.gap(incumbent)
        for cap in (BEAM, None):
            if gap <= 0.0:
                break
            found, truncated = red.search(gap, cap)
            if found is not None and red.gap(found) < gap:
                incumbent, gap = found, red.gap(found)
            if not truncated:
                break
        return incumbent

    # ------------------------------------------------------------------------------- milp
    def milp(self, budget: int) -> list[int]:
        """HiGHS on the binary program; optimal only up to HiGHS's gap tolerances."""
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_matrix

        sizes = [b.size for b in self.b]
        all_b = np.concatenate(self.b).astype(np.float64)
        all_d = np.concatenate([d - d.min() for d in self.d])
        scale = max(float(all_d.max()), 1e-300)
        rows = np.repeat(np.arange(len(sizes)), sizes)
        one_each = csr_matrix((np.ones(all_b.size), (rows, np.arange(all_b.size))))
        res = milp(
            all_d / scale,
            integrality=np.ones(all_b.size),
            bounds=Bounds(0, 1),
            constraints=[
                LinearConstraint(one_each, 1, 1),
                LinearConstraint(all_b[None, :], -np.inf, budget),
            ],
            options={"mip_rel_gap": 0.0},
        )
        if res.x is None:
            raise RuntimeError(f"HiGHS found no solution: {res.message}")
        starts = np.cumsum([0, *sizes[:-1]])
        return [int(np.argmax(res.x[s : s + n])) for s, n in zip(starts, sizes, strict=True)]


class _Reduced:
    """The knapsack at one budget in reduced-cost terms around the LP optimum (module doc).

    Per item, options are measured from the item's LP vertex v = argmin d + lam*b: local bytes
    b - b[v], local damage d - d[v], reduced cost r = local damage + lam * local bytes >= 0.
    A choice x has value Q(x) = sum r + lam * (budget - bytes(x)) = damage(x) - LP.
    """

    def __init__(self, ks: _Knapsack, budget: int) -> None:
        self.lam = lam = ks.lp(budget).lam
        self.vert = [int(np.argmin(d + lam * b)) for b, d in zip(ks.b, ks.d, strict=True)]
        self.b = [b - b[v] for b, v in zip(ks.b, self.vert, strict=True)]  # int64
        self.d = [d - d[v] for d, v in zip(ks.d, self.vert, strict=True)]
        self.r = [d + lam * b for b, d in zip(self.b, self.d, strict=True)]
        self.budget = budget
        # budget left with every item at its vertex (local bytes are measured against it)
        self.slack = budget - sum(int(b[v]) for b, v in zip(ks.b, self.vert, strict=True))

    def gap(self, choice: Sequence[int]) -> float:
        """Q(choice) = damage(choice) - LP, from local numbers only."""
        used = sum(int(b[c]) for b, c in zip(self.b, choice, strict=True))
        reduced = sum(float(r[c]) for r, c in zip(self.r, choice, strict=True))
        return reduced + self.lam * (self.slack - used)

    def search(self, gap: float, cap: int | None) -> tuple[list[int] | None, bool]:
        """Best choice with Q < ``gap`` (None if there is none) and whether states were cut.

        Items whose only option with r < gap is the vertex are fixed there; the others are
        decided one by one, keeping the Pareto set of (local bytes, local damage) states whose
        LP bound (this state plus the undecided items) is still below ``gap``.
        """
        free = [(i, a) for i, r in enumerate(self.r) if (a := np.flatnonzero(r < gap)).size > 1]
        free.sort(key=lambda t: t[1].size)
        rest = _suffix_bounds([(self.b[i][a], self.d[i][a]) for i, a in free], self.lam)
        states_b = np.zeros(1, dtype=np.int64)  # local bytes of each partial state
        states_d = np.zeros(1)  # local damage
        trail, truncated = [], False
        for k, (i, alive) in enumerate(free):
            ob, od = self.b[i][alive], self.d[i][alive]
            nb = (states_b[:, None] + ob[None, :]).ravel()  # [states * options]
            nd = (states_d[:, None] + od[None, :]).ravel()
            bound = nd + self.lam * nb + rest[k].lower_bound(self.slack - nb)
            idx = np.flatnonzero(bound < gap)
            order = idx[np.lexsort((nd[idx], nb[idx]))]
            sd = nd[order]
            prev_best = np.minimum.accumulate(np.concatenate([[np.inf], sd[:-1]]))
            order = order[sd < prev_best]  # Pareto: less damage than every cheaper state
            if cap is not None and order.size > cap:
                order = order[np.argpartition(bound[order], cap)[:cap]]
                truncated = True
            trail.append((order // ob.size, alive[order % ob.size]))
            states_b, states_d = nb[order], nd[order]
        ok = np.flatnonzero(states_b <= self.slack)
        if ok.size == 0:
            return None, truncated
        s = int(ok[np.argmin(states_d[ok])])
        choice = list(self.vert)
        for (i, _), (parent, opt) in zip(reversed(free), reversed(trail), strict=True):
            choice[i] = int(opt[s])
            s = int(parent[s])
        return choice, truncated


def _check_joints(joints: Sequence[Joint], tied: list[list[int]], sizes: list[int]) -> None:
    """Joints name two or more distinct layers, each untied and in no other joint, and one
    existing option for each."""
    alone = {mem[0] for mem in tied if len(mem) == 1}
    seen: set[int] = set()
    for jt in joints:
        layers = [int(x) for x in jt.layers]
        if len(layers) < 2 or len(set(layers)) != len(layers) or len(jt.options) != len(layers):
            raise ValueError(f"joint {jt}: two or more distinct layers, one option each")
        for layer, opt in zip(layers, jt.options, strict=True):
            if layer not in alone or layer in seen:
                raise ValueError(f"joint {jt}: layer {layer} is tied or in another joint")
            if not 0 <= int(opt) < sizes[layer]:
                raise ValueError(f"joint {jt}: layer {layer} has no option {opt}")
        if not np.isfinite(jt.damage):
            raise ValueError(f"joint {jt}: damage must be finite")
        seen.update(layers)


def _joint_item(
    b_in: list[np.ndarray], d_in: list[np.ndarray], jt: Joint
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(option rows, bytes, damage) of a joint's item: the undominated combinations of its
    layers' options other than the joint's, with additive damage, then the joint combination
    (last row) at its own damage.

    A combination other than the joint's first differs from it at some layer i, so those are
    the union over i of {joint's options before i} x {layer i's others} x {all options after}:
    products of option sets, whose undominated combinations are found a layer at a time
    (a dominated partial combination can be swapped for its dominator), exactly. Pruning the
    plain product instead would be wrong where the joint damage exceeds the sum: the additive
    joint row could prune a combination that is needed once its damage goes up.
    """
    target = [int(o) for o in jt.options]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i in range(len(jt.layers)):
        sets = []
        for pos, (layer, t) in enumerate(zip(jt.layers, target, strict=True)):
            everything = np.arange(b_in[layer].size)
            opts = (
                np.asarray([t])
                if pos < i
                else everything[everything != t]
                if pos == i
                else everything
            )
            sets.append((layer, opts))
        if sets[i][1].size:
            parts.append(_product_front(b_in, d_in, sets))
    jb = sum(int(b_in[layer][o]) for layer, o in zip(jt.layers, target, strict=True))
    combo = np.concatenate([p[0] for p in parts] + [np.asarray([target], dtype=np.int64)])
    b = np.concatenate([p[1] for p in parts] + [np.asarray([jb], dtype=np.int64)])
    d = np.concatenate([p[2] for p in parts] + [np.asarray([float(jt.damage)])])
    return combo, b, d


def _product_front(
    b_in: list[np.ndarray], d_in: list[np.ndarray], sets: list[tuple[int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undominated combinations (rows of option indices, bytes, additive damage) of one option
    from each (layer, allowed options) in ``sets``."""
    combo = np.zeros((1, 0), dtype=np.int64)
    b, d = np.zeros(1, dtype=np.int64), np.zeros(1)
    for layer, opts in sets:
        k = opts[_undominated(b_in[layer][opts], d_in[layer][opts])]
        nb = (b[:, None] + b_in[layer][k][None, :]).ravel()
        nd = (d[:, None] + d_in[layer][k][None, :]).ravel()
        rows = np.concatenate(
            [np.repeat(combo, k.size, axis=0), np.tile(k, combo.shape[0])[:, None]], axis=1
        )
        keep = _undominated(nb, nd)
        combo, b, d = rows[keep], nb[keep], nd[keep]
    return combo, b, d


def _merge_groups(
    n_layers: int, groups: Sequence[Sequence[int]], sizes: list[int]
) -> list[list[int]]:
    """Items as lists of layer indices: each group is one item, every other layer its own."""
    owner = list(range(n_layers))
    for g in groups:
        g = [int(x) for x in g]
        for x in g:
            if not 0 <= x < n_layers:
                raise ValueError(f"group {g} names layer {x}; layers are 0..{n_layers - 1}")
        if len({sizes[x] for x in g}) > 1:
            raise ValueError(f"tied layers {g} must have the same number of options")
        roots = {owner[x] for x in g}
        new = min(roots)
        owner = [new if o in roots else o for o in owner]
    items: dict[int, list[int]] = {}
    for layer, o in enumerate(owner):
        items.setdefault(o, []).append(layer)
    return list(items.values())


class _RestBound:
    """LP lower bound, in reduced-cost terms, of the items not yet decided.

    For residual budget c (relative to those items' LP vertices) it is the least value of
    sum r + lam * unused bytes a fractional choice can reach: with c >= 0, lam*c minus the
    best damage saved by upgrades (rates <= lam) in c bytes; with c < 0, the cheapest damage
    added by downgrades freeing -c bytes (rates >= lam) minus lam*(-c); +inf past what
    downgrades can free. ``up``/``down``: breakpoints (bytes, damage) of those greedy curves.
    """

    def __init__(
        self, lam: float, up: tuple[np.ndarray, np.ndarray], down: tuple[np.ndarray, np.ndarray]
    ) -> None:
        self.lam = lam
        self.up_x, self.up_y = up
        self.dn_x, self.dn_y = down

    def lower_bound(self, c: np.ndarray) -> np.ndarray:
        c = c.astype(np.float64)
        out = np.empty_like(c)
        pos = c >= 0
        out[pos] = self.lam * c[pos] - np.interp(c[pos], self.up_x, self.up_y)
        neg = -c[~pos]
        val = np.interp(neg, self.dn_x, self.dn_y) - self.lam * neg
        val[neg > self.dn_x[-1]] = np.inf
        out[~pos] = val
        return out


def _hull_steps(
    x: np.ndarray, y: np.ndarray, *, concave: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Steps (dx, dy) of the lower (or upper, ``concave``) hull of (0, 0) and points (x, y)."""
    order = np.argsort(x, kind="stable")
    xs = np.concatenate([[0], x[order]])
    ys = np.concatenate([[0.0], y[order]])
    h = _lower_hull(xs, -ys) if concave else _lower_hull(xs, ys)
    return np.diff(xs[h]), np.diff(ys[h])


class _StepPool:
    """Hull steps of many items on one side of their vertices, sorted once by rate."""

    def __init__(self, steps: list[tuple[np.ndarray, np.ndarray]], *, best_first: bool) -> None:
        dx = [s[0] for s in steps] or [np.zeros(0)]
        dy = [s[1] for s in steps] or [np.zeros(0)]
        owner = np.concatenate([np.full(x.size, k) for k, x in enumerate(dx)])
        dx_all = np.concatenate(dx).astype(np.float64)
        dy_all = np.concatenate(dy).astype(np.float64)
        rate = dy_all / np.where(dx_all > 0, dx_all, 1.0)
        order = np.argsort(-rate if best_first else rate, kind="stable")
        self.owner, self.dx, self.dy = owner[order], dx_all[order], dy_all[order]

    def curve(self, after: int) -> tuple[np.ndarray, np.ndarray]:
        """Breakpoints of the fractional greedy over the steps of items ``after + 1`` on."""
        sel = self.owner > after
        xs = np.concatenate([[0.0], np.cumsum(self.dx[sel])])
        ys = np.concatenate([[0.0], np.cumsum(self.dy[sel])])
        return xs, ys


def _suffix_bounds(items: list[tuple[np.ndarray, np.ndarray]], lam: float) -> list[_RestBound]:
    """bounds[k]: LP bound of items k+1.. (the ones still open after deciding item k).

    ``items``: each item's options in coordinates local to its vertex (which is 0, 0).
    """
    up, down = [], []
    for b, d in items:
        u, n = b > 0, b < 0
        up.append(_hull_steps(b[u], -d[u], concave=True))  # bytes added, damage saved
        down.append(_hull_steps(-b[n], d[n]))  # bytes freed, damage added
    ups, downs = _StepPool(up, best_first=True), _StepPool(down, best_first=False)
    return [_RestBound(lam, ups.curve(k), downs.curve(k)) for k in range(len(items))]
