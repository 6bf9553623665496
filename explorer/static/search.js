// Creator search in the explorer: GET /search for what was typed (as the fan on screen, when
// asked), each result with its rank in every retriever's list; name completion from /suggest
// as one types (a native datalist: the browser's own keyboard handling).

import { $, api } from "./api.js";

// How /search read the query: which fusion answered it (serving config search, names, fans).
const READ_AS = { name: "a name", topic: "a topic", "fan topic": "a topic, for this fan" };

function row(item, i) {
  const tr = document.createElement("tr");
  tr.dataset.creatorId = item.creator_id;
  const why = Object.entries(item.ranks).map(([name, rank]) => `${name} #${rank}`).join(" · ");
  for (const [text, cls] of [[String(i + 1), "num"], [item.name, ""], [item.category, ""],
    [String(item.popularity), "num"], [why, "why"]]) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
  }
  return tr;
}

export async function showSearch(q, fan, k) {
  if (!q) return;
  $("search-box").hidden = false;
  $("search-status").textContent = "Searching…";
  const params = new URLSearchParams({ q, k: String(k) });
  if (fan) params.set("user_id", fan);
  try {
    const r = await api(`/search?${params}`);
    $("search-results").querySelector("tbody").replaceChildren(...r.items.map(row));
    const flag = r.degraded ? `, degraded: ${r.degraded}` : r.cold_start ? ", a fan nobody knows: not personal" : "";
    $("search-status").textContent = `${r.items.length} creators from ${r.retrievers.join(", ")} (${r.fusion.method}, read as ${READ_AS[r.fusion.query] || r.fusion.query})${flag}, ${r.index_version}, in ${r.took_ms.toFixed(0)} ms.`;
  } catch (error) {
    $("search-status").textContent = error.message;
  }
}

let asked = "";
export async function suggest(prefix) {
  if (prefix === asked) return;
  asked = prefix;
  try {
    const r = await api(`/suggest?${new URLSearchParams({ prefix, n: "8" })}`);
    if (prefix !== asked) return; // a later keystroke's answer will come
    $("search-suggest").replaceChildren(...r.items.map((i) => Object.assign(document.createElement("option"), { value: i.name })));
  } catch {
    // completion is a convenience: a failed one leaves the list as it was
  }
}
