// The job page: summary, stage timeline, report numbers, charts, downloads, cancel and
// re-solve. While the job runs it re-reads the job and its new events every POLL_MS.
"use strict";

const POLL_MS = 1000;
const jobId = decodeURIComponent(location.pathname.split("/").pop());
const page = { job: null, events: [], lastEvent: 0, report: null, uploads: null, resolved: null, artifactsShown: false };

async function readEvents() {
  for (;;) {
    const p = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events?after_id=${page.lastEvent}&limit=500`);
    page.events.push(...p.items);
    page.lastEvent = p.last_id;
    if (!p.more) return;
  }
}

function renderSummary(job) {
  document.getElementById("job-id").textContent = job.id.slice(0, 8);
  document.getElementById("job-id").title = job.id;
  document.getElementById("job-status").replaceChildren(statusBadge(job.status));
  document.title = `Job ${job.id.slice(0, 8)} (${job.status}) · slimline`;
  const spec = job.spec || {};
  const parts = [
    `model ${modelLabel(job, page.uploads && page.uploads.models)}`,
    `data ${dataLabel(job, page.uploads && page.uploads.datasets)}`,
    `budget ${spec.budget}`, `method ${spec.method}`,
    spec.epochs ? `${spec.epochs} epoch${spec.epochs === 1 ? "" : "s"}` : null,
    `submitted ${fmtAge(job.created_at)}`,
  ];
  document.getElementById("job-summary").textContent = parts.filter(Boolean).join(" · ");
  const pct = jobProgress(job);
  document.getElementById("job-progress").value = pct;
  document.getElementById("job-progress-text").textContent =
    `${Math.round(100 * pct)}%${job.stage && !TERMINAL.includes(job.status) ? ` (${job.stage})` : ""}`;
  const cancel = document.getElementById("cancel-job");
  cancel.hidden = TERMINAL.includes(job.status);
  cancel.disabled = job.cancel_requested;
  cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
  const notice = document.getElementById("job-notice");
  notice.textContent = job.status === "failed" && job.error ? `Failed: ${job.error.message || job.error.code}` : "";
}

// Stage start = its "stage" event; end = its "end" progress event, else the next start.
function renderTimeline(job) {
  const start = {}, end = {};
  for (const e of page.events) {
    if (e.kind === "stage" && e.stage && !(e.stage in start)) start[e.stage] = Date.parse(e.at);
    if (e.kind === "progress" && e.stage && e.data && e.data.event === "end") end[e.stage] = Date.parse(e.at);
  }
  const finished = job.finished_at ? Date.parse(job.finished_at) : null;
  const rows = STAGES.map((s, i) => {
    let t0 = start[s], t1 = end[s];
    if (t1 === undefined && t0 !== undefined) {
      const next = STAGES.slice(i + 1).map((n) => start[n]).find((x) => x !== undefined);
      t1 = next !== undefined ? next : (finished || Date.now());
    }
    const dur = t0 !== undefined ? Math.max(0, (t1 - t0) / 1000) : null;
    const state = dur === null ? "pending" : (s === job.stage && !TERMINAL.includes(job.status) ? "current" : "done");
    return { s, dur, state };
  });
  const longest = Math.max(1e-3, ...rows.map((r) => r.dur || 0));
  document.getElementById("timeline").replaceChildren(...rows.map((r) => el("li", { class: r.state, "data-stage": r.s },
    el("span", { text: r.s }),
    el("div", { class: "bar", style: `width:${r.dur === null ? 0 : Math.max(1, 100 * r.dur / longest)}%`,
      role: "presentation" }),
    el("span", { class: "dur", text: r.dur === null ? "–" : fmtSeconds(r.dur) }))));
}

function renderNumbers(m) {
  if (!m) return;
  const rows = [
    ["file size", `${fmtBytes(m.file_bytes)} (${(m.file_bytes || 0).toLocaleString()} bytes)`],
    ["budget", `${fmtBytes(m.budget_bytes)} — ${m.within_budget ? "within budget" : "over budget"}`],
    ["dense fp32", fmtBytes(m.dense_bytes)],
    ["ratio", `${fmtRatio(m.ratio)} (${fmtRatio(m.weight_bits_ratio)} on weight bits)`],
    ["metric", typeof m.metric === "number" ? `${m.metric.toFixed(4)} (dense ${Number(m.dense_metric).toFixed(4)})` : "–"],
    ["retention", fmtPct(m.retention, 2)],
    ["verified", m.verified ? "reloaded file equals the trained model" : "no"],
    ["total time", fmtSeconds(m.total_seconds)],
  ];
  if (m.stopped_early) rows.push(["stopped early", String(m.stopped_early)]);
  document.getElementById("numbers").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  document.getElementById("numbers-empty").hidden = true;
}

async function renderDownloads() {
  const arts = await api(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts`);
  const shown = arts.filter((a) => a.kind === "checkpoint" || a.kind === "report");
  document.getElementById("downloads").replaceChildren(...shown.map((a) => el("a", {
    class: "button primary", href: a.url, download: "", "data-kind": a.kind, "data-sha256": a.sha256,
    title: `sha256 ${a.sha256}`, text: `Download ${a.kind} (${fmtBytes(a.bytes)})`,
  })));
  page.artifactsShown = shown.length > 0;
}

