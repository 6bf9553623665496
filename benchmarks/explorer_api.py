r"""Latency of every explorer API call on the 1 M-creator serving set (issue 15: each ≤ 100 ms
p99 on 2 cores), one call at a time as a person clicking makes them, and how soon the first
view is interactive in a real browser (< 2 s).

    python benchmarks/explorer_api.py [--fans 200] [--encoder triton|onnx] [--loads 5]
    python benchmarks/explorer_api.py --url http://127.0.0.1:8080 \
        --data artifacts/data/synthetic_demo

Builds the set when missing (benchmarks/serving_set.py) and makes sure the store holds two
versions to compare: epoch 3's model and epoch 4's (served), each published with its map.
Then starts `python -m serving up` (the explorer room mounted), waits until the explorer has
prepared the served version and the one it compares it with (`warm_s`: from ready to both
versions' health answered), and for each of
`--fans` seeded fans makes every call the explorer makes: the fan's view (/what-if with reasons,
/creators for the names, /what-if with the newest history creator removed), the creator view
of their first recommendation (/similar, /creators/{id}/audience, /creators/{id}/fans), the map
(/map, /map/place), the comparison (/compare, /compare/sample over 200 fans), /versions and
both versions' health. The first call of each kind is reported apart. Last, `--loads` fresh
browser pages (Debian's chromium) open a fan's link; the time from navigation to the
recommendations on screen is the first view's. Writes artifacts/bench/explorer/results.json
(with --url, the same calls against a running service: results-url.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import serving_load, serving_set  # noqa: E402
from index import store as index_store  # noqa: E402
from serving.pipeline.versions import sample_fans  # noqa: E402

STORE = REPO / "artifacts" / "index" / serving_set.NAME
RUN = REPO / "artifacts" / "runs" / serving_set.NAME


def ensure_two_versions() -> None:
    """Publish the next-to-last epoch's model, then the last one's again (served): two
    versions of the same run to compare (the config keeps every epoch's checkpoint)."""
    if len(index_store.list_versions(STORE)) >= 2:
        return
    epochs = sorted(RUN.rglob("epoch*.ckpt"))
    if len(epochs) < 2:
        raise SystemExit(f"need two epochs' checkpoints under {RUN}: retrain the set")
    for checkpoint in (epochs[-2], sorted(RUN.rglob("last.ckpt"))[-1]):
        config = f"configs/index/{serving_set.NAME}.yaml"
        cmd = [sys.executable, "-m", "index", "rebuild", "--config", config,
               "--checkpoint", str(checkpoint)]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)


class Clock:
    """Each call timed by kind; the first of a kind kept apart."""

    def __init__(self, client: httpx.Client):
        self.client, self.times, self.first = client, defaultdict(list), {}

    def __call__(self, kind: str, path: str, body: dict | None = None, **params):
        started = time.perf_counter()
        if body is None:
            r = self.client.get(path, params=params)
        else:
            r = self.client.post(path, json=body)
        ms = (time.perf_counter() - started) * 1e3
        r.raise_for_status()
        (self.times[kind] if kind in self.first else self.first.setdefault(kind, [])).append(ms)
        return r.json()


def one_fan(call: Clock, fan: str, k: int, a: str, b: str) -> None:
    view = call("what-if", "/what-if", {"user_id": fan, "k": k, "why": 3})
    ids = view["history"] + [i["creator_id"] for i in view["items"]]
    ids += [w["creator_id"] for i in view["items"] for w in i["why"]]
    call("creators", "/creators", {"ids": sorted(set(ids))})
    if view["history"]:
        edited = {"user_id": fan, "history": view["history"][:-1], "k": k, "why": 3}
        call("what-if edited", "/what-if", edited)
    top = view["items"][0]["creator_id"]
    call("similar", f"/similar/{top}", k=10)
    call("audience", f"/creators/{top}/audience", k=k, fans=1000)
    call("fans of a creator", f"/creators/{top}/fans", limit=20)
    call("map", "/map")
    call("map place", "/map/place", {"ids": ids[:200]})
    call("compare", "/compare", {"user_id": fan, "a": a, "b": b, "k": k})
    call("compare sample", "/compare/sample", {"a": a, "b": b, "k": k, "fans": 200})
    call("versions", "/versions")
    call("health", f"/versions/{a}/health", k=k)
    call("health other", f"/versions/{b}/health", k=k)


