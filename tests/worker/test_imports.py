"""What the API process and a worker's parent may import: no torch (no CUDA before a task),
and the API side never the task module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.worker.conftest import REPO


def _run(code: str, data_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"SLIMLINE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_embedded_server_side_imports_neither_torch_nor_the_tasks(tmp_path: Path) -> None:
    _run(
        "import sys\n"
        "import slimline.worker.embedded, slimline.worker.sweeper, slimline.worker.celery_app\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'slimline.worker.tasks' not in sys.modules, 'tasks imported'\n",
        tmp_path,
    )


def test_building_the_worker_app_does_not_import_torch(tmp_path: Path) -> None:
    _run(
        "import sys\n"
        "from slimline.worker.celery_app import app\n"
        "assert 'slimline.run_job' in app.tasks and 'slimline.inspect_upload' in app.tasks\n"
        "assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost\n"
        "assert app.conf.worker_prefetch_multiplier == 1 and app.conf.accept_content == ['json']\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n",
        tmp_path,
    )
