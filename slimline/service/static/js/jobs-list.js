// The jobs list: one page (cursor pagination, status filter), re-read every POLL_MS so status,
// stage and progress move without a reload.
"use strict";

const POLL_MS = 1000;
const params = new URLSearchParams(location.search);
const state = {
  status: params.get("status") || "",
  cursor: params.get("cursor") || "",
  limit: Math.min(500, Math.max(1, parseInt(params.get("limit") || "50", 10) || 50)),
  fresh: params.get("submitted"),
  pageNo: parseInt(params.get("page") || "1", 10) || 1,
  uploads: null,
  next: null,
};

function row(job, now) {
  const pct = jobProgress(job);
  const m = job.metrics || {};
  const cell = (label, attrs, ...kids) => el("td", { "data-label": label, ...attrs }, ...kids);
  const tr = el("tr", { "data-job-id": job.id, "data-status": job.status, class: job.id === state.fresh ? "fresh" : null },
    cell("Job", {}, el("a", { href: `/jobs/${job.id}`, class: "mono", text: job.id.slice(0, 8) })),
    cell("Status", {}, statusBadge(job.status), job.cancel_requested && !TERMINAL.includes(job.status) ? " cancelling" : ""),
    cell("Stage", { class: "stage", text: job.stage || "–" }),
    cell("Progress", {},
      el("progress", { max: "1", value: String(pct), "aria-label": `progress ${Math.round(100 * pct)}%` }),
      ` ${Math.round(100 * pct)}%`),
    cell("Model", { text: modelLabel(job, state.uploads && state.uploads.models) }),
    cell("Data", { text: dataLabel(job, state.uploads && state.uploads.datasets) }),
    cell("Budget", { text: (job.spec && job.spec.budget) || "–" }),
    cell("Ratio", { class: "num", text: fmtRatio(m.ratio) }),
    cell("Retention", { class: "num", text: fmtPct(m.retention) }),
    cell("Age", { title: job.created_at, text: fmtAge(job.created_at, now) }));
  return tr;
}

function pageUrl(cursor, pageNo) {
  const q = new URLSearchParams();
  if (state.status) q.set("status", state.status);
  if (cursor) q.set("cursor", cursor);
  if (pageNo > 1) q.set("page", String(pageNo));
  if (state.limit !== 50) q.set("limit", String(state.limit));
  const s = q.toString();
  return "/jobs" + (s ? `?${s}` : "");
}

function readPage() {
  const q = new URLSearchParams({ limit: String(state.limit) });
  if (state.status) q.append("status", state.status);
  if (state.cursor) q.set("cursor", state.cursor);
  return api(`/v1/jobs?${q}`);
}

async function refresh(first) {
  const page = first || await readPage();
  const unknown = page.items.some((j) => !state.uploads.models.has(j.model_id)
    || (j.dataset_id && !state.uploads.datasets.has(j.dataset_id)));
  if (unknown) state.uploads = await loadUploads();
  const now = Date.now();
  const body = document.getElementById("jobs-body");
  body.replaceChildren(...page.items.map((j) => row(j, now)));
  document.getElementById("empty").hidden = page.items.length > 0;
  state.next = page.next_cursor;
  document.getElementById("next-page").disabled = !page.next_cursor;
  document.getElementById("first-page").disabled = !state.cursor;
  document.getElementById("page-info").textContent = `page ${state.pageNo}`;
  document.getElementById("live").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
  document.getElementById("list-notice").textContent = "";
  const table = document.getElementById("jobs-table");
  if (!table.dataset.loaded) {
    table.dataset.loaded = "true";
    window.slimlineListRenderedMs = performance.now(); // read by bench/dashboard_render.py
  }
}

async function poll(first) {
  try {
    if (first || !document.hidden) await refresh(first);
  } catch (err) {
    document.getElementById("list-notice").textContent = `Could not update the list: ${err.message}`;
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("status-filter").value = state.status;
document.getElementById("status-filter").addEventListener("change", (ev) => {
  state.status = ev.target.value;
  location.assign(pageUrl("", 1));
});
document.getElementById("next-page").addEventListener("click", () => {
  if (state.next) location.assign(pageUrl(state.next, state.pageNo + 1));
});
document.getElementById("first-page").addEventListener("click", () => location.assign(pageUrl("", 1)));

fillHeader();
Promise.all([loadUploads(), readPage()]).then(([u, first]) => { state.uploads = u; poll(first); }).catch((err) => {
  document.getElementById("list-notice").textContent = `Could not load jobs: ${err.message}`;
});
