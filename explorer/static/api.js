// What every view of the explorer shares: the element lookup and the service's JSON API, whose
// 4xx answers name the field and a short prefix of the value (shown to the user as they are).

export const $ = (id) => document.getElementById(id);

export async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(problem(data, response.status));
  return data;
}

function problem(data, status) {
  if (Array.isArray(data.detail)) {
    return data.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}${d.input ? ` (${d.input})` : ""}`).join("; ");
  }
  return data.detail || `the service answered ${status}`;
}

// plotly.js (~4.6 MB) is loaded when a plot is first shown, not with the page: the fan's view,
// the first thing a partner sees, needs none of it
let plotly = null;
export function loadPlotly() {
  plotly ??= new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"), { src: "/explorer/vendor/plotly/plotly.min.js" });
    script.onload = () => resolve(window.Plotly);
    script.onerror = () => reject(new Error("could not load plotly.js from /explorer/vendor: run `make env`"));
    document.head.append(script);
  });
  return plotly;
}
