"""Prepare throughput (events/s per core) and peak memory, side by side with the input-read floor.

    python benchmarks/prepare_throughput.py --events 10000000            # throughput run
    python benchmarks/prepare_throughput.py --events 100000000 --memory  # peak memory run

Throughput run: the synthetic generator writes N canonical events to parquet once; then, each in a
fresh child process, (a) merely reading that parquet (the floor: no pipeline can beat it) and
(b) `prepare` on it. Per core = events / CPU seconds of the child (user + sys, all threads), so a
multi-threaded library cannot flatter it; the child is also pinned to one core for a wall-clock
single-core figure. Memory run: `prepare` streams N events straight from the generator in a child
and reports its peak RSS (ru_maxrss) against the 8 GiB limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_EVENTS_PER_CORE_S = 1_000_000
MEMORY_LIMIT_GIB = 8.0


def synthetic_source(events: int) -> dict:
    return {
        "kind": "synthetic",
        "num_events": events,
        "num_users": max(1000, events // 20),
        "num_creators": max(200, events // 200),
        "seed": 0,
    }


def child(code: str, pin_core: bool = False) -> dict:
    """Run `code` in a fresh interpreter; return its wall, CPU and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-c", code]
    if pin_core:
        cmd = ["taskset", "-c", "0", *cmd]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_gib": after.ru_maxrss / 2**20}


def prepare_code(source: dict, out: Path, extra: str = "") -> str:
    return (
        "from common.config import load; from data.config import PrepareConfig\n"
        "from data.prepare import prepare\n"
        f"cfg = load(PrepareConfig, 'configs/data/synthetic_10m.yaml', ['--output', '{out}', "
        f"'--source', '{json.dumps(source)}'{extra}])\n"
        "prepare(cfg, progress=False)\n"
    )


def throughput(events: int, workdir: Path, repeats: int) -> dict:
    raw = workdir / "raw"
    gen = child(
        "from data.sources import build; from data.sources.files import write_parquet_logs\n"
        f"write_parquet_logs(build({synthetic_source(events)!r}), {str(raw)!r})\n"
    )
    source = {
        "kind": "parquet",
        "interactions_path": str(raw / "interactions.parquet"),
        "creators_path": str(raw / "creators.parquet"),
        "users_path": str(raw / "users.parquet"),
    }
    read = child(
        "import pyarrow.parquet as pq\n"
        f"f = pq.ParquetFile({str(raw / 'interactions.parquet')!r})\n"
        "for b in f.iter_batches(batch_size=1_000_000, use_threads=False): pass\n"
    )
    # This VM's speed drifts by about ±15% between identical runs: repeat, report best and median.
    runs = [child(prepare_code(source, workdir / f"out{i}")) for i in range(repeats)]
    pinned = child(prepare_code(source, workdir / "pinned"), pin_core=True)
    return {
        "events": events,
        "generate": gen,
        "read_floor": read,
        "prepare_runs": runs,
        "prepare_one_core": pinned,
    }


def memory(events: int, workdir: Path) -> dict:
    src = synthetic_source(events)
    run = child(
        prepare_code(src, workdir / "out", ", '--shards.num_shards', '64', '--buckets', '32'")
    )
    return {"events": events, "prepare_streamed": run}


def report(result: dict) -> str:
    n = result["events"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [f"machine: {machine}", f"events: {n:,}"]
    if "prepare_runs" in result:
        runs, read, one = result["prepare_runs"], result["read_floor"], result["prepare_one_core"]
        cpu = sorted(r["cpu_s"] for r in runs)
        best, median = n / cpu[0], n / cpu[len(cpu) // 2]
        lines += [
            f"generate (synthetic → parquet): {n / result['generate']['cpu_s'] / 1e6:.2f} "
            "M events per CPU-second",
            f"read floor (parquet scan only): {n / read['cpu_s'] / 1e6:.2f} "
            "M events per CPU-second",
            f"prepare, {len(runs)} runs: best {best / 1e6:.2f}, median {median / 1e6:.2f} "
            f"M events per CPU-second (CPU-s {', '.join(f'{c:.1f}' for c in cpu)}; "
            "start-up and imports included)",
            f"prepare pinned to one core: {n / one['wall_s'] / 1e6:.2f} M events/s wall",
            f"ratio prepare / goal (1 M events/s/core): best {best / GOAL_EVENTS_PER_CORE_S:.2f}, "
            f"median {median / GOAL_EVENTS_PER_CORE_S:.2f}",
            f"ratio prepare CPU / read-floor CPU: {cpu[0] / read['cpu_s']:.1f}x (best run)",
            f"peak RSS: {max(r['peak_rss_gib'] for r in runs):.2f} GiB",
        ]
    if "prepare_streamed" in result:
        run = result["prepare_streamed"]
        lines += [
            f"prepare streamed from the generator: {run['wall_s']:.0f} s wall, "
            f"{run['cpu_s']:.0f} CPU-s ({n / run['cpu_s'] / 1e6:.2f} M events per CPU-second, "
            "generation included)",
            f"peak RSS: {run['peak_rss_gib']:.2f} GiB; ratio to the 8 GiB limit: "
            f"{run['peak_rss_gib'] / MEMORY_LIMIT_GIB:.2f}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--memory", action="store_true", help="peak-memory run (streamed)")
    parser.add_argument("--repeats", type=int, default=3, help="prepare runs (best and median)")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.memory:
            result = memory(args.events, work)
        else:
            result = throughput(args.events, work, args.repeats)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
