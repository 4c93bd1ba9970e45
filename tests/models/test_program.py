"""User models as torch.export programs: loading (and refusing archives that would run code),
train/eval switching by graph editing, and parametrizations on graph-module weights."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimline.errors import InvalidModel
from slimline.models.program import (
    export_program,
    is_graph_module,
    load_program,
    set_graph_training,
)
from slimline.models.zoo import build_model

aten = torch.ops.aten


def _call_targets(gm: torch.fx.GraphModule) -> set[object]:
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


@pytest.fixture(scope="module")
def lenet_pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    path = tmp_path_factory.mktemp("pt2") / "lenet5.pt2"
    export_program(model, torch.randn(2, 1, 28, 28), path)
    return path, model


def _rewrite(
    src: Path,
    dst: Path,
    edit: dict[str, Callable[[bytes], bytes]] | None = None,
    add: dict[str, bytes] | None = None,
) -> Path:
    """Copy a .pt2 archive member by member, editing or adding members (names without root)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        names = zin.namelist()
        root = names[0].split("/")[0]
        for name in names:
            data = zin.read(name)
            for suffix, fn in (edit or {}).items():
                if name == f"{root}/{suffix}":
                    data = fn(data)
            zout.writestr(name, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def _edit_json(fn: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        obj = json.loads(data)
        fn(obj)
        return json.dumps(obj).encode()

    return edit


# --- loading ----------------------------------------------------------------------------------


def test_round_trip_with_dynamic_batch(lenet_pt2: tuple[Path, nn.Module]) -> None:
    path, model = lenet_pt2
    gm = load_program(path)
    assert is_graph_module(gm) and not is_graph_module(model)
    with torch.no_grad():
        for batch in (1, 7):
            x = torch.randn(batch, 1, 28, 28)
            torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=0)


def test_export_accepts_a_batch_of_one(tmp_path: Path) -> None:
    model = build_model("lenet300").eval()
    export_program(model, torch.randn(1, 1, 28, 28), tmp_path / "m.pt2")
    assert load_program(tmp_path / "m.pt2")(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="does not exist"):
        load_program(tmp_path / "nope.pt2")


def test_size_limit(lenet_pt2: tuple[Path, nn.Module]) -> None:
    path, _ = lenet_pt2
    with pytest.raises(InvalidModel, match="the limit is 1000 bytes"):
        load_program(path, max_bytes=1000)
    load_program(path, max_bytes=path.stat().st_size)


def test_pickle_is_refused_before_anything_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(pickle.dumps(build_model("lenet300")))
    with pytest.raises(InvalidModel, match="not a torch.export .pt2 archive"):
        load_program(path)


def test_truncated_archive(lenet_pt2: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path = tmp_path / "cut.pt2"
    data = lenet_pt2[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match=r"\.pt2"):
        load_program(path)


def test_zip_that_is_not_a_program(tmp_path: Path) -> None:
    path = tmp_path / "other.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(InvalidModel, match=r"could not load \.pt2"):
        load_program(path)


# --- archives that would run code -------------------------------------------------------------


def _marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


class _Payload:
    """Unpickling this creates a directory: harmless proof that code from the file ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_sample_inputs_are_refused(lenet_pt2, tmp_path: Path) -> None:
    payload = pickle.dumps(_Payload(_marker(tmp_path)))
    evil = _rewrite(
        lenet_pt2[0], tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": lambda _: payload}
    )
    with pytest.raises(InvalidModel, match="sample inputs are not plain tensors"):
        load_program(evil)
    assert not _marker(tmp_path).exists()
    # Why the guard exists: torch's own loader retries with weights_only=False and runs it.
    with contextlib.suppress(Exception):
        torch.export.load(evil)
    assert _marker(tmp_path).exists(), "torch no longer runs this; update _pt2_guard's docstring"


def test_sympy_expression_injection_is_refused(lenet_pt2, tmp_path: Path) -> None:
    code = f" + 0*len(str(__import__('os').mkdir('{_marker(tmp_path)}')))"

    def inject(data: bytes) -> bytes:
        text = data.decode()
        start = text.index('"expr_str": "Symbol(')
        end = text.index(')"', start) + 1
        return (text[:end] + code + text[end:]).encode()

    evil = _rewrite(lenet_pt2[0], tmp_path / "evil.pt2", {"models/model.json": inject})
    with pytest.raises(InvalidModel, match="symbolic shape expression"):
        load_program(evil)
    assert not _marker(tmp_path).exists()


def test_guards_code_is_never_executed(lenet_pt2, tmp_path: Path) -> None:
    guard = f"__import__('os').mkdir('{_marker(tmp_path)}') is None"
    edit = _edit_json(lambda j: j["guards_code"].append(guard))
    evil = _rewrite(lenet_pt2[0], tmp_path / "evil.pt2", {"models/model.json": edit})
    gm = load_program(evil)
    gm(torch.randn(2, 1, 28, 28))
    assert not _marker(tmp_path).exists()
    torch.export.load(evil).module()(torch.randn(2, 1, 28, 28))  # torch's default does run it
    assert _marker(tmp_path).exists(), "torch no longer runs guards_code; update _pt2_guard"


def test_pickled_weight_payload_is_refused(lenet_pt2, tmp_path: Path) -> None:
    def flag(config: dict) -> None:
        config["config"]["fc1.weight"]["use_pickle"] = True

    edit = {"data/weights/model_weights_config.json": _edit_json(flag)}
    evil = _rewrite(lenet_pt2[0], tmp_path / "evil.pt2", edit)
    with pytest.raises(InvalidModel, match="'fc1.weight' is stored as a pickle"):
        load_program(evil)


@pytest.mark.parametrize(
    "member",
    [
        "data/constants/opaque_obj_0",  # pickle.loads
        "data/constants/custom_obj_0",  # TorchScript unpickler
        "data/weights/model.pt",  # legacy weights: torch.load with weights_only=False fallback
        "data/aotinductor/model/model.so",  # a compiled library load_pt2 would dlopen
    ],
)
def test_members_that_run_code_are_refused(lenet_pt2, tmp_path: Path, member: str) -> None:
    evil = _rewrite(lenet_pt2[0], tmp_path / "evil.pt2", add={member: b"x"})
    with pytest.raises(InvalidModel, match="not a plain-tensor member"):
        load_program(evil)


def test_names_that_could_inject_generated_code_are_refused(lenet_pt2, tmp_path: Path) -> None:
    def rename(config: dict) -> None:
        config["config"]['fc1"\nimport os'] = config["config"].pop("fc1.weight")

    edit = {"data/weights/model_weights_config.json": _edit_json(rename)}
    evil = _rewrite(lenet_pt2[0], tmp_path / "evil.pt2", edit)
    with pytest.raises(InvalidModel, match="unsafe tensor name"):
        load_program(evil)


# --- train/eval by graph editing --------------------------------------------------------------


def test_graph_modules_refuse_train_so_the_graph_is_edited(lenet_pt2) -> None:
    gm = load_program(lenet_pt2[0])
    with pytest.raises(NotImplementedError):
        gm.train()
    set_graph_training(gm, False)
    assert not gm.training and not gm.get_submodule("conv1").training


def test_batch_norm_switches_between_batch_and_running_stats(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = build_model("resnet20").eval()
    x = torch.randn(8, 3, 32, 32)
    export_program(eager, x, tmp_path / "r.pt2")
    gm = load_program(tmp_path / "r.pt2")
    assert aten.batch_norm.default in _call_targets(gm)

    set_graph_training(gm, True)
    eager.train()
    before = gm.get_submodule("bn1").running_mean.clone()
    torch.testing.assert_close(gm(x), eager(x), atol=1e-5, rtol=0)  # batch statistics
    after = gm.get_submodule("bn1").running_mean
    assert (after - before).abs().max() > 1e-4  # running stats were updated ...
    torch.testing.assert_close(after, eager.bn1.running_mean, atol=1e-6, rtol=0)  # ... as eager

    set_graph_training(gm, False)
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), eager(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(gm(x[:3]), eager(x[:3]), atol=1e-5, rtol=0)


class _Dropouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.drop2d = nn.Dropout2d(0.3)
        self.fc = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)
        self.alpha = nn.AlphaDropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop2d(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.alpha(self.drop(self.fc(x)))


@pytest.mark.parametrize("export_mode", ["eval", "train"])
def test_dropout_switches(tmp_path: Path, export_mode: str) -> None:
    torch.manual_seed(0)
    eager = _Dropouts().train(export_mode == "train")
    x = torch.randn(4, 3, 8, 8)
    export_program(eager, x, tmp_path / "d.pt2")
    gm = load_program(tmp_path / "d.pt2")
    targets = _call_targets(gm)
    assert {
        aten.dropout.default,
        aten.feature_dropout.default,
        aten.alpha_dropout.default,
    } <= targets

    set_graph_training(gm, True)
    eager.train()
    torch.manual_seed(1)
    y_graph = gm(x)
    torch.manual_seed(1)
    torch.testing.assert_close(y_graph, eager(x), atol=1e-5, rtol=0)  # same masks: same ops

    set_graph_training(gm, False)
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), eager(x), atol=1e-5, rtol=0)
        assert torch.equal(gm(x), gm(x))  # deterministic in eval


def test_decomposed_eval_graph_can_train(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = build_model("resnet20").eval()
    x = torch.randn(8, 3, 32, 32)
    dims = ({0: torch.export.Dim("batch", min=1)},)
    decomposed = torch.export.export(eager, (x,), dynamic_shapes=dims).run_decompositions()
    torch.export.save(decomposed, tmp_path / "dec.pt2")
    gm = load_program(tmp_path / "dec.pt2")
    assert aten._native_batch_norm_legit_no_training.default in _call_targets(gm)
    set_graph_training(gm, True)
    eager.train()
    torch.testing.assert_close(gm(x), eager(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        gm.get_submodule("bn1").running_var, eager.bn1.running_var, atol=1e-6, rtol=0
    )
    set_graph_training(gm, False)
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), eager(x), atol=1e-5, rtol=0)


# --- how weights are reached, and parametrizations --------------------------------------------


def test_weights_are_get_attr_nodes_on_plain_submodules(lenet_pt2) -> None:
    gm = load_program(lenet_pt2[0])
    get_attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"} <= get_attrs
    # The submodules are bare containers: find layers by the graph's ATen op, not by class.
    assert not isinstance(gm.get_submodule("conv1"), nn.Conv2d)
    assert isinstance(gm.get_submodule("conv1").weight, nn.Parameter)
    users = {n.target: {u.target for u in n.users} for n in gm.graph.nodes if n.op == "get_attr"}
    assert users["conv1.weight"] == {aten.conv2d.default}
    assert users["fc1.weight"] == {aten.linear.default}


class _Zero(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(w)


class _Scale(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_parametrization_on_a_graph_submodule_changes_the_output(lenet_pt2) -> None:
    gm = load_program(lenet_pt2[0])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        before = gm(x)
    fc2 = gm.get_submodule("fc2")
    parametrize.register_parametrization(fc2, "weight", _Zero())
    with torch.no_grad():
        torch.testing.assert_close(gm(x), fc2.bias.expand(3, -1), atol=0, rtol=0)
    parametrize.remove_parametrizations(fc2, "weight", leave_parametrized=False)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), before, atol=0, rtol=0)

    conv1 = gm.get_submodule("conv1")
    parametrize.register_parametrization(conv1, "weight", _Scale())
    gm(x).sum().backward()
    original = conv1.parametrizations.weight.original
    assert original.grad is not None and original.grad.abs().sum() > 0  # trainable through it
    with torch.no_grad():
        assert (gm(x) - before).abs().max() > 1e-3


def test_a_zip_bomb_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    """A job's program (or a file loaded locally) is checked again, not only at upload: a
    small .pt2 that would unpack to 200 MiB of zeros is refused from its directory alone."""
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data/weights/w", b"\0" * (200 * 1024**2))
    assert path.stat().st_size < 1024**2
    with pytest.raises(InvalidModel, match="zip bomb") as info:
        load_program(path)
    assert info.value.field == "program"
