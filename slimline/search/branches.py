"""Branches: small sets of layers whose removal together is measured as one option.

Removing one layer of a residual branch already silences it (bytegpt: removing a block's ``fc1``
leaves ``fc2`` a constant input; removing ``v`` leaves the attention's ``out`` one), so the sum
of the layers' removal damages counts the branch's loss once per layer. The knapsack then
either never removes a branch or removes one layer and keeps paying for the rest. A branch's
joint removal, measured with one forward pass, is a `scoring.JointDamage` the knapsack can
take instead (`allocation.Joint`). Branches are found from module paths alone, so the same
rule serves zoo models and uploaded programs.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_BRANCH_LAYERS = 4  # larger sets make the knapsack item (combinations) too large


def removal_branches(names: Sequence[str], max_layers: int = MAX_BRANCH_LAYERS) -> list[list[str]]:
    """Disjoint sets of 2..``max_layers`` layers (by module path) that belong together.

    First the layers that are direct children of one module (a transformer block's ``fc1`` and
    ``fc2``, a ResNet block's ``conv1`` and ``conv2``, without its shortcut's ``downsample``),
    then all the layers under one module, deepest modules first (an attention's ``q``, ``k``,
    ``v``, ``out``; a MobileNet block's convolutions in their sub-sequences), where none is
    taken yet. The root module is never a branch: removing every layer of a model is not an
    option worth a measurement.
    """
    parent = {n: n.rsplit(".", 1)[0] if "." in n else "" for n in names}
    direct: dict[str, list[str]] = {}
    under: dict[str, list[str]] = {}
    for n in names:
        direct.setdefault(parent[n], []).append(n)
        parts = n.split(".")
        for k in range(1, len(parts)):
            under.setdefault(".".join(parts[:k]), []).append(n)
    out: list[list[str]] = []
    taken: set[str] = set()
    deepest_first = sorted(under, key=lambda k: -k.count("."))  # a block before its stage
    candidates = [v for k, v in direct.items() if k] + [under[k] for k in deepest_first]
    for layers in candidates:
        if 2 <= len(layers) <= max_layers and not taken.intersection(layers):
            out.append(list(layers))
            taken.update(layers)
    return out
