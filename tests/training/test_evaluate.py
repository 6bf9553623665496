"""The chunked evaluator against a per-user brute force."""

import numpy as np
import pytest
import torch

from training.evaluate import (
    EmbeddingScorer,
    Interactions,
    evaluate,
    finalize,
    merge_sums,
    metric_sums,
    metrics,
    ndcg_per_user,
    top_k,
)


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    n_users, n_creators, d = 40, 60, 8
    user_emb = torch.randn(n_users, d, generator=torch.Generator().manual_seed(1))
    creator_emb = torch.randn(n_creators, d, generator=torch.Generator().manual_seed(2))
    tu = rng.integers(2, n_users, 300)
    tc = rng.integers(2, n_creators, 300)
    train = Interactions.from_pairs(tu, tc, n_users)
    vu = rng.integers(2, n_users, 120)
    vc = rng.integers(2, n_creators, 120)
    test = Interactions.from_pairs(vu, vc, n_users)
    popularity = np.bincount(tc, minlength=n_creators)
    return user_emb, creator_emb, train, test, popularity


def brute_force(user_emb, creator_emb, train, test, popularity, k):
    scores = (user_emb @ creator_emb.T).numpy()
    recall, ndcg = [], []
    for u in np.flatnonzero(test.lengths() > 0):
        s = scores[u].copy()
        s[:2] = -np.inf
        s[train.row(u)] = -np.inf
        ranked = list(np.argsort(-s, kind="stable")[:k])
        truth = set(test.row(u).tolist())
        hits = [c in truth for c in ranked]
        recall.append(sum(hits) / len(truth))
        dcg = sum(1 / np.log2(i + 2) for i, h in enumerate(hits) if h)
        idcg = sum(1 / np.log2(i + 2) for i in range(min(k, len(truth))))
        ndcg.append(dcg / idcg)
    return np.mean(recall), np.mean(ndcg)


@pytest.mark.parametrize("max_scores", [60, 7 * 60, 1 << 26])  # 1 user, 7 users, all at once
def test_chunked_evaluation_matches_brute_force(world, max_scores):
    user_emb, creator_emb, train, test, popularity = world
    scorer = EmbeddingScorer(user_emb, creator_emb, torch.device("cpu"))
    got = evaluate(scorer, train, test, popularity, k=10, max_scores=max_scores)
    recall, ndcg = brute_force(*world, k=10)
    assert got["recall@10"] == pytest.approx(recall, abs=1e-12)
    assert got["ndcg@10"] == pytest.approx(ndcg, abs=1e-12)
    assert got["evaluated_users"] == int((world[3].lengths() > 0).sum())


def test_train_creators_and_reserved_slots_are_never_recommended(world):
    user_emb, creator_emb, train, _, _ = world
    users = np.arange(2, 40)
    scorer = EmbeddingScorer(user_emb, creator_emb, torch.device("cpu"))
    recs = top_k(scorer, train, 15, users)
    for row, u in zip(recs, users, strict=True):
        assert not set(row.tolist()) & set(train.row(u).tolist())
        assert (row >= 2).all()


def test_metrics_on_a_hand_computed_case():
    test = Interactions.from_pairs(np.array([0, 0, 1]), np.array([5, 7, 9]), 2)
    recs = np.array([[7, 3, 5], [2, 3, 4]])
    popularity = np.array([0, 0, 10, 10, 10, 1, 0, 50, 0, 3])
    m = metrics(recs, test, np.array([0, 1]), popularity, cold_threshold=5)
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    ndcg0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx(ndcg0 / 2)
    per_user = ndcg_per_user(recs, test, np.array([0, 1]))  # the paired bootstrap's input
    assert per_user == pytest.approx([ndcg0, 0.0])
    assert m["mrr@3"] == pytest.approx(0.5) and m["hit_rate@3"] == pytest.approx(0.5)
    assert m["cold_recall@3"] == pytest.approx((1.0 + 0.0) / 2)  # cold: 5 for user 0, 9 for 1
    assert m["coverage@3"] == pytest.approx(5 / 8)
    assert m["avg_popularity@3"] == pytest.approx(popularity[recs].mean())


def test_sums_over_blocks_equal_one_pass_and_several_ks_match_single_k(world):
    user_emb, creator_emb, train, test, popularity = world
    scorer = EmbeddingScorer(user_emb, creator_emb, torch.device("cpu"))
    users = np.flatnonzero(test.lengths() > 0)
    recs = top_k(scorer, train, 20, users)
    one = metric_sums(recs, test, users, popularity, ks=(5, 20))
    halves = [slice(None, len(users) // 2), slice(len(users) // 2, None)]
    parts = [metric_sums(recs[h], test, users[h], popularity, ks=(5, 20)) for h in halves]
    merged = finalize(merge_sums(*parts), ks=(5, 20))
    assert merged == pytest.approx(finalize(one, ks=(5, 20)), nan_ok=True)
    five = evaluate(scorer, train, test, popularity, k=5)
    assert {k: merged[k] for k in five} == pytest.approx(five, nan_ok=True)
