// Health at a glance: one published version as four plots (plotly.js), from
// GET /versions/{v}/health. How the model trained (recall and NDCG@k by epoch), how close the
// index search comes to exact search, how much of the catalog the fixed fan sample is shown,
// and how popular what it is shown is against the catalog. Each plot's caption says its figures
// in words (a screen reader reads the caption, not the plot). Below them, two tables: how far the
// version drifted from the one it replaced (the rebuild's figures and limits) and what the
// relevance monitor saw it serve.

import { $, api, loadPlotly } from "./api.js";

const CONFIG = { responsive: true, displaylogo: false };
const BASE = { margin: { l: 60, r: 15, t: 40, b: 50 }, font: { size: 12 }, legend: { orientation: "h", y: -0.3 } };
const pct = (x, digits = 1) => `${(100 * x).toFixed(digits)} %`;
const times = (x) => `${x < 10 ? x.toFixed(1) : x.toFixed(0)}×`;
const count = (x) => Math.round(x).toLocaleString("en");

function layout(title, x, y, extra = {}) {
  return { ...BASE, title: { text: title, font: { size: 14 } }, xaxis: { title: { text: x }, ...extra.x }, yaxis: { title: { text: y }, ...extra.y }, ...extra.rest };
}

function keysOf(evaluations, metric) {
  const keys = new Set(evaluations.flatMap((e) => Object.keys(e).filter((key) => key.startsWith(`${metric}@`))));
  return [...keys].sort();
}

function byEpoch(evaluations, metrics) {
  const x = evaluations.map((e) => e.epoch);
  return metrics.flatMap((m) => keysOf(evaluations, m)).map((key) => ({
    type: "scatter", mode: "lines+markers", name: key, x, y: evaluations.map((e) => e[key]),
  }));
}

function epochLine(epoch) {
  return epoch === null || epoch === undefined ? [] : [{
    type: "line", x0: epoch, x1: epoch, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#4a5360" },
  }];
}

function training(h) {
  const t = h.training;
  const ev = t.evaluations;
  if (!ev.length) {
    $("health-training").replaceChildren();
    return (($("health-training-text").textContent = `Training: ${t.note}`), null);
  }
  const last = ev.at(-1);
  const figures = [...keysOf(ev, "recall"), ...keysOf(ev, "ndcg")].map((key) => `${key} ${last[key].toFixed(4)}`);
  $("health-training-text").textContent = `Training's evaluation on the ${last.split} split, by epoch; ` +
    `the served weights are from epoch ${t.checkpoint_epoch} (dotted line). Last: ${figures.join(", ")}.`;
  return Plotly.react("health-training", byEpoch(ev, ["recall", "ndcg"]),
    layout("Training: recall and NDCG by epoch", "epoch", "score", {
      x: { dtick: 1 }, y: { rangemode: "tozero" }, rest: { shapes: epochLine(t.checkpoint_epoch) },
    }), CONFIG);
}

function params(p) {
  return Object.entries(p).map(([k, v]) => `${k} ${v}`).join(", ");
}

function search(h) {
  const s = h.search;
  if (!s) return (($("health-search-text").textContent = "The index was not tuned: no recall was measured."), null);
  const at = `recall@${s.k}`;
  const curve = {
    type: "scatter", mode: "markers", name: "settings measured", x: s.curve.map((p) => p.qps),
    y: s.curve.map((p) => p.recall), text: s.curve.map((p) => params(p.params)), hoverinfo: "text+x+y",
  };
  const chosen = {
    type: "scatter", mode: "markers", name: "served", x: [s.chosen.qps], y: [s.chosen.recall],
    text: [params(s.chosen.params)], marker: { size: 13, symbol: "star", color: "#a40e26" },
  };
  const exact = { type: "scatter", mode: "markers", name: "exact search", x: [s.exact_qps], y: [1], marker: { size: 10, symbol: "square" } };
  $("health-search-text").textContent = `${s.factory}: ${at} ${s.chosen.recall.toFixed(3)} against exact search ` +
    `on ${count(s.queries)} real fan vectors (target ${s.recall_target}), with ${params(s.chosen.params)}: ` +
    `${count(s.chosen.qps)} queries/s, ${times(s.chosen.qps / s.exact_qps)} exact search's ${count(s.exact_qps)}.`;
  return Plotly.react("health-search", [curve, chosen, exact],
    layout(`Index search: ${at} against exact search`, "queries per second (one core, log)", at, {
      x: { type: "log" }, y: { range: [Math.min(0.5, ...s.curve.map((p) => p.recall)) - 0.02, 1.02] },
    }), CONFIG);
}

