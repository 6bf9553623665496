// The fan's view: history beside recommendations, why each one, and what if the history changed.
// Everything comes from the service's JSON API (/what-if, /creators, /versions); the page keeps
// its state in the URL (?fan=…&k=…&history=a,b,c), so a view can be shared as a link.

import { $, api, loadPlotly } from "./api.js";
import { showHealth } from "./health.js";
import { showRanking, watchControls } from "./ranking.js";
import { showSearch, suggest } from "./search.js";

function readState() {
  const q = new URLSearchParams(location.search);
  const history = q.get("history");
  return {
    fan: q.get("fan") || "",
    k: Math.min(100, Math.max(1, Number(q.get("k")) || 10)),
    history: history === null ? null : history.split(",").filter(Boolean),
    invented: q.get("invented") === "1",
    a: q.get("a"),
    b: q.get("b"),
    creator: q.get("creator"),
    health: q.get("health"),
    q: q.get("q") || "",
  };
}

function writeState(state) {
  const q = new URLSearchParams();
  if (state.fan) q.set("fan", state.fan);
  if (state.invented) q.set("invented", "1");
  q.set("k", String(state.k));
  if (state.history !== null) q.set("history", state.history.join(","));
  if (state.creator) q.set("creator", state.creator);
  if (state.health) q.set("health", state.health);
  if (state.q) q.set("q", state.q);
  if (state.a && state.b) {
    q.set("a", state.a);
    q.set("b", state.b);
  }
  history.pushState(null, "", `${location.pathname}?${q}`);
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function labels(ids) {
  const unique = [...new Set(ids)].slice(0, 1000);
  if (!unique.length) return new Map();
  const { creators } = await api("/creators", { ids: unique });
  return new Map(creators.map((c) => [c.creator_id, c]));
}

function name(info, id) {
  const c = info.get(id);
  return c && c.name ? c.name : id;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

// `label` must contain the visible text (WCAG 2.5.3: a voice user says what they see)
function button(text, label, onClick, quiet = true) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  if (quiet) b.className = "quiet";
  b.addEventListener("click", onClick);
  return b;
}

function renderHistory(state, answer, info) {
  const list = $("history");
  list.replaceChildren();
  answer.history.forEach((id, i) => {
    const li = document.createElement("li");
    li.dataset.creatorId = id;
    const c = info.get(id) || {};
    li.append(`${name(info, id)} `);
    const meta = document.createElement("span");
    meta.className = "muted";
    const since = answer.since[i] === null ? "added here" : `since ${new Date(answer.since[i]).toISOString().slice(0, 10)}`;
    meta.textContent = `${c.category || ""} · ${since} · ${id} `;
    li.append(meta, button("Remove", `Remove ${name(info, id)}`, () => {
      edit(state, answer.history.filter((_, j) => j !== i));
    }));
    list.append(li);
  });
  if (!answer.history.length) list.append(Object.assign(document.createElement("li"), { textContent: "(empty)" }));
}

function signed(x) {
  return `${x < 0 ? "−" : "+"}${Math.abs(x).toFixed(3)}`;
}

function change(id, rank, before) {
  if (!before) return ["", ""];
  const was = before.get(id);
  if (was === undefined) return ["entered", "new"];
  if (was > rank) return [`rose ${was - rank}`, "up"];
  if (was < rank) return [`fell ${rank - was}`, "down"];
  return ["same", ""];
}

function renderRecs(state, answer, base, info) {
  const before = base ? new Map(base.items.map((it, i) => [it.creator_id, i + 1])) : null;
  const body = $("recs").querySelector("tbody");
  body.replaceChildren();
  answer.items.forEach((item, i) => {
    const row = document.createElement("tr");
    row.dataset.creatorId = item.creator_id;
    const c = info.get(item.creator_id) || {};
    cell(row, String(i + 1), "num");
    const who = document.createElement("td");
    const open = button(name(info, item.creator_id), `${name(info, item.creator_id)}: open the creator's view`, () => {
      state.creator = item.creator_id;
      writeState(state);
      showCreator(state);
    });
    open.className = "link";
    who.append(open);
    row.append(who);
    cell(row, c.category || "");
    cell(row, item.score === null ? "" : item.score.toFixed(3), "num");
    cell(row, c.popularity === undefined || c.popularity === null ? "" : String(c.popularity), "num");
    cell(row, item.why.map((w) => `${name(info, w.creator_id)} ${signed(w.contribution)}`).join(", "), "why");
    const [text, cls] = change(item.creator_id, i + 1, before);
    cell(row, text, cls);
    const actions = document.createElement("td");
    actions.append(button("Add to history", `Add to history: ${name(info, item.creator_id)}`, () => {
      edit(state, [...answer.history, item.creator_id]);
    }));
    row.append(actions);
    body.append(row);
  });
  const gone = base ? base.items.filter((it) => !answer.items.some((x) => x.creator_id === it.creator_id)) : [];
  $("left-box").hidden = !gone.length;
  $("left").replaceChildren(...gone.map((it) => Object.assign(document.createElement("li"), {
    textContent: `${name(info, it.creator_id)} (was ${before.get(it.creator_id)})`,
  })));
}

// -- the map: plotly.js scattergl (WebGL), one trace per category, the fan's creators on top
const map = { data: null, shown: false, marked: { history: [], items: [] } };

function traces(data) {
  const byCategory = data.categories.map(() => ({ x: [], y: [], text: [] }));
  data.category.forEach((c, i) => {
    const t = byCategory[c];
    t.x.push(data.x[i]);
    t.y.push(data.y[i]);
    t.text.push(`${data.name[i]} (${data.categories[c]}, ${data.popularity[i]} fans)`);
  });
  return byCategory.map((t, c) => ({
    type: "scattergl", mode: "markers", name: data.categories[c] || "(none)", x: t.x, y: t.y,
    text: t.text, hoverinfo: "text", marker: { size: 3, opacity: 0.6 },
  }));
}

async function marks(ids, name, symbol, color) {
  if (!ids.length) return { type: "scattergl", mode: "markers", name, x: [], y: [] };
  const placed = (await api("/map/place", { ids })).creators;
  return {
    type: "scattergl", mode: "markers", name, x: placed.map((c) => c.x), y: placed.map((c) => c.y),
    text: placed.map((c) => c.creator_id), hoverinfo: "text",
    marker: { size: 11, symbol, color, line: { width: 1.5, color: "#000" } },
  };
}

async function drawMap() {
  if (!map.shown) return;
  try {
    if (!map.data) {
      $("map-status").textContent = "Loading the map…";
      map.data = await api("/map");
    }
    const extra = [
      await marks(map.marked.history, "history", "diamond", "#ffd400"),
      await marks(map.marked.items, "recommended", "star", "#ff3b8d"),
    ];
    await loadPlotly();
    $("map").hidden = false;
    await Plotly.react("map", [...traces(map.data), ...extra], {
      margin: { l: 10, r: 10, t: 10, b: 10 }, xaxis: { visible: false }, yaxis: { visible: false },
      legend: { itemsizing: "constant" }, dragmode: "pan",
    }, { responsive: true, scrollZoom: true, displaylogo: false });
    $("map-status").textContent = `${map.data.points.toLocaleString()} creators; history: ${extra[0].x.length}, recommended: ${extra[1].x.length}.`;
  } catch (error) {
    $("map-status").textContent = error.message;
  }
}

// -- compare two published versions: one fan side by side, or a fixed sample summarised
function versionPair(state) {
  return { a: state.a || null, b: state.b || null };
}

function sideTable(id, items, otherRank, info) {
  const table = $(id);
  const body = table.querySelector("tbody");
  body.replaceChildren(...items.map((item, i) => {
    const row = document.createElement("tr");
    row.dataset.creatorId = item.creator_id;
    cell(row, String(i + 1), "num");
    cell(row, name(info, item.creator_id));
    const other = otherRank.get(item.creator_id);
    cell(row, other === undefined ? "not in top" : String(other), other === undefined ? "new" : "num");
    return row;
  }));
  table.hidden = false;
}

async function compareFan(state) {
  if (!state.fan) return ($("compare-status").textContent = "Find a fan first.");
  $("compare-status").textContent = "Comparing…";
  try {
    const c = await api("/compare", { user_id: state.fan, ...versionPair(state), k: state.k });
    const info = await labels([...c.a.items, ...c.b.items].map((x) => x.creator_id));
    const rankA = new Map(c.a.items.map((x, i) => [x.creator_id, i + 1]));
    const rankB = new Map(c.b.items.map((x, i) => [x.creator_id, i + 1]));
    $("compare-a").querySelector("caption").textContent = `A: ${c.a.index_version}`;
    $("compare-b").querySelector("caption").textContent = `B: ${c.b.index_version}`;
    sideTable("compare-a", c.a.items, rankB, info);
    sideTable("compare-b", c.b.items, rankA, info);
    $("compare-status").textContent = `overlap@${c.k}: ${c.overlap.toFixed(2)}`;
  } catch (error) {
    $("compare-status").textContent = error.message;
  }
}

async function compareSample(state) {
  $("compare-status").textContent = "Comparing over the sample…";
  try {
    const s = await api("/compare/sample", { ...versionPair(state), k: state.k, fans: 200 });
    const rows = [
      ["Versions", `${s.a} → ${s.b}`], ["Fans", String(s.fans)],
      [`Mean overlap@${s.k}`, s.mean_overlap.toFixed(3)], ["Lists changed", `${(100 * s.share_changed).toFixed(1)} %`],
      ["Mean popularity (fans) of what is recommended", `${s.popularity.a.toFixed(1)} → ${s.popularity.b.toFixed(1)}`],
    ];
    $("compare-summary").replaceChildren(...rows.flatMap(([k, v]) => [
      Object.assign(document.createElement("dt"), { textContent: k }),
      Object.assign(document.createElement("dd"), { textContent: v }),
    ]));
    $("compare-summary").hidden = false;
    $("compare-status").textContent = `${s.fans} fans in ${s.took_ms.toFixed(0)} ms.`;
  } catch (error) {
    $("compare-status").textContent = error.message;
  }
}

// -- a creator's view: similar creators, and the kinds of fans it is recommended to
async function showCreator(state) {
  if (!state.creator) return;
  $("creator-box").hidden = false;
  $("creator-status").textContent = "Asking…";
  try {
    const id = encodeURIComponent(state.creator);
    const [similar, audience] = await Promise.all([
      api(`/similar/${id}?k=10`), api(`/creators/${id}/audience?k=${state.k}&fans=1000`),
    ]);
    const info = await labels([state.creator, ...similar.items.map((x) => x.creator_id)]);
    $("creator-title").textContent = `Creator: ${name(info, state.creator)}`;
    $("similar").replaceChildren(...similar.items.map((x) => Object.assign(document.createElement("li"), {
      textContent: `${name(info, x.creator_id)} (${(info.get(x.creator_id) || {}).category || ""})`,
    })));
    const cats = Object.keys(audience.overall).sort((p, q) => (audience.mix[q] || 0) - (audience.mix[p] || 0));
    $("audience").querySelector("tbody").replaceChildren(...cats.map((cat) => {
      const row = document.createElement("tr");
      row.dataset.category = cat;
      cell(row, cat);
      cell(row, `${(100 * (audience.mix[cat] || 0)).toFixed(1)} %`, "num");
      cell(row, `${(100 * audience.overall[cat]).toFixed(1)} %`, "num");
      return row;
    }));
    const flag = audience.degraded ? ` (${audience.degraded} of them got a fallback list: a dependency failed; not the model's figures)` : "";
    $("audience-note").textContent = `In the top ${state.k} of ${audience.recommended_to} of ${audience.fans} sampled fans${flag}; the category mix of their histories:`;
    $("creator-status").textContent = "";
    $("creator-box").scrollIntoView({ block: "start" });
  } catch (error) {
    $("creator-status").textContent = error.message;
  }
}

// a new view: the state changes, the URL says so (a new history entry), the page redraws
function go(state, changes) {
  Object.assign(state, changes);
  writeState(state);
  show(state);
}

function edit(state, history) {
  go(state, { history });
}

async function show(state) {
  $("fan").value = state.fan;
  $("k").value = String(state.k);
  if (!state.fan && !state.invented) return say("Enter a fan id, or start from an empty fan.");
  say("Asking the model…");
  const who = state.fan ? { user_id: state.fan } : {};
  try {
    const base = await api("/what-if", { ...who, k: state.k, why: 3 });
    const edited = state.history === null ? null : await api("/what-if", { ...who, history: state.history, k: state.k, why: 3 });
    const answer = edited || base;
    const ids = [...base.history, ...answer.history, ...base.items.map((x) => x.creator_id),
      ...answer.items.flatMap((x) => [x.creator_id, ...x.why.map((w) => w.creator_id)])];
    const info = await labels(ids);
    $("edited").hidden = edited === null;
    $("reset").hidden = edited === null;
    renderHistory(state, answer, info);
    renderRecs(state, answer, edited ? base : null, info);
    map.marked = { history: answer.history, items: answer.items.map((x) => x.creator_id) };
    drawMap();
    showRanking(edited ? "" : state.fan, state.k); // the stored fan: the rank stage serves them
    const flag = answer.degraded ? `, degraded: ${answer.degraded}` : "";
    say(`${answer.items.length} creators from the ${answer.source}${answer.cold_start ? " (cold start)" : ""}${flag}, ${answer.index_version}, in ${answer.took_ms.toFixed(0)} ms.`);
  } catch (error) {
    say(error.message, true);
  }
}

async function showVersions(state) {
  try {
    const v = await api("/versions");
    // A: the served version; B: the newest other one (the candidate), else the served one
    const others = v.versions.filter((x) => x.index_version !== v.served);
    const picks = {
      "version-a": v.served, "version-b": others.length ? others.at(-1).index_version : v.served,
      "health-version": state.health || v.served,
    };
    for (const [id, pick] of Object.entries(picks)) {
      $(id).replaceChildren(...[...v.versions].reverse().map((x) => Object.assign(document.createElement("option"), {
        value: x.index_version, textContent: `${x.index_version}${x.index_version === v.served ? " (served)" : ""}`,
      })));
      $(id).value = pick;
    }
    if (state.a && state.b) {  // a shared comparison
      $("version-a").value = state.a;
      $("version-b").value = state.b;
      if (state.fan) compareFan(state);
    }
    if (state.health) showHealth(state.health, state.k);
    const served = v.versions.find((x) => x.index_version === v.served) || {};
    $("versions").textContent = `Serving ${v.served} (model ${String(served.model_version || "").slice(0, 12)}), ${v.versions.length} published.`;
  } catch (error) {
    $("versions").textContent = error.message;
  }
}

function start() {
  const state = readState();
  $("find").addEventListener("submit", (event) => {
    event.preventDefault();
    go(state, { fan: $("fan").value.trim(), k: Number($("k").value) || 10, history: null, invented: false });
  });
  $("by-creator").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("followed").value.trim();
    if (!id) return;
    try {
      const found = await api(`/creators/${encodeURIComponent(id)}/fans?limit=20`);
      $("found").replaceChildren(...found.fans.map((fan) => {
        const li = document.createElement("li");
        li.append(button(fan, `${fan}: show this fan`, () => {
          go(state, { fan, history: null, invented: false, creator: null });
        }));
        return li;
      }));
      $("found").hidden = false;
      say(`${found.total} fans follow ${id}${found.total > found.fans.length ? `; the ${found.fans.length} newest` : ""}.`);
    } catch (error) {
      say(error.message, true);
    }
  });
  $("invent").addEventListener("click", () => {
    go(state, { fan: "", history: [], invented: true });
  });
  $("add").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("add-id").value.trim();
    if (!id) return;
    const current = state.history ?? [...$("history").querySelectorAll("li[data-creator-id]")].map((li) => li.dataset.creatorId);
    $("add-id").value = "";
    edit(state, [...current, id]);
  });
  $("reset").addEventListener("click", () => edit(state, null));
  const pick = () => {
    Object.assign(state, { a: $("version-a").value, b: $("version-b").value });
    writeState(state);
  };
  $("compare").addEventListener("submit", (event) => {
    event.preventDefault();
    pick();
    compareFan(state);
  });
  $("compare-sample").addEventListener("click", () => {
    pick();
    compareSample(state);
  });
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.q = $("search-q").value.trim();
    writeState(state);
    showSearch(state.q, $("search-as-fan").checked ? state.fan : "", state.k);
  });
  $("search-q").addEventListener("input", () => suggest($("search-q").value));
  watchControls(() => ({ fan: state.history === null ? state.fan : "", k: state.k }));
  if (state.q) {
    $("search-q").value = state.q;
    showSearch(state.q, state.fan, state.k);
  }
  $("health").addEventListener("submit", (event) => {
    event.preventDefault();
    state.health = $("health-version").value;
    writeState(state);
    showHealth(state.health, state.k);
  });
  $("show-map").addEventListener("click", () => {
    map.shown = true;
    $("show-map").hidden = true;
    drawMap();
  });
  addEventListener("popstate", () => show(Object.assign(state, readState())));
  showVersions(state);
  // once the fan's view is on screen, fetch plotly.js in the background for the map and plots
  show(state).finally(() => loadPlotly().catch(() => {}));
  showCreator(state);
}

start();
