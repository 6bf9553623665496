"""Index building and tuning against brute force on clustered unit vectors with a known answer."""

import faiss
import numpy as np
import pytest

from common.errors import ConfigError
from index import build, tune
from index.build import MetricMismatchError

IP = faiss.METRIC_INNER_PRODUCT


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.8) -> np.ndarray:
    """Unit vectors around random centres: neighbourhoods like trained embeddings have."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def corpus():
    xb = clustered(20_000, 32, 200, seed=0)
    return xb, clustered(500, 32, 200, seed=1), clustered(500, 32, 200, seed=2)


def exact(xb, xq, k):
    return faiss.knn(xq, xb, k, IP)


def test_default_nlist_follows_the_corpus_size():
    assert build.default_nlist(1_000_000) == 4096
    assert build.default_nlist(40_981) == 1024
    assert build.default_nlist(300) == 4  # capped: k-means needs ~39 points a cell
    assert build.default_nlist(10) == 1
    assert build.resolve_factory(build.DEFAULT_FACTORY, 300, 16) == "IVF4,PQ8x4fsr,RFlat"
    # odd dims (the spectral towers' 1,024 + 1): the fewest dims a code that divide d
    assert build.resolve_factory(build.DEFAULT_FACTORY, 40_981, 1025) == "IVF1024,PQ205x4fsr,RFlat"
    assert build.resolve_factory("IVF{nlist},Flat", 40_981, 257) == "IVF1024,Flat"
    with pytest.raises(ConfigError, match=r"embedding dim 257 has no divisor from 2 to 8"):
        build.resolve_factory(build.DEFAULT_FACTORY, 40_981, 257)
    with pytest.raises(ConfigError, match=r"pq_m=5 must divide the embedding dim 16"):
        build.resolve_factory(build.DEFAULT_FACTORY, 300, 16, m=5)
    with pytest.raises(ConfigError, match=r"factory='IVF8,Bogus' is not a faiss factory"):
        build.new_index("IVF8,Bogus", 16, IP, use_gpu=False)
    with pytest.raises(ConfigError, match=r"only \{nlist\} and \{m\} can be filled in"):
        build.resolve_factory("IVF{cells},Flat", 300, 16)


def test_metric_mismatch_is_refused():
    assert build.check_metric("inner_product", "inner_product") == IP
    with pytest.raises(MetricMismatchError, match=r"metric='l2' does not match .*'inner_product'"):
        build.check_metric("l2", "inner_product")
    with pytest.raises(MetricMismatchError, match=r"metric='cosine' is not one of"):
        build.check_metric("cosine", "inner_product")


def test_flat_factory_is_exact(corpus):
    xb, xq, _ = corpus
    index, _ = build.build(xb, "Flat", IP, use_gpu=False)
    D, I = index.search(xq, 10)  # noqa: E741
    D0, I0 = exact(xb, xq, 10)
    np.testing.assert_allclose(D, D0, atol=1e-5)
    assert tune.recall_at_k(I, I0, 10) == 1.0


def test_default_ivf_pq_reaches_the_target_on_held_out_queries(corpus):
    """Tuned on one query set, the chosen setting keeps recall@10 within 0.03 of the target on
    another; the exact re-rank makes every returned score the exact inner product."""
    xb, tuning, held_out = corpus
    factory = build.resolve_factory(build.DEFAULT_FACTORY, *xb.shape)
    index, timings = build.build(xb, factory, IP, use_gpu=False)
    assert index.ntotal == len(xb) and timings["build_s"] > 0
    result = tune.tune(index, xb, tuning, 10, 0.95, IP, repeats=1)
    assert result["chosen"]["recall"] >= 0.95
    assert result["distinct_exact"] == len(np.unique(exact(xb, tuning, 10)[1]))  # lists differ
    D, I = index.search(held_out, 10)  # noqa: E741 - the chosen parameters are applied
    I0 = exact(xb, held_out, 10)[1]
    assert tune.recall_at_k(I, I0, 10) >= 0.95 - 0.03
    scores = (xb[I] * held_out[:, None, :]).sum(-1)  # [nq, 10] exact inner products
    np.testing.assert_allclose(D, scores, atol=1e-5)


def test_sweep_stops_at_the_target_and_choose_prefers_speed():
    points = [
        tune.Point({"nprobe": 1}, 0.80, 9000.0),
        tune.Point({"nprobe": 2}, 0.96, 5000.0),
        tune.Point({"nprobe": 1, "k_factor_rf": 4}, 0.97, 7000.0),
        tune.Point({"nprobe": 8}, 0.99, 1000.0),
    ]
    assert tune.choose(points, 0.95).params == {"nprobe": 1, "k_factor_rf": 4}
    assert tune.choose(points, 0.995).params == {"nprobe": 8}  # none reaches: most accurate


def test_recall_at_k_known_answer():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert tune.recall_at_k(found, truth, 4) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_flat_search_takes_blas_from_small_batches(corpus):
    """Importing index.build lowers faiss's BLAS threshold (queries × d) so that the coarse
    quantizer of each thread's slice of an IVF search uses BLAS; the answers stay those of the
    scalar loop."""
    xb, xq, _ = corpus
    assert faiss.cvar.distance_compute_blas_threshold == build.FLAT_BLAS_FROM
    assert 64 * xb.shape[1] >= build.FLAT_BLAS_FROM  # 64 queries of 32 dims: BLAS
    D, I = exact(xb, xq[:64], 10)  # noqa: E741
    faiss.cvar.distance_compute_blas_threshold = 128_000
    try:
        D0, I0 = exact(xb, xq[:64], 10)
    finally:
        faiss.cvar.distance_compute_blas_threshold = build.FLAT_BLAS_FROM
    np.testing.assert_allclose(D, D0, atol=1e-5)
    assert tune.recall_at_k(I, I0, 10) >= 0.99  # ties may order differently


def test_add_appends_without_retraining(corpus):
    xb = corpus[0]
    index, _ = build.build(xb[:15_000], "IVF64,PQ16x4fsr,RFlat", IP, use_gpu=False)
    ivf = build.ivf_of(index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    index = build.add(index, xb[15_000:], use_gpu=False)
    assert index.ntotal == len(xb)
    np.testing.assert_array_equal(build.ivf_of(index).quantizer.reconstruct_n(0, 64), centroids)
    tune.apply_params(index, {"nprobe": 64, "k_factor_rf": 16})
    _, I = index.search(xb[15_000:15_100], 1)  # noqa: E741 - each new vector finds itself
    assert (I[:, 0] == np.arange(15_000, 15_100)).mean() >= 0.99


def test_cpu_without_a_gpu_is_one_code_path(corpus):
    index = faiss.IndexFlatIP(8)
    assert build.to_device(index, use_gpu=False) is index
    assert build.to_cpu(index) is index


@pytest.mark.gpu
@pytest.mark.skipif(not build.HAS_GPU, reason="faiss sees no GPU")
def test_gpu_build_matches_cpu_recall(corpus):
    xb, xq, _ = corpus
    truth = exact(xb, xq, 10)[1]
    recalls = {}
    for use_gpu in (False, True):
        index, _ = build.build(xb, "IVF128,PQ16x4fsr,RFlat", IP, use_gpu=use_gpu)
        tune.apply_params(index, {"nprobe": 16, "k_factor_rf": 8})
        recalls[use_gpu] = tune.recall_at_k(index.search(xq, 10)[1], truth, 10)
    assert recalls[True] == pytest.approx(recalls[False], abs=0.02)
