"""Refuse .pt2 archives that would make ``torch.export.load`` run code from the file.

``torch.export.load`` is documented as "uses pickle under the hood ... never load data from an
untrusted source", and reading torch 2.13's loader (torch/export/__init__.py,
torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py) shows that a crafted
archive can execute code at load time in at least these ways:

1. ``data/sample_inputs/<model>.pt`` goes through ``deserialize_torch_artifact``, which tries
   ``torch.load(weights_only=True)`` and on *any* failure retries unrestricted:
   a raw pickle there runs (demonstrated; see tests/models/test_program.py).
2. Weights or constants whose payload config says ``use_pickle: true`` are read with
   an unrestricted ``torch.load``; ``opaque_obj_*`` constants with a plain unpickler;
   ``custom_obj_*`` constants with the TorchScript unpickler.
3. Legacy layouts (``data/weights/<model>.pt``, the pre-2.7 zip with ``serialized_*.pt``) and
   the same fallback to an unrestricted load; ``data/aotinductor/`` holds compiled shared
   libraries that ``load_pt2`` dlopens.
4. Every ``expr_str`` (symbolic shape) in the graph JSON is parsed with ``sympy.sympify``, which
   is ``eval``: ``"Symbol('s0') + f(__import__('os').system(...))"`` runs (demonstrated).
5. ``guards_code`` in the graph JSON is a list of Python expressions that
   ``ExportedProgram.module()`` (default ``check_guards=True``) pastes into a function it
   ``exec``s and calls on every forward: arbitrary code. ``load_program`` therefore calls
   ``.module(check_guards=False)``, which checks inputs with the range constraints instead.
6. Parameter/buffer names and graph node names end up in Python source that FX generates and
   ``exec``s (``getattr(self, "<name>")``): a name containing ``"`` or a newline could inject
   code (not demonstrated; refused anyway).

So before calling ``torch.export.load`` we read the archive with the same reader torch uses
(``PT2ArchiveReader``, so we see the same members) and accept only: the graph JSON, raw tensor
payloads with ``use_pickle: false``, sample inputs that load with ``weights_only=True`` (so the
fallback is never reached), plain-identifier names and symbolic expressions built only from
known sympy classes. This is an allow-list: a member or construct we do not know is refused.
It narrows the attack surface; it is not a sandbox. Untrusted archives should still be loaded
in a worker process with no credentials.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import torch
from torch.export.pt2_archive import PT2ArchiveReader

from slimline.errors import InvalidModel

MODEL = "model"  # torch.export.save always writes one program under this name
_FIXED_MEMBERS = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    f"models/{MODEL}.json",
    f"data/weights/{MODEL}_weights_config.json",
    f"data/constants/{MODEL}_constants_config.json",
    f"data/sample_inputs/{MODEL}.pt",
}
_PAYLOAD = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/[\w.\-/]+")
# Module paths, node names, op targets, versions: no quotes, backslashes or whitespace.
_NAME = re.compile(r"[\w.\-/+:]*", re.ASCII)
# Keys whose strings torch never puts into generated source unquoted: stack traces and other
# node metadata, pytree spec JSON (types resolved through a registry), string arguments of ops
# (FX writes them with repr()), guards code (never compiled: see point 5 above). Every other
# string must match _NAME.
_FREE_TEXT_KEYS = {"metadata", "in_spec", "out_spec", "as_string", "as_strings", "guards_code"}

# Names that may appear in a symbolic shape expression (sympy srepr of torch's shape symbols).
_SYMPY_CLASSES = (  # sympy classes and constants that torch's srepr of shapes can contain
    "Symbol Integer Rational Float Mul Add Pow Max Min Mod Abs floor ceiling Eq Ne Lt Le Gt Ge "
    "Equality Unequality StrictLessThan LessThan StrictGreaterThan GreaterThan And Or Not "
    "Piecewise ExprCondPair BooleanTrue BooleanFalse true false Infinity NegativeInfinity oo zoo "
    "nan Half One Zero NegativeOne IntInfinity NegativeIntInfinity int_oo"
)
_TORCH_SYMPY_FUNCTIONS = (  # torch.utils._sympy.functions the deserializer knows
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift "
    "RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator "
    "TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity"
)
_SYMPY_KEYWORDS = (  # keyword arguments of Symbol/Float and Python constants
    "positive negative nonnegative nonpositive integer real finite infinite commutative zero "
    "nonzero even odd precision evaluate True False None"
)
_EXPR_NAMES = frozenset(f"{_SYMPY_CLASSES} {_TORCH_SYMPY_FUNCTIONS} {_SYMPY_KEYWORDS}".split())
_EXPR_TOKEN = re.compile(
    r"\s+|(?P<name>[A-Za-z_]\w*)|'[\w.+\-]*'|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\*\*|//|[-+*/%(),=<>!]"
)


def _refuse(path: str, what: str) -> InvalidModel:
    return InvalidModel(
        f"refusing .pt2 file {path!r}: {what}. slimline loads only archives written by "
        f"torch.export.save from plain tensors (no pickled objects, legacy formats or compiled "
        f"code)",
        field="program",
        value=path,
    )


def check_expr(expr: str) -> bool:
    """True when ``expr`` uses only numbers, operators and allow-listed sympy names."""
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            return False
        name = m.group("name")
        if name is not None and name not in _EXPR_NAMES:
            return False
        pos = m.end()
    return True


def _check_json_strings(path: str, node: Any, key: str = "") -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str) or not _NAME.fullmatch(k):
                raise _refuse(path, f"graph JSON has an unexpected key {str(k)[:80]!r}")
            if k in _FREE_TEXT_KEYS:
                continue
            _check_json_strings(path, v, k)
    elif isinstance(node, list):
        for v in node:
            _check_json_strings(path, v, key)
    elif isinstance(node, str):
        if key == "expr_str":
            if not check_expr(node):
                raise _refuse(path, f"symbolic shape expression {node[:120]!r} is not allowed")
        elif not _NAME.fullmatch(node):
            raise _refuse(path, f"graph JSON field {key!r} has an unsafe value {node[:80]!r}")


def _check_payload_config(path: str, reader: PT2ArchiveReader, member: str, prefix: str) -> None:
    try:
        config = json.loads(reader.read_string(member))["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _refuse(path, f"{member} is not a valid payload config ({e})") from None
    for fqn, meta in items:
        if not isinstance(fqn, str) or not _NAME.fullmatch(fqn):
            raise _refuse(path, f"{member} has an unsafe tensor name {str(fqn)[:80]!r}")
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(path, f"tensor {fqn!r} is stored as a pickle")
        name = meta.get("path_name")
        if not isinstance(name, str) or not re.fullmatch(prefix + r"\d+", name):
            raise _refuse(path, f"tensor {fqn!r} has payload {name!r}, not a raw tensor")


def check_pt2_archive(path: str) -> None:
    """Raise InvalidModel unless ``torch.export.load(path)`` cannot unpickle or eval its bytes.

    Errors from reading the archive itself (corrupt zip, not a PT2 archive) propagate as they
    are; ``load_program`` wraps them.
    """
    reader = PT2ArchiveReader(path)  # the reader torch.export.load uses: same member view
    members = set(reader.get_file_names())
    for member in sorted(members):
        if member not in _FIXED_MEMBERS and not _PAYLOAD.fullmatch(member):
            raise _refuse(path, f"it contains {member!r}, which is not a plain-tensor member")
    for required in (f"models/{MODEL}.json", f"data/weights/{MODEL}_weights_config.json"):
        if required not in members:
            raise _refuse(path, f"it has no {required!r} (not a torch.export.save archive?)")
    _check_payload_config(path, reader, f"data/weights/{MODEL}_weights_config.json", "weight_")
    constants = f"data/constants/{MODEL}_constants_config.json"
    if constants in members:
        _check_payload_config(path, reader, constants, "tensor_")
    sample = f"data/sample_inputs/{MODEL}.pt"
    if sample in members:
        data = reader.read_bytes(sample)
        if data:
            try:  # torch retries unrestricted only if this fails: make sure it can't
                torch.load(io.BytesIO(data), weights_only=True)
            except Exception:
                raise _refuse(
                    path,
                    "its sample inputs are not plain tensors (torch.load with "
                    "weights_only=True refused them)",
                ) from None
    try:
        graph = json.loads(reader.read_string(f"models/{MODEL}.json"))
    except ValueError as e:
        raise _refuse(path, f"its graph JSON does not parse ({e})") from None
    _check_json_strings(path, graph)
