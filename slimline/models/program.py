"""User models of any architecture, as ``torch.export`` programs (``.pt2``).

The usual way to ship an arbitrary PyTorch model is a pickle (``torch.save(model)``) or
TorchScript; both run code from the file. A ``.pt2`` archive is a graph of ATen ops plus raw
tensors, so after ``_pt2_guard.check_pt2_archive`` has refused the parts of the format that
can run code, loading it is safe enough for a worker, and ``.module()`` gives a trainable
``torch.fx.GraphModule``.

Two differences from an eager module matter to the rest of slimline:

- ``.train()``/``.eval()`` raise on these graph modules; the mode is baked into the graph as
  the ``training`` argument of batch-norm and dropout ops. ``set_graph_training`` edits those
  arguments instead.
- Submodules are plain ``nn.Module`` containers (no ``nn.Conv2d``/``nn.Linear`` classes): a
  weight is reached by a ``get_attr`` node whose target is its dotted path (``"layer1.0.conv1
  .weight"``) and consumed by ``aten.conv2d``/``aten.linear``. Parametrizations registered on
  the owning submodule do apply, because the generated code reads the attribute on each call.
"""

from __future__ import annotations

import inspect
import math
import operator
import os
import zipfile
from typing import Any

import torch
from torch import fx, nn

from slimline.archives import check_archive_file
from slimline.errors import InvalidModel

aten = torch.ops.aten

# op -> index of its ``training``/``train`` argument. Which ops appear depends on how the
# program was exported (torch 2.13): ``export()`` gives the training IR (batch_norm, dropout,
# feature_dropout, alpha_dropout, feature_alpha_dropout); ``run_decompositions()`` gives
# _native_batch_norm_legit_functional (train) or _native_batch_norm_legit_no_training (eval,
# handled by a target swap below) and native_dropout.
_TRAINING_ARG = {
    aten.batch_norm.default: 5,
    aten.native_batch_norm.default: 5,
    aten._native_batch_norm_legit.default: 5,
    aten._native_batch_norm_legit_functional.default: 5,
    aten.dropout.default: 2,
    aten.feature_dropout.default: 2,
    aten.alpha_dropout.default: 2,
    aten.feature_alpha_dropout.default: 2,
    aten.native_dropout.default: 2,
}
# Ops with no training argument that have a twin with the same outputs in the other mode.
_TO_TRAIN = {aten._batch_norm_no_update.default: aten._batch_norm_with_update.default}
_TO_EVAL = {v: k for k, v in _TO_TRAIN.items()}
# Non-ATen callables torch's export verifier also allows and our graphs can contain
# (symbolic-shape arithmetic, grad/autocast switches from `with` blocks in forward).
_ALLOWED_FUNCTIONS = frozenset(
    {
        torch.sym_int,
        torch.sym_float,
        torch.sym_ite,
        torch.sym_max,
        torch.sym_min,
        torch.sym_not,
        torch.sym_sqrt,
        torch.sym_sum,
        torch._C._set_grad_enabled,
        torch.autograd.grad_mode.set_grad_enabled,
        torch.amp.autocast_mode._enter_autocast,
        torch.amp.autocast_mode._exit_autocast,
    }
)


def is_graph_module(model: nn.Module) -> bool:
    """True for ``torch.fx.GraphModule`` (what ``load_program`` returns), False for eager."""
    return isinstance(model, fx.GraphModule)


