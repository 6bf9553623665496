"""Load on the /recommend service over loopback, with a 1 M-creator index (issue 5).

    python benchmarks/serving_load.py [--seconds 10] [--concurrency 1 2 4 8 16 32 64] [--rounds 2]

Builds what is missing or stale first (benchmarks/serving_set.py: prepare 1 M creators, train
four epochs, build and publish the default IVF-PQ index — ~12 min on 2 cores), reports how much
fans' served lists differ (distinct creators in 1,000 fans' top-10s) and the tuned search, then
for each way of running the user tower —

    triton          the service (2 workers, as configured) → Triton (Python backend, dynamic
                    batching on) over gRPC
    triton-1        the same with one service process (--workers 1)
    triton-nobatch  2 workers, Triton's dynamic batching off
    onnx            the service (2 workers) with onnxruntime in-process (no Triton)
    onnx-1          the same with one service process

— starts `python -m serving up` and drives it with wrk (Debian's `wrk`, one thread, N
connections = N requests in flight, random known fans, k=20) for `--seconds` per level. The
machine's speed drifts (the same run has measured 1,600 and 3,000 req/s minutes apart), so with
`--rounds R` the modes take turns R times and each level reports the median of its rounds.
Separately it drives Triton alone with single-user requests at rising concurrency, dynamic
batching on and off (a Python gRPC load generator: the service's own view of Triton).

Writes artifacts/bench/serving/{results.json,latency.png} and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import serving_set  # noqa: E402  (the repository root is on sys.path now)
from common.config import load as load_config  # noqa: E402
from serving.config import ServingConfig  # noqa: E402

NAME = "synthetic_1m_creators"
PY = sys.executable

# wrk's report, as one JSON line after RESULT (both scripts below end with it)
DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""

WRK_SCRIPT = (
    r"""
