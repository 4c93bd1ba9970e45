"""Find the compressible layers of a model: eager zoo modules and torch.export graphs alike.

A compressible layer is a Linear, Conv1d or Conv2d weight (depthwise and grouped included) or
an Embedding table (rows = tokens, so each token's vector gets its own scale; in a small
language model the embeddings are a large share of the bytes, and keeping them fp16 caps the
reachable ratio: bytegpt's two tables alone are 30x below its fp32 size). An Embedding with
``max_norm`` (renormalizes its table in place on lookup) or ``sparse`` gradients, and any
weight shared by two layers (tied), is left as an ordinary tensor. In an eager model a layer is
an ``nn.Linear``/``nn.Conv*d``/``nn.Embedding`` module; in the graph module of a
``torch.export`` program there are no such modules, only ``aten.linear``/``aten.conv*d``/
``aten.embedding`` calls whose weight is read through a ``get_attr`` of a parameter owned by a
plain submodule, so the graph is walked instead. Either way the result is the module path that
owns ``weight`` (where a parametrization goes), the weight's shape, and the norm layer directly
following the layer (folded into the layer's scales and bias at export, as deployment
toolchains do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn

_EAGER_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.Conv1d, "conv1d"),
    (nn.Conv2d, "conv2d"),
    (nn.Embedding, "embedding"),
)
_aten = torch.ops.aten
_GRAPH_KINDS = {
    _aten.linear.default: "linear",
    _aten.conv1d.default: "conv1d",
    _aten.conv2d.default: "conv2d",
    _aten.embedding.default: "embedding",
}
_WEIGHT_ARG = {"embedding": 0}  # position of the weight among the call's args (else 1)
_GRAPH_NORMS = {
    _aten.batch_norm.default,
    _aten._native_batch_norm_legit_no_training.default,
    _aten._batch_norm_no_update.default,
}


@dataclass(frozen=True)
class LayerGeometry:
    """One compressible weight. rows = output channels; row_len = in/groups x kernel size."""

    name: str  # path of the module owning ``weight`` (and ``bias``), e.g. "layer1.0.conv1"
    kind: str  # linear | conv1d | conv2d | embedding
    shape: tuple[int, ...]  # weight shape, [O, I/groups, *kernel]
    has_bias: bool
    norm: str | None = None  # path of the BatchNorm folded into this layer at export
    norm_eps: float = (
        0.0  # that norm's epsilon (graph modules keep it in the graph, not the module)
    )

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_len(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def is_graph_module(model: nn.Module) -> bool:
    return isinstance(model, fx.GraphModule)


def find_layers(model: nn.Module) -> list[LayerGeometry]:
    """Compressible layers in execution order (graph order, else module order)."""
    if is_graph_module(model):
        return _graph_layers(model)
    return _eager_layers(model)


def _eager_layers(model: nn.Module) -> list[LayerGeometry]:
    norms = _eager_norm_pairs(model)
    mods = dict(model.named_modules())
    shared = _shared_weights(model)
    out = []
    for name, mod in model.named_modules():
        for cls, kind in _EAGER_KINDS:
            if isinstance(mod, cls) and _compressible(mod) and name not in shared:
                w = _original_weight(mod)
                out.append(
                    LayerGeometry(
                        name=name,
                        kind=kind,
                        shape=tuple(w.shape),
                        has_bias=getattr(mod, "bias", None) is not None,
                        norm=norms.get(name),
                        norm_eps=float(mods[norms[name]].eps) if name in norms else 0.0,
                    )
                )
                break
    return out


def _shared_weights(model: nn.Module) -> set[str]:
    """Modules whose weight is the same Parameter as another module's (tied embeddings).

    A tied weight is left uncompressed: a parametrization on one owner would not reach the
    other, so the two would train and export apart. It is stored once per name, as an
    ordinary fp16 tensor, and both names load the same values.
    """
    owners: dict[int, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(_original_weight(mod)), []).append(name)
    return {n for names in owners.values() if len(set(names)) > 1 for n in names}


def _compressible(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Embedding):
        return mod.max_norm is None and not mod.sparse
    return True


def _original_weight(mod: nn.Module) -> torch.Tensor:
    p = getattr(mod, "parametrizations", None)
    if p is not None and "weight" in p:
        return p["weight"].original
    return mod.weight  # type: ignore[return-value]


def _eager_norm_pairs(model: nn.Module) -> dict[str, str]:
    """layer name -> BatchNorm name when the BN consumes only that layer's output.

    Found by symbolic tracing; a model that cannot be traced simply gets no folding (its norms
    are then stored as ordinary tensors, which costs bytes but is always correct).
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return {}
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return {}
    mods = dict(model.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            mods.get(node.target), nn.modules.batchnorm._BatchNorm
        ):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(mods.get(src.target), (nn.Conv1d, nn.Conv2d, nn.Linear))
            and len(src.users) == 1
            and mods[node.target].affine
            and mods[node.target].track_running_stats
        ):
            pairs[str(src.target)] = str(node.target)
    return pairs


def _graph_layers(gm: fx.GraphModule) -> list[LayerGeometry]:
    out = []
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        for arg in node.args:
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                uses[str(arg.target)] = uses.get(str(arg.target), 0) + 1
    for node in gm.graph.nodes:
        kind = _GRAPH_KINDS.get(node.target) if node.op == "call_function" else None
        if kind is None:
            continue
        w_node = node.args[_WEIGHT_ARG.get(kind, 1)]
        if kind == "embedding" and len(node.args) > 4 and node.args[4]:
            continue  # sparse gradients
        if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr"):
            continue  # weight computed inside the graph: not a stored tensor we can compress
        owner, _, attr = str(w_node.target).rpartition(".")
        if attr != "weight" or uses[str(w_node.target)] > 1:
            continue  # a weight read twice (tied) stays an ordinary tensor, as in eager models
        bias_node = node.args[2] if len(node.args) > 2 and kind != "embedding" else None
        has_bias = isinstance(bias_node, fx.Node) and str(bias_node.target) == f"{owner}.bias"
        weight = _original_weight(gm.get_submodule(owner))
        # a norm after an embedding normalizes its columns, not the rows its scales belong to
        norm, eps = _graph_norm_after(node) if kind != "embedding" else (None, 0.0)
        out.append(
            LayerGeometry(
                name=owner,
                kind=kind,
                shape=tuple(weight.shape),
                has_bias=has_bias,
                norm=norm,
                norm_eps=eps,
            )
        )
    return out


def _graph_norm_after(node: fx.Node) -> tuple[str | None, float]:
    """(owner of the norm's tensors, eps) when a batch_norm alone consumes ``node``."""
    if len(node.users) != 1:
        return None, 0.0
    (user,) = node.users
    if user.op != "call_function" or user.target not in _GRAPH_NORMS or user.args[0] is not node:
        return None, 0.0
    names = []
    for arg in user.args[1:5]:  # weight, bias, running_mean, running_var
        if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            return None, 0.0
        names.append(str(arg.target))
    owner = names[0].rpartition(".")[0]
    expected = [f"{owner}.{a}" for a in ("weight", "bias", "running_mean", "running_var")]
    if names != expected:
        return None, 0.0
    # batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn) vs
    # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)
    eps = user.args[7] if user.target is _aten.batch_norm.default else user.args[6]
    return owner, float(eps)
