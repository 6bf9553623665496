"""What the answer log costs the 1 M-creator service (issue 18: <= 5 % of its throughput at 10 %
sampling): /recommend with the log off, at 10 % and at 100 % of fans, side by side in one run,
the same fans, the same wrk load (benchmarks/serving_load.py).

    python benchmarks/answer_log_cost.py [--no-text] [--seconds 10] [--rounds 3] \
        [--concurrency 1 16]

Builds what is missing as benchmarks/rank_latency.py does (the set, then the ranker of its
current version), then for each mode starts `python -m serving up` with the served config (two
workers, the user tower and the ranker on Triton, ranking on: what production runs), each
worker logging to its own file, and drives it at each level of requests in flight. The modes
take turns `--rounds` times; each level reports the median of its rounds, and each mode's
throughput as a share of the log-off service's in the same round (the machine's speed drifts
between rounds, less within one). Every logged file is read back afterwards: the answers
counted on disk must match the service's own count of what it queued. Beside it, in-process,
the CPU one logged answer costs (`cpu_per_logged_answer`), set against the machine's time per
answer: the same cost without a whole service's noise. The last round's logs
stay in `<out>/logs/<mode>/` (the relevance monitor's input at 1 M creators:
configs/monitoring/synthetic_1m_creators.yaml reads `sample-100`'s).

    off         `--answer_log.path null`
    sample-10   `--answer_log.sample 0.1`: a tenth of fans, all of their answers
    sample-100  every answer

Writes artifacts/bench/answer_log_cost/results.json and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import rank_latency, serving_load, serving_set  # noqa: E402
from benchmarks.monitor_speed import TIMINGS  # noqa: E402
from serving import answer_log  # noqa: E402
from serving.pipeline.stages import Answer  # noqa: E402

SAMPLES = {"off": None, "sample-10": 0.1, "sample-100": 1.0}


def cpu_per_logged_answer(n: int = 20_000, k: int = 20, repeats: int = 3) -> float:
    """Seconds of CPU one logged answer costs the process (record, queue, batch, write: both
    threads), the fewest of `repeats`: the same cost as the service's, without the noise of a
    whole service under load."""
    ids = [f"cr_{i:07d}" for i in range(k)]
    answer = Answer(ids, [1.0 / (i + 1) for i in range(k)], "model", timings=dict(TIMINGS))
    versions = {"model_version": "3f2a" * 10, "index_version": "v00001-bench"}
    best = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        for rep in range(repeats):
            log = answer_log.AnswerLog(Path(folder) / f"{rep}.arrows", queue_size=n)
            started = time.process_time()
            for i in range(n):
                log.offer("recommend", {"user_id": f"fan_{i}", "k": k}, answer, versions)
            log.close(timeout=120)
            best = min(best, (time.process_time() - started) / n)
    return best


def flags(sample: float | None, log: Path) -> list[str]:
    if sample is None:
        return ["--answer_log.path", "null"]
    return ["--answer_log.path", str(log), "--answer_log.sample", str(sample)]


def one_round(modes, users, levels, seconds, port, scratch: Path) -> list[dict]:
    """Each mode once; what each logged, read back from its files."""
    runs = []
    for i, mode in enumerate(modes):
        log = scratch / mode / "answers.arrows"
        shutil.rmtree(log.parent, ignore_errors=True)
        sets = flags(SAMPLES[mode], log)
        run = serving_load.service_run(mode, sets, users, levels, seconds, port + i)
        if SAMPLES[mode] is not None:
            files = answer_log.parts(log)
            run["logged"] = sum(1 for _ in answer_log.read(log))
            run["log_files"] = [p.name for p in files]
            run["log_bytes"] = sum(p.stat().st_size for p in files)
            queued = run["answer_log"].get("queued", 0)
            if run["logged"] != queued:  # nothing lost between the service and the disk
                raise RuntimeError(f"{mode}: {queued:.0f} answers queued, {run['logged']} on disk")
        runs.append(run)
    return runs


def shares(runs: list[dict]) -> list[dict]:
    """Per mode and level, req/s as a share of the same round's log-off service: the median
    over rounds, and each round's."""
    out = []
    for run in runs:
        if run["mode"] == "off":
            continue
        base = next(r for r in runs if r["mode"] == "off" and r["round"] == run["round"])
        for mine, theirs in zip(run["levels"], base["levels"], strict=True):
            out.append({"mode": run["mode"], "in_flight": mine["in_flight"],
                        "round": run["round"], "share": mine["rps"] / theirs["rps"]})  # fmt: skip
    table = {}
    for row in out:
        table.setdefault((row["mode"], row["in_flight"]), []).append(row["share"])
    return [{"mode": m, "in_flight": n, "share": statistics.median(v), "rounds": v}
            for (m, n), v in table.items()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-text", action="store_true", help="a catalog without text vectors")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--modes", nargs="+", choices=list(SAMPLES), default=list(SAMPLES))
    ap.add_argument("--port", type=int, default=18280)
    ap.add_argument("--out", default="artifacts/bench/answer_log_cost")
    args = ap.parse_args()
    if "off" not in args.modes:
        ap.error("--modes must include off: the others are measured against it")
    serving_load.ensure_wrk()
    serving_set.ensure_built(overrides=serving_set.NO_TEXT if args.no_text else None)
    rank_latency.ensure_ranker()
    users = serving_load.known_users()
    runs = []
    logs = REPO / args.out / "logs"  # the last round's stay, for the monitor (README)
    for turn in range(args.rounds):
        print(f"round {turn + 1} of {args.rounds}:", flush=True)
        port = args.port + turn * len(args.modes)
        for run in one_round(args.modes, users, args.concurrency, args.seconds, port, logs):
            runs.append(run | {"round": turn + 1})
    report(args, runs)


def report(args, runs: list[dict]) -> None:
    results = {"machine": f"{os.cpu_count()} cores, no GPU", "text_vectors": not args.no_text,
               "runs": runs, "summary": rank_latency.summary(runs),
               "shares": shares(runs),
               "cpu_per_logged_answer_s": cpu_per_logged_answer()}  # fmt: skip
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("| mode | in flight | req/s | p99 ms | throughput against off (median; rounds) |\n"
          "| --- | --- | --- | --- | --- |")  # fmt: skip
    share = {(s["mode"], s["in_flight"]): s for s in results["shares"]}
    for row in results["summary"]:
        s = share.get((row["mode"], row["in_flight"]))
        against = "" if s is None else (
            f"**{s['share']:.3f}** ({', '.join(f'{x:.3f}' for x in s['rounds'])})")  # fmt: skip
        print(f"| {row['mode']} | {row['in_flight']} | {row['rps']:,.0f} | {row['p99_ms']:.2f} "
              f"| {against} |")  # fmt: skip
    for run in runs:
        if "logged" in run:
            print(f"round {run['round']} {run['mode']}: {run['logged']:,} answers logged in "
                  f"{run['log_files']} ({run['log_bytes'] / 1e6:.1f} MB)")  # fmt: skip
    cpu = results["cpu_per_logged_answer_s"]
    per_request = 2 / max(r["rps"] for r in results["summary"] if r["mode"] == "off")  # 2 cores
    print(f"in-process: {cpu * 1e6:.1f} µs of CPU per logged answer (k 20), against "
          f"{per_request * 1e3:.2f} ms of the machine per answer at the off service's best: "
          f"{0.1 * cpu / per_request:.2%} of it at 10 % sampling")  # fmt: skip
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
