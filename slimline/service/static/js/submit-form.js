// The submit form: upload (or name) the model and the data, then create the job. Each API
// error ({code, message, field}) is shown next to the field it names.
"use strict";

const ZOO = ["digits-cnn", "lenet5", "lenet300", "resnet20", "mobilenet-small", "vit-tiny", "bytegpt"];
const form = document.getElementById("submit-form");
const notice = document.getElementById("submit-notice");
const statusLine = document.getElementById("submit-status");

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}
let idempotencyKey = newKey();

function radio(name) { return form.querySelector(`input[name="${name}"]:checked`).value; }
function showSource(name) {
  const chosen = radio(name);
  const group = form.querySelector(`input[name="${name}"]`).closest("fieldset");
  group.querySelectorAll(".field[data-source]").forEach((f) => { f.hidden = f.dataset.source !== chosen; });
}
for (const name of ["model-source", "data-source"]) {
  form.querySelectorAll(`input[name="${name}"]`).forEach((r) => r.addEventListener("change", () => showSource(name)));
}

function fillSelect(select, values, blank) {
  const opts = values.map(([v, label]) => el("option", { value: v, text: label }));
  if (blank) opts.unshift(el("option", { value: "", text: blank }));
  select.replaceChildren(...opts);
}
fillSelect(document.getElementById("zoo-model"), ZOO.map((z) => [z, z]));
fillSelect(document.getElementById("upload-zoo-name"), ZOO.map((z) => [z, z]), "none: a .pt2 program");

async function loadModels() {
  const models = await api("/v1/models");
  const usable = models.filter((m) => m.status !== "invalid");
  fillSelect(document.getElementById("existing-model"),
    usable.map((m) => [m.id, `${m.zoo_name || m.filename} (${m.id.slice(0, 8)}, ${m.status})`]),
    usable.length ? null : "no uploaded models yet");
}

class FieldError extends Error {
  constructor(field, message) { super(message); this.field = field; }
}

async function modelId() {
  const source = radio("model-source");
  if (source === "existing") {
    const id = document.getElementById("existing-model").value;
    if (!id) throw new FieldError("existing-model", "choose an uploaded model, or upload one");
    return { id, field: "existing-model" };
  }
  const fd = new FormData();
  let map;
  if (source === "zoo") {
    fd.append("name", document.getElementById("zoo-model").value);
    fd.append("config", "{}");
    map = { name: "zoo-model", config: "zoo-model", file: "zoo-model" };
  } else {
    const file = document.getElementById("model-file").files[0];
    if (!file) throw new FieldError("model-file", "choose a .pt2 or .safetensors file");
    const arch = document.getElementById("upload-zoo-name").value;
    if (arch) { fd.append("name", arch); fd.append("config", "{}"); }
    fd.append("file", file);
    map = { file: "model-file", name: "upload-zoo-name", config: "upload-zoo-name" };
  }
  statusLine.textContent = "uploading the model…";
  try {
    const m = await api("/v1/models", { method: "POST", form: fd });
    return { id: m.id, field: source === "zoo" ? "zoo-model" : "model-file" };
  } catch (err) {
    if (err instanceof ApiError) err.field = map[err.field] || (source === "zoo" ? "zoo-model" : "model-file");
    throw err;
  }
}

async function dataRef() {
  if (radio("data-source") === "named") return { id: document.getElementById("dataset").value, field: "dataset" };
  const file = document.getElementById("data-file").files[0];
  if (!file) throw new FieldError("data-file", "choose a .npz or .safetensors file");
  const fd = new FormData();
  fd.append("file", file);
  statusLine.textContent = "uploading the data…";
  try {
    const d = await api("/v1/datasets", { method: "POST", form: fd });
    return { id: d.id, field: "data-file" };
  } catch (err) {
    if (err instanceof ApiError) err.field = "data-file";
    throw err;
  }
}

function show(err, map) {
  statusLine.textContent = "";
  const ids = { ...map };
  if (err.field) ids[err.field] = ids[err.field] || err.field;
  const shown = showFieldError(err, ids, notice);
  if (!shown) notice.textContent = err.message;
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearFieldErrors(form);
  notice.textContent = "";
  const button = document.getElementById("submit-job");
  button.disabled = true;
  let map = { budget: "budget", method: "method", epochs: "epochs" };
  try {
    const model = await modelId();
    const data = await dataRef();
    map = { ...map, model: model.field, data: data.field };
    const body = {
      model: model.id, data: data.id, budget: document.getElementById("budget").value.trim(),
      method: document.getElementById("method").value,
    };
    const epochs = document.getElementById("epochs").value.trim();
    if (epochs !== "") body.epochs = Number(epochs);
    statusLine.textContent = "submitting…";
    const job = await api("/v1/jobs", { method: "POST", json: body, headers: { "Idempotency-Key": idempotencyKey } });
    idempotencyKey = newKey();
    location.assign(`/jobs?submitted=${encodeURIComponent(job.id)}`);
  } catch (err) {
    show(err, map);
  } finally {
    button.disabled = false;
  }
});

fillHeader();
loadModels().catch((err) => { notice.textContent = `Could not list your models: ${err.message}`; });
