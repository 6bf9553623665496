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
