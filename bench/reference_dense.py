"""The dense models the benchmark table starts from, checked in (``bench/dense/``).

A task's recipe and seed name its dense model, but the same recipe trains other bytes on
another CPU (its float kernels round differently): sessions on three machines trained three
sets of weights from one recipe, and some cells moved by tens of points with them (bitshare's
lenet5 256x plan kept 94.48% of one set and 11.44% of another). Retentions measured on one
machine could not be set beside another's. So the weights the README table started from are
kept in ``bench/dense/`` under the dense cache's own names (``dense-<model>-<recipe
hash>.safetensors``), and the suite copies them into its cache before it looks there: every
machine starts from the same bytes. A changed recipe has another hash and no file here; the
suite then trains on this machine as before and says so ("trained", not "reference").

    python -m bench.reference_dense --from-cache DIR   # make DIR's dense models the references

Safetensors only: nothing here is unpickled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent / "dense"


def _same_bytes(a: Path, b: Path) -> bool:
    from slimline.loader import file_sha256

    return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)


def seed_cache(cache_path: Path, reference_dir: Path = REFERENCE_DIR) -> str:
    """Put the reference weights of ``cache_path``'s name at ``cache_path``.

    Returns ``"reference"`` (the cache now holds the reference's bytes: copied, or already
    there), ``"replaced"`` (a file of that name with other bytes, trained on some machine, was
    replaced) or ``"none"`` (no reference of that name: the cache is left as it is)."""
    ref = reference_dir / cache_path.name
    if not ref.is_file():
        return "none"
    outcome = "reference"
    if cache_path.is_file():
        if _same_bytes(ref, cache_path):
            return outcome
        outcome = "replaced"
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
    shutil.copyfile(ref, tmp)
    os.replace(tmp, cache_path)
    # the evaluation kept beside cached weights belongs to the bytes it measured
    cache_path.with_suffix(".metrics.json").unlink(missing_ok=True)
    return outcome


def task_cache_path(task: str, cache_dir: Path, seed: int = 0) -> Path:
    """Where the dense cache keeps ``task``'s model trained with its recipe and ``seed``."""
    from bench.suite import TASKS
    from slimline.pipeline.sources import dense_cache_path, resolve_model

    t = TASKS[task]
    return dense_cache_path(resolve_model(t.model), t.data, seed, cache_dir)


def update_references(
    cache_dir: Path, tasks: list[str], reference_dir: Path = REFERENCE_DIR
) -> list[Path]:
    """Copy each task's seed-0 dense model from ``cache_dir`` into ``reference_dir``, dropping
    that model's references for other recipes; the files written."""
    written = []
    for task in tasks:
        src = task_cache_path(task, cache_dir)
        if not src.is_file():
            raise SystemExit(
                f"{task}: no dense model at {src}; run `python -m bench.suite --tasks {task} "
                f"--methods uniform-ptq --budgets 16 --cache-dir {cache_dir}` first"
            )
        reference_dir.mkdir(parents=True, exist_ok=True)
        model = src.name[len("dense-") :].rsplit("-", 1)[0]
        for old in reference_dir.glob(f"dense-{model}-*.safetensors"):
            if old.name != src.name and old.name.rsplit("-", 1)[0] == f"dense-{model}":
                old.unlink()
        shutil.copyfile(src, reference_dir / src.name)
        written.append(reference_dir / src.name)
    return written


def main(argv: list[str] | None = None) -> None:
    from bench.suite import TASKS

    p = argparse.ArgumentParser(prog="python -m bench.reference_dense", description=__doc__)
    p.add_argument("--from-cache", type=Path, required=True, help="a dense cache folder")
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    args = p.parse_args(argv)
    from slimline.loader import file_sha256

    for path in update_references(args.from_cache, args.tasks):
        print(f"{path} sha256 {file_sha256(path)[:12]}")


if __name__ == "__main__":
    main(sys.argv[1:])