def load_program(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> fx.GraphModule:
    """Load a ``.pt2`` written by ``torch.export.save`` as a trainable graph module.

    Never unpickles: see ``_pt2_guard``. Every failure is an InvalidModel with a message.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidModel(f".pt2 file {path!r} does not exist", field="program", value=path)
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise InvalidModel(
            f".pt2 file {path!r} is {size} bytes; the limit is {max_bytes} bytes",
            field="program",
            value=size,
        )
    if not zipfile.is_zipfile(path):
        raise InvalidModel(
            f"{path!r} is not a torch.export .pt2 archive (not a zip file); export the model "
            f"with torch.export.export and save it with torch.export.save",
            field="program",
            value=path,
        )
    check_archive_file(path, error=InvalidModel, field="program", max_bytes=max_bytes)
    try:
        # imported here: the archive reader pulls in torch.export's serializer and dynamo
        # (seconds of import), which a job on a zoo model never needs
        from slimline.models._pt2_guard import check_pt2_archive

        check_pt2_archive(path)
        program = torch.export.load(path)
        # check_guards=False: the default exec()s the archive's guards_code (see _pt2_guard).
        if "check_guards" in inspect.signature(program.module).parameters:
            gm = program.module(check_guards=False)
        else:  # older torch without the argument: re-audit its .module() before widening
            gm = program.module()
    except InvalidModel:
        raise
    except Exception as e:  # torch raises many types here; none should reach the user raw
        raise InvalidModel(
            f"could not load .pt2 {path!r}: {type(e).__name__}: {str(e)[:300]}",
            field="program",
            value=path,
        ) from None
    _check_targets(path, gm)
    return gm


def _check_targets(path: str, gm: fx.GraphModule) -> None:
    # torch's verifier already refuses non-ATen callables at load; this keeps the guarantee
    # ours (a graph node must never be an arbitrary Python function such as os.system).
    allowed = (torch._ops.OpOverload, torch._ops.HigherOrderOperator)
    for module in gm.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        for node in module.graph.nodes:
            target = node.target
            if node.op in ("call_module", "call_method"):
                raise InvalidModel(
                    f"refusing .pt2 file {path!r}: graph has a {node.op} node {target!r}; "
                    f"exported programs call only ATen ops",
                    field="program",
                    value=path,
                )
            if node.op != "call_function" or isinstance(target, allowed):
                continue
            name = getattr(target, "__name__", "")
            if any(getattr(m, name, None) is target for m in (operator, math)):
                continue
            if target in _ALLOWED_FUNCTIONS:
                continue
            raise InvalidModel(
                f"refusing .pt2 file {path!r}: graph calls {target!r}, which is not an ATen op",
                field="program",
                value=path,
            )


def export_program(
    model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike[str]
) -> torch.export.ExportedProgram:
    """Export ``model`` with a dynamic batch dimension and save it as a ``.pt2``.

    The model is traced in its current mode (export in eval mode unless you want the graph to
    start in training mode). A batch-1 example is doubled: tracing with size 1 specializes the
    dimension and ``Dim("batch", min=1)`` is then refused.
    """
    if example_input.shape[0] < 2:
        example_input = torch.cat([example_input, example_input])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example_input,), dynamic_shapes=({0: batch},))
    torch.export.save(program, os.fspath(path))
    return program


def set_graph_training(gm: fx.GraphModule, mode: bool) -> None:
    """Switch batch-norm and dropout in every graph of ``gm`` to training (True) or eval.

    A decomposed eval graph has no dropout left to switch on; a decomposed training graph
    implements dropout with ``bernoulli`` arithmetic that cannot be switched off. Graphs from
    ``torch.export.export`` (not decomposed), which is what ``export_program`` writes, switch
    fully. ``num_batches_tracked`` of a graph exported in training mode keeps counting in eval;
    it only matters with ``momentum=None``, whose factor export has already baked in.
    """
    for module in gm.modules():
        module.training = mode  # what callers read; .train() itself raises on graph modules
        if isinstance(module, fx.GraphModule) and _set_training_args(module.graph, mode):
            module.recompile()


def _set_training_args(graph: fx.Graph, mode: bool) -> bool:
    """Edit the graph in place; True when some node changed (so code must be regenerated)."""
    before = [(node.target, node.args, dict(node.kwargs)) for node in graph.nodes]
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if mode and node.target is aten._native_batch_norm_legit_no_training.default:
            # (x, w, b, mean, var, momentum, eps) -> (x, w, b, mean, var, training, momentum,
            # eps); both return (out, save_mean, save_rstd), the training op updates the
            # running stats in place like eager BatchNorm.
            node.target = aten._native_batch_norm_legit.default
            node.args = (*node.args[:5], True, *node.args[5:])
            continue
        swap = _TO_TRAIN if mode else _TO_EVAL
        if node.target in swap:
            node.target = swap[node.target]
            continue
        index = _TRAINING_ARG.get(node.target)
        if index is not None:
            _set_arg(node, index, mode)
    return before != [(node.target, node.args, dict(node.kwargs)) for node in graph.nodes]


def _set_arg(node: fx.Node, index: int, value: Any) -> None:
    if len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:  # passed by keyword (or defaulted): use the schema's name for it
        name = node.target._schema.arguments[index].name
        node.kwargs = {**node.kwargs, name: value}