function coverage(h) {
  const r = h.recommended;
  const traces = byEpoch(h.training.evaluations, ["coverage"]);
  const served = {
    type: "line", xref: "paper", x0: 0, x1: 1, y0: r.coverage, y1: r.coverage, line: { dash: "dash", color: "#a40e26" },
  };
  $("health-coverage-text").textContent = `${count(r.distinct)} distinct creators in ${count(r.fans)} sampled fans' ` +
    `top ${r.k}: ${pct(r.coverage, r.coverage < 0.01 ? 3 : 1)} of ${count(r.catalog)} creators (dashed line); the lines are training's ` +
    "coverage of its evaluation fans' lists by epoch.";
  return Plotly.react("health-coverage", traces,
    layout("Catalog coverage", "epoch", "share of the catalog", {
      x: { dtick: 1 }, y: { tickformat: ".2~%", rangemode: "tozero" },
      rest: { shapes: [served], annotations: [{ xref: "paper", x: 0, y: r.coverage, yanchor: "bottom", xanchor: "left", showarrow: false, text: `served, fan sample (top ${r.k})` }] },
    }), CONFIG);
}

function popularity(h) {
  const r = h.recommended;
  const labels = r.bands.map((b) => b.label);
  const bars = [
    { type: "bar", name: "catalog's creators", x: labels, y: r.bands.map((b) => b.catalog_share), marker: { color: "#8c959f" } },
    { type: "bar", name: "recommended (list slots)", x: labels, y: r.bands.map((b) => b.recommended_share), marker: { color: "#0b5cad" } },
  ];
  $("health-popularity-text").textContent = `A recommended creator has ${r.mean_popularity.toFixed(1)} training ` +
    `interactions on average (the catalog's: ${r.catalog_mean_popularity.toFixed(1)}); ${pct(r.top_1pct_share)} ` +
    "of the list slots go to the catalog's 1 % most popular creators.";
  return Plotly.react("health-popularity", bars,
    layout("Popularity of what is recommended", "training interactions of the creator", "share", {
      x: { type: "category" }, y: { tickformat: ".0%" }, rest: { barmode: "group" },
    }), CONFIG);
}

// One table row of a figure: each cell's text, and its class for the style and the tests.
function tableRow(figure, cells) {
  const tr = document.createElement("tr");
  tr.dataset.figure = figure;
  for (const [text, name] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    td.dataset.figure = figure;
    td.className = name;
    tr.append(td);
  }
  return tr;
}

// The drift the rebuild measured against the version this one replaced (index.drift), each
// figure beside the limit the index config set when it was published and the rebuild's verdict.
const signed = (x) => `${x > 0 ? "+" : ""}${x.toFixed(3)}`;
const DRIFT = {
  cosine_shift: [(k) => "mean 1 − cosine of a creator's old vector, rotated onto the new space (orthogonal Procrustes), and its new one: 0 is the same geometry", (x) => x.toFixed(3)],
  cosine_shift_unaligned: [(k) => "the same without the rotation: what comparing the two versions' raw vectors would see", (x) => x.toFixed(3)],
  neighbour_overlap: [(k) => `share of a creator's ${k} nearest creators that both versions give it`, (x) => x.toFixed(3)],
  list_overlap: [(k) => `share of a sampled fan's top ${k} that both versions recommend`, (x) => x.toFixed(3)],
  rank_correlation: [(k) => "Kendall's τ_b of a fan's two lists over their union: 1 is the same creators in the same order, lower as they change or move", (x) => x.toFixed(3)],
  popularity_shift: [(k) => "change in the mean catalog popularity percentile of what fans are shown: + is more popular", signed],
  two_sample_auc: [(k) => "ROC-AUC of a linear classifier telling old (aligned) from new vectors: 0.5 cannot tell them apart, 1 always can", (x) => x.toFixed(3)],
};
const BOUND = { max: (x) => `≤ ${x}`, min: (x) => `≥ ${x}`, abs: (x) => `|x| ≤ ${x}` };
const VERDICT = new Map([[true, "ok"], [false, "over"], [null, "not checked"]]);

