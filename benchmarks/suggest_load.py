"""`GET /suggest` over HTTP on the 1 M-creator serving set (issue 16: p99 ≤ 5 ms at one request
in flight, and throughput at rising concurrency), driven by wrk with what fans type: every
prefix of 2,000 sampled creators' names, keystroke by keystroke, drawn at random.

    python benchmarks/suggest_load.py [--seconds 8] [--in_flight 1 4 16 64]

Starts `python -m serving up` on the set as its config says (two workers, the explorer room
on), waits until both workers have finished the explorer's warm-up, then measures; the served
version must carry name completion (the rebuild job adds it to one built before). Writes
artifacts/bench/suggest/load.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import serving_load, serving_set  # noqa: E402
from benchmarks.serving_load import DONE_LUA  # noqa: E402

OUT = REPO / "artifacts" / "bench" / "suggest"
SCRIPT = (
    r"""
local paths = {}
for line in io.lines(os.getenv("TOWERLINE_PREFIXES")) do paths[#paths + 1] = line end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
"""
    + DONE_LUA
)


def prefixes(n: int) -> Path:
    """One request path per line: /suggest?prefix=<each prefix of n sampled names>&n=8."""
    table = pq.read_table(REPO / "artifacts" / "data" / serving_set.NAME / "tables" /
                          "creators.parquet", columns=["name"])  # fmt: skip
    names = table["name"].to_pylist()[2:]
    rows = np.random.default_rng(0).choice(len(names), n, replace=False)
    lines = [f"/suggest?prefix={urllib.parse.quote(names[r][:end])}&n=8"
             for r in rows for end in range(1, len(names[r]) + 1)]  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "prefixes.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def settle(svc) -> None:
    """Wait out each worker's explorer warm-up (it answers fan samples and loads the compared
    version for a few seconds after /readyz): a version's health waits for it."""

    def health(client) -> None:
        for v in client.get("/versions").json()["versions"]:
            client.get(f"/versions/{v['index_version']}/health").raise_for_status()

    svc.each_worker(health)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--in_flight", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--port", type=int, default=18400)
    args = ap.parse_args()
    serving_load.ensure_wrk()
    serving_set.ensure_built()
    path = prefixes(2000)
    runs = []
    with serving_load.Service(args.port, []) as svc:
        settle(svc)
        serving_load.wrk_raw(svc.url, SCRIPT, {"TOWERLINE_PREFIXES": str(path)}, 4, 2)  # warm
        for c in args.in_flight:
            runs.append(serving_load.wrk_raw(
                svc.url, SCRIPT, {"TOWERLINE_PREFIXES": str(path)}, c, args.seconds))  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
    out = {"index_version": svc.info.get("index_version"), "runs": runs}
    (OUT / "load.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
