"""The layer-count limit (`Settings.max_layers`) refuses a model at inspection, naming both
numbers, and accepts one at the limit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from slimline.db.uploads import ModelRecord
from slimline.errors import InvalidModel
from slimline.worker.inspection import model_facts


def _zoo_record(name: str) -> ModelRecord:
    return ModelRecord(
        id="m1", tenant_id="t1", sha256="0" * 64, kind="zoo", zoo_name=name, config={},
        filename="", path="", bytes=0, status="pending", error=None, layers=None,
        dense_bytes=None, smallest_bytes=None, created_at=datetime.now(UTC),
    )  # fmt: skip


def test_max_layers_is_enforced_at_inspection(tmp_path: Path) -> None:
    record = _zoo_record("lenet5")  # 4 compressible layers
    facts = model_facts(record, tmp_path, max_layers=4)
    assert len(facts["layers"]) == 4
    with pytest.raises(InvalidModel, match="4 compressible layers; at most 3"):
        model_facts(record, tmp_path, max_layers=3)
