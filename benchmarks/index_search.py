"""Creator index search: build time, recall@k against exact search and queries/s against exact
search measured in the same run, for the setting tuning chooses and the curve around it.

    python benchmarks/index_search.py                       # 1 M × 64 clustered synthetic creators
    python benchmarks/index_search.py --n 50000             # a quick check
    python benchmarks/index_search.py --embeddings DIR      # an export (`python -m index export`)
                                                            # or an index version folder
Goal (issue 4) on 2 cores: recall@10 >= 0.95 at >= 50× the exact queries/s, build <= 30 s; on a
GPU: build <= 5 s and >= 100 K queries/s at recall@10 >= 0.95.

The queries are split in two: tuning picks the fastest setting reaching the target on the first
half (as the rebuild job does), and the figures reported are measured on the other half, so the
choice is not graded on the queries it was made on. Exact search is faiss's flat index (BLAS
matrix products) over the same queries, threads and machine; the speedup reported is the median
ratio of `--rounds` exact and index searches timed in alternation (see interleaved()). Writes
`<out>/<name>.json` and `<out>/<name>.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.vectors import clustered  # noqa: E402
from index import build, tune  # noqa: E402
from index.export import load_embeddings  # noqa: E402

IP = faiss.METRIC_INNER_PRODUCT
GOALS_CPU = {"recall": 0.95, "speedup": 50.0, "build_s": 30.0}
GOALS_GPU = {"recall": 0.95, "qps": 100_000.0, "build_s": 5.0}


def data(a) -> tuple[np.ndarray, np.ndarray, dict]:
    if a.embeddings:
        emb = load_embeddings(a.embeddings)
        if len(emb.xq) < 2:
            raise SystemExit(f"{a.embeddings} has {len(emb.xq)} query vectors; export more")
        return emb.xb, emb.xq[: a.queries], {"source": str(a.embeddings), **emb.manifest["model"]}
    xb = clustered(a.n, a.d, a.n, seed=1)
    xq = clustered(a.queries, a.d, a.n, seed=2)
    return xb, xq, {"source": "clustered (topics of communities, see clustered())"}


def run(a) -> dict:
    started = time.perf_counter()
    xb, xq, source = data(a)
    n, d = xb.shape
    tune_q, test_q = halves(xq)
    print(f"{n:,} × {d} creators, {len(xq):,} queries ({time.perf_counter() - started:.1f} s)")
    truth_tune, _ = tune.exact_search(xb, tune_q, a.k, IP, use_gpu=a.gpu)
    truth_test, exact_qps = tune.exact_search(xb, test_q, a.k, IP, a.repeats, a.gpu)
    print(f"exact: {exact_qps:,.0f} q/s")
    factory = build.resolve_factory(a.factory, n, d, a.nlist, a.pq_m)
    index, timings = build.build(xb, factory, IP, use_gpu=a.gpu)
    print(f"build {factory}: {timings['build_s']:.1f} s")
    index = build.to_device(index, a.gpu)  # searched where it was built, when faiss can
    nprobe = [p for p in tune.NPROBE if p <= a.max_nprobe]
    aim = min(1.0, a.target + a.margin)
    chosen = tune.choose(
        tune.sweep(index, tune_q, truth_tune, a.k, aim, nprobe, repeats=a.repeats), aim
    )
    held_out = tune.measure(index, test_q, truth_test, a.k, chosen.params, a.repeats)
    rounds = interleaved(xb, index, test_q, a.k, a.rounds, a.gpu)
    print(f"interleaved: {rounds['speedup']:.1f}× exact (rounds {rounds['speedups']})")
    curve = tune.sweep(index, test_q, truth_test, a.k, a.target, nprobe, repeats=a.repeats,
                       stop_at_target=False)  # fmt: skip
    result = {
        "machine": machine(a.gpu),
        "data": {"n": n, "d": d, "queries": len(xq), **source},
        "factory": factory,
        "k": a.k,
        "target": a.target,
        "tuned_for": aim,
        "build": timings,
        "exact_qps": rounds["exact_qps"],
        "chosen": figures(chosen, held_out, rounds, exact_qps),
        "rounds": rounds,
        "curve": [vars(p) for p in curve],
    }
    result["goals"] = goals(result, a.gpu)
    return result


def halves(xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The queries shuffled (seeded), then halved: tuning's and the measured ones."""
    # A seeded shuffle before halving: an export's users come sorted by id, and the two halves
    # of a sorted sample need not be alike (Gowalla: recall 0.964 on the first, 0.951 on the
    # second at the same setting).
    xq = xq[np.random.default_rng(0).permutation(len(xq))]
    return xq[: len(xq) // 2], xq[len(xq) // 2 :]


def figures(chosen, held_out, rounds: dict, exact_qps: float) -> dict:
    """The chosen setting: its recall on tuning's queries and the held-out ones, and its speed
    (the interleaved rounds' median, with the best of repeats beside it)."""
    return {
        "params": chosen.params,
        "tuning_recall": chosen.recall,
        "recall": held_out.recall,
        "qps": rounds["qps"],
        "speedup": rounds["speedup"],
        "best_of_repeats": {"qps": held_out.qps, "exact_qps": exact_qps},
    }


def interleaved(xb, index, xq, k: int, rounds: int, gpu: bool) -> dict:
    """Exact search and the index timed in alternation, `rounds` times, over the same queries.
    This VM's compute throughput drifts by up to 2× from one second to the next (exact search
    alone: 446-783 q/s in 8 back-to-back calls), so the speedup is the median of per-round
    ratios, each taken from two searches run seconds apart, not a best-of-N of each side."""
    flat = build.to_device(faiss.IndexFlat(xb.shape[1], IP), gpu)
    flat.add(np.ascontiguousarray(xb, dtype=np.float32))
    exact_s, ann_s = [], []
    for _ in range(max(1, rounds)):
        for target, times in ((flat, exact_s), (index, ann_s)):
            started = time.perf_counter()
            target.search(xq, k)
            times.append(time.perf_counter() - started)
    ratios = sorted(e / a for e, a in zip(exact_s, ann_s, strict=True))
    return {
        "rounds": len(ratios),
        "speedup": float(np.median(ratios)),
        "speedups": [round(r, 1) for r in ratios],
        "exact_qps": float(len(xq) / np.median(exact_s)),
        "qps": float(len(xq) / np.median(ann_s)),
    }


def machine(gpu: bool) -> dict:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "gpu": gpu,
        "faiss": getattr(faiss, "__version__", None),
        "simd": faiss.get_compile_options(),
    }


