"""Search parameters from measured recall: the cheapest setting that reaches a recall target.

Recall@k is measured against exact search (a flat index, same metric) on real user vectors,
because the recall an IVF-PQ index gives depends on where the queries fall: uniform random
queries would overstate it for popular regions and understate it elsewhere. The sweep walks
`nprobe` (IVF cells visited) upward for each re-rank depth `k_factor_rf` and stops at the first
setting that reaches the target (more cells only cost time); the fastest setting at or above
the target wins. The whole curve goes into the index manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from index.build import HAS_GPU, ivf_of, refine_of, to_device

log = logging.getLogger(__name__)

# Steps of ~1.4-1.5×, not 2×: the cheapest setting reaching the target is often between two
# powers of two (at 1 M × 64, nprobe 24 instead of 32 is ~25 % more queries/s).
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
K_FACTOR = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass
class Point:
    """One search setting and what it measured."""

    params: dict
    """faiss ParameterSpace names → values, e.g. {"nprobe": 16, "k_factor_rf": 4}."""
    recall: float
    """recall@k against exact search, averaged over the queries."""
    qps: float
    """queries per second, the whole query batch at once (best of the repeats)."""


def param_string(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def apply_params(index: faiss.Index, params: dict) -> None:
    if not params:
        return
    on_gpu = type(index).__name__.startswith("Gpu")  # GPU indexes have their own names
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    space.set_index_parameters(index, param_string(params))


def exact_search(
    xb: np.ndarray, xq: np.ndarray, k: int, metric: int, repeats: int = 1, use_gpu: bool = HAS_GPU
) -> tuple[np.ndarray, float]:
    """Ground truth I [nq, k] (row numbers of xb) and the queries per second of exact search
    on the same device as the index it is compared with."""
    flat = faiss.IndexFlat(xb.shape[1], metric)
    flat.add(np.ascontiguousarray(xb, dtype=np.float32))
    flat = to_device(flat, use_gpu)
    seconds, (_, truth) = _timed(flat, xq, k, repeats)
    return truth, len(xq) / seconds


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k (ids -1 never match)."""
    if not len(truth):
        return 0.0
    f, t = found[:, :k, None], truth[:, None, :k]  # [nq, k, 1], [nq, 1, k]
    hits = ((f == t) & (f >= 0)).any(-1).sum(1)  # [nq]
    return float(hits.mean() / min(k, truth.shape[1]))


def _timed(index: faiss.Index, xq: np.ndarray, k: int, repeats: int):
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = index.search(xq, k)
        best = min(best, time.perf_counter() - started)
    return max(best, 1e-9), result


def measure(
    index: faiss.Index, xq: np.ndarray, truth: np.ndarray, k: int, params: dict, repeats: int = 2
) -> Point:
    apply_params(index, params)
    seconds, (_, found) = _timed(index, xq, k, repeats)
    return Point(dict(params), recall_at_k(found, truth, k), len(xq) / seconds)


def grid(index: faiss.Index, nprobe=NPROBE, k_factor=K_FACTOR) -> tuple[list, list]:
    """The settings this index has: nprobe up to its cell count, k_factor_rf if it re-ranks."""
    ivf = ivf_of(index)
    nprobes = sorted({min(p, ivf.nlist) for p in nprobe}) if ivf is not None else [None]
    factors = sorted(set(k_factor)) if refine_of(index) is not None else [None]
    return nprobes, factors


def sweep(
    index: faiss.Index,
    xq: np.ndarray,
    truth: np.ndarray,
    k: int,
    target: float,
    nprobe=NPROBE,
    k_factor=K_FACTOR,
    repeats: int = 2,
    stop_at_target: bool = True,
) -> list[Point]:
    """Measure the grid, each k_factor's nprobe ascending until recall reaches the target
    (or all of it: stop_at_target=False, for a whole curve)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nprobes, factors = grid(index, nprobe, k_factor)
    points = []
    for kf in factors:
        for p in nprobes:
            params = {name: v for name, v in (("nprobe", p), ("k_factor_rf", kf)) if v is not None}
            point = measure(index, xq, truth, k, params, repeats)
            log.info(
                "%s: recall@%d %.4f, %.0f q/s", param_string(params), k, point.recall, point.qps
            )
            points.append(point)
            if stop_at_target and point.recall >= target:
                break
    return points


def choose(points: list[Point], target: float) -> Point:
    """The fastest setting at or above the target; the most accurate one if none reaches it
    (the caller's recall floor decides whether that is good enough)."""
    good = [p for p in points if p.recall >= target]
    if good:
        return max(good, key=lambda p: p.qps)
    return max(points, key=lambda p: (p.recall, p.qps))


def tune(
    index: faiss.Index,
    xb: np.ndarray,
    xq: np.ndarray,
    k: int,
    target: float,
    metric: int,
    nprobe=NPROBE,
    k_factor=K_FACTOR,
    repeats: int = 2,
    use_gpu: bool = HAS_GPU,
) -> dict:
    """Sweep, choose and apply the chosen parameters to `index`; returns the record the
    manifest keeps (k, target, exact QPS, the curve and the choice)."""
    truth, exact_qps = exact_search(xb, xq, k, metric, repeats, use_gpu)
    points = sweep(index, xq, truth, k, target, nprobe, k_factor, repeats)
    chosen = choose(points, target)
    apply_params(index, chosen.params)
    return {
        "k": k,
        "recall_target": target,
        "queries": len(xq),
        "exact_qps": exact_qps,
        # how much the fans' lists differ: a model that sends everyone the same creators makes
        # the search trivially easy (and the recall figure meaningless), which this shows
        "distinct_exact": int(np.unique(truth[truth >= 0]).size),
        "curve": [asdict(p) for p in points],
        "chosen": asdict(chosen),
        "speedup_vs_exact": chosen.qps / exact_qps,
    }
