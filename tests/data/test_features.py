"""The vectorised per-bucket functions against slow, obviously-correct Python references."""

from collections import defaultdict

import numpy as np
import pytest

from data import features


@pytest.fixture
def events():
    rng = np.random.default_rng(3)
    n = 3000
    ev = {
        "user": rng.integers(2, 40, n).astype(np.int32),
        "creator": rng.integers(2, 30, n).astype(np.int32),
        "event": rng.integers(0, 3, n).astype(np.int8),
        "ts": rng.integers(0, 200, n).astype(np.int64),
        "value": rng.choice([1.0, 5.0], n).astype(np.float32),
        "row": np.arange(n, dtype=np.int64),
    }
    # Plant exact copies (and near-copies that differ in one field only).
    copies = rng.integers(0, n, 200)
    for k in ev:
        ev[k] = np.concatenate([ev[k], ev[k][copies]])
    ev["row"] = np.arange(len(ev["row"]), dtype=np.int64)
    return ev


def _pairs(ev):
    return features.positive_pairs(ev["user"], ev["creator"], ev["ts"], ev["value"])


def test_find_duplicates_matches_a_dict_of_first_rows(events):
    dup, first = features.find_duplicates(
        *(events[k] for k in ("user", "creator", "event", "ts", "value", "row"))
    )
    seen = {}
    for i in range(len(events["row"])):
        key = tuple(events[k][i].item() for k in ("user", "creator", "event", "ts", "value"))
        expect_dup = key in seen
        seen.setdefault(key, events["row"][i])
        assert dup[i] == expect_dup, i
        if expect_dup:
            assert first[i] == seen[key]
    assert dup.sum() >= 200


def test_positive_pairs_first_time_and_max_weight(events):
    weight = events["value"]
    pairs = features.positive_pairs(events["user"], events["creator"], events["ts"], weight)
    ref = defaultdict(list)
    for u, c, t, w in zip(events["user"], events["creator"], events["ts"], weight, strict=True):
        ref[(u, c)].append((t, w))
    assert len(pairs) == len(ref)
    for u, c, t, w in zip(pairs.user, pairs.creator, pairs.ts, pairs.weight, strict=True):
        assert t == min(r[0] for r in ref[(u, c)])
        assert w == max(r[1] for r in ref[(u, c)])


def test_temporal_histories_are_the_previous_n_creators(events):
    pairs = _pairs(events)
    pairs = features.sort_for_history(pairs, temporal=True, seed=0)
    hist = features.histories(pairs.user, pairs.creator, 5, temporal=True)
    for k in range(len(pairs)):
        same = [i for i in range(max(0, k - 5), k) if pairs.user[i] == pairs.user[k]]
        expect = [0] * (5 - len(same)) + [int(pairs.creator[i]) for i in same]
        assert hist[k].tolist() == expect
        assert all(pairs.ts[i] <= pairs.ts[k] for i in same)


def test_untimed_histories_never_hold_the_target_and_cover_the_rest(events):
    pairs = _pairs(events)
    pairs = features.sort_for_history(pairs, temporal=False, seed=0)
    hist = features.histories(pairs.user, pairs.creator, 4, temporal=False)
    by_user = defaultdict(set)
    for u, c in zip(pairs.user, pairs.creator, strict=True):
        by_user[u].add(c)
    for u, c, h in zip(pairs.user, pairs.creator, hist, strict=True):
        items = [x for x in h.tolist() if x]
        assert c not in items
        assert set(items) <= by_user[u] and len(set(items)) == len(items)
        assert len(items) == min(4, len(by_user[u]) - 1)


def test_per_user_split_holds_out_the_fraction_and_ignores_order(events):
    pairs = _pairs(events)
    side = features.per_user_split(pairs, 0.2, min_train=1, seed=5)
    for u in np.unique(pairs.user):
        n = (pairs.user == u).sum()
        assert side[pairs.user == u].sum() == min(int(np.floor(n * 0.2 + 0.5)), n - 1)
    perm = np.random.default_rng(0).permutation(len(pairs))
    assert np.array_equal(features.per_user_split(pairs.select(perm), 0.2, 1, 5), side[perm])


def test_contains_matches_isin():
    rng = np.random.default_rng(1)
    haystack = np.unique(rng.integers(0, 2**40, 5000).astype(np.uint64))
    needles = np.concatenate([haystack[::7], rng.integers(0, 2**40, 500).astype(np.uint64)])
    assert np.array_equal(features.contains(haystack, needles), np.isin(needles, haystack))
    assert not features.contains(haystack[:0], needles).any()
