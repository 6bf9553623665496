"""The rank stage's features against slow reference implementations, one pair at a time, and
that they read only the window they are given (no label feeds a feature)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from ranking.collab import Als
from ranking.features import DAY_MS, FEATURES, Catalog, Window, features

U, C, T, D = 12, 20, 6, 5


@pytest.fixture(scope="module")
def window():
    rng = np.random.default_rng(3)
    pairs = np.unique(rng.integers([0, 2], [U, C], size=(90, 2)), axis=0)
    ts = rng.integers(0, 90, len(pairs)) * DAY_MS
    category = rng.integers(1, 5, C)  # 1 = unknown: no share
    tags = sp.csr_matrix(rng.random((C, T)) < 0.3, dtype=np.float32)
    text = rng.normal(size=(C, D)).astype(np.float32)
    created = np.where(rng.random(C) < 0.8, rng.integers(-400, 80, C) * DAY_MS, -1)
    catalog = Catalog(category, tags, text, created)
    als = Als(rng.normal(size=(C, 3)).astype(np.float32), regularization=0.5, alpha=4.0)
    return Window(pairs[:, 0], pairs[:, 1], ts, U, catalog, als=als), pairs, ts


def als_reference(als: Als, hist: list[int], c: int) -> float:
    """ALS's user step written out (Hu, Koren & Volinsky): x = (YᵀCY + λI)⁻¹ YᵀCp with
    confidence α on the fan's creators and 1 elsewhere, p their indicator."""
    y = als.items.astype(np.float64)
    confidence = np.ones(len(y))
    confidence[hist] = als.alpha
    p = np.zeros(len(y))
    p[hist] = 1.0
    a = y.T @ (confidence[:, None] * y) + als.regularization * np.eye(y.shape[1])
    x = np.linalg.solve(a, y.T @ (confidence * p))
    return float(x @ y[c]) if hist else 0.0


def reference(w: Window, pairs, ts, u, c, score: float, rank: int, top: float) -> list[float]:
    """Each feature by its definition (ranking.features' docstring), for one pair."""
    cat = w.catalog
    fans = {x: {f for f, y in pairs if y == x} for x in range(C)}
    hist = [y for f, y in pairs if f == u]
    n = max(len(hist), 1)
    tags_of = {x: set(np.flatnonzero(cat.tags[x].toarray()[0])) for x in range(C)}
    category = sum(cat.category[h] == cat.category[c] for h in hist) / n
    category = category if cat.category[c] >= 2 else 0.0
    shares = [sum(t in tags_of[h] for h in hist) / n for t in tags_of[c]]
    unit = cat.text / np.linalg.norm(cat.text, axis=1, keepdims=True)
    mean, unit = sum((unit[h] for h in hist), np.zeros(D)), unit[c]
    text = 0.0 if not hist else float(mean @ unit / np.linalg.norm(mean))
    cos = [len(fans[h] & fans[c]) / math.sqrt(max(len(fans[h]), 1) * max(len(fans[c]), 1))
           for h in hist]  # fmt: skip
    end = ts.max()
    days = (end - cat.created_ms[c]) / DAY_MS
    age = math.log1p(max(days, 0.0)) if cat.created_ms[c] >= 0 else 0.0
    mine = ts[pairs[:, 1] == c]
    growth = (mine > end - 30 * DAY_MS).sum() / max(len(mine), 1)
    tag = float(np.mean(shares)) if shares else 0.0
    return [score, math.log1p(rank), score - top, category, tag, text, sum(cos) / n,
            math.log1p(len(fans[c])), age, growth, math.log1p(len(hist)),
            als_reference(w.als, hist, c)]  # fmt: skip


def test_every_feature_equals_its_slow_reference(window):
    w, pairs, ts = window
    rng = np.random.default_rng(4)
    users = np.array([0, 3, 7, 11])
    candidates = np.stack([rng.permutation(np.arange(2, C))[:6] for _ in users])
    scores = rng.normal(size=candidates.shape).astype(np.float32)
    got = features(w, users, candidates, scores)
    assert got.shape == (len(users), 6, len(FEATURES)) and got.dtype == np.float32
    for i, u in enumerate(users):
        for j, c in enumerate(candidates[i]):
            want = reference(w, pairs, ts, int(u), int(c), scores[i, j], j, scores[i].max())
            np.testing.assert_allclose(got[i, j], want, rtol=1e-5, atol=1e-6, err_msg=f"{u},{c}")


def test_a_fan_without_pairs_and_a_catalog_without_text_or_times_give_zeros_not_nans(window):
    w, pairs, _ = window
    cat = w.catalog
    bare = Catalog(cat.category, cat.tags, None, np.full(C, -1))
    w2 = Window(pairs[:, 0], pairs[:, 1], np.zeros(len(pairs), np.int64), U + 1, bare)
    got = features(w2, np.array([U]), np.array([[2, 3, 4]]), np.zeros((1, 3), np.float32))
    assert np.isfinite(got).all()
    named = dict(zip(FEATURES, np.moveaxis(got[0], -1, 0), strict=True))
    for name in ("category_share", "tag_affinity", "text_similarity", "cofollow", "age_days",
                 "growth", "fan_activity", "als_score"):  # fmt: skip
        assert (named[name] == 0).all(), name


def test_features_read_only_their_window_so_a_label_never_feeds_one(window):
    """The ranker's labels are the validation pairs; its features come from a Window over the
    training pairs. Adding a fan's label pairs to the world outside the window changes nothing,
    while putting them in the window would (the test has teeth)."""
    w, pairs, ts = window
    u, held = 3, np.array([[3, 2], [3, 9]])
    held = held[~(pairs[:, None] == held[None]).all(-1).any(0)]
    candidates, scores = np.array([[2, 9, 15]]), np.zeros((1, 3), np.float32)
    before = features(w, np.array([u]), candidates, scores)
    leaked = Window(*np.concatenate([pairs, held]).T, np.concatenate([ts, ts[: len(held)]]),
                    U, w.catalog, als=w.als)  # fmt: skip
    assert not np.allclose(before, features(leaked, np.array([u]), candidates, scores))
    again = Window(pairs[:, 0], pairs[:, 1], ts, U, w.catalog, als=w.als)
    np.testing.assert_array_equal(before, features(again, np.array([u]), candidates, scores))


def test_a_history_given_by_the_caller_is_the_window_row_it_stands_for(window):
    """The service passes what its feature store says each fan follows: the same features as
    the window's own rows when they agree, and a changed history changes only that fan's."""
    w, _, _ = window
    users = np.array([1, 4, 9])
    candidates = np.tile(np.arange(2, 10), (3, 1))
    scores = np.linspace(1, 0, 8, dtype=np.float32)[None].repeat(3, 0)
    rows = w.x[users]
    assert np.allclose(features(w, users, candidates, scores, rows),
                       features(w, users, candidates, scores), atol=1e-6)  # fmt: skip
    changed = rows.tolil()
    changed[0, :] = 0
    changed[0, [2, 3]] = 1
    got = features(w, users, candidates, scores, changed.tocsr())
    assert not np.allclose(got[0], features(w, users, candidates, scores)[0])
    assert np.allclose(got[1:], features(w, users, candidates, scores)[1:], atol=1e-6)