function renderPlan(job) {
  const layers = page.report && page.report.report.layers;
  if (layers && layers.length) {
    drawBytes(layers);
    drawPlan(layers.map((l) => ({ name: l.name, option: l.option })));
  } else if (job.plan && job.plan.layers) {
    drawPlan(Object.entries(job.plan.layers).map(([name, option]) => ({ name, option })));
  }
}

function renderPareto() {
  if (!page.report) return;
  const r = page.report.report;
  if (!r.pareto || !r.pareto.length) {
    document.getElementById("pareto-empty").textContent =
      `Method ${r.method} stored no layer scores, so there is no size/damage curve to draw or re-solve (scoring methods such as constrained store them).`;
    return;
  }
  drawPareto(r.pareto, { file_bytes: r.file_bytes, damage: page.report.plan_damage }, r.budget_bytes, page.resolved);
}

function renderTraining() {
  const ft = page.events.filter((e) => e.kind === "progress" && e.stage === "fine-tune");
  if (drawTraining(ft)) document.getElementById("train-empty").hidden = true;
}

async function refresh() {
  const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
  page.job = job;
  await readEvents();
  if (job.status === "succeeded" && !page.report) {
    page.report = await api(`/v1/jobs/${encodeURIComponent(jobId)}/report`);
    renderNumbers(job.metrics);
    renderPareto();
  }
  if (job.status === "succeeded" && !page.artifactsShown) await renderDownloads();
  renderSummary(job);
  renderTimeline(job);
  renderPlan(job);
  renderTraining();
  document.body.dataset.loadedStatus = job.status;
  return job;
}

async function poll() {
  let job = null;
  try {
    job = await refresh();
  } catch (err) {
    document.getElementById("job-notice").textContent = `Could not update: ${err.message}`;
  }
  if (!job || !TERMINAL.includes(job.status)) setTimeout(poll, POLL_MS);
}

document.getElementById("cancel-job").addEventListener("click", async (ev) => {
  ev.target.disabled = true;
  try {
    renderSummary(await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }));
  } catch (err) {
    document.getElementById("job-notice").textContent = err.message;
  }
});

document.getElementById("resolve-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, out = document.getElementById("resolve-result");
  clearFieldErrors(form);
  out.replaceChildren();
  const budget = document.getElementById("resolve-budget").value.trim();
  try {
    const r = await api(`/v1/jobs/${encodeURIComponent(jobId)}/resolve`, { method: "POST", json: { budget } });
    page.resolved = r;
    const current = (page.job.plan && page.job.plan.layers) || {};
    const changed = Object.entries(r.plan).filter(([n, o]) => current[n] !== o);
    out.replaceChildren(
      el("p", { id: "resolve-summary", text: `Budget ${r.budget} (${fmtBytes(r.budget_bytes)}): predicted file ${fmtBytes(r.bytes)}, estimated damage ${r.damage.toPrecision(3)}; ${changed.length} of ${Object.keys(r.plan).length} layers change.` }),
      changed.length ? el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, el("th", { text: "layer" }), el("th", { text: "this job" }), el("th", { text: "re-solved" }))),
        el("tbody", {}, ...changed.map(([n, o]) => el("tr", {}, el("td", { text: n }),
          el("td", { class: "mono", text: current[n] || "–" }), el("td", { class: "mono", text: o })))))) : null,
      el("p", { class: "muted", text: "Submit a job with this budget to get its checkpoint." }));
    renderPareto();
  } catch (err) {
    showFieldError(err, { budget: "resolve-budget", job_id: "resolve-budget" }, out);
  }
});

fillHeader();
loadUploads().then((u) => { page.uploads = u; }).catch(() => {}).finally(poll);
