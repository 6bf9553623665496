"""What the rank stage costs the 1 M-creator service (issue 17): /recommend with the ranker on
and off, side by side in one run, the same fans, the same wrk load (benchmarks/serving_load.py).

    python benchmarks/rank_latency.py [--no-text] [--seconds 10] [--rounds 3] [--concurrency 1 4 16]

Builds what is missing (benchmarks/serving_set.py; `--no-text` prepares the catalog without
creator text vectors: MiniLM over a million descriptions is an hour on 2 cores, and the text
feature is one [200, 384] product of the stage), trains the ranker of the current version when it
has none (`python -m ranking train --config configs/ranking/synthetic_1m_creators.yaml`), then
for each mode starts `python -m serving up` and drives it at each level of requests in flight.
The modes take turns `--rounds` times; each level reports the median of its rounds.

    towers           the served config with `--rank.store null`: retrieval's top k, no rank stage
    ranker           the served config: top 200 retrieved, features, the ranker on Triton
    ranker-onnx      the same with the user tower and the ranker in-process (`--encoder onnx`)

Writes artifacts/bench/rank_latency/results.json and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import serving_load, serving_set  # noqa: E402
from index import store as index_store  # noqa: E402
from ranking import store as ranking_store  # noqa: E402

NAME = serving_set.NAME
MODES = {
    "towers": ["--rank.store", "null"],
    "ranker": [],
    "ranker-onnx": ["--encoder", "onnx"],
}


def ensure_ranker() -> dict:
    """The ranker of the 1 M set's current version, trained when it has none; its manifest."""
    version = index_store.current_version(REPO / "artifacts" / "index" / NAME)
    rankers = REPO / "artifacts" / "ranking" / NAME
    if ranking_store.find(rankers, version) is None:
        cmd = [sys.executable, "-m", "ranking", "train", "--config",
               f"configs/ranking/{NAME}.yaml"]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    return ranking_store.read_manifest(ranking_store.find(rankers, version))


def one_round(modes, users, levels, seconds, port) -> list[dict]:
    runs = []
    for i, mode in enumerate(modes):
        run = serving_load.service_run(mode, MODES[mode], users, levels, seconds, port + i)
        runs.append(run)
    return runs


def summary(runs: list[dict]) -> list[dict]:
    """Per mode and level, the median over rounds of req/s, p50 and p99."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        for level in range(len(mine[0]["levels"])):
            rows = [r["levels"][level] for r in mine]
            out.append({"mode": mode, "in_flight": rows[0]["in_flight"],
                        **{k: statistics.median(x[k] for x in rows)
                           for k in ("rps", "p50_ms", "p99_ms")},
                        "p99_rounds": [x["p99_ms"] for x in rows]})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-text", action="store_true", help="a catalog without text vectors")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    ap.add_argument("--port", type=int, default=18180)
    ap.add_argument("--out", default="artifacts/bench/rank_latency")
    args = ap.parse_args()
    serving_load.ensure_wrk()
    serving_set.ensure_built(overrides=serving_set.NO_TEXT if args.no_text else None)
    ranker = ensure_ranker()
    users = serving_load.known_users()
    runs = []
    for turn in range(args.rounds):
        print(f"round {turn + 1} of {args.rounds}:", flush=True)
        port = args.port + turn * len(args.modes)
        for run in one_round(args.modes, users, args.concurrency, args.seconds, port):
            runs.append(run | {"round": turn + 1})
    results = {"machine": f"{os.cpu_count()} cores, no GPU", "text_vectors": not args.no_text,
               "ranker": {k: ranker[k] for k in ("index_version", "candidates", "chosen")},
               "runs": runs, "summary": summary(runs)}  # fmt: skip
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("| mode | in flight | req/s | p50 ms | p99 ms (median of rounds; rounds) |\n"
          "| --- | --- | --- | --- | --- |")  # fmt: skip
    for row in results["summary"]:
        rounds = ", ".join(f"{p:.2f}" for p in row["p99_rounds"])
        print(f"| {row['mode']} | {row['in_flight']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} "
              f"| **{row['p99_ms']:.2f}** ({rounds}) |")  # fmt: skip
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
