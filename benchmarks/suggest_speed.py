"""Name completion on the 1 M-creator catalog, in process (issue 16's `/suggest` goal is
p99 ≤ 5 ms over HTTP; this is the part that is search's own): the keys built as the rebuild
job builds them, then what a fan types, keystroke by keystroke, for sampled creators' names.

    python benchmarks/suggest_speed.py [--names 300]

Reports the build's seconds and size, the latency of each keystroke's completion (p50, p99,
max over all keystrokes) and of the shortest prefixes alone (1–2 characters: the largest
ranges), and how often the creator typed is among the 8 suggestions once its whole name is
typed (namesakes more popular than it push it out). Writes artifacts/bench/suggest/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from index import suggest  # noqa: E402
from search.suggest import Suggest  # noqa: E402

DATA = REPO / "artifacts" / "data" / "synthetic_1m_creators"
OUT = REPO / "artifacts" / "bench" / "suggest"
N = 8


def stats(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "max": round(max(ms), 3),
            "calls": len(ms)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=300)
    args = ap.parse_args()
    idx = pq.read_table(DATA / "tables" / "creators.parquet", columns=["creator_idx"])
    creator_idx = idx["creator_idx"].to_numpy()[2:].astype(np.int64)  # past the reserved rows
    started = time.perf_counter()
    record = suggest.build(DATA, creator_idx, OUT / "keys")
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    s = Suggest(OUT / "keys")
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    rows = rng.choice(len(creator_idx), args.names, replace=False)
    names = pq.read_table(DATA / "tables" / "creators.parquet", columns=["name"])["name"]
    every, short, found = [], [], 0
    for row in rows:
        name = names[int(row) + 2].as_py()
        for end in range(1, len(name) + 1):
            t = time.perf_counter()
            got = s.complete(name[:end], N)
            ms = (time.perf_counter() - t) * 1e3
            every.append(ms)
            if end <= 2:
                short.append(ms)
            if end == len(name):
                found += int(row) in {r for r, _ in got}
    size = sum(p.stat().st_size for p in (OUT / "keys").iterdir())
    out = {**record, "build_s": round(build_s, 1), "load_s": round(load_s, 2),
           "disk_mb": round(size / 2**20, 1), "keystrokes": stats(every),
           "one_or_two_chars": stats(short),
           "found_when_typed_whole": round(found / len(rows), 3)}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
