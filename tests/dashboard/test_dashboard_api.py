"""What the dashboard adds to the API, on Postgres (the service tests' fixtures): the session
cookie (flags, CSRF header, one-time sign-in tokens, sign-out), the report route with the
chosen plan's damage, and the page routes' redirects, tenancy (404 page) and static files."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from slimline import jobs
from slimline.db import artifacts
from slimline.db.session import session_scope
from slimline.service.signin import COOKIE
from tests.dashboard.conftest import REPO
from tests.service.conftest import Api, auth, sha256
from tests.service.test_jobs import SCORES, upload_model

CSRF = {"X-Requested-With": "slimline-dashboard"}
PLAN = {"version": 1, "layers": {"fc1": "b4/ch", "fc2": "fp16"}}


def _job(api: Api, key: str) -> str:
    model = upload_model(api, auth(key), tag=uuid.uuid4().hex)
    r = api.client.post(
        "/v1/jobs", headers=auth(key), json={"model": model, "data": "digits", "budget": "16x"}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _succeed(api: Api, tenant: jobs.Tenant, job_id: str) -> dict[str, object]:
    """Finish the job as a worker would, with a report artifact and stored scores."""
    report: dict[str, object] = {
        "layers": [{"name": "fc1", "option": "b4/ch", "bytes": 220}],
        "pareto": [],
    }
    rel = f"tenants/{tenant.id}/jobs/{job_id}/report.json"
    path = Path(api.settings.artifact_dir) / rel
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    with session_scope(api.engine) as s:
        jobs.claim_job(s, job_id, "w1")
    with session_scope(api.engine) as s:
        artifacts.add_artifact(
            s, tenant.id, kind="report", path=rel, bytes=path.stat().st_size,
            sha256=sha256(path.read_bytes()), job_id=job_id,
        )  # fmt: skip
        artifacts.save_scores(s, job_id, SCORES)
        jobs.finish_job(s, job_id, "w1", {"ratio": 16.0}, PLAN)
    return report


def test_session_cookie_flags_csrf_header_and_sign_out(api: Api) -> None:
    c = api.client
    tenant, key = api.tenant()
    bad = c.post("/v1/session", json={"key": "sl_nope"})
    assert bad.status_code == 401 and bad.json()["field"] == "key"
    r = c.post("/v1/session", json={"key": key})
    assert r.status_code == 200 and r.json() == {"tenant": tenant.name}
    set_cookie = r.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    flags = {f.strip().lower() for f in set_cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # http://testserver; set over https
    assert c.get("/v1/session").json() == {"tenant": tenant.name}
    assert c.get("/v1/jobs").status_code == 200  # the cookie authenticates
    job_id = _job(api, key)
    refused = c.post(f"/v1/jobs/{job_id}/cancel")  # cookie alone: what a cross-site form sends
    assert refused.status_code == 401 and "x-requested-with" in refused.json()["message"]
    assert c.post(f"/v1/jobs/{job_id}/cancel", headers=CSRF).json()["status"] == "cancelled"
    assert c.delete("/v1/session", headers=CSRF).status_code == 204
    assert c.get("/v1/session").status_code == 401


def test_a_signin_token_works_once(api: Api) -> None:
    tenant, key = api.tenant()
    token = api.client.app.state.signin_tokens.issue(key)  # type: ignore[attr-defined]
    first = api.client.post("/v1/session", json={"token": token})
    assert first.status_code == 200 and first.json()["tenant"] == tenant.name
    again = api.client.post("/v1/session", json={"token": token})
    assert again.status_code == 401 and again.json()["field"] == "token"


def test_report_route_and_the_chosen_plans_damage(api: Api) -> None:
    tenant, key = api.tenant()
    h = auth(key)
    job_id = _job(api, key)
    early = api.client.get(f"/v1/jobs/{job_id}/report", headers=h)
    assert early.status_code == 404 and "no report yet" in early.json()["message"]
    report = _succeed(api, tenant, job_id)
    got = api.client.get(f"/v1/jobs/{job_id}/report", headers=h).json()
    assert got["report"] == report
    assert got["plan_damage"] == 0.1  # fc1 b4/ch (0.1) + fc2 fp16 (0.0) from SCORES
    _, other_key = api.tenant()
    assert api.client.get(f"/v1/jobs/{job_id}/report", headers=auth(other_key)).status_code == 404


def test_pages_redirect_to_signin_and_hide_other_tenants_jobs(api: Api) -> None:
    c = api.client
    _, key = api.tenant()
    _, other_key = api.tenant()
    theirs = _job(api, other_key)
    r = c.get("/jobs?status=running", follow_redirects=False)
    assert (
        r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fjobs%3Fstatus%3Drunning"
    )
    assert c.get("/", follow_redirects=False).headers["location"] == "/jobs"
    c.post("/v1/session", json={"key": key})
    assert 'id="jobs-table"' in c.get("/jobs").text
    mine = _job(api, key)
    assert 'id="pareto-chart"' in c.get(f"/jobs/{mine}").text
    for job_id in (theirs, str(uuid.uuid4()), "not-a-uuid"):
        page = c.get(f"/jobs/{job_id}")
        assert page.status_code == 404 and 'id="not-found"' in page.text
    assert c.get("/static/vendor/chartjs/chart.umd.min.js").status_code == 200


def test_chart_library_is_vendored_with_its_license() -> None:
    vendor = REPO / "slimline" / "service" / "static" / "vendor" / "chartjs"
    assert (
        "Chart.js" in (vendor / "LICENSE.md").read_text()
        or "MIT" in (vendor / "LICENSE.md").read_text()
    )
    assert (vendor / "chart.umd.min.js").stat().st_size > 100_000
