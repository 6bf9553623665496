"""`GET /search` over HTTP on the 1 M-creator serving set (issue 16: p99 ≤ 20 ms at one request
in flight, and throughput at rising concurrency), driven by wrk with what fans search for:
sampled creators' names with the navigational set's noise (a typo, a dropped word, a cut-off
word, case and accents) and single tags, half of them asked by a known fan (the personal
retriever runs: the fan's features, the user tower, its score of every candidate).

    python benchmarks/search_load.py [--seconds 8] [--in_flight 1 4 16]

Starts `python -m serving up` on the set as its config says (two workers, tower on Triton),
waits out the explorer's and search's warm-ups (suggest_load.settle, `ready`), then measures.
The 1 M set has creator text vectors (configs/data/synthetic_1m_creators.yaml), so /search runs
all three retrievers: lexical, semantic (the query encoder on Triton, IVF-Flat over the text
vectors) and personal. Each level also reports /search's mean time per stage (`mean_ms`: the
service's towerline_stage_seconds search_* and its handler, over every worker).
Writes artifacts/bench/search/load.json (load-grams-<way>-lock-<bool>.json with --grams or
--lock_memory: the lexical retriever's trigrams or the memory lock another way than the
config says; search.lexical, serving.memory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import serving_load, serving_set  # noqa: E402
from benchmarks.lexical_choice import noisy  # noqa: E402
from benchmarks.suggest_load import SCRIPT, settle  # noqa: E402
from search.lexical import GRAMS  # noqa: E402
from serving.pipeline.versions import sample_fans  # noqa: E402

OUT = REPO / "artifacts" / "bench" / "search"


def queries(n: int) -> Path:
    """One request path per line: noisy names and tags, every other one with a known fan."""
    data = REPO / "artifacts" / "data" / serving_set.NAME
    table = pq.read_table(data / "tables" / "creators.parquet", columns=["name", "tags"])
    names, tags = table["name"].to_pylist()[2:], table["tags"].to_pylist()[2:]
    rng = np.random.default_rng(0)
    rows = rng.choice(len(names), n, replace=False)
    fans = sample_fans(data, n, seed=3)
    lines = []
    for i, row in enumerate(rows):
        q = noisy(names[row], rng) if i % 2 == 0 else (tags[row] or ["music"])[0]
        params = {"q": q, "k": 10, **({"user_id": fans[i]} if i % 4 < 2 else {})}
        lines.append(f"/search?{urllib.parse.urlencode(params)}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def ready(svc) -> list[dict]:
    """Wait out each worker's search warm-up (its retrievers, the personal retriever's
    row-to-words index, then the searches it asks itself: serving.api.search.warm; ~15 s on
    the 1 M set) until its /readyz says `search_warm`; each worker's memory lock."""

    locks = []

    def warmed(client) -> None:
        deadline = time.monotonic() + 300
        while not (ready := client.get("/readyz").json()).get("search_warm"):
            if time.monotonic() > deadline:  # a warm-up that failed says why in the log
                raise TimeoutError(f"a worker never said search_warm; see {svc.log}")
            time.sleep(0.5)
        locks.append(ready.get("memory_lock"))

    svc.each_worker(warmed)
    return locks


def stage_totals(svc) -> dict[str, tuple[float, float]]:
    """{stage: (seconds, count)} of /search's stages and its handler, over every worker (the
    service's /metrics: towerline_stage_seconds search_*, towerline_request_seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{svc.url}/metrics", timeout=10).read().decode()
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "towerline_stage_seconds":
                name = sample.labels["stage"]
            elif family.name == "towerline_request_seconds":
                name = "handler" if sample.labels["endpoint"] == "search" else ""
            else:
                continue
            kind = sample.name.rsplit("_", 1)[-1]
            if (name == "handler" or name.startswith("search_")) and kind in ("sum", "count"):
                out.setdefault(name, [0.0, 0.0])[kind == "count"] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean milliseconds per stage between two `stage_totals` (a stage that ran at all)."""
    means = {}
    for stage, (seconds, count) in after.items():
        s0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            means[stage] = round((seconds - s0) / (count - c0) * 1e3, 3)
    return means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--in_flight", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--port", type=int, default=18500)
    ap.add_argument("--grams", choices=GRAMS, help="search.grams instead of the config's")
    ap.add_argument("--lock_memory", choices=["true", "false"],
                    help="lock_memory instead of the config's (serving.memory)")  # fmt: skip
    args = ap.parse_args()
    serving_load.ensure_wrk()
    serving_set.ensure_built()
    path, runs = queries(4000), []
    env = {"TOWERLINE_PREFIXES": str(path)}  # the script draws request paths from this file
    sets = ["--search.grams", args.grams] if args.grams else []
    sets += ["--lock_memory", args.lock_memory] if args.lock_memory else []
    with serving_load.Service(args.port, sets) as svc:
        settle(svc)
        locks = ready(svc)
        print(f"memory lock of each worker: {locks}", flush=True)
        serving_load.wrk_raw(svc.url, SCRIPT, env, 4, 2)  # warm
        for c in args.in_flight:
            before = stage_totals(svc)
            runs.append(serving_load.wrk_raw(svc.url, SCRIPT, env, c, args.seconds))
            runs[-1]["mean_ms"] = stage_means(before, stage_totals(svc))
            print(json.dumps(runs[-1]), flush=True)
    out = {"index_version": svc.info.get("index_version"), "grams": args.grams,
           "lock_memory": args.lock_memory, "memory_lock": locks, "runs": runs}  # fmt: skip
    tags = [f"{k}-{v}" for k, v in (("grams", args.grams), ("lock", args.lock_memory)) if v]
    name = "-".join(["load", *tags]) + ".json"
    (OUT / name).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
