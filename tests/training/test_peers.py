"""Peers: EASE^R against its closed form; ALS and BPR learn planted structure; popularity ranks by
count. All through the same evaluator as the towers."""

import numpy as np
import pytest
import torch

from training.evaluate import Interactions, evaluate
from training.peers import EaseScorer, fit_als, fit_bpr, fit_popularity, interaction_matrix

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def planted():
    """4 communities of users, each engaging with its own block of creators."""
    rng = np.random.default_rng(0)
    n_users, n_creators, groups = 200, 82, 4
    users, creators = [], []
    for u in range(2, n_users):
        g = u % groups
        block = np.arange(2 + g * 20, 2 + (g + 1) * 20)
        chosen = rng.choice(block, 8, replace=False)
        users += [u] * 8
        creators += chosen.tolist()
    users, creators = np.array(users), np.array(creators)
    is_test = np.zeros(len(users), bool)
    is_test[::4] = True
    train = Interactions.from_pairs(users[~is_test], creators[~is_test], n_users)
    test = Interactions.from_pairs(users[is_test], creators[is_test], n_users)
    popularity = np.bincount(creators[~is_test], minlength=n_creators)
    return train, test, popularity, n_creators


def test_ease_matches_its_closed_form(planted):
    train, _, _, n_creators = planted
    x = interaction_matrix(train, n_creators)
    ease = EaseScorer(x, lam=10.0, device=CPU)
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + 10.0 * np.eye(n_creators))
    b = np.eye(n_creators) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(ease.b.numpy(), b, atol=1e-5)
    np.testing.assert_allclose(ease(np.array([3, 7])).numpy(), dense[[3, 7]] @ b, atol=1e-4)


@pytest.mark.parametrize("fit", ["als", "bpr", "ease"])
def test_collaborative_peers_beat_popularity_on_planted_communities(planted, fit):
    train, test, popularity, n_creators = planted
    x = interaction_matrix(train, n_creators)
    scorer = {
        "als": lambda: fit_als(x, factors=8, iterations=10, device=CPU),
        "bpr": lambda: fit_bpr(x, factors=8, iterations=200, learning_rate=0.05, device=CPU),
        "ease": lambda: EaseScorer(x, lam=10.0, device=CPU),
    }[fit]()
    pop = evaluate(fit_popularity(x, CPU), train, test, popularity, k=10)
    got = evaluate(scorer, train, test, popularity, k=10)
    # A ranking that knows only the user's community picks 10 of its 14 unseen creators:
    # recall@10 ≈ 10/14 = 0.71. Measured: ALS 0.72, BPR 0.74, EASE^R 0.68, popularity 0.13.
    assert got["recall@10"] > 0.6 > pop["recall@10"]