function driftRow(f, k) {
  const [words, format] = DRIFT[f.figure];
  const value = f.value === null ? "not measured" : format(f.value);
  const limit = f.limit === null ? (f.threshold ? "not set" : "none") : BOUND[f.kind](f.limit);
  return tableRow(f.figure, [[f.figure, "name"], [value, "value"], [limit, "limit"], [VERDICT.get(f.ok), `verdict ${VERDICT.get(f.ok).replace(" ", "-")}`], [words(k), "words"]]);
}

function drifted(h) {
  const d = h.drift;
  const table = $("health-drift");
  table.hidden = !d.measured;
  if (!d.measured) {
    $("health-drift-text").textContent = `No drift to show: ${d.reason}.`;
    return;
  }
  table.tBodies[0].replaceChildren(...d.figures.map((f) => driftRow(f, d.k)));
  const over = d.figures.filter((f) => f.ok === false).map((f) => f.figure);
  const checked = d.figures.some((f) => f.ok !== null);
  const verdict = d.forced ? `Published past ${over.length} limit(s) with --allow_drift true: ${over.join(", ")}.`
    : checked ? "Within every limit set." : "No limit was set: nothing was checked.";
  const on = `${count(d.context.creators_joined)} creators in both, ${count(d.context.fans)} sampled fans`;
  $("health-drift-text").textContent = `Measured against ${d.against} before this version was published (${on}; ` +
    `overlaps at ${d.k}). ${verdict} The full report is ${d.report} in the version's folder of the index store.`;
}

// The relevance monitor's figures for the version (GET /monitor/report, the monitoring room),
// the latest window it served in; what each says in words beside it.
const MONITOR = [
  ["answers", "answers logged in the window", count],
  ["coverage", "share of the catalog listed at least once", pct],
  ["gini", "Gini of exposure (0: even, 1: one creator takes all)", (x) => x.toFixed(3)],
  ["long_tail_share", "share of list slots to long-tail creators", pct],
  ["new_share", "share of list slots to new creators", pct],
  ["novelty", "mean self-information of what is listed (bits)", (x) => x.toFixed(2)],
  ["intra_list_diversity", "mean pairwise cosine distance within a list", (x) => x.toFixed(3)],
  ["personalisation", "1 − mean overlap of two fans' lists", (x) => x.toFixed(3)],
  ["calibration_kl", "KL of a list's category mix from the fan's history", (x) => x.toFixed(3)],
  ["online_recall", "share of later interactions listed to the fan before", pct],
];

async function monitored(version) {
  const table = $("health-monitor");
  table.hidden = true;
  let report;
  try {
    report = await api(`/monitor/report?version=${encodeURIComponent(version)}`);
  } catch (error) {
    $("health-monitor-text").textContent = `No monitor report for this version: ${error.message}`;
    return;
  }
  const row = report.rows[report.rows.length - 1];
  table.tBodies[0].replaceChildren(...MONITOR.map(([key, words, format]) => {
    const value = row[key] === null || row[key] === undefined ? "not measured" : format(row[key]);
    return tableRow(key, [[key, "name"], [value, "value"], [words, "words"]]);
  }));
  table.hidden = false;
  const breaches = report.breaches.length ? ` ${report.breaches.length} breach(es): ${report.breaches.join("; ")}.` : " No breach.";
  const link = Object.assign(document.createElement("a"), { href: report.html, textContent: "the full report" });
  $("health-monitor-text").replaceChildren(`Window from ${row.window_start} to ${row.window_end}, measured ${report.made_at}.${breaches} See `, link, ".");
}

export async function showHealth(version, k) {
  monitored(version);
  $("health-drift").hidden = true;
  $("health-drift-text").textContent = "";
  $("health-status").textContent = "Measuring…";
  try {
    const [h] = await Promise.all([api(`/versions/${encodeURIComponent(version)}/health?k=${k}`), loadPlotly()]);
    $("health-plots").hidden = false;
    drifted(h);
    await Promise.all([training(h), search(h), coverage(h), popularity(h)]);
    const served = h.served ? " (served)" : "";
    const r = h.recommended;
    const flag = r.degraded ? ` ${r.degraded} of ${r.fans} sampled fans got a fallback list (a dependency failed): the coverage and popularity are not the model's; show again shortly.` : "";
    $("health-status").textContent = `${h.index_version}${served}, model ${h.model_version.slice(0, 12)}; answered in ${h.took_ms.toFixed(0)} ms.${flag}`;
  } catch (error) {
    $("health-status").textContent = error.message;
  }
}
