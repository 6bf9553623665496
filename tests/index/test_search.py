"""Search with exclusions (index.search) against brute force: exact on a flat index, within a
stated recall on an IVF, and k answers whenever the corpus holds k unbanned rows."""

import faiss
import numpy as np
import pytest

from index import build, search


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    """3,000 unit vectors in 40 clusters (as embeddings group by community), 40 queries."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 16))
    xb = unit(centers[rng.integers(0, 40, 3000)] + 0.35 * rng.standard_normal((3000, 16)))
    xq = unit(centers[rng.integers(0, 40, 40)] + 0.35 * rng.standard_normal((40, 16)))
    # per query: its own 30 best rows banned (the hard case) plus random ones
    best = np.argsort(-(xq @ xb.T), axis=1)
    banned = [np.union1d(best[i, :30], rng.choice(3000, 50, replace=False)) for i in range(40)]
    return xb, xq, banned


def brute_force(xb, q, k, banned):
    scores = xb @ q
    scores[banned] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def flat(xb):
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index


def test_a_flat_index_gives_the_brute_force_answer(corpus):
    xb, xq, banned = corpus
    ks = [5, 10, 20, 40] * 10
    found = search.filtered_search(flat(xb), xq, ks, banned, xb)
    for q, k, ban, (rows, scores) in zip(xq, ks, banned, found, strict=True):
        np.testing.assert_array_equal(rows, brute_force(xb, q, k, ban))
        np.testing.assert_allclose(scores, xb[rows] @ q, atol=1e-5)
        assert not np.isin(rows, ban).any()


def test_an_ivf_index_answers_within_its_recall_and_never_a_banned_row(corpus):
    xb, xq, banned = corpus
    factory = build.resolve_factory(build.DEFAULT_FACTORY, len(xb), xb.shape[1])
    index, _ = build.build(xb, factory, faiss.METRIC_INNER_PRODUCT, use_gpu=False)
    faiss.ParameterSpace().set_index_parameters(index, "nprobe=8,k_factor_rf=4")
    found = search.filtered_search(index, xq, [10] * len(xq), banned, xb)
    hits = 0
    for q, ban, (rows, scores) in zip(xq, banned, found, strict=True):
        assert len(rows) == 10 and len(set(rows.tolist())) == 10
        assert not np.isin(rows, ban).any()
        assert (np.diff(scores) <= 1e-6).all()  # best first
        # the index's own ranking with the banned rows dropped: filtering loses nothing
        _, deep = index.search(q[None, :], 400)
        np.testing.assert_array_equal(rows, deep[0][~np.isin(deep[0], ban)][:10])
        hits += len(set(rows.tolist()) & set(brute_force(xb, q, 10, ban).tolist()))
    assert hits / (10 * len(xq)) >= 0.9  # the tolerance: recall@10 of this IVF setting


def test_k_comes_back_whenever_the_corpus_allows(corpus):
    """One probed cell holds too few rows and most rows are banned: the search goes deeper,
    then exact, and returns every unbanned row when fewer than k remain."""
    xb, xq, _ = corpus
    index, _ = build.build(xb, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT, use_gpu=False)
    index.nprobe = 1
    rng = np.random.default_rng(1)
    banned = np.sort(rng.choice(len(xb), len(xb) - 25, replace=False))
    [(rows, _)] = search.filtered_search(index, xq[:1], [10], [banned], xb)
    np.testing.assert_array_equal(rows, brute_force(xb, xq[0], 10, banned))
    [(rows, _)] = search.filtered_search(index, xq[:1], [100], [banned], xb)
    assert sorted(rows.tolist()) == sorted(set(range(len(xb))) - set(banned.tolist()))
    [(rows, _)] = search.filtered_search(index, xq[:1], [5], [np.arange(len(xb))], xb)
    assert len(rows) == 0


def test_one_search_serves_the_whole_batch(corpus):
    """overfetch asks once, deep enough for the largest k plus its exclusions."""
    xb, xq, banned = corpus
    ks = [5, 20, 10]
    D, I, depth = search.overfetch(flat(xb), xq[:3], ks, banned[:3])  # noqa: E741
    assert depth == max(
        int(k * search.OVERFETCH) + len(b) for k, b in zip(ks, banned[:3], strict=True)
    )
    assert D.shape == I.shape == (3, depth)
