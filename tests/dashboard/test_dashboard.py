"""The dashboard in a real browser against a real server and worker: sign in by the printed
link, submit a digits job through the form, watch it succeed on the list without a reload,
read its page (timeline, per-layer charts, curves, report), download the checkpoint and check
its sha256, re-solve, cancel another job; sign-in by key and the cookie's flags; validation
errors beside their fields; another tenant's job is the not-found page."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import make_engine, session_scope
from slimline.db.uploads import add_model
from tests.dashboard.conftest import Server

pytestmark = pytest.mark.slow
JOB_TIMEOUT_MS = 150_000
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

# Pixels drawn on a canvas (any alpha): the chart is not an empty box.
CANVAS_INK = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""


@pytest.fixture
def context(browser: Any, server: Server) -> Iterator[Any]:
    ctx = browser.new_context(base_url=server.base, viewport=LAPTOP, accept_downloads=True)
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


def sign_in_with_key(page: Page, key: str) -> None:
    page.goto("/jobs")
    page.wait_for_url("**/signin?next=*")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs")


def canvas_ink(page: Page, selector: str) -> int:
    return int(page.locator(selector).evaluate(CANVAS_INK))


def test_submit_watch_inspect_download_and_cancel(
    context: Any, server: Server, digits_weights: Path, screenshots: Path
) -> None:
    page = context.new_page()
    page.goto(server.signin_url)  # the link `slimline serve` printed signs the local user in
    page.wait_for_url("**/jobs")
    expect(page.locator("#who")).to_have_text("signed in as local")
    assert server.key not in server.log()

    page.goto("/jobs/new")
    page.check("input[name=model-source][value=upload]")
    page.set_input_files("#model-file", str(digits_weights))
    page.select_option("#upload-zoo-name", "digits-cnn")
    page.select_option("#dataset", "digits")
    page.fill("#budget", "16x")
    page.select_option("#method", "constrained")
    page.fill("#epochs", "1")
    page.click("#submit-job")
    page.wait_for_url("**/jobs?submitted=*")
    job_id = page.url.rsplit("submitted=", 1)[1]

    # A second, long job queued behind the first: the one to cancel.
    model_id = server.api("GET", f"/v1/jobs/{job_id}").json()["model_id"]
    body = {"model": model_id, "data": "digits", "budget": "16x", "method": "uniform"}
    body["epochs"] = 500
    long_job = server.api("POST", "/v1/jobs", json=body)
    assert long_job.status_code == 201, long_job.text
    long_id = long_job.json()["id"]

    page.evaluate("window.__sameDocument = true")  # gone if the page reloads or navigates
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") is True
    expect(row.locator("progress")).to_have_attribute("value", "1")
    expect(row).to_contain_text("digits-cnn")
    page.screenshot(path=str(screenshots / "jobs-list.png"), full_page=True)

    row.locator("a").click()
    page.wait_for_url(f"**/jobs/{job_id}")
    expect(page.locator("body")).to_have_attribute("data-loaded-status", "succeeded")
    for chart in ("#bytes-chart", "#plan-chart", "#train-chart", "#pareto-chart"):
        expect(page.locator(chart)).to_have_attribute("data-drawn", "true")
        assert canvas_ink(page, chart) > 500, f"{chart} is blank"
    expect(page.locator("ol.timeline li.done")).to_have_count(5)
    expect(page.locator("#numbers")).to_contain_text("within budget")

    with page.expect_download() as download:
        page.click("a[data-kind=checkpoint]")
    got = hashlib.sha256(Path(download.value.path()).read_bytes()).hexdigest()
    arts = server.api("GET", f"/v1/jobs/{job_id}/artifacts").json()
    assert got == next(a["sha256"] for a in arts if a["kind"] == "checkpoint")

    page.fill("#resolve-budget", "lots")
    page.click("#resolve-button")
    expect(page.locator("#resolve-budget-error")).to_contain_text("budget")
    page.fill("#resolve-budget", "8x")
    page.click("#resolve-button")
    expect(page.locator("#resolve-summary")).to_contain_text("predicted file")
    expect(page.locator("#resolve-budget-error")).to_be_empty()
    page.screenshot(path=str(screenshots / "job-page.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(screenshots / "job-page-phone.png"), full_page=True)
    page.set_viewport_size(LAPTOP)

    page.goto(f"/jobs/{long_id}")
    expect(page.locator("body")).to_have_attribute("data-loaded-status", "running", timeout=60_000)
    page.click("#cancel-job")
    expect(page.locator("#job-status .status")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#cancel-job")).to_be_hidden()
    page.goto("/jobs?status=cancelled")
    expect(page.locator(f"tr[data-job-id='{long_id}']")).to_be_visible()
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(screenshots / "jobs-list-phone.png"), full_page=True)
    assert server.key not in server.log()


def test_sign_in_by_key_sets_a_strict_httponly_cookie(context: Any, server: Server) -> None:
    page = context.new_page()
    page.goto("/signin")
    page.fill("#key", "sl_not-a-key")
    page.click("button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("not valid")
    sign_in_with_key(page, server.key)
    (cookie,) = [c for c in context.cookies() if c["name"] == "slimline_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert "slimline_session" not in page.evaluate("document.cookie")  # scripts cannot read it
    # A change carried by the cookie alone (as a cross-site form would send it) is refused.
    refused = context.request.post(f"/v1/jobs/{uuid.uuid4()}/cancel")
    assert refused.status == 401 and refused.json()["code"] == "unauthorized"
    page.click("#sign-out")
    page.wait_for_url("**/signin")
    page.goto("/jobs")
    page.wait_for_url("**/signin?next=*")


def test_form_errors_are_shown_beside_their_fields(context: Any, server: Server) -> None:
    page = context.new_page()
    sign_in_with_key(page, server.key)
    page.goto("/jobs/new")
    page.check("input[name=model-source][value=upload]")
    page.click("#submit-job")
    expect(page.locator("#model-file-error")).to_contain_text("choose")
    page.check("input[name=model-source][value=existing]")
    if page.locator("#existing-model option[value='']").count():
        pytest.skip("no uploaded model yet (runs after the main flow)")
    page.fill("#budget", "lots")
    page.click("#submit-job")
    expect(page.locator("#budget-error")).not_to_be_empty()
    expect(page.locator("#budget")).to_have_attribute("aria-invalid", "true")
    page.fill("#budget", "16x")
    page.fill("#epochs", "-1")
    page.click("#submit-job")
    expect(page.locator("#epochs-error")).to_contain_text("greater than 0")
    expect(page.locator("#budget-error")).to_be_empty()


def test_another_tenants_job_is_not_found(context: Any, server: Server) -> None:
    engine = make_engine(Settings(data_dir=server.data_dir).database_url)
    try:
        with session_scope(engine) as s:
            other = jobs.create_tenant(s, f"other-{uuid.uuid4().hex[:8]}")
            model, _ = add_model(
                s, other.id, sha256=uuid.uuid4().hex * 2, kind="zoo", zoo_name="lenet5",
                filename="lenet5", path="", bytes=0,
            )  # fmt: skip
            job, _ = jobs.create_job(
                s, other.id, {"budget": "16x", "method": "uniform"}, model_id=model.id,
                data_name="mnist",
            )  # fmt: skip
            jobs.request_cancel(s, other.id, job.id)  # never run: queued -> cancelled at once
    finally:
        engine.dispose()
    page = context.new_page()
    sign_in_with_key(page, server.key)
    for job_id in (job.id, str(uuid.uuid4())):
        response = page.goto(f"/jobs/{job_id}")
        assert response is not None and response.status == 404
        expect(page.locator("#not-found")).to_have_text("Not found")
    page.goto("/jobs")
    expect(page.locator("#jobs-table")).to_have_attribute("data-loaded", "true")
    expect(page.locator(f"tr[data-job-id='{job.id}']")).to_have_count(0)


def test_list_pages_by_cursor_and_filters_by_status(context: Any, server: Server) -> None:
    page = context.new_page()
    sign_in_with_key(page, server.key)
    page.goto("/jobs?limit=1")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(1)
    first = rows.first.get_attribute("data-job-id")
    if page.locator("#next-page").is_disabled():
        pytest.skip("one job only (runs after the main flow)")
    page.click("#next-page")
    page.wait_for_url("**/jobs?cursor=*")
    expect(page.locator("#page-info")).to_have_text("page 2")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-job-id") != first
    page.goto("/jobs")
    page.select_option("#status-filter", "succeeded")
    page.wait_for_url("**/jobs?status=succeeded")
    expect(page.locator("#jobs-table")).to_have_attribute("data-loaded", "true")
    statuses = page.locator("#jobs-body tr").evaluate_all("rs => rs.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"succeeded"}
