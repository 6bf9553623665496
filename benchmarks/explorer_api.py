"""Latency of the explorer's API calls on the 1 M-creator serving set (issue 15: every call
≤ 100 ms p99 on 2 cores), one call at a time as a person clicking would make them.

    python benchmarks/explorer_api.py [--fans 200] [--encoder triton|onnx]

Starts `python -m serving up` on the set (benchmarks/serving_set.py builds it when missing),
then for each of `--fans` seeded fans asks what the fan's view asks: /what-if with reasons,
/creators for the names on screen, and /what-if again with the newest history creator removed.
The first call of each kind is reported apart (it reads the catalog once per version).
Writes artifacts/bench/explorer/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import serving_load, serving_set  # noqa: E402
from serving.pipeline.versions import sample_fans  # noqa: E402


def timed(client: httpx.Client, path: str, body: dict, out: list[float]) -> dict:
    started = time.perf_counter()
    r = client.post(path, json=body)
    out.append((time.perf_counter() - started) * 1e3)
    r.raise_for_status()
    return r.json()


def fan_view(client: httpx.Client, fan: str, k: int, times: dict[str, list]) -> None:
    view = timed(client, "/what-if", {"user_id": fan, "k": k, "why": 3}, times["what-if"])
    ids = view["history"] + [i["creator_id"] for i in view["items"]]
    ids += [w["creator_id"] for i in view["items"] for w in i["why"]]
    timed(client, "/creators", {"ids": sorted(set(ids))}, times["creators"])
    if view["history"]:
        edited = {"user_id": fan, "history": view["history"][:-1], "k": k, "why": 3}
        timed(client, "/what-if", edited, times["what-if edited"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fans", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--encoder", default="triton", choices=["triton", "onnx"])
    ap.add_argument("--port", type=int, default=18300)
    args = ap.parse_args()
    serving_set.ensure_built()
    fans = sample_fans(REPO / "artifacts" / "data" / serving_set.NAME, args.fans, seed=5)
    times: dict[str, list] = {"what-if": [], "creators": [], "what-if edited": []}
    first: dict[str, list] = {k: [] for k in times}
    sets = ["--encoder", args.encoder, "--workers", "1"]
    with serving_load.Service(args.port, sets) as svc, httpx.Client(base_url=svc.url) as client:
        fan_view(client, fans[0], args.k, first)  # the catalog is read on first use
        for fan in fans[1:]:
            fan_view(client, fan, args.k, times)
    out = {"fans": len(fans) - 1, "encoder": args.encoder, "k": args.k,
           "first_ms": {k: round(v[0], 1) for k, v in first.items() if v}}  # fmt: skip
    for name, ms in times.items():
        out[name] = {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}
        out[name]["max"] = round(max(ms), 2)
    print(json.dumps(out, indent=2))
    folder = REPO / "artifacts" / "bench" / "explorer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
