"""MMR and calibration against brute-force greedy references written from their papers'
objectives, and the list figures against hand-worked lists."""

import math

import numpy as np
import pytest

from ranking import diversity as dv


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def greedy(n: int, k: int, objective) -> list[int]:
    """The reference: at each step, the free position whose objective of the grown list is
    highest (ties to the lower position)."""
    picked = []
    for _ in range(k):
        free = [i for i in range(n) if i not in picked]
        picked.append(max(free, key=lambda i: (objective([*picked, i]), -i)))
    return picked


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_is_the_papers_greedy_objective(lam):
    rng = np.random.default_rng(1)
    scores, vectors = rng.normal(size=15), unit(rng.normal(size=(15, 4)))
    rel = (scores - scores.min()) / (scores.max() - scores.min())

    def objective(chosen):  # the marginal value of the last one given the others
        *before, i = chosen
        near = max((float(vectors[i] @ vectors[j]) for j in before), default=0.0)
        return (1 - lam) * rel[i] - lam * near

    want = greedy(15, 8, objective) if lam > 0 else list(np.argsort(-scores)[:8])
    assert dv.mmr(scores, vectors, 8, lam).tolist() == want


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.5, 0.9])
def test_calibration_is_stecks_greedy_objective(lam):
    rng = np.random.default_rng(2)
    scores, categories = rng.normal(size=20), rng.integers(0, 5, 20)
    p = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    rel = (scores - scores.min()) / (scores.max() - scores.min())

    def objective(chosen):
        q = np.bincount(categories[chosen], minlength=5) / len(chosen)
        q = 0.99 * q + 0.01 * p
        c_kl = sum(p[g] * math.log(p[g] / q[g]) for g in range(5) if p[g] > 0)
        return (1 - lam) * rel[chosen].sum() - lam * c_kl

    want = greedy(20, 10, objective) if lam > 0 else list(np.argsort(-scores)[:10])
    assert dv.calibrate(scores, categories, p, 10, lam).tolist() == want


def test_a_strong_trade_off_moves_the_list_towards_its_goal():
    rng = np.random.default_rng(3)
    scores = np.sort(rng.random(60))[::-1]
    vectors = unit(np.repeat(rng.normal(size=(6, 8)), 10, axis=0) + 0.05 * rng.normal(size=(60, 8)))
    categories = np.repeat(np.arange(6), 10)  # the best ten share a category and a direction
    p = np.full(6, 1 / 6)
    plain = np.arange(10)
    diverse = dv.mmr(scores, vectors, 10, 0.5)
    calibrated = dv.calibrate(scores, categories, p, 10, 0.9)
    assert dv.intra_list_diversity(vectors[diverse]) > dv.intra_list_diversity(vectors[plain])
    mix = lambda rows: dv.history_mix(categories[rows], 6)  # noqa: E731
    assert dv.kl(p, mix(calibrated)) < dv.kl(p, mix(plain))


def test_list_figures_by_hand():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    categories = np.array([0, 1, 0, 1])
    lists = [np.array([0, 1]), np.array([0, 2])]
    histories = [np.array([0.5, 0.5]), np.array([1.0, 0.0])]
    got = dv.list_figures(lists, vectors, categories, histories, num_creators=4)
    # ILD: [0, 1] are orthogonal (1 - 0 = 1); [0, 2] identical (0) -> mean 0.5
    assert got["intra_list_diversity"] == pytest.approx(0.5)
    # KL: list 1 matches its history exactly (0); list 2 is all category 0 as is its history (0)
    assert got["calibration_kl"] == pytest.approx(0.0, abs=1e-12)
    assert got["coverage"] == pytest.approx(3 / 4)
    # one category for a half-and-half history: q~ = 0.99·(1, 0) + 0.01·(0.5, 0.5) = (0.995, 0.005)
    want = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    assert dv.kl(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(want)
