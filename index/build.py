"""Build a FAISS index over creator vectors from a factory string, on the GPU when faiss sees one.

The default factory, `IVF{nlist},PQ{m}x4fsr,RFlat`: an inverted file over spherical k-means
cells, 4-bit fast-scan product codes (m codes of 4 bits per vector: `d/2` for 2 dimensions a
code) of each vector's residual from its cell's centroid (the `r`), and an exact re-ranking of
the best `k_factor_rf × k` candidates against the stored vectors. Fast-scan codes are scanned
from registers with SIMD, several times faster than 8-bit PQ, and the exact re-rank wins back
the accuracy 4-bit codes lose. Residual codes (plain `x4fs` codes the vectors themselves for
inner product) halve the re-rank depth needed: at 1 M × 64 and nprobe 32, recall@10 0.956 at
k_factor_rf 3 instead of 6, ~15 % more queries/s in interleaved rounds. With inner product the
look-up table stays one per query (plus a bias per cell), so residuals cost nothing at search
time. `{nlist}` and `{m}` are filled in from the corpus (default_nlist) unless the config fixes
them.

GPU or CPU is decided in one place (`use_gpu` defaults to `HAS_GPU`), and the index is built
once and moved with `index_cpu_to_gpu`. Types faiss has no GPU version of (fast-scan, re-rank)
stay on the CPU, but their k-means still runs on the GPU through the IVF's clustering index,
which is where the build time goes. Indexes are always saved as CPU indexes.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import faiss
import numpy as np

from common.errors import ConfigError, IntegrityError
from common.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "IVF{nlist},PQ{m}x4fsr,RFlat"
METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
MAX_DIMS_PER_CODE = 8  # how wide a default 4-bit code may get (a bound, not a measurement)
MIN_POINTS_PER_LIST = 39  # below this faiss's k-means warns that cells are poorly estimated
HAS_GPU = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
if not HAS_GPU:
    log.debug("faiss sees no GPU (faiss-cpu, or no CUDA device): indexes build on the CPU")

# faiss 1.15 scores a flat index (exact search, and an IVF's coarse quantizer) with a scalar
# loop instead of BLAS while queries × d < 128,000: 2,000 queries at d = 64. A fast-scan IVF
# search splits its queries over the threads and assigns each slice to cells on its own, so on
# 2 cores every slice of a 2,000-query batch fell under it, and the IVF was ~1.4× slower than
# with BLAS (31-36 K vs 40-51 K q/s, 1 M × 64, nprobe 32, same run). Single-thread crossover,
# measured here: over 4,096 centroids BLAS wins from 8 queries (62 K vs 46 K q/s) and ties at
# 4; over 1 M vectors it wins from ~8 and loses 4× at 1. So BLAS from 1,024 = 16 queries at
# d = 64, 4 at d = 256. Only faiss's own default is replaced (a caller's setting is kept).
FLAT_BLAS_FROM = 1024
if faiss.cvar.distance_compute_blas_threshold == 128_000:
    faiss.cvar.distance_compute_blas_threshold = FLAT_BLAS_FROM


class MetricMismatchError(ConfigError):
    """The index metric is not the metric the towers were trained with."""


def default_nlist(n: int) -> int:
    """IVF cells: the power of two nearest 4·sqrt(n) (the low end of faiss's 4–16·sqrt(n)
    guideline), and at most n / 39 so k-means has enough points per cell. Measured at 1 M × 64
    on 2 cores (BENCHMARKS.md): 4,096 cells gave 35.9× exact QPS at recall@10 0.958 with a
    17.5 s build, 2,048 gave 27.6× (10.5 s), 8,192 gave 42.7× but a 68 s build."""
    if n < 2 * MIN_POINTS_PER_LIST:
        return 1
    nearest = 2 ** round(math.log2(4 * math.sqrt(n)))
    cap = 2 ** int(math.log2(n // MIN_POINTS_PER_LIST))
    return max(1, min(nearest, cap))


def default_pq_m(d: int) -> int:
    """Product codes per vector: one per 2 dimensions when d is even, otherwise one per the
    fewest dimensions that divide d (up to MAX_DIMS_PER_CODE). The spectral Gowalla towers have
    1,025 dimensions (1,024 and the unit-norm completion): 205 codes of 5 dimensions, recall@10
    0.96 at 10-13× exact with the re-rank (two runs, BENCHMARKS.md)."""
    for per_code in range(2, MAX_DIMS_PER_CODE + 1):
        if d % per_code == 0:
            return d // per_code
    raise ConfigError(
        f"the embedding dim {d} has no divisor from 2 to {MAX_DIMS_PER_CODE} for the product "
        f"codes; set pq_m to a divisor of {d}, or use a factory without {{m}} such as "
        f"IVF{{nlist}},Flat"
    )


def resolve_factory(
    factory: str, n: int, d: int, nlist: int | None = None, m: int | None = None
) -> str:
    """Fill `{nlist}` and `{m}` in a factory string for n vectors of d dimensions."""
    if m is None and "{m}" in factory:
        m = default_pq_m(d)
    if m is not None and (m < 1 or d % m):
        raise ConfigError(f"pq_m={m} must divide the embedding dim {d}; set pq_m to a divisor")
    try:
        return factory.format(nlist=nlist or default_nlist(n), m=m)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"factory={factory!r}: only {{nlist}} and {{m}} can be filled in ({e!r})"
        ) from e


def check_metric(asked: str, trained_with: str) -> int:
    """The faiss metric for `asked`, refused unless it is the one the towers were trained with:
    L2 over inner-product embeddings would rank differently wherever norms differ and report
    distances serving would misread as scores."""
    if asked not in METRICS:
        raise MetricMismatchError(f"metric={asked!r} is not one of {sorted(METRICS)}")
    if asked != trained_with:
        raise MetricMismatchError(
            f"metric={asked!r} does not match the embeddings, which were trained for "
            f"{trained_with!r}; set metric: {trained_with} (--set metric={trained_with})"
        )
    return METRICS[asked]


_resources = None


def gpu_resources():
    """One set of GPU scratch memory for the process (allocating it costs ~100 ms)."""
    global _resources
    if _resources is None:
        _resources = faiss.StandardGpuResources()
    return _resources


def to_device(index: faiss.Index, use_gpu: bool = HAS_GPU) -> faiss.Index:
    """The index on GPU 0 when asked and faiss can move this type; unchanged otherwise."""
    if not use_gpu:
        return index
    try:
        return faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    except RuntimeError as e:  # faiss throws for types without a GPU implementation
        log.info("%s stays on the CPU (%s)", type(index).__name__, str(e).splitlines()[-1])
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


def ivf_of(index: faiss.Index):
    """The IVF inside an index (under a re-rank or transform), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def refine_of(index: faiss.Index):
    """The re-ranking stage (IndexRefine) at the top of an index, or None."""
    index = faiss.downcast_index(index)
    return index if isinstance(index, faiss.IndexRefine) else None


