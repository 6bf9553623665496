// The rank stage for the fan on screen: POST /rank with the trade-off chosen here (live: each
// change asks again), each creator's place before ranking (the towers' order) and after, and
// the features that lifted or sank it most against the other candidates (the ranker's TreeSHAP
// shares, less the candidates' mean).

import { $, api } from "./api.js";

const NAMES = {
  retrieval_score: "towers' score", retrieval_rank: "towers' rank", retrieval_gap: "gap to the towers' best",
  category_share: "category in history", tag_affinity: "tags in history", text_similarity: "text like history",
  cofollow: "co-followed with history", popularity: "popularity", age_days: "age", growth: "recent growth",
  fan_activity: "fan's activity", als_score: "ALS score (collaborative)",
};

function moved(item) {
  const after = item.after, before = item.before;
  if (before === after) return ["=", ""];
  return before > after ? [`↑${before - after}`, "up"] : [`↓${after - before}`, "down"];
}

function row(item) {
  const tr = document.createElement("tr");
  tr.dataset.creatorId = item.creator_id;
  const [change, cls] = moved(item);
  const why = item.moved_by.map((m) => `${NAMES[m.feature] || m.feature} ${m.contribution >= 0 ? "+" : "−"}${Math.abs(m.contribution).toFixed(3)}`).join(" · ");
  const score = item.rank_score === null ? "—" : item.rank_score.toFixed(3);
  for (const [text, className] of [[String(item.after), "num"], [String(item.before), "num"],
    [change, cls], [item.name || item.creator_id, ""], [item.category, ""], [score, "num"], [why, "why"]]) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    tr.append(td);
  }
  return tr;
}

function tradeOff() {
  const method = $("rank-method").value;
  const lam = Number($("rank-lambda").value);
  $("rank-lambda-value").textContent = lam.toFixed(1);
  $("rank-lambda").disabled = method === "none";
  return method === "none" ? { mmr: 0, calibration: 0 } : { [method]: lam, [method === "mmr" ? "calibration" : "mmr"]: 0 };
}

let asked = 0;
export async function showRanking(fan, k) {
  if (!fan) {
    $("rank-box").hidden = true;
    return;
  }
  $("rank-box").hidden = false;
  const mine = ++asked;
  $("rank-status").textContent = "Ranking…";
  try {
    const r = await api("/rank", { user_id: fan, k, ...tradeOff() });
    if (mine !== asked) return; // a later change's answer will come
    $("rank-results").querySelector("tbody").replaceChildren(...r.items.map(row));
    const ranker = r.ranker ? `${r.chosen} on ${r.ranker}` : "no ranker: the towers' order";
    const flag = r.degraded ? `, degraded: ${r.degraded}` : "";
    const moves = r.items.filter((i) => i.before !== i.after).length;
    $("rank-status").textContent = r.items.length
      ? `${moves} of ${r.items.length} moved from the towers' top ${r.candidates} (${ranker}; mmr ${r.mmr}, calibration ${r.calibration})${flag}, in ${r.took_ms.toFixed(0)} ms.`
      : `Nothing ranked: ${r.source} creators${flag}.`;
  } catch (error) {
    if (mine === asked) $("rank-status").textContent = error.message;
  }
}

export function watchControls(current) {
  for (const id of ["rank-method", "rank-lambda"]) {
    $(id).addEventListener("input", () => {
      const { fan, k } = current();
      showRanking(fan, k);
    });
  }
  tradeOff();
}
