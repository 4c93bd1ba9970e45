"""The worker's write retries: bounded by a setting, with exponential backoff, only for a
database that is unavailable (no process, no database: the writes are fakes)."""

from __future__ import annotations

import pytest

from slimline.config import Settings
from slimline.errors import Conflict, Unavailable
from slimline.worker.heartbeat import WriteRetry


class Flaky:
    """A write that finds the database unavailable ``failures`` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.retried = failures, 0, []

    def __call__(self, retried: bool) -> str:
        self.calls += 1
        self.retried.append(retried)
        if self.calls <= self.failures:
            raise Unavailable("database unavailable (test)")
        return "written"


def test_the_bound_and_backoff_are_settings(tmp_path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        worker_write_attempts=4,
        worker_write_backoff_s=0.5,
        worker_write_max_wait_s=1.5,
    )
    retry = WriteRetry.from_settings(settings)
    assert (retry.attempts, retry.backoff_s, retry.max_wait_s) == (4, 0.5, 1.5)
    assert [retry.wait_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    defaults = WriteRetry.from_settings(Settings(data_dir=tmp_path))
    # The defaults ride out a 10 s outage (the fault test's) with room to spare.
    assert sum(defaults.wait_s(n) for n in range(1, defaults.attempts)) > 20
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, worker_write_attempts=0)


def test_a_write_is_retried_with_backoff_until_it_succeeds() -> None:
    waits: list[float] = []
    retry = WriteRetry(attempts=5, backoff_s=0.1, max_wait_s=0.3, sleep=waits.append)
    write = Flaky(failures=3)
    assert retry.call("test write", write) == "written"
    assert write.calls == 4 and write.retried == [False, True, True, True]
    assert waits == [0.1, 0.2, 0.3]


def test_the_retries_are_bounded() -> None:
    waits: list[float] = []
    retry = WriteRetry(attempts=3, backoff_s=0.1, max_wait_s=10, sleep=waits.append)
    write = Flaky(failures=100)
    with pytest.raises(Unavailable):
        retry.call("test write", write)
    assert write.calls == 3 and waits == [0.1, 0.2]


def test_only_an_unavailable_database_is_retried() -> None:
    calls = []

    def refused(retried: bool) -> None:
        calls.append(retried)
        raise Conflict("another worker holds the job")

    with pytest.raises(Conflict):
        WriteRetry(attempts=5, sleep=lambda s: None).call("test write", refused)
    assert calls == [False]
