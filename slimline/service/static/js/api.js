// Shared by every dashboard page: calls to the REST API with the session cookie, its JSON
// errors ({code, message, field}), formatting, and DOM helpers (text only: no innerHTML).
"use strict";

const STAGES = ["inspect", "plan", "fine-tune", "export", "verify"];
const TERMINAL = ["succeeded", "failed", "cancelled"];

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || "error";
    this.field = (body && body.field) || null;
  }
}

async function api(path, { method = "GET", json, form, headers = {} } = {}) {
  const init = { method, credentials: "same-origin", headers: { ...headers } };
  if (method !== "GET") init.headers["X-Requested-With"] = "slimline-dashboard";
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const res = await fetch(path, init);
  if (res.status === 204) return null;
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    if (res.status === 401 && method === "GET" && !path.startsWith("/v1/session")) {
      location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
    }
    throw new ApiError(res.status, body);
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1000).toFixed(1)} KB`;
  return `${(n / 1e6).toFixed(2)} MB`;
}
function fmtRatio(x) { return typeof x === "number" ? `${x.toFixed(1)}×` : "–"; }
function fmtPct(x, digits = 1) { return typeof x === "number" ? `${(100 * x).toFixed(digits)}%` : "–"; }
function fmtSeconds(s) {
  if (typeof s !== "number" || !isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
function fmtAge(iso, now = Date.now()) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// Whole-job progress in [0, 1]: finished stages plus the current stage's fraction.
function jobProgress(job) {
  if (job.status === "succeeded") return 1;
  const i = STAGES.indexOf(job.stage);
  if (i < 0) return 0;
  return Math.min(1, (i + (job.progress || 0)) / STAGES.length);
}

function statusBadge(status) {
  return el("span", { class: `status status-${status}`, "data-status": status, text: status });
}

function modelLabel(job, models) {
  const m = models && models.get(job.model_id);
  if (!m) return job.model_id.slice(0, 8);
  return m.zoo_name || m.filename;
}
function dataLabel(job, datasets) {
  if (job.data_name) return job.data_name;
  const d = datasets && datasets.get(job.dataset_id);
  return d ? d.filename : (job.dataset_id || "").slice(0, 8);
}

async function loadUploads() {
  const [models, datasets] = await Promise.all([api("/v1/models"), api("/v1/datasets")]);
  return { models: new Map(models.map((m) => [m.id, m])), datasets: new Map(datasets.map((d) => [d.id, d])) };
}

async function fillHeader() {
  const who = document.getElementById("who");
  try {
    const s = await api("/v1/session");
    if (who) who.textContent = `signed in as ${s.tenant}`;
  } catch (e) { /* the 401 redirect is in api() */ }
  const out = document.getElementById("sign-out");
  if (out) out.addEventListener("click", async () => {
    await api("/v1/session", { method: "DELETE" });
    location.assign("/signin");
  });
}

// Show an API error next to the field it concerns (ids "<field>-error"), else in `fallback`.
function showFieldError(err, fieldMap, fallback) {
  const field = err.field ? (fieldMap[err.field] || fieldMap[err.field.split(".")[0]] || null) : null;
  const box = field && document.getElementById(`${field}-error`);
  if (box) {
    box.textContent = err.message;
    const input = document.getElementById(field);
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
    return field;
  }
  if (fallback) fallback.textContent = err.message;
  return null;
}
function clearFieldErrors(root) {
  root.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  root.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
}
