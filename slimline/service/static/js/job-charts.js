// The job page's charts (Chart.js, vendored): bytes per layer, bits and sparsity per layer,
// estimated damage against file size (Pareto curve, chosen plan, budget, re-solved plan),
// and the fine-tuning curves. Okabe-Ito colours: told apart with colour-blindness too.
"use strict";

const COLORS = { blue: "#0072B2", orange: "#E69F00", green: "#009E73", red: "#D55E00",
  sky: "#56B4E9", purple: "#CC79A7", grey: "#8c959f" };
const SERIES = [COLORS.blue, COLORS.orange, COLORS.green, COLORS.purple, COLORS.sky, COLORS.red];
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.font.family = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
Chart.defaults.color = "#1b1f24";

// "nm2:4/b4/ch" -> {bits: 4, sparsity: 0.5}; "un0.0625/b3/g64" -> 93.75% sparse; "removed".
function parseOption(text) {
  if (text === "removed") return { bits: 0, sparsity: 1 };
  const [head, b] = String(text).split("/");
  const bits = b && b.startsWith("b") ? Number(b.slice(1)) : NaN;
  let sparsity = 0;
  if (head.startsWith("nm")) {
    const [n, m] = head.slice(2).split(":").map(Number);
    sparsity = 1 - n / m;
  } else if (head.startsWith("un")) {
    sparsity = 1 - Number(head.slice(2));
  }
  return { bits, sparsity };
}

const charts = {};
function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart(document.getElementById(id), config);
  document.getElementById(id).dataset.drawn = "true";
  const empty = document.getElementById(id.replace("-chart", "-empty"));
  if (empty) empty.hidden = true;
  return charts[id];
}

function drawBytes(layers) {
  draw("bytes-chart", {
    type: "bar",
    data: {
      labels: layers.map((l) => l.name),
      datasets: [{ label: "bytes in the file", data: layers.map((l) => l.bytes), backgroundColor: COLORS.blue }],
    },
    options: {
      indexAxis: layers.length > 12 ? "y" : "x",
      plugins: { tooltip: { callbacks: {
        afterLabel: (c) => `${layers[c.dataIndex].option}; fp32 ${fmtBytes(layers[c.dataIndex].dense_bytes)}`,
      } } },
      scales: { [layers.length > 12 ? "x" : "y"]: { title: { display: true, text: "bytes" }, beginAtZero: true } },
    },
  });
}

function drawPlan(options) { // [{name, option}]
  const parsed = options.map((o) => ({ ...o, ...parseOption(o.option) }));
  draw("plan-chart", {
    type: "bar",
    data: {
      labels: parsed.map((p) => p.name),
      datasets: [
        { label: "bits per kept weight", data: parsed.map((p) => p.bits), backgroundColor: COLORS.blue, yAxisID: "bits" },
        { label: "sparsity (%)", data: parsed.map((p) => Math.round(1000 * p.sparsity) / 10), backgroundColor: COLORS.orange, yAxisID: "sparsity" },
      ],
    },
    options: {
      plugins: { tooltip: { callbacks: { afterBody: (items) => parsed[items[0].dataIndex].option } } },
      scales: {
        bits: { position: "left", min: 0, max: 16, title: { display: true, text: "bits" } },
        sparsity: { position: "right", min: 0, max: 100, title: { display: true, text: "sparsity %" },
          grid: { drawOnChartArea: false } },
      },
    },
  });
}

// points: [{file_bytes, damage}]; chosen {file_bytes, damage|null}; resolved {bytes, damage}|null
function drawPareto(points, chosen, budgetBytes, resolved) {
  const kb = (b) => b / 1000;
  const ys = points.map((p) => p.damage).filter((d) => isFinite(d));
  // Damage spans decades (a few tiny layers' worth near dense, large near the smallest file):
  // a log axis when every value is positive.
  const log = ys.length > 0 && ys.every((d) => d > 0) && (chosen.damage || 1) > 0;
  const top = Math.max(...ys, chosen.damage || 0), bottom = log ? Math.min(...ys) : Math.min(...ys, 0);
  const datasets = [
    { label: "least damage at each size (Pareto)", data: points.map((p) => ({ x: kb(p.file_bytes), y: p.damage })),
      showLine: true, borderColor: COLORS.blue, backgroundColor: COLORS.blue, pointRadius: 2 },
    { label: "budget", data: [{ x: kb(budgetBytes), y: bottom }, { x: kb(budgetBytes), y: top }],
      showLine: true, borderColor: COLORS.red, borderDash: [6, 4], pointRadius: 0 },
  ];
  if (chosen.damage !== null && chosen.damage !== undefined) {
    datasets.push({ label: "chosen plan", data: [{ x: kb(chosen.file_bytes), y: chosen.damage }],
      backgroundColor: COLORS.orange, borderColor: "#1b1f24", pointRadius: 7, pointStyle: "rectRot" });
  }
  if (resolved) {
    datasets.push({ label: "re-solved plan", data: [{ x: kb(resolved.bytes), y: resolved.damage }],
      backgroundColor: COLORS.green, borderColor: "#1b1f24", pointRadius: 7, pointStyle: "triangle" });
  }
  draw("pareto-chart", {
    type: "scatter",
    data: { datasets },
    options: { scales: {
      x: { title: { display: true, text: "file size (KB)" } },
      y: { type: log ? "logarithmic" : "linear",
        ticks: log ? { callback: (v) => Number(v).toExponential(0) } : {},
        title: { display: true, text: "estimated damage (lower is better)" } },
    } },
  });
}

// Loss-like and metric-like keys of the fine-tune progress events become curves.
const CURVE_KEY = /loss|metric|acc|perplexity|bits_per_token/i;
// Fine-tune progress events -> one line per loss/metric key; losses on the left axis. A method
// may train in phases whose steps restart (constrained: ADMM, then QAT): steps are chained.
function drawTraining(events) {
  const series = new Map();
  let offset = 0, prev = 0, phase;
  for (const e of events) {
    const d = e.data || {};
    if (typeof d.step !== "number") continue;
    if (d.step < prev || (d.phase !== undefined && phase !== undefined && d.phase !== phase)) offset += prev;
    prev = d.step;
    phase = d.phase;
    const x = offset + d.step;
    for (const [k, v] of Object.entries(d)) {
      if (!CURVE_KEY.test(k) || typeof v !== "number" || !isFinite(v)) continue;
      if (!series.has(k)) series.set(k, []);
      series.get(k).push({ x, y: v });
    }
  }
  if (series.size === 0) return false;
  let i = 0;
  const datasets = [...series].map(([k, pts]) => {
    const color = SERIES[i++ % SERIES.length];
    return { label: k, data: pts, showLine: true, borderColor: color, backgroundColor: color,
      pointRadius: pts.length > 60 ? 0 : 2, yAxisID: /loss/i.test(k) ? "loss" : "metric",
      borderDash: /loss/i.test(k) ? [] : [5, 3] };
  });
  const hasMetric = datasets.some((d) => d.yAxisID === "metric");
  const chart = charts["train-chart"];
  if (chart && chart.data.datasets.length === datasets.length) {
    chart.data.datasets.forEach((d, j) => { d.data = datasets[j].data; });
    chart.update();
    return true;
  }
  draw("train-chart", {
    type: "scatter",
    data: { datasets },
    options: { scales: {
      x: { title: { display: true, text: "fine-tuning step (all phases)" } },
      loss: { position: "left", title: { display: true, text: "loss" } },
      metric: { position: "right", display: hasMetric, title: { display: true, text: "metric" },
        grid: { drawOnChartArea: false } },
    } },
  });
  return true;
}
