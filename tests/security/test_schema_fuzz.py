"""schemathesis against the app's own OpenAPI schema, over a real uvicorn on loopback with the
real Postgres and Redis: no 5xx, and every response conforms to the schema (status code
documented, content type, body shape; errors are ``{code, message, field?}``).

Every operation gets positive cases (valid per the schema) and negative cases (invalid per the
schema, which must be refused with a 4xx). In positive cases path parameters are, most of the
time, swapped for
the ids of real records the key's tenant owns (a model, a dataset, a finished job with scores
and an artifact, a queued job), so the fuzz reaches past the 404 into the handlers; the jobs
created along the way are then read, followed, cancelled and re-solved by later cases.

Bounded: ``SLIMLINE_FUZZ_EXAMPLES`` examples per operation and mode (default 25), no
shrinking, derandomized (the same cases every run) unless ``SLIMLINE_FUZZ_SEED`` is set.
The counts are printed and written to ``$SLIMLINE_FUZZ_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security.conftest import Live, auth, build_world

EXAMPLES = int(os.environ.get("SLIMLINE_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("SLIMLINE_FUZZ_SEED")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
STREAM_TIMEOUT_S = 30
POSITIVE_CHECKS = [*CHECKS, ignored_auth]  # a 2xx is re-sent without the key: must be 401
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
# Path parameter -> which of the world's records may stand in for the generated value.
REAL_IDS = {
    "model_id": ("model",),
    "dataset_id": ("dataset",),
    "job_id": ("done", "queued"),
    "artifact_id": ("artifact",),
}


def _substitute(case: Any, world: dict[str, Any], pick: int) -> None:
    for name, keys in REAL_IDS.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = world[keys[pick % len(keys)]]
    if isinstance(case.body, dict) and case.operation.path == "/v1/jobs":
        if "model" in case.body:
            case.body["model"] = world["model"]
        if "data" in case.body and pick % 2:
            case.body["data"] = world["dataset"]


@pytest.mark.timeout(600)
def test_the_api_conforms_to_its_schema_under_fuzz(live: Live) -> None:
    world = build_world(live.api)
    headers = auth(world["keys"]["right"])
    # Every job the fuzz can reach is finished, so an event stream (?stream=true) ends.
    live.api.client.post(f"/v1/jobs/{world['queued']}/cancel", headers=headers)
    raw = live.api.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    session = requests.Session()
    stats: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())
    assert len(operations) >= 12, [op.label for op in operations]

    def fuzz(op: Any, mode: GenerationMode) -> None:
        checks = POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=SEED is None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode), pick=st.integers(-1, 3))
        def run(case: Any, pick: int) -> None:
            if pick >= 0 and mode is GenerationMode.POSITIVE:  # else: keep the generated ids
                _substitute(case, world, pick)
            response = case.call(
                base_url=live.base_url, session=session, headers=headers, timeout=STREAM_TIMEOUT_S
            )
            stats[f"{op.label} [{mode.value}]"] += 1
            statuses[f"{op.method.upper()} {op.path} {response.status_code}"] += 1
            try:
                case.validate_response(response, checks=checks)
            except (FailureGroup, Failure) as exc:  # recorded, not raised: all are reported
                failures.append(
                    f"{op.label} [{mode.value}] -> {response.status_code}: "
                    f"{str(exc)[:600]}\n  reproduce: {case.as_curl_command(headers)}"
                )

        started = time.monotonic()
        try:
            run()
        except Unsatisfiable:  # nothing in the operation can be made invalid (no inputs)
            assert mode is GenerationMode.NEGATIVE, op.label
            stats[f"{op.label} [{mode.value}]"] += 0
        seconds[f"{op.label} [{mode.value}]"] = round(time.monotonic() - started, 2)

    if SEED is not None:
        random.seed(int(SEED))
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(op, mode)

    total = sum(stats.values())
    report = {
        "examples_per_operation_and_mode": EXAMPLES,
        "operations": len(operations),
        "cases": total,
        "failures": len(failures),
        "per_operation": dict(sorted(stats.items())),
        "statuses": dict(sorted(statuses.items())),
        "seconds": seconds,
    }
    print(json.dumps(report, indent=1))
    if os.environ.get("SLIMLINE_FUZZ_REPORT"):
        with open(os.environ["SLIMLINE_FUZZ_REPORT"], "w") as f:
            json.dump({**report, "failure_details": failures}, f, indent=1)
    assert total >= len(operations) * 2, report
    assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n".join(failures[:30])


STATEFUL_SCENARIOS = int(os.environ.get("SLIMLINE_FUZZ_SCENARIOS", "20"))


@pytest.mark.timeout(600)
def test_stateful_sequences_conform(live: Live) -> None:
    """Sequences of calls along the links schemathesis infers from the schema (an upload's
    id into GET/jobs, a listed job's id into events, cancel, resolve, artifacts, an artifact's
    id into the download): the same checks at every step, bounded scenarios of 10 steps."""
    world = build_world(live.api)
    headers = auth(world["keys"]["right"])
    live.api.client.post(f"/v1/jobs/{world['queued']}/cancel", headers=headers)
    raw = live.api.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    session = requests.Session()
    steps: Counter[str] = Counter()
    failures: list[str] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {
                "base_url": live.base_url,
                "session": session,
                "headers": headers,
                "timeout": STREAM_TIMEOUT_S,
            }

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            steps[f"{case.operation.label} {response.status_code}"] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (FailureGroup, Failure) as exc:
                failures.append(f"{case.operation.label} -> {response.status_code}: {exc}"[:800])

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=10,
            deadline=None,
            database=None,
            derandomize=SEED is None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    report = {"steps": sum(steps.values()), "failures": len(failures), "by": dict(steps)}
    print(json.dumps(report, indent=1))
    if os.environ.get("SLIMLINE_FUZZ_REPORT"):
        with open(os.environ["SLIMLINE_FUZZ_REPORT"] + ".stateful", "w") as f:
            json.dump({**report, "failure_details": failures}, f, indent=1)
    assert sum(steps.values()) >= STATEFUL_SCENARIOS, report
    assert not failures, "\n".join(failures[:20])
