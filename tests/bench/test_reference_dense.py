"""bench.reference_dense: the checked-in dense weights every machine's suite starts from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from bench import reference_dense as ref
from bench import suite
from slimline.pipeline.sources import build_skeleton, resolve_model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("task", sorted(suite.TASKS))
def test_every_task_has_reference_weights_for_its_recipe(task: str) -> None:
    # a recipe change gives another hash: this fails until the references are made again
    # (python -m bench.reference_dense --from-cache DIR), instead of the suite quietly
    # training other weights on every machine
    path = ref.task_cache_path(task, ref.REFERENCE_DIR)
    assert path.is_file(), f"no reference dense weights for {task}'s recipe: {path}"
    t = suite.TASKS[task]
    model = build_skeleton(resolve_model(t.model))
    model.load_state_dict(load_file(str(path)))  # strict: every tensor of the model, no other


def test_seed_cache_copies_keeps_and_replaces(tmp_path: Path) -> None:
    refs, cache = tmp_path / "refs", tmp_path / "cache"
    refs.mkdir()
    (refs / "dense-m-abc.safetensors").write_bytes(b"reference bytes")
    target = cache / "dense-m-abc.safetensors"

    assert ref.seed_cache(target, refs) == "reference"
    assert target.read_bytes() == b"reference bytes"
    stamp = target.stat().st_mtime_ns
    assert ref.seed_cache(target, refs) == "reference"
    assert target.stat().st_mtime_ns == stamp  # the same bytes are not copied again

    target.write_bytes(b"trained on another machine")
    sidecar = target.with_suffix(".metrics.json")
    sidecar.write_text('{"metric": 0.5}')  # the evaluation of the bytes being replaced
    assert ref.seed_cache(target, refs) == "replaced"
    assert target.read_bytes() == b"reference bytes" and not sidecar.exists()
    assert not list(cache.glob("*.tmp"))

    other = cache / "dense-m-def.safetensors"
    other.write_bytes(b"own recipe")
    assert ref.seed_cache(other, refs) == "none"
    assert other.read_bytes() == b"own recipe"
    assert ref.seed_cache(cache / "dense-n-abc.safetensors", refs) == "none"
    assert not (cache / "dense-n-abc.safetensors").exists()


def test_update_references_replaces_only_that_models_old_recipe(tmp_path: Path) -> None:
    cache, refs = tmp_path / "cache", tmp_path / "refs"
    cache.mkdir()
    refs.mkdir()
    src = ref.task_cache_path("digits", cache)
    src.write_bytes(b"new digits weights")
    (refs / "dense-digits-cnn-0000000000000000.safetensors").write_bytes(b"old recipe")
    (refs / "dense-digits-cnn-short-1111111111111111.safetensors").write_bytes(b"short")
    (refs / "dense-lenet5-2222222222222222.safetensors").write_bytes(b"lenet5")

    written = ref.update_references(cache, ["digits"], refs)
    assert written == [refs / src.name] and (refs / src.name).read_bytes() == b"new digits weights"
    assert sorted(p.name for p in refs.iterdir()) == sorted(
        [src.name, "dense-digits-cnn-short-1111111111111111.safetensors",
         "dense-lenet5-2222222222222222.safetensors"]
    )  # fmt: skip
    with pytest.raises(SystemExit, match="lenet300: no dense model"):
        ref.update_references(cache, ["lenet300"], refs)


def test_suite_dense_model_is_the_reference_not_trained(tmp_path: Path, data_root: Path) -> None:
    cache = tmp_path / "cache"
    job = suite.DenseJob("digits", str(data_root), str(cache))
    dense = suite.prepare_dense(job)
    assert dense["status"] == "ok", dense.get("traceback")
    reference = ref.task_cache_path("digits", ref.REFERENCE_DIR)
    assert dense["reference"] == "reference" and dense["trained"] is False
    assert dense["sha256"] == _sha(reference) and Path(dense["path"]).parent == cache
    assert dense["metric"] > 0.9  # the reference model, evaluated here

    # other weights of that name in the cache (trained on some other machine): --own-dense
    # keeps them; by default the reference replaces them
    tensors = load_file(dense["path"])
    first = next(iter(tensors))
    tensors[first] = tensors[first] * 2
    save_file(tensors, dense["path"])
    theirs = _sha(Path(dense["path"]))
    own = suite.prepare_dense(suite.DenseJob("digits", str(data_root), str(cache), reference=False))
    assert own["reference"] == "off" and own["sha256"] == theirs != dense["sha256"]
    again = suite.prepare_dense(suite.DenseJob("digits", str(data_root), str(cache)))
    assert again["reference"] == "replaced" and again["sha256"] == dense["sha256"]