def new_index(factory: str, d: int, metric: int, use_gpu: bool, seed: int = 0) -> faiss.Index:
    """An empty CPU index from a factory string, its k-means set up (and on the GPU if used)."""
    try:
        index = faiss.index_factory(d, factory, metric)
    except RuntimeError as e:
        raise ConfigError(
            f"factory={factory!r} is not a faiss factory string ({str(e).splitlines()[-1]}); "
            f"see https://github.com/facebookresearch/faiss/wiki/The-index-factory"
        ) from e
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 64  # k-means on ≤ 64·nlist points: seconds, not minutes
        ivf.cp.spherical = metric == faiss.METRIC_INNER_PRODUCT  # unit centroids for cosine
        if use_gpu:
            clustering = to_device(faiss.IndexFlat(d, metric), use_gpu)
            ivf.clustering_index = clustering
            index._gpu_clustering = clustering  # the C++ field does not keep it alive
    return index


def build(
    xb: np.ndarray, factory: str, metric: int, use_gpu: bool = HAS_GPU, seed: int = 0
) -> tuple[faiss.Index, dict]:
    """Train an index on xb [N, d] and add xb (ids = row numbers); returns the CPU index and
    the seconds each step took."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    started = time.perf_counter()
    index = to_device(new_index(factory, xb.shape[1], metric, use_gpu, seed), use_gpu)
    index.train(xb)
    trained = time.perf_counter()
    index.add(xb)
    index = to_cpu(index)
    done = time.perf_counter()
    timings = {"train_s": trained - started, "add_s": done - trained, "build_s": done - started}
    log.info("built %s over %d × %d in %.2f s", factory, *xb.shape, timings["build_s"])
    return index, timings


def add(index: faiss.Index, xb: np.ndarray, use_gpu: bool = HAS_GPU) -> faiss.Index:
    """Append vectors (ids continue from ntotal) to a trained index without retraining it."""
    index = to_device(index, use_gpu)
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    return to_cpu(index)


def write_index(index: faiss.Index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(to_cpu(index), str(tmp))


def read_index(path: Path) -> faiss.Index:
    """faiss.read_index with an error that says which file and what to do."""
    if not Path(path).exists():
        raise IntegrityError(f"index file {path} is missing; rebuild the index")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise IntegrityError(
            f"{path} cannot be read as a faiss index ({str(e).splitlines()[-1][:200]}): the "
            f"file is corrupted or truncated; rebuild (`python -m index rebuild`)"
        ) from e