local users = {}
for line in io.lines(os.getenv("TOWERLINE_USERS")) do users[#users + 1] = line end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local k = os.getenv("TOWERLINE_K") or "20"
request = function()
  local body = '{"user_id":"' .. users[math.random(#users)] .. '","k":' .. k .. '}'
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, body)
end
"""
    + DONE_LUA
)


def sh(*cmd: str) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def known_users(n: int = 20000) -> Path:
    """A file of n random fans with history (a seeded sample), one id per line, for wrk."""
    from serving.pipeline.versions import sample_fans

    ids = sample_fans(REPO / "artifacts" / "data" / NAME, n)
    path = REPO / "artifacts" / "bench" / "serving" / "users.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")
    return path


class Service:
    """`python -m serving up` in a subprocess (with its own Triton when encoder=triton)."""

    def __init__(self, port: int, sets: list[str]):
        self.port, self.sets = port, sets
        self.url = f"http://127.0.0.1:{port}"
        config = REPO / "configs" / "serving" / f"{NAME}.yaml"
        self.workers = load_config(ServingConfig, config, sets).workers  # as `serving up` reads it
        self.log = REPO / "artifacts" / "bench" / "serving" / f"service-{port}.log"

    def __enter__(self):
        cmd = [PY, "-m", "serving", "--quiet", "up", "--config", f"configs/serving/{NAME}.yaml",
               "--port", str(self.port), "--poll_seconds", "0", *self.sets]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no bench folder
        self.out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    self.info = json.loads(r.read())
                    return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"service not ready; see {self.log}")

    def each_worker(self, ask, timeout_s: float = 300) -> None:
        """`ask(client)` once on a connection to each worker process. A keep-alive client
        reaches one worker only (the kernel picks a listener per connection), so each try
        opens its own connection and learns whose it is from /readyz."""
        import httpx

        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < self.workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reached {len(done)} of {self.workers} workers")
            with httpx.Client(base_url=self.url, timeout=300) as client:
                pid = client.get("/readyz").json()["pid"]
                if pid not in done:
                    ask(client)
                    done.add(pid)

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
        self.out.close()


def wrk(url: str, users: Path, connections: int, seconds: float) -> dict:
    return wrk_raw(url, WRK_SCRIPT, {"TOWERLINE_USERS": str(users)}, connections, seconds)


def ensure_wrk() -> None:
    """The load generator is Debian's `wrk`: installed here when missing (as root, like
    .ci/run installs redis-server), or a clear error saying how."""
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("this benchmark drives its load with wrk: apt-get install wrk")
    print("installing wrk (Debian's package)", flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "wrk"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def wrk_raw(url: str, script: str, env: dict, connections: int, seconds: float) -> dict:
    """wrk, one thread, `connections` requests in flight; the script's done() prints RESULT."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    env = {**os.environ, **env}
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
         "--timeout", "5s", "-s", f.name, url],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    os.unlink(f.name)
    m = re.search(r"RESULT (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(m.group(1))
    return {
        "in_flight": connections,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1e3,
        "p90_ms": r["p90_us"] / 1e3,
        "p99_ms": r["p99_us"] / 1e3,
        "max_ms": r["max_us"] / 1e3,
        "requests": r["requests"],
        "errors": r["socket_errors"] + r["non2xx"],
    }


def warm(url: str, users: Path) -> None:
    wrk(url, users, 4, 3)


def service_run(mode: str, sets: list[str], users, levels, seconds, port) -> dict:
    with Service(port, sets) as svc:
        fans = users.read_text().split()[:1000]
        served = serving_set.distinct_served(svc.url, fans, k=10)
        print(
            f"  {mode:<15} {served['distinct']:,} distinct creators in {len(fans):,} fans' "
            f"top-10s ({served['model_answers']:,} from the model)",
            flush=True,
        )
        warm(svc.url, users)
        rows = []
        for c in levels:
            row = wrk(svc.url, users, c, seconds)
            rows.append(row)
            print(
                f"  {mode:<15} in flight {c:>3}: {row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f}"
                f" ms  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}",
                flush=True,
            )
        return {"mode": mode, "encoder": svc.info.get("encoder"), "levels": rows,
                "index_version": svc.info.get("index_version"), "served": served,
                "answer_log": answer_log_counts(svc.url)}  # fmt: skip


def answer_log_counts(url: str, settle_s: float = 2.0) -> dict[str, float]:
    """What the service (every worker: the metrics are shared) did with answers offered to its
    answer log, by outcome (queued, unsampled, dropped); empty without a log. Read `settle_s`
    after the load: requests wrk left in flight when it stopped are still answered (and
    logged) after it has gone."""
    time.sleep(settle_s)
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r'^towerline_answer_log_records_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


TRITON_SCRIPT = (
    r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("TOWERLINE_BODY")
"""
    + DONE_LUA
)


def triton_direct(levels, seconds: int) -> dict:
    """Single-user inference requests straight to Triton's HTTP endpoint (KServe v2 JSON) from
    wrk, dynamic batching on vs off, same export: what Triton's batching itself buys."""
    from index import store
    from index.onnx import signature
    from serving.triton.repository import MODEL_NAME, write_repositories
    from serving.triton.server import TritonServer

    root = REPO / "artifacts" / "index" / NAME
    folder = store.versions_dir(root) / store.current_version(root)
    names = list(signature(folder / store.USER_TOWER)["inputs"])
    with np.load(folder / store.PROBES, allow_pickle=False) as p:
        one = {k: p[k][:1] for k in names}
    body = {
        "inputs": [
            {
                "name": k,
                "shape": [1, 1] if k == "user" else list(v.shape),
                "datatype": "INT64",
                "data": v.ravel().tolist(),
            }
            for k, v in one.items()
        ],
        "outputs": [{"name": "embedding"}],
    }
    out = {}
    for batching in (True, False):
        repo = Path(tempfile.mkdtemp(prefix="triton-bench-"))
        write_repositories(folder / store.USER_TOWER, repo, dynamic_batching=batching)
        with TritonServer(repo / "local", models=[MODEL_NAME]) as server:
            url = f"http://{server.http_url}/v2/models/user_tower/infer"
            rows = []
            wrk_raw(url, TRITON_SCRIPT, {"TOWERLINE_BODY": json.dumps(body)}, 4, 2)  # warm
            for c in levels:
                rows.append(wrk_raw(url, TRITON_SCRIPT, {"TOWERLINE_BODY": json.dumps(body)}, c,
                                    seconds))  # fmt: skip
                r = rows[-1]
                print(
                    f"  triton alone, batching {'on' if batching else 'off':<3} in flight "
                    f"{c:>3}: {r['rps']:8.0f} inf/s  p50 {r['p50_ms']:6.2f} ms  p99 "
                    f"{r['p99_ms']:6.2f} ms  errors {r['errors']}",
                    flush=True,
                )
        out["dynamic_batching" if batching else "no_batching"] = rows
    return out


def medians(runs: list[dict]) -> list[dict]:
    """One line per mode: each level's median req/s, p50 and p99 over the mode's rounds."""
    out = {}
    for run in runs:
        out.setdefault(run["mode"], []).append(run["levels"])
    summary = []
    for mode, rounds in out.items():
        levels = []
        for rows in zip(*rounds, strict=True):
            med = {k: float(np.median([r[k] for r in rows])) for k in ("rps", "p50_ms", "p99_ms")}
            levels.append({"in_flight": rows[0]["in_flight"], **med, "rounds": len(rows),
                           "errors": sum(r["errors"] for r in rows)})  # fmt: skip
        summary.append({"mode": mode, "levels": levels})
    return summary


def goals(summary: list[dict]) -> dict:
    """Issue 14's goals per mode: p99 at 1 in flight, and the most req/s at p99 <= 15 ms."""
    out = {}
    for run in summary:
        one = next((r for r in run["levels"] if r["in_flight"] == 1), None)
        ok = [r for r in run["levels"] if r["p99_ms"] <= 15.0]
        best = max(ok, key=lambda r: r["rps"], default=None)
        out[run["mode"]] = {
            "p99_ms_at_1": one and round(one["p99_ms"], 2),
            "rps_at_p99_le_15ms": best and round(best["rps"]),
            "in_flight": best and best["in_flight"],
        }
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(results["summary"]):
        color = f"C{i}"
        x = [r["in_flight"] for r in run["levels"]]
        a.plot(x, [r["p99_ms"] for r in run["levels"]], marker="o", color=color,
               label=f"{run['mode']} p99")  # fmt: skip
        a.plot(x, [r["p50_ms"] for r in run["levels"]], ls="--", alpha=0.6, color=color,
               label=f"{run['mode']} p50")  # fmt: skip
        b.plot(x, [r["rps"] for r in run["levels"]], marker="o", color=color, label=run["mode"])
    for name, rows in (results.get("triton_direct") or {}).items():
        b.plot([r["in_flight"] for r in rows], [r["rps"] for r in rows], ls=":", marker=".",
               color="grey" if name == "no_batching" else "black",
               label=f"Triton alone, {name.replace('_', ' ')} (inf/s)")  # fmt: skip
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests in flight")
        ax.grid(alpha=0.3)
    a.set_ylabel("latency (ms), median of rounds")
    a.axhline(5, color="grey", lw=0.8)  # issue 14's goals: p99 at 1 in flight, under load
    a.axhline(15, color="grey", lw=0.8)
    b.set_ylabel("requests/s (inferences/s for Triton alone)")
    b.set_yscale("log")
    b.axhline(2000, color="grey", lw=0.8)
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    rounds = results.get("rounds", 1)
    fig.suptitle(f"/recommend on loopback, {results['creators']:,} creators "
                 f"({results['machine']}, median of {rounds} rounds)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SETS = {
    "triton": ["--encoder", "triton", "--triton.dynamic_batching", "true"],
    "triton-1": ["--encoder", "triton", "--triton.dynamic_batching", "true", "--workers", "1"],
    "triton-nobatch": ["--encoder", "triton", "--triton.dynamic_batching", "false"],
    "onnx": ["--encoder", "onnx"],
    "onnx-1": ["--encoder", "onnx", "--workers", "1"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--modes", nargs="+", choices=sorted(SETS),
                    default=["triton", "triton-1", "onnx", "onnx-1"])  # fmt: skip
    ap.add_argument("--rounds", type=int, default=2, help="turns each mode takes (medians)")
    ap.add_argument("--no-direct", action="store_true", help="skip Triton-only load")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--out", default="artifacts/bench/serving")
    ap.add_argument("--replot", action="store_true", help="redraw the plot of the last run")
    args = ap.parse_args()
    out = REPO / args.out
    if args.replot:
        plot(json.loads((out / "results.json").read_text()), out / "latency.png")
        return
    ensure_wrk()
    serving_set.ensure_built()
    users = known_users()
    results = {
        **serving_set.index_figures(),
        "machine": f"{os.cpu_count()} cores, no GPU" if not _gpu() else "GPU",
        "seconds_per_level": args.seconds,
        "rounds": args.rounds,
        "service": [],
    }
    for turn in range(args.rounds):
        for i, mode in enumerate(args.modes):
            print(f"{mode} (round {turn + 1} of {args.rounds}):", flush=True)
            port = args.port + turn * len(args.modes) + i
            run = service_run(mode, SETS[mode], users, args.concurrency, args.seconds, port)
            results["service"].append(run | {"round": turn + 1})
    results["summary"] = medians(results["service"])
    results["goals"] = goals(results["summary"])
    print(json.dumps(results["goals"], indent=2))
    if not args.no_direct:
        print("Triton alone:", flush=True)
        results["triton_direct"] = triton_direct(args.concurrency, args.seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "latency.png")
    print(f"wrote {out / 'results.json'} and {out / 'latency.png'}")


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