def first_views(url: str, fans: list[str], k: int) -> dict[str, list[float]]:
    """In a fresh browser context each (nothing cached): ms from navigation to the fan's
    recommendations on screen; then the map: ms from the click to all points drawn, and the gaps
    between frames while a mouse drags it (the WebGL scatter; headless chromium renders it in
    software here)."""
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"first_view_ms": [], "map_draw_ms": [], "map_drag_frame_ms": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        for fan in fans:
            context = browser.new_context(viewport={"width": 1366, "height": 800})
            page = context.new_page()
            page.goto(f"{url}/explorer?fan={fan}&k={k}")
            page.wait_for_function(f"document.querySelectorAll('#recs tbody tr').length === {k}")
            out["first_view_ms"].append(page.evaluate("performance.now()"))
            started = page.evaluate("performance.now()")
            page.click("#show-map")
            page.wait_for_function("document.getElementById('map-status').textContent"
                                   ".includes('recommended')", timeout=60_000)  # fmt: skip
            out["map_draw_ms"].append(page.evaluate("performance.now()") - started)
            out["map_drag_frame_ms"] += drag(page)
            context.close()
        browser.close()
    return out


FRAMES = """() => { window.gaps = []; window.going = true; let last = performance.now();
  const tick = (t) => {
    window.gaps.push(t - last);
    last = t;
    if (window.going) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick); }"""


def drag(page) -> list[float]:
    """Frame gaps (ms) while a mouse drags the map 300 px: what panning feels like."""
    box = page.locator("#map").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.evaluate(FRAMES)
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(60):
        page.mouse.move(x + 5 * i, y + 2 * i)
    page.mouse.up()
    page.wait_for_timeout(300)
    return page.evaluate("() => { window.going = false; return window.gaps.slice(1); }")


def summary(ms: list[float]) -> dict:
    out = {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}
    return out | {"max": round(max(ms), 2), "calls": len(ms)}


def measure(url: str, fans: list[str], k: int, loads: int) -> dict:
    """Every explorer call for each fan, against a running service; then the browser's."""
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        listed = client.get("/versions").json()
        a = listed["served"]
        others = [v["index_version"] for v in listed["versions"] if v["index_version"] != a]
        b = others[-1] if others else a  # one version published: it is compared with itself
        for version in (a, b):  # each waits while the explorer prepares that version
            client.get(f"/versions/{version}/health", params={"k": k}).raise_for_status()
        warm_s = time.perf_counter() - started
        call = Clock(client)
        for fan in fans:
            one_fan(call, fan, k, a, b)
    browser = first_views(url, fans[:loads], k)
    return {
        "fans": len(fans), "k": k, "versions": [a, b], "warm_s": round(warm_s, 2),
        "first_ms": {kind: round(v[0], 1) for kind, v in call.first.items()},
        "calls": {kind: summary(ms) for kind, ms in call.times.items()},
        "browser": {name: summary(ms) for name, ms in browser.items()},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fans", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--encoder", default="triton", choices=["triton", "onnx"])
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--port", type=int, default=18300)
    ap.add_argument("--url", help="a running service to measure instead (`make demo`'s: "
                    "http://127.0.0.1:8080); its fans come from --data")  # fmt: skip
    ap.add_argument("--data", type=Path, default=REPO / "artifacts" / "data" / serving_set.NAME)
    args = ap.parse_args()
    if args.url:
        fans = list(sample_fans(args.data, args.fans, seed=5))
        out = {"service": args.url, **measure(args.url, fans, args.k, args.loads)}
        name = "results-url.json"
    else:
        serving_set.ensure_built()
        ensure_two_versions()
        fans = list(sample_fans(args.data, args.fans, seed=5))
        sets = ["--encoder", args.encoder, "--workers", "1"]
        with serving_load.Service(args.port, sets) as svc:
            out = {"encoder": args.encoder, **measure(svc.url, fans, args.k, args.loads)}
        name = "results.json"
    print(json.dumps(out, indent=2))
    folder = REPO / "artifacts" / "bench" / "explorer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
