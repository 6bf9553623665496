"""How many logged answers the relevance monitor reads and measures per second on ONE core
(issue 18: >= 100,000 per second per core, parse and every figure included).

    python benchmarks/monitor_speed.py [--answers 300000] [--creators 100000] [--repeats 3]

Writes a synthetic answer log in the service's own format (serving.answer_log: records made by
`record`, written as its writer does, Arrow IPC batches of 512), rotated into three files (`.2`,
`.1`, the live file) so the reader goes through the rotation: k from 10 to 50 per answer
(uniform; `--k MIN MAX`), creators drawn by a Zipf-like popularity from a catalog of
`--creators`, fans from `--fans`, times over an hour. The catalog
(monitoring.catalog.Catalog.build) has 64-d unit embeddings, 20 categories, a 5-creator history
per fan and a later interaction for one fan in ten, so every figure has work to do.

Then, pinned to one CPU with every thread pool at one thread (set before numpy, polars and
Arrow load), it times `answers.read(log, catalog)` (parse, codes, binding) and
`metrics.compute` `--repeats` times. CPU seconds (process time) are reported beside wall
seconds: on a shared machine the wall clock also counts other jobs' turns on the core.
Writes artifacts/bench/monitor_speed/result.json; the log stays in log/ for the next run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"  # before numpy, polars and Arrow start their pools

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.io import write_json  # noqa: E402
from monitoring import answers, metrics  # noqa: E402
from monitoring.catalog import Catalog  # noqa: E402
from serving.answer_log import SCHEMA, record, to_batch  # noqa: E402
from serving.pipeline.stages import Answer  # noqa: E402

OUT = REPO / "artifacts" / "bench" / "monitor_speed"
BATCH = 512  # the AnswerLog's default batch_rows
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
TIMINGS = {
    "lookup": 2e-4,
    "encode": 1.5e-3,
    "retrieve": 9e-4,
    "filter": 1e-4,
    "rank": 2.5e-3,
    "fallback": 1e-5,
    "batch": 4,
}


def pin_one_core() -> int:
    """Run on the first CPU this process may use, Arrow's pools at one thread."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    return cpu


def popularity_draws(rng, creators: int, size: int) -> np.ndarray:
    """Rows drawn with probability ∝ 1 / (rank + 10): a long tail with a heavy head."""
    weights = 1.0 / (np.arange(creators) + 10.0)
    return rng.choice(creators, size=size, p=weights / weights.sum())


def write_log(folder: Path, n: int, creators: int, fans: int, seed: int, k=(10, 50)) -> Path:
    """n answers in three rotated files; returns the live file's path."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"cr_{i:07d}" for i in range(creators)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "answers.arrows"
    parts = [path.with_name(path.name + ".2"), path.with_name(path.name + ".1"), path]
    ks = rng.integers(k[0], k[1] + 1, n)
    drawn = popularity_draws(rng, creators, int(ks.sum()) * 2)
    who = rng.integers(0, fans, n)
    at = 0
    for part, chunk in zip(parts, np.array_split(np.arange(n), len(parts)), strict=True):
        records = []
        for i in chunk:
            k = int(ks[i])
            rows = list(dict.fromkeys(drawn[at : at + 2 * k].tolist()))[:k]  # distinct
            at += 2 * k
            scores = np.sort(rng.random(len(rows)))[::-1].tolist()
            answer = Answer(ids[rows].tolist(), scores, "model", timings=dict(TIMINGS))
            line = record(
                "recommend",
                {"user_id": f"fan_{who[i]:08d}", "k": k},
                answer,
                {"model_version": "3f2a" * 10, "index_version": "v00001-bench"},
            )
            line["ts"] = dt.datetime.fromtimestamp(T0 + 3600 * i / n, dt.UTC).isoformat(
                timespec="milliseconds"
            )
            records.append(line)
        with pa.ipc.new_stream(str(part), SCHEMA) as writer:
            for start in range(0, len(records), BATCH):
                writer.write_batch(to_batch(records[start : start + BATCH]))
    return path


def catalog(creators: int, fans: int, seed: int) -> Catalog:
    rng = np.random.default_rng(seed + 1)
    ids = np.array([f"cr_{i:07d}" for i in range(creators)])
    fan_ids = np.array([f"fan_{i:08d}" for i in range(fans)])
    popularity = np.bincount(popularity_draws(rng, creators, 5 * fans), minlength=creators)
    history_fans = np.repeat(fan_ids, 5)
    later_fans = fan_ids[rng.permutation(fans)[: fans // 10]]
    return Catalog.build(
        ids,
        popularity=np.minimum(popularity, fans),
        first_seen=T0 - rng.uniform(0, 730, creators) * 86_400,
        category=rng.integers(0, 20, creators),
        embeddings=rng.standard_normal((creators, 64)).astype(np.float32),
        num_users=fans,
        num_categories=20,
        history=(history_fans, rng.integers(0, 20, len(history_fans))),
        later=(
            later_fans,
            ids[popularity_draws(rng, creators, len(later_fans))],
            T0 + rng.uniform(0, 4000, len(later_fans)),
        ),
    )


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=int, default=300_000)
    ap.add_argument("--creators", type=int, default=100_000)
    ap.add_argument("--fans", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, nargs=2, default=(10, 50), metavar=("MIN", "MAX"))
    args = ap.parse_args(argv)
    folder = (
        OUT
        / f"arrows-{args.answers}-{args.creators}-{args.fans}-{args.seed}-k{args.k[0]}-{args.k[1]}"
    )
    path = folder / "answers.arrows"
    if not path.exists():
        _, _, wall = timed(
            lambda: write_log(folder, args.answers, args.creators, args.fans, args.seed, args.k)
        )
        print(f"wrote {args.answers:,} answers in {wall:.0f} s to {folder}", flush=True)
    cpu = pin_one_core()
    cat, _, build_wall = timed(lambda: catalog(args.creators, args.fans, args.seed))
    runs = []
    for _ in range(args.repeats):
        a, read_cpu, read_wall = timed(lambda: answers.read(path, cat))
        figures, fig_cpu, fig_wall = timed(lambda a=a: metrics.compute(a, cat))
        runs.append(
            {
                "read_cpu_s": read_cpu,
                "read_wall_s": read_wall,
                "compute_cpu_s": fig_cpu,
                "compute_wall_s": fig_wall,
            }
        )
        print(json.dumps({k: round(v, 3) for k, v in runs[-1].items()}), flush=True)
    return report(args, folder, a, figures, runs, cpu, build_wall)


def report(args, folder, a, figures, runs, cpu, build_wall) -> dict:
    cpu_s = [r["read_cpu_s"] + r["compute_cpu_s"] for r in runs]
    wall_s = [r["read_wall_s"] + r["compute_wall_s"] for r in runs]
    out = {
        "answers": len(a),
        "listed": int(a.lengths.sum()),
        "log_bytes": sum(p.stat().st_size for p in a.files),
        "files": len(a.files),
        "creators": args.creators,
        "cpu": cpu,
        "load_average": os.getloadavg(),
        "catalog_build_s": round(build_wall, 2),
        "runs": runs,
        "answers_per_cpu_second": {
            "best": len(a) / min(cpu_s),
            "median": len(a) / statistics.median(cpu_s),
        },
        "answers_per_wall_second": {
            "best": len(a) / min(wall_s),
            "median": len(a) / statistics.median(wall_s),
        },
        "figures": figures,
        "log": str(folder),
    }
    write_json(OUT / "result.json", out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("runs", "figures")}, indent=1))
    return out


if __name__ == "__main__":
    main()