def goals(r: dict, gpu: bool) -> dict:
    c, want = r["chosen"], GOALS_GPU if gpu else GOALS_CPU
    got = {"recall": c["recall"], "build_s": r["build"]["build_s"]}
    got.update({"qps": c["qps"]} if gpu else {"speedup": c["speedup"]})
    met = {k: got[k] <= v if k == "build_s" else got[k] >= v for k, v in want.items()}
    return {"want": want, "got": got, "met": met, "all_met": all(met.values())}


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_factor: dict = {}
    for p in r["curve"]:
        by_factor.setdefault(p["params"].get("k_factor_rf"), []).append(p)
    for kf, points in sorted(by_factor.items(), key=lambda kv: kv[0] or 0):
        ax.plot([p["recall"] for p in points], [p["qps"] for p in points], "o-", ms=3,
                label=f"k_factor_rf={kf}" if kf else "IVF-PQ")  # fmt: skip
    c = r["chosen"]
    ax.plot([c["recall"]], [c["qps"]], "r*", ms=14, label=f"chosen {c['params']}")
    ax.axhline(r["exact_qps"], color="k", ls="--", lw=1, label="exact (flat)")
    ax.axhline(50 * r["exact_qps"], color="gray", ls=":", lw=1, label="50× exact")
    ax.axvline(r["target"], color="gray", ls="-.", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{r['k']} (held-out queries)")
    ax.set_ylabel("queries / s")
    d = r["data"]
    ax.set_title(f"{r['factory']} on {d['n']:,} × {d['d']} ({d['source']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic creators")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--queries", type=int, default=4000, help="half tune, half measured")
    p.add_argument("--embeddings", type=Path, help="an export or index version folder instead")
    p.add_argument("--factory", default=build.DEFAULT_FACTORY)
    p.add_argument("--nlist", type=int)
    p.add_argument("--pq-m", type=int)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument(
        "--margin",
        type=float,
        default=0.005,
        help="tune for target + margin: recall on 2,000 queries varies by ~0.002 between halves",
    )
    p.add_argument("--max-nprobe", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7,
                   help="exact/index timings in turn; speedup = median ratio")  # fmt: skip
    p.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=build.HAS_GPU)
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "index")
    p.add_argument("--name", help="output file stem (default: from the data)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse(argv)
    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    r = run(a)
    name = a.name or (f"{Path(a.embeddings).name}" if a.embeddings else f"clustered_{a.n}x{a.d}")
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = a.out / f"{name}.json.tmp"
    tmp.write_text(json.dumps(r, indent=1, default=float))
    tmp.replace(a.out / f"{name}.json")
    plot(r, a.out / f"{name}.png")
    c, g = r["chosen"], r["goals"]
    print(
        f"{r['factory']} at {tune.param_string(c['params'])}: recall@{a.k} {c['recall']:.4f}, "
        f"{c['qps']:,.0f} q/s = {c['speedup']:.1f}× exact ({r['exact_qps']:,.0f} q/s), build "
        f"{r['build']['build_s']:.1f} s; goals {'met' if g['all_met'] else 'NOT met'}: {g['met']}"
    )
    print(f"wrote {a.out / name}.json and .png")


if __name__ == "__main__":
    main()
